"""Configuration: a TOML file, every option also a flag, validated at start.

Rules it keeps: an unknown key, a bad value or a missing requirement stops
start-up with a ``ConfigError`` naming the option both ways (``--slice-size`` /
``slice_size``); flags override the file; defaults are what an appliance on a
single disk would want.
"""

from __future__ import annotations

import argparse
import re
import socket
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from edge.core.policy import POLICIES
from edge.core.signing import parse_keys
from edge.core.sizes import format_size, parse_duration, parse_size
from edge.origin import OriginSettings
from edge.store import DEFAULT_SLICE_SIZE


class ConfigError(ValueError):
    """A configuration problem; the message names the option."""


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = str(value).rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


@dataclass(frozen=True)
class StoreRootConfig:
    path: str
    capacity: int | None = None  # None: share of the total


@dataclass
class ServeConfig:
    id: str = field(default_factory=socket.gethostname)
    site: str = ""
    listen: tuple[str, int] | None = ("127.0.0.1", 8080)  # None: TLS only
    tls_listen: list[tuple[str, int]] = field(default_factory=list)
    tls_cert: list[tuple[str, str | None]] = field(default_factory=list)
    tls_handshake_timeout: float = 10.0
    header_timeout: float = 15.0  # a request's headers within this of its first byte
    ca_file: str | None = None
    store: list[StoreRootConfig] = field(default_factory=list)
    capacity: int | None = None
    index: str | None = None
    origin: list[str] = field(default_factory=list)
    slice_size: int = DEFAULT_SLICE_SIZE
    workers: int = 1
    access_log: str | None = None
    admin_token: str | None = None
    grace: float = 30.0
    eviction: str = "popularity"
    half_life: float = 86400.0
    cors_origin: str = "*"
    max_ranges: int = 64
    keepalive_timeout: float = 75.0
    log_level: str = "info"
    s3_endpoint: str | None = None
    s3_region: str | None = None
    s3_addressing_style: str = "auto"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    origin_connect_timeout: float = 3.0
    origin_read_timeout: float = 10.0
    origin_retries: int = 2
    origin_pool_size: int = 256  # connections to each HTTP origin, at most
    negative_ttl: float = 10.0
    breaker_failures: int = 5
    breaker_cooldown: float = 10.0
    admission: str = "doorkeeper"
    # missed bytes a worker holds for the store's writers; past it, served unstored
    store_backlog: int = 256 * 1024 * 1024
    scrub_rate: int = 16 * 1024 * 1024  # bytes/s the background scrub rereads; 0: off
    index_sync: str = "full"  # full: a commit survives power loss; normal: may lose the last
    # HTTP origins (a shared cache): query parameters left out of the cache key
    cache_key_ignore: list[str] = field(default_factory=lambda: ["token"])
    max_request_body: int = 1024 * 1024  # an unsafe method's body, forwarded
    # request Cache-Control directives honoured (edge.core.cachepolicy)
    request_cache_control: str = "safe"
    # key id -> secret; with any, content requests need a valid signed URL
    url_signing_keys: dict[str, bytes] = field(default_factory=dict)

    def origin_settings(self) -> OriginSettings:
        return OriginSettings(
            connect_timeout=self.origin_connect_timeout,
            read_timeout=self.origin_read_timeout,
            pool_size=self.origin_pool_size,
            s3_endpoint=self.s3_endpoint,
            s3_region=self.s3_region,
            s3_addressing_style=self.s3_addressing_style,
            s3_access_key_id=self.s3_access_key_id,
            s3_secret_access_key=self.s3_secret_access_key,
            signing_key=self.signing_key(),
            ca_file=self.ca_file,
        )

    def signing_key(self) -> tuple[str, bytes] | None:
        """The key that signs this appliance's (and its fill's) requests to
        parent and peer appliances: the first of ``url_signing_keys``."""
        return next(iter(self.url_signing_keys.items()), None)

    def root_capacities(self) -> list[tuple[str, int]]:
        """Each root with its capacity, the total split over roots that name none."""
        named = sum(r.capacity for r in self.store if r.capacity is not None)
        unnamed = [r for r in self.store if r.capacity is None]
        share = 0
        if unnamed:
            if self.capacity is None:
                raise ConfigError(
                    f"store root {unnamed[0].path!r} has no capacity: give --store DIR=SIZE, "
                    "a capacity in [[store]], or a total with --capacity / capacity"
                )
            rest = self.capacity - named
            if rest <= 0:
                raise ConfigError(
                    "--capacity / capacity is smaller than the capacities the roots name"
                )
            share = rest // len(unnamed)
        return [(r.path, r.capacity if r.capacity is not None else share) for r in self.store]


# option name -> (flag, parser). Parsers raise ValueError with the reason.
def listen_list(value: Any) -> list[tuple[str, int]]:
    return [parse_listen(v) for v in (value if isinstance(value, list) else [value])]


def cert_list(value: Any) -> list[tuple[str, str | None]]:
    from edge.http.tls import parse_cert_option

    return [parse_cert_option(v) for v in (value if isinstance(value, list) else [value])]


def _store_roots(value: Any) -> list[StoreRootConfig]:
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if isinstance(item, dict):
            unknown = sorted(set(item) - {"path", "capacity"})
            if unknown:
                raise ValueError(
                    f"[[store]] has {unknown[0]!r}: a [[store]] takes path and capacity only "
                    "(top-level options go before the first [[store]])"
                )
            if "path" not in item:
                raise ValueError("each [[store]] needs a path")
            cap = parse_size(item["capacity"]) if "capacity" in item else None
            out.append(StoreRootConfig(str(item["path"]), cap))
        else:
            text = str(item)
            path, eq, cap_text = text.rpartition("=")
            if eq and re.fullmatch(r"[0-9.]+\s*[A-Za-z]*", cap_text.strip()):
                out.append(StoreRootConfig(path, parse_size(cap_text)))
            else:
                out.append(StoreRootConfig(text))
    return out


def _origins(value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        url = str(item)
        if not re.match(r"^(file|s3|https?)://", url):
            raise ValueError(f"{url!r} is not an origin URL (file:///dir, s3://bucket, http://…)")
        out.append(url)
    return out


def _param_names(value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        name = str(item)
        if not re.fullmatch(r"[^&=\s]+", name):
            raise ValueError(f"{name!r} is not a query parameter name")
        out.append(name)
    return out


def _whole(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError("expected a whole number")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a whole number") from None


def positive_int(value: Any) -> int:
    n = _whole(value)
    if n < 1:
        raise ValueError("must be at least 1")
    return n


def positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("must be longer than 0s")
    return seconds


def _count(value: Any) -> int:
    n = _whole(value)
    if n < 0:
        raise ValueError("cannot be negative")
    return n


def _http_url(value: Any) -> str:
    url = str(value)
    if not re.match(r"^https?://[^/]+", url):
        raise ValueError(f"{url!r} is not an http(s):// URL")
    return url


def _slice_size(value: Any) -> int:
    n = parse_size(value)
    if not 64 * 1024 <= n <= 256 * 1024 * 1024:
        raise ValueError("must be between 64KiB and 256MiB")
    return n


def choice(*names: str):  # type: ignore[no-untyped-def]
    def parse(value: Any) -> str:
        if str(value) not in names:
            raise ValueError(f"{value!r}: choose from {', '.join(names)}")
        return str(value)

    parse.choices = names  # type: ignore[attr-defined]  # shown in --help
    return parse


def _name(value: Any) -> str:
    text = str(value).strip()
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", text):
        raise ValueError("use 1 to 64 letters, digits, '.', '-' or '_'")
    return text


# HTTPS listeners, the same for the appliance and steering
TLS_OPTIONS: Options = {
    "tls_listen": (
        "--tls-listen",
        listen_list,
        "HOST:PORT to serve HTTPS on (repeat; without --listen, HTTPS only)",
    ),
    "tls_cert": (
        "--tls-cert",
        cert_list,
        "CERT.pem[:KEY.pem] (repeat: chosen by SNI, the first is the default)",
    ),
}

# the limits of a client connection (edge.http.server), the same for the
# appliance and steering
CONNECTION_OPTIONS: Options = {
    "tls_handshake_timeout": (
        "--tls-handshake-timeout",
        positive_duration,
        "a TLS handshake not finished by then is closed (default 10s)",
    ),
    "header_timeout": (
        "--header-timeout",
        positive_duration,
        "a request's headers not complete this long after its first byte: 408 and close; "
        "also a new connection's wait for its first byte (default 15s)",
    ),
    "keepalive_timeout": (
        "--keepalive-timeout",
        parse_duration,
        "idle keep-alive timeout (0: no keep-alive, every answer closes its connection)",
    ),
}

SERVE_OPTIONS: Options = {
    "id": ("--id", _name, "this appliance's name in health and status (default: the host name)"),
    "site": ("--site", _name, "the site it stands in, as steering names it (shown in status)"),
    "listen": ("--listen", parse_listen, "HOST:PORT to serve content and /_edge/ on"),
    **TLS_OPTIONS,
    **{k: v for k, v in CONNECTION_OPTIONS.items() if k != "keepalive_timeout"},
    "ca_file": (
        "--ca-file",
        str,
        "CA certificates (PEM) for https:// origins, parents and fill peers (default: system)",
    ),
    "store": ("--store", _store_roots, "store root DIR or DIR=SIZE (repeat: one per disk)"),
    "capacity": ("--capacity", parse_size, "total capacity, split over roots naming none"),
    "index": ("--index", str, "the SQLite index (default FIRST_ROOT/index.sqlite)"),
    "origin": ("--origin", _origins, "origin URL (repeat for fallbacks), e.g. file:///srv/videos"),
    "slice_size": ("--slice-size", _slice_size, "slice size for new objects (default 2MiB)"),
    "workers": ("--workers", positive_int, "worker processes sharing the port"),
    "access_log": ("--access-log", str, "JSON-lines access log path, '-' for stdout"),
    "admin_token": ("--admin-token", str, "bearer token for /_edge/admin/* (none: disabled)"),
    "grace": ("--grace", parse_duration, "how long in-flight responses may finish on SIGTERM"),
    "eviction": ("--eviction", choice(*POLICIES), "eviction policy"),
    "half_life": ("--half-life", parse_duration, "popularity half-life (default 1d)"),
    "cors_origin": ("--cors-origin", str, "Access-Control-Allow-Origin value (default *)"),
    "max_ranges": ("--max-ranges", positive_int, "ranges per request before Range is ignored"),
    "keepalive_timeout": CONNECTION_OPTIONS["keepalive_timeout"],
    "log_level": ("--log-level", choice("debug", "info", "warning", "error"), "log level"),
    "s3_endpoint": ("--s3-endpoint", _http_url, "S3 endpoint URL (default: AWS)"),
    "s3_region": ("--s3-region", str, "S3 region (default: from the AWS configuration)"),
    "s3_addressing_style": (
        "--s3-addressing-style",
        choice("auto", "path", "virtual"),
        "S3 addressing style",
    ),
    "s3_access_key_id": ("--s3-access-key-id", str, "S3 key id (default: AWS env/files)"),
    "s3_secret_access_key": ("--s3-secret-access-key", str, "S3 secret (default: AWS env/files)"),
    "origin_connect_timeout": (
        "--origin-connect-timeout",
        parse_duration,
        "origin connect timeout",
    ),
    "origin_read_timeout": ("--origin-read-timeout", parse_duration, "origin timeout per read"),
    "origin_retries": ("--origin-retries", _count, "retries of a failed origin request"),
    "origin_pool_size": (
        "--origin-pool-size",
        positive_int,
        "connections to each HTTP origin, at most (kept alive)",
    ),
    "negative_ttl": ("--negative-ttl", parse_duration, "how long a 404 from the origin is kept"),
    "breaker_failures": (
        "--breaker-failures",
        positive_int,
        "consecutive origin failures that open its circuit breaker",
    ),
    "breaker_cooldown": ("--breaker-cooldown", parse_duration, "how long a breaker stays open"),
    "admission": (
        "--admission",
        choice("off", "doorkeeper"),
        "store an object seen once under capacity pressure? (doorkeeper: only from its 2nd ask)",
    ),
    "store_backlog": (
        "--store-backlog",
        parse_size,
        "missed bytes a worker holds for the store's writers, at most; past it a slice "
        "is served and not stored (default 256MiB; docs/miss-path.md)",
    ),
    "scrub_rate": (
        "--scrub-rate",
        parse_size,
        "bytes per second the background scrub rereads, shared by the workers "
        "(default 16MiB; 0: off)",
    ),
    "index_sync": (
        "--index-sync",
        choice("full", "normal"),
        "full: an index commit survives power loss before a slice counts as stored; "
        "normal: faster, the last commits may roll back (docs/appliance.md)",
    ),
    "cache_key_ignore": (
        "--cache-key-ignore",
        _param_names,
        "query parameter left out of the cache key for HTTP origins (repeat; default token)",
    ),
    "max_request_body": (
        "--max-request-body",
        parse_size,
        "largest body of a POST/PUT/PATCH/DELETE forwarded to an HTTP origin (default 1MiB)",
    ),
    "request_cache_control": (
        "--request-cache-control",
        choice("ignore", "safe", "all"),
        "players' Cache-Control honoured with HTTP origins: safe (default): only-if-cached "
        "and max-stale; all: also no-cache, max-age, min-fresh, no-store (docs/miss-path.md)",
    ),
    "url_signing_keys": (
        "--url-signing-key",
        parse_keys,
        "KID=SECRET a signed URL may use (repeat for rotation; with none, URLs are not checked)",
    ),
}
_REPEATABLE = {"store", "origin", "url_signing_keys", "tls_listen", "tls_cert", "cache_key_ignore"}
_SECRET = {"url_signing_keys"}


Options = dict[str, tuple[str, Any, str]]  # name -> (flag, parser, help)


# what --help shows after a flag, by the parser that reads its value
METAVARS: dict[Any, str] = {
    parse_listen: "HOST:PORT",
    _store_roots: "DIR[=SIZE]",
    parse_size: "SIZE",
    _slice_size: "SIZE",
    parse_duration: "DURATION",
    positive_duration: "DURATION",
    positive_int: "N",
    _count: "N",
    _origins: "URL",
    _http_url: "URL",
    parse_keys: "KID=SECRET",
    _name: "NAME",
    listen_list: "HOST:PORT",
    cert_list: "CERT.pem[:KEY.pem]",
    _param_names: "PARAM",
}
# ... and for options read as plain text, by name
NAMED_METAVARS = {
    "index": "PATH",
    "access_log": "PATH|-",
    "admin_token": "TOKEN",
    "cors_origin": "ORIGIN",
    "ca_file": "CA.pem",
    # steering's
    "coverage_zones": "FILE.json",
    "geoip": "FILE.mmdb",
    "default_location": "LAT,LON",
    "signing_key_id": "KID",
    "s3_region": "REGION",
    "s3_access_key_id": "KEY_ID",
    "s3_secret_access_key": "SECRET",
}


def metavar(name: str, flag: str, parse: Any) -> str:
    """A readable placeholder: the choices, the value's shape, or the flag's name."""
    names = getattr(parse, "choices", None)
    if names:
        return "{" + ",".join(names) + "}"
    shown = METAVARS.get(parse) or NAMED_METAVARS.get(name)
    return shown or flag.lstrip("-").upper().replace("-", "_")


def add_option_flags(
    target: Any,
    options: Options,
    repeatable: set[str],
    dest_prefix: str = "",
    only: Iterable[str] | None = None,
) -> None:
    """A flag per option on ``target`` (a parser or an argument group); with
    ``only``, just those options (a command shows the flags it reads)."""
    wanted = set(options if only is None else only)
    for name, (flag, parse, help_text) in options.items():
        if name not in wanted:
            continue
        action = "append" if name in repeatable else None
        target.add_argument(
            flag,
            dest=dest_prefix + name,
            action=action,
            help=help_text,
            metavar=metavar(name, flag, parse),
        )


def apply_options(
    cfg: Any,
    options: Options,
    raw: dict[str, Any],
    args: argparse.Namespace,
    *,
    dest_prefix: str = "",
    secret: set[str] | frozenset[str] = frozenset(),
) -> None:
    """Set ``cfg`` from the file's ``raw`` values with the flags on top, each
    through its parser; a bad value is a ``ConfigError`` naming the option both
    ways (never showing a ``secret`` one)."""
    for name in options:
        value = getattr(args, dest_prefix + name, None)
        if value is not None:
            raw[name] = value
    for name, value in raw.items():
        flag, parse = options[name][0], options[name][1]
        try:
            setattr(cfg, name, parse(value))
        except (ValueError, TypeError) as exc:
            shown = "(secrets not shown)" if name in secret else repr(value)
            raise ConfigError(f"invalid {flag} / {name} = {shown}: {exc}") from None


# The options each command reads (the file may hold them all: ``edge.toml`` is
# shared by serve, fill and scrub; a command ignores what it does not read).
STORE_OPTIONS = ("store", "capacity", "index", "slice_size", "eviction", "half_life")
ORIGIN_OPTIONS = (
    "origin",
    "s3_endpoint",
    "s3_region",
    "s3_addressing_style",
    "s3_access_key_id",
    "s3_secret_access_key",
    "origin_connect_timeout",
    "origin_read_timeout",
    "origin_retries",
    "origin_pool_size",
)
FILL_READS = (*STORE_OPTIONS, *ORIGIN_OPTIONS, "ca_file", "url_signing_keys", "log_level")
SCRUB_READS = ("store", "index")


def check_tls(tls_listen: list[Any], tls_cert: list[Any]) -> None:
    """TLS listeners need certificates, and certificates loading."""
    if tls_listen and not tls_cert:
        raise ConfigError(
            "--tls-listen / tls_listen needs a certificate: give --tls-cert / tls_cert"
        )
    if tls_cert and not tls_listen:
        raise ConfigError("--tls-cert / tls_cert is given but no --tls-listen / tls_listen")
    if tls_cert:
        from edge.http.tls import CertError, CertSet

        try:
            CertSet(tls_cert)
        except CertError as exc:
            raise ConfigError(f"invalid --tls-cert / tls_cert: {exc}") from None


def check_ca_file(ca_file: str | None) -> None:
    if ca_file is not None:
        from edge.http.tls import CertError, client_context

        try:
            client_context(ca_file)
        except CertError as exc:
            raise ConfigError(f"invalid --ca-file / ca_file: {exc}") from None


def apply_listening_options(
    cfg: Any,
    options: Options,
    raw: dict[str, Any],
    args: argparse.Namespace,
    *,
    secret: set[str] | frozenset[str] = frozenset(),
) -> None:
    """``apply_options`` for a service that listens (``serve``, ``steer``), then
    its listening rules: TLS listeners need loading certificates, TLS alone
    means HTTPS only unless ``listen`` is given too, and the CA file loads."""
    listen_given = "listen" in raw or getattr(args, "listen", None) is not None
    apply_options(cfg, options, raw, args, secret=secret)
    check_tls(cfg.tls_listen, cfg.tls_cert)
    if cfg.tls_listen and not listen_given:
        cfg.listen = None  # HTTPS only, unless --listen asks for plain HTTP too
    check_ca_file(cfg.ca_file)


def add_serve_flags(parser: argparse.ArgumentParser, only: Iterable[str] | None = None) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file")
    add_option_flags(parser, SERVE_OPTIONS, _REPEATABLE, only=only)


def load_serve_config(args: argparse.Namespace, *, need_capacity: bool = True) -> ServeConfig:
    raw: dict[str, Any] = {}
    if getattr(args, "config", None):
        try:
            with open(args.config, "rb") as f:
                raw = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"--config: cannot read {args.config}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"--config: {args.config} is not valid TOML: {exc}") from None
        raw = dict(raw.get("serve", raw)) if isinstance(raw.get("serve"), dict) else raw
        for section in ("fill", "steer"):
            raw.pop(section, None)
        unknown = sorted(set(raw) - set(SERVE_OPTIONS))
        if unknown:
            raise ConfigError(
                f"{args.config}: unknown option {unknown[0]!r} "
                f"(known: {', '.join(sorted(SERVE_OPTIONS))})"
            )
    cfg = ServeConfig()
    apply_listening_options(cfg, SERVE_OPTIONS, raw, args, secret=_SECRET)
    if not cfg.store:
        raise ConfigError("no store: give --store DIR (repeat per disk) or [[store]] in the file")
    if cfg.admin_token is not None and len(cfg.admin_token) < 16:
        raise ConfigError("--admin-token / admin_token must be at least 16 characters")
    if cfg.store_backlog < cfg.slice_size:
        raise ConfigError(
            f"--store-backlog / store_backlog must be at least one slice "
            f"({format_size(cfg.slice_size)}): a slice past it is never stored"
        )
    if need_capacity:
        cfg.root_capacities()
    if cfg.origin:
        from edge.origin import check_origin_url

        for url in cfg.origin:
            try:
                check_origin_url(url)
            except ValueError as exc:
                raise ConfigError(f"invalid --origin / origin = {url!r}: {exc}") from None
    return cfg
