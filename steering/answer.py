"""From a request to a decision's input, and from a decision to the answer.

What it decides: which address is the client (the peer, or what a trusted
proxy says in ``X-Forwarded-For``), and what the player gets back: signed
URLs, the location used, the expiry. Rules it keeps:
- ``X-Forwarded-For`` counts only when the peer is a trusted proxy; the client
  is then the rightmost address in it that is not itself a trusted proxy (the
  ones left of it could be made up by the client); entries may carry a port
  (``1.2.3.4:80``, ``[2001:db8::1]:443``), which is dropped; one entry that is
  not an address makes the whole header untrusted (the peer is the client);
- a URL is the appliance's base URL, the key percent-encoded once (keys never
  contain ``%``, so an appliance decodes it back exactly), and the token;
- tokens expire ``token_ttl`` after ``now``, bound to the client's /N when
  configured; the origin fallback is never signed;
- pure: the time is passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from edge.core.signing import client_prefix, directory_of, path_url, sign_directory, token_param
from steering.config import SteerConfig
from steering.decide import Route
from steering.fleet import Fleet
from steering.prefixes import Network, address

_SAFE = "/!$&'()*+,;=:@~"


def client_address(peer: str, forwarded: str | None, trusted: Sequence[Network]) -> str:
    """The client's address for a request from ``peer`` carrying ``forwarded``:
    always a bare address (``address`` accepts it), never a hop as written."""
    if not forwarded or not trusted or not _trusted(peer, trusted):
        return peer
    hops = []
    for text in forwarded.split(","):
        if text.strip():
            hop = hop_address(text)
            if hop is None:
                return peer  # garbage from a trusted proxy: trust the connection
            hops.append(hop)
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            return hop
    return hops[0] if hops else peer


def hop_address(text: str) -> str | None:
    """The address of one ``X-Forwarded-For`` entry: ``1.2.3.4``, ``1.2.3.4:80``,
    ``2001:db8::1``, ``[2001:db8::1]`` or ``[2001:db8::1]:443``; ``None`` for
    anything else (a port without an address, ``unknown``, a zone id)."""
    hop = text.strip()
    if hop.startswith("["):
        end = hop.find("]")
        rest = hop[end + 1 :] if end > 0 else "?"
        if rest and not (rest[0] == ":" and rest[1:].isdigit()):
            return None
        hop = hop[1:end]
    elif hop.count(":") == 1:  # v4:port
        hop, _, port = hop.partition(":")
        if not port.isdigit():
            return None
    try:
        address(hop)
    except ValueError:
        return None
    return hop


def _trusted(addr: str, trusted: Sequence[Network]) -> bool:
    try:
        version, n = address(addr)
    except ValueError:
        return False
    for net in trusted:
        if net.version == version:
            bits = 32 if version == 4 else 128
            shift = bits - net.prefixlen
            if n >> shift == int(net.network_address) >> shift:
                return True
    return False


def urls(
    decision: Route, fleet: Fleet, cfg: SteerConfig, client: str, now: float
) -> tuple[list[str], int]:
    """The signed URLs of a decision and their expiry (Unix seconds)."""
    path = quote(decision.key, safe=_SAFE)
    expires = int(now + cfg.token_ttl)
    signing = cfg.signing_key()
    base = fleet.urls
    if signing is None:
        return [f"{base[i]}/{path}" for i in decision.chosen], expires
    kid, secret = signing
    prefix = ""
    if cfg.token_prefix_v4 or cfg.token_prefix_v6:
        prefix = client_prefix(client, cfg.token_prefix_v4, cfg.token_prefix_v6)
    directory = directory_of(decision.key)
    if cfg.token_in == "path" and directory:
        token = sign_directory(directory, kid, secret, expires, prefix)
        return [path_url(base[i], path, token) for i in decision.chosen], expires
    token = token_param(decision.key, kid, secret, expires, prefix)
    return [f"{base[i]}/{path}?{token}" for i in decision.chosen], expires


def origin_url(cfg: SteerConfig, key: str) -> str | None:
    if not cfg.origin_fallback:
        return None
    return f"{cfg.origin_fallback}/{quote(key, safe=_SAFE)}"


def document(decision: Route, fleet: Fleet, urls_: list[str], expires: int) -> dict[str, Any]:
    """The JSON body of ``/steer``."""
    specs = fleet.specs
    return {
        "object": decision.key,
        "urls": urls_,
        "appliances": [
            {"id": specs[i].id, "site": specs[i].site, "holds": h}
            for i, h in zip(decision.chosen, decision.holds, strict=True)
        ],
        "class": decision.klass,
        "location": decision.location.as_json(),
        "expires": expires,
    }
