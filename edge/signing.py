"""Signed URLs: steering signs, the appliance verifies.

What it decides: whether a request for an object carries a valid token, and
if not, why. Rules it keeps:
- a token is one query parameter, ``token=KID~EXPIRES~PREFIX~SIG``; ``SIG`` is
  base64url (no padding) of HMAC-SHA256 over a fixed label, the key id, the
  expiry, the prefix and the object key, so none of them can be changed
  without the secret;
- several keys can be valid at once (rotation): the key id picks the secret;
- checks run in a fixed order and the first failure is the reason:
  missing, malformed, unknown key, bad signature, expired, wrong prefix;
- signatures are compared in constant time; secrets are at least
  ``MIN_SECRET_BYTES`` long;
- pure: no sockets, files or clocks (the time is passed in).

The format is documented in docs/steering.md.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

__all__ = [
    "MIN_SECRET_BYTES",
    "REASONS",
    "Verifier",
    "client_prefix",
    "parse_keys",
    "sign",
    "token_param",
]

MIN_SECRET_BYTES = 16
PARAM = "token"
LABEL = b"edgefleet-v1"
REASONS = ("missing", "malformed", "unknown_key", "bad_signature", "expired", "wrong_prefix")
MESSAGES = {
    "missing": "a signed URL is required: no token",
    "malformed": "malformed token",
    "unknown_key": "token signed with an unknown key id",
    "bad_signature": "bad token signature",
    "expired": "token expired",
    "wrong_prefix": "token not valid from this client address (wrong client prefix)",
}
_KID = re.compile(r"[A-Za-z0-9_-]{1,32}")
_SIG = re.compile(r"[A-Za-z0-9_-]{43}")


def _mac(secret: bytes, kid: str, expires: int, prefix: str, key: str) -> str:
    msg = b"\n".join(
        (LABEL, kid.encode(), str(expires).encode(), prefix.encode(), key.encode("utf-8"))
    )
    return base64.urlsafe_b64encode(hmac.digest(secret, msg, hashlib.sha256))[:43].decode()


def sign(key: str, kid: str, secret: bytes, expires: int, prefix: str = "") -> str:
    """The token for ``key`` (the object key, not the URL path) until ``expires``."""
    return f"{kid}~{expires}~{prefix}~{_mac(secret, kid, expires, prefix, key)}"


def token_param(key: str, kid: str, secret: bytes, expires: int, prefix: str = "") -> str:
    """``token=…``, ready for a query string (every character is URL-safe)."""
    return f"{PARAM}={sign(key, kid, secret, expires, prefix)}"


def client_prefix(address: str, bits_v4: int, bits_v6: int) -> str:
    """The CIDR of ``address``'s /bits (``""`` when binding is off for its family)."""
    ip = ipaddress.ip_address(address)
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    bits = bits_v4 if ip.version == 4 else bits_v6
    if bits <= 0:
        return ""
    return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))


def _token_from_query(query: str) -> str | None:
    for part in query.split("&"):
        name, eq, value = part.partition("=")
        if name == PARAM and eq:
            # a proxy may have percent-encoded the prefix's ':' or '/'
            return unquote(value) if "%" in value else value
    return None


class Verifier:
    """Checks tokens against a set of keys (key id → secret)."""

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        if not keys:
            raise ValueError("a verifier needs at least one key")
        self.keys = dict(keys)

    def check(self, key: str, query: str, client: str, now: float) -> str | None:
        """``None`` if the query's token admits ``client`` to ``key`` at ``now``,
        else the reason (one of ``REASONS``)."""
        token = _token_from_query(query)
        if token is None:
            return "missing"
        fields = token.split("~")
        if len(fields) != 4:
            return "malformed"
        kid, expires_text, prefix, sig = fields
        if not _KID.fullmatch(kid) or not expires_text.isdigit() or not _SIG.fullmatch(sig):
            return "malformed"
        if len(expires_text) > 12:
            return "malformed"
        network = None
        if prefix:
            try:
                network = ipaddress.ip_network(prefix)
            except ValueError:
                return "malformed"
        secret = self.keys.get(kid)
        if secret is None:
            return "unknown_key"
        expires = int(expires_text)
        if not hmac.compare_digest(_mac(secret, kid, expires, prefix, key), sig):
            return "bad_signature"
        if now > expires:
            return "expired"
        if network is not None:
            try:
                ip = ipaddress.ip_address(client)
            except ValueError:
                return "wrong_prefix"
            if ip.version == 6 and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            if ip.version != network.version or ip not in network:
                return "wrong_prefix"
        return None


def parse_keys(value: Any) -> dict[str, bytes]:
    """Signing keys from configuration: a table ``{kid = "secret"}`` or a list of
    ``KID=SECRET`` strings (the repeatable flag). Raises ``ValueError``."""
    items: list[tuple[str, str]] = []
    if isinstance(value, Mapping):
        items = [(str(k), v) for k, v in value.items()]
    else:
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, Mapping):
                items.extend((str(k), v) for k, v in item.items())
                continue
            kid, eq, secret = str(item).partition("=")
            if not eq:
                raise ValueError(f"{item!r} is not KID=SECRET")
            items.append((kid, secret))
    out: dict[str, bytes] = {}
    for kid, secret in items:
        if not _KID.fullmatch(kid):
            raise ValueError(f"key id {kid!r}: use 1-32 letters, digits, '-' or '_'")
        if not isinstance(secret, str):
            raise ValueError(f"key {kid!r}: the secret must be a string")
        raw = secret.encode("utf-8")
        if len(raw) < MIN_SECRET_BYTES:
            raise ValueError(f"key {kid!r}: secret shorter than {MIN_SECRET_BYTES} bytes")
        if kid in out:
            raise ValueError(f"key id {kid!r} given twice")
        out[kid] = raw
    return out
