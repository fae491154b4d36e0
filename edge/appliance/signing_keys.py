"""Signing keys reloaded on SIGHUP, without a restart.

Rules it keeps: the configuration is read again (the same file and flags the
appliance started with) and only the URL signing keys are taken from it: the
verifier for content requests and the key that signs requests to parent
appliances both change at once, between two requests (the event loop runs
this); a file that no longer loads changes nothing and says why at ERROR.
Other options still need a restart. Rotation is described in docs/operators.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from edge.config import ConfigError, ServeConfig
from edge.core.signing import Verifier

if TYPE_CHECKING:
    from edge.appliance.appliance import Appliance

log = logging.getLogger("edgefleet.serve")


def reload_signing_keys(app: Appliance, load: Callable[[], ServeConfig]) -> bool:
    """Take the signing keys from a fresh read of the configuration."""
    try:
        cfg = load()
    except ConfigError as exc:
        log.error("SIGHUP: signing keys not reloaded, the running ones stay: %s", exc)
        return False
    keys = cfg.url_signing_keys
    app.cfg.url_signing_keys = keys
    app.verifier = Verifier(keys) if keys else None
    for origin in app.origins:
        if hasattr(origin, "signing_key"):  # HTTP origins: parents and peers
            origin.signing_key = cfg.signing_key()
    shown = ", ".join(keys) if keys else "none: content URLs are not checked"
    log.info("SIGHUP: signing keys reloaded (%s)", shown)
    return True
