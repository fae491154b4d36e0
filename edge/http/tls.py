"""TLS for the lean HTTP/1.1 server: certificates, SNI, reload, kernel TLS.

Rules it keeps (docs/tls.md):
- TLS 1.2 and 1.3 only, ALPN ``http/1.1``, AEAD suites with forward secrecy;
- with several certificates the client's SNI name picks the one whose DNS
  names match (``*.`` one label deep); the first is the default, also for an
  unknown name, an IP address or no SNI: never a handshake failure for that;
- ``reload`` builds a whole new set from the files; if any fails, the old set
  stays and the error names the file;
- session-ticket keys are the same in every worker of a box and change every
  ``TICKET_ROTATION`` s: derived from a secret drawn before the workers fork
  and the current period (``TicketKeys``); where they cannot be set, OpenSSL's
  own per-context keys stay (resumption then works within a worker only);
- every context asks OpenSSL for kernel TLS (``SSL_OP_ENABLE_KTLS``); whether a
  connection got it is the socket's answer, not a guess.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import hmac
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("edgefleet.tls")

HANDSHAKE_TIMEOUT = 10.0
# ssl.OP_ENABLE_KTLS from Python 3.12; the same OpenSSL 3 bit before that
OP_ENABLE_KTLS = getattr(ssl, "OP_ENABLE_KTLS", 1 << 3)
SOL_TLS = 282
TLS_TX = 1
CIPHERS_12 = "ECDHE+AESGCM:ECDHE+CHACHA20"
TICKET_ROTATION = 12 * 3600.0
_SET_TICKET_KEYS = 59  # SSL_CTRL_SET_TLSEXT_TICKET_KEYS: name 16, HMAC 32, AES 32 bytes


class TicketKeys:
    """Session-ticket keys shared by the workers of a box (see the rules)."""

    def __init__(self, secret: bytes | None = None) -> None:
        self.secret = secret or os.urandom(32)
        self.period = -1
        self._libssl = _libssl()

    def key(self, period: int) -> bytes:
        tag = b"edgefleet ticket key %d" % period
        return (
            hmac.new(self.secret, tag, hashlib.sha512).digest()
            + hashlib.sha256(self.secret + tag).digest()[:16]
        )

    def apply(self, contexts: list[ssl.SSLContext], now: float) -> bool:
        """Set this period's key on ``contexts``; False where OpenSSL's stay."""
        self.period = int(now // TICKET_ROTATION)
        if self._libssl is None:
            return False
        key = ctypes.create_string_buffer(self.key(self.period), 80)
        ok = True
        for ctx in contexts:
            ptr = _ssl_ctx(ctx, self._libssl)
            if ptr is None or self._libssl.SSL_CTX_ctrl(ptr, _SET_TICKET_KEYS, 80, key) != 1:
                ok = False
        return ok

    def due(self, now: float) -> bool:
        return int(now // TICKET_ROTATION) != self.period


def _libssl() -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("ssl") or "libssl.so.3")
        lib.SSL_CTX_get_options.restype = ctypes.c_uint64
        lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_ctrl.restype = ctypes.c_long
        lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    except (OSError, AttributeError):
        return None
    return lib


def _ssl_ctx(ctx: ssl.SSLContext, lib: ctypes.CDLL) -> int | None:
    """The ``SSL_CTX *`` behind ``ctx`` (CPython keeps it right after the
    object header), or None unless OpenSSL confirms it by its options."""
    ptr = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not ptr or lib.SSL_CTX_get_options(ptr) != int(ctx.options):
        return None
    return ptr


class CertError(ValueError):
    """A certificate or key that does not load; the message names the file."""


def parse_cert_option(value: str) -> tuple[str, str | None]:
    """``CERT.pem[:KEY.pem]`` as (cert, key or None: the key is in CERT.pem)."""
    cert, sep, key = str(value).partition(":")
    if not cert:
        raise ValueError(f"{value!r} is not CERT.pem[:KEY.pem]")
    return cert, (key or None) if sep else None


@dataclass(frozen=True)
class Cert:
    cert_file: str
    key_file: str | None
    names: tuple[str, ...]  # DNS names, lower case
    not_after: float  # Unix time
    context: ssl.SSLContext

    @property
    def name(self) -> str:
        return self.names[0] if self.names else os.path.basename(self.cert_file)


def server_context(cert_file: str, key_file: str | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(CIPHERS_12)
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | OP_ENABLE_KTLS
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        why = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
        shown = cert_file if key_file is None else f"{cert_file}:{key_file}"
        raise CertError(f"cannot load {shown}: {why}") from None
    return ctx


def cert_names(cert_file: str) -> tuple[tuple[str, ...], float]:
    """The DNS names (subjectAltName, else the common name) and notAfter of
    the first certificate in ``cert_file``."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    with open(cert_file, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = [n.lower() for n in san.value.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        names = [
            str(a.value).lower() for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        ]
    return tuple(names), cert.not_valid_after_utc.timestamp()


def load_cert(cert_file: str, key_file: str | None) -> Cert:
    ctx = server_context(cert_file, key_file)
    try:
        names, not_after = cert_names(cert_file)
    except (OSError, ValueError) as exc:
        raise CertError(f"cannot read the names in {cert_file}: {exc}") from None
    return Cert(cert_file, key_file, names, not_after, ctx)


def matches(pattern: str, name: str) -> bool:
    if pattern == name:
        return True
    if pattern.startswith("*."):
        head, dot, rest = name.partition(".")
        return bool(dot) and bool(head) and rest == pattern[2:]
    return False


class CertSet:
    """The certificates of a listener set: the default first, chosen by SNI."""

    def __init__(self, specs: list[tuple[str, str | None]]) -> None:
        if not specs:
            raise CertError("a TLS listener needs a certificate (--tls-cert)")
        self.specs = specs
        self.tickets = TicketKeys()
        self.certs = self._load()
        self.on_reload: list[Callable[[CertSet], None]] = []  # called after a reload that took

    def _load(self) -> list[Cert]:
        certs = [load_cert(c, k) for c, k in self.specs]
        default = certs[0].context
        by_name = [(n, c.context) for c in certs for n in c.names]

        def pick(sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
            if name:
                name = name.lower().rstrip(".")
                sslobj.sni_name = name  # type: ignore[attr-defined]  # for the access log
                for pattern, ctx in by_name:
                    if matches(pattern, name):
                        if ctx is not default:
                            sslobj.context = ctx
                        return
            return None  # the default

        default.sni_callback = pick
        if not self.tickets.apply([c.context for c in certs], time.time()):
            log.warning("cannot set shared session-ticket keys: each worker keeps its own")
        return certs

    def rotate_tickets(self, now: float) -> None:
        """Move to the next period's ticket key when it is due (every worker alike)."""
        if self.tickets.due(now):
            self.tickets.apply([c.context for c in self.certs], now)

    @property
    def context(self) -> ssl.SSLContext:
        """The context new connections start in (its SNI callback switches them)."""
        return self.certs[0].context

    def reload(self) -> bool:
        """Reread every file; keep the old set if any fails. True if it took."""
        try:
            certs = self._load()
        except CertError as exc:
            log.error("TLS reload failed, keeping the certificates in use: %s", exc)
            return False
        self.certs = certs
        log.info("TLS certificates reloaded: %s", ", ".join(c.name for c in certs))
        for fn in self.on_reload:
            fn(self)
        return True

    def summary(self, mode: str) -> dict[str, object]:
        return {
            "mode": mode,
            "certs": [{"name": c.name, "not_after": int(c.not_after)} for c in self.certs],
        }


def client_context(ca_file: str | None) -> ssl.SSLContext:
    """Verifies servers against ``ca_file`` (PEM), or the system store when None."""
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        why = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
        raise CertError(f"cannot load the CA file {ca_file}: {why}") from None


def ktls_sending(sock: socket.socket) -> bool:
    """Does the kernel encrypt what this (handshaken) socket sends?"""
    try:
        sock.getsockopt(SOL_TLS, TLS_TX, 64)
    except OSError:
        return False
    return True


def ktls_available() -> bool:
    """Is the kernel's ``tls`` upper layer loaded (``modprobe tls``)?"""
    try:
        with open("/proc/sys/net/ipv4/tcp_available_ulp") as f:
            return "tls" in f.read().split()
    except OSError:
        return False


TlsIO = tuple[Callable[..., bytes], Callable[..., int], Callable[[], int]]


def tls_io(sock: socket.socket) -> TlsIO:
    """``read``, ``write`` and ``pending`` of a handshaken ``SSLSocket``:
    those of its OpenSSL object when it has one (what ``recv``, ``send`` and
    ``pending`` call after checks in Python that cost a small hit a few
    microseconds), else its own. The OpenSSL object's ``read`` raises
    ``SSLEOFError`` where ``recv`` returns ``b""`` for an end without
    ``close_notify``: the caller takes one for the other."""
    obj = getattr(sock, "_sslobj", None)
    if obj is None or not all(hasattr(obj, m) for m in ("read", "write", "pending")):
        return sock.recv, sock.send, sock.pending  # type: ignore[attr-defined]
    return obj.read, obj.write, obj.pending
