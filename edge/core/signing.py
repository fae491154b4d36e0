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
- pure: no sockets, files or clocks (the time is passed in);
- a token can also cover a directory and ride in the path instead
  (``/_edge/t/TOKEN/KEY``): HLS and DASH players resolve a playlist's relative
  URLs against the playlist's own URL, so a path token reaches every rendition
  and segment of a title, where a query token stays on the first URL. Its MAC
  is over a different label and the directory (ending in ``/``); the appliance
  accepts it for any key under that directory (it tries the key's ancestors,
  a top-level key has none, so it is always signed in the query);

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
    "directory_of",
    "parse_keys",
    "path_url",
    "sign",
    "sign_directory",
    "split_path_token",
    "token_param",
]

MIN_SECRET_BYTES = 16
PARAM = "token"
LABEL = b"edgefleet-v1"
DIR_LABEL = b"edgefleet-v1-dir"
PATH_PREFIX = "_edge/t/"  # the key of a path-token URL: _edge/t/TOKEN/KEY
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


def _mac(secret: bytes, kid: str, expires: int, prefix: str, key: str, label: bytes = LABEL) -> str:
    msg = b"\n".join(
        (label, kid.encode(), str(expires).encode(), prefix.encode(), key.encode("utf-8"))
    )
    return base64.urlsafe_b64encode(hmac.digest(secret, msg, hashlib.sha256))[:43].decode()


def directory_of(key: str) -> str:
    """``titles/1/master.m3u8`` → ``titles/1/``; ``""`` for a top-level key."""
    head, sep, _ = key.rpartition("/")
    return head + sep


def sign_directory(directory: str, kid: str, secret: bytes, expires: int, prefix: str = "") -> str:
    """A path token for every key under ``directory`` (which ends in ``/``); the
    client prefix's ``/`` is written ``_`` so the token is one path segment."""
    if not directory.endswith("/") or directory == "/":
        raise ValueError("a directory token needs a directory like titles/1/")
    mac = _mac(secret, kid, expires, prefix, directory, DIR_LABEL)
    return f"{kid}~{expires}~{prefix.replace('/', '_')}~{mac}"


def path_url(base: str, key_path: str, token: str) -> str:
    """``base/_edge/t/TOKEN/key_path`` (``key_path`` already quoted for a URL)."""
    return f"{base}/{PATH_PREFIX}{token}/{key_path}"


def split_path_token(key: str) -> tuple[str, str] | None:
    """``_edge/t/TOKEN/KEY`` → (TOKEN, KEY); None for any other key."""
    if not key.startswith(PATH_PREFIX):
        return None
    token, _, rest = key[len(PATH_PREFIX) :].partition("/")
    return token, rest


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
        return self._check(token, [(key, LABEL)], client, now)

    def check_path(self, key: str, token: str, client: str, now: float) -> str | None:
        """The same for a path token, which covers a directory above ``key``."""
        if not token:
            return "missing"
        parts = key.split("/")[:-1]
        scopes = [("/".join(parts[:n]) + "/", DIR_LABEL) for n in range(len(parts), 0, -1)]
        if not scopes:
            return "bad_signature"  # a top-level key is never under a directory token
        kid, sep, rest = token.partition("~")
        expires, sep2, rest = rest.partition("~")
        prefix, sep3, sig = rest.partition("~")
        if not (sep and sep2 and sep3):
            return "malformed"
        return self._check(f"{kid}~{expires}~{prefix.replace('_', '/')}~{sig}", scopes, client, now)

    def _check(
        self, token: str, scopes: list[tuple[str, bytes]], client: str, now: float
    ) -> str | None:
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
        if not any(
            hmac.compare_digest(_mac(secret, kid, expires, prefix, scope, label), sig)
            for scope, label in scopes
        ):
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
