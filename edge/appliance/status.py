"""``/_edge/status``: what an operator looks at first, as a page and as JSON.

What it shows: the box's id and site, its state, request and byte hit ratio
since start, egress over the last minutes (a chart), store use per disk, each
origin's state (its circuit breaker), the last fill (when, how much, failures)
and the recent warnings and errors. ``?format=json`` gives the same document
the page is made from. Rules it keeps:
- ratios and egress are the whole appliance's (summed over workers through the
  metrics files); origin states and recent errors are those of the worker that
  answers (each worker has its own breakers and log), completed by the health
  document's ``origins`` (every worker's view, and the start-up checks);
- egress is sampled every ``EGRESS_EVERY`` seconds for ``EGRESS_POINTS``
  samples, the answer's own moment added as the last point;
- nothing secret is shown: origin URLs lose any user:password.
"""

from __future__ import annotations

import collections
import logging
import re
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from edge.appliance import metrics as m
from edge.core.breaker import CLOSED
from edge.http.page import chart, esc, field, human_bytes, page, percent, table

if TYPE_CHECKING:
    from edge.appliance.appliance import Appliance

EGRESS_EVERY = 10.0
EGRESS_POINTS = 60  # ten minutes
RECENT_ERRORS = 20
_SERVED = ("hit", "miss", "partial")
_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/@\s]+@")


class RecentErrors(logging.Handler):
    """The last warnings and errors of the ``edgefleet`` loggers, in memory."""

    def __init__(self, size: int = RECENT_ERRORS) -> None:
        super().__init__(logging.WARNING)
        self.records: collections.deque[dict[str, Any]] = collections.deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a bad format must not break logging
            message = str(record.msg)
        message = _USERINFO.sub(r"\1", message)[:500]
        self.records.append(
            {"time": record.created, "level": record.levelname.lower(), "message": message}
        )


def public_url(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def hit_ratios(totals: dict[str, dict[tuple[str, ...], float]]) -> dict[str, float | None]:
    """Requests and bytes answered from the store, of those answered with content."""
    asked = dict.fromkeys(_SERVED, 0.0)
    for labels, n in totals.get("edgefleet_requests_total", {}).items():
        cache = labels[0]  # labels sorted by name: cache, status
        if cache in asked:
            asked[cache] += n
    sent = {labels[0]: n for labels, n in totals.get("edgefleet_sent_bytes_total", {}).items()}
    requests = sum(asked.values())
    body = sum(sent.get(c, 0.0) for c in _SERVED)
    return {
        "requests": asked["hit"] / requests if requests else None,
        "bytes": sent.get("hit", 0.0) / body if body else None,
        "requests_served": requests,
        "bytes_sent": body,
    }


class Status:
    def __init__(self, app: Appliance) -> None:
        self.app = app
        self.errors = RecentErrors()
        logging.getLogger("edgefleet").addHandler(self.errors)
        self.egress: collections.deque[tuple[float, float]] = collections.deque(
            maxlen=EGRESS_POINTS
        )
        self._timer = app.loop.call_later(EGRESS_EVERY, self._sample)

    def close(self) -> None:
        self._timer.cancel()
        logging.getLogger("edgefleet").removeHandler(self.errors)

    def _sample(self) -> None:
        def done(fut: Any) -> None:
            if not fut.cancelled() and fut.exception() is None:
                rate = fut.result().get("edgefleet_egress_bytes_per_second", 0.0)
                self.egress.append((round(time.time(), 1), round(rate)))

        self.app.run(m.live_totals).add_done_callback(done)
        self._timer = self.app.loop.call_later(EGRESS_EVERY, self._sample)

    def origins(self, shared: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """This worker's breakers and errors, with what ``shared`` (the health
        document's ``origins``: every worker's view and the start-up checks)
        says when this worker has seen nothing wrong."""
        seen = {o["url"]: o for o in shared or []}
        out = []
        for origin in self.app.origins:
            breaker = self.app.chain.breakers[id(origin)]
            url = public_url(origin.url)
            state = breaker.state
            other = seen.get(url, {})
            if state == CLOSED:
                state = "failing" if breaker.count or other.get("state") == "failing" else "ok"
            last = next((e for e in reversed(self.errors.records) if url in e["message"]), None)
            if last is None and other.get("last_error"):
                last = {"time": other["last_error_at"], "level": "warning",
                        "message": other["last_error"]}  # fmt: skip
            out.append(
                {
                    "url": url,
                    "state": state,
                    "failures_in_a_row": breaker.count,
                    "last_error": last,
                }
            )
        return out

    def document(
        self, health: dict[str, Any], totals: dict[str, dict[tuple[str, ...], float]]
    ) -> dict[str, Any]:
        """The status document from the health document and the metrics' ``totals``
        (runs in a thread: it reads the index)."""
        rate = sum(totals.get("edgefleet_egress_bytes_per_second", {}).values())
        fill = m.fill_figures(self.app.store.get_state("fill"))
        ran = fill["last_update_timestamp_seconds"] > 0
        return {
            "id": health["id"],
            "site": health["site"],
            "status": health["status"],
            "version": health["version"],
            "uptime_seconds": health["uptime_seconds"],
            "workers": health["workers"],
            "connections": health["connections"],
            "hit_ratio": hit_ratios(totals),
            "egress": {
                "bytes_per_second": round(rate),
                "every_seconds": EGRESS_EVERY,
                "history": [list(p) for p in self.egress] + [[round(time.time(), 1), round(rate)]],
            },
            "store": health["store"],
            "origins": self.origins(health.get("origins")),
            "fill": {
                "ran": ran,
                "running": bool(fill["running"]),
                "at": fill["last_update_timestamp_seconds"] if ran else None,
                "succeeded": bool(fill["last_run_success"]) if ran else None,
                "objects_added": int(fill["objects_added"]),
                "bytes_downloaded": int(fill["bytes_downloaded"]),
                "errors": int(fill["errors"]),
                "checksum_mismatches": int(fill["checksum_mismatches"]),
            },
            "recent_errors": list(reversed(self.errors.records)),
        }


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def render(doc: dict[str, Any]) -> bytes:
    minutes = round(len(doc["egress"]["history"]) * doc["egress"]["every_seconds"] / 60)
    egress = f"<h2>Egress, last {max(1, minutes)} min</h2>" + chart(
        "egress", [(p[0], p[1]) for p in doc["egress"]["history"]]
    )
    links = (
        '<p><a href="/_edge/status?format=json">json</a> · <a href="/_edge/health">health</a> · '
        '<a href="/_edge/metrics">metrics</a> · <a href="/_edge/inventory">inventory</a></p>'
    )
    body = (
        _summary(doc) + egress + _disks(doc["store"]) + _origins(doc["origins"])
        + _fill(doc["fill"]) + _errors(doc["recent_errors"]) + links
    )  # fmt: skip
    return page(f"edgefleet appliance {doc['id']}", doc["status"], body)


def _summary(doc: dict[str, Any]) -> str:
    ratio = doc["hit_ratio"]
    egress = human_bytes(doc["egress"]["bytes_per_second"]) + "/s"
    return (
        f"<dl><dt>id</dt><dd>{field('id', doc['id'])}</dd>"
        f"<dt>site</dt><dd>{field('site', doc['site'] or '-')}</dd>"
        f"<dt>version</dt><dd>{field('version', doc['version'])}</dd>"
        f"<dt>up</dt><dd>{field('uptime_seconds', int(doc['uptime_seconds']))} s, "
        f"{field('workers', doc['workers'])} worker(s), "
        f"{field('connections', doc['connections'])} connections</dd>"
        f"<dt>request hit ratio</dt><dd>{field('hit_ratio.requests', percent(ratio['requests']))}"
        f" of {int(ratio['requests_served'])} requests</dd>"
        f"<dt>byte hit ratio</dt><dd>{field('hit_ratio.bytes', percent(ratio['bytes']))}"
        f" of {human_bytes(ratio['bytes_sent'])}</dd>"
        f"<dt>egress now</dt><dd>{field('egress.bytes_per_second', egress)}</dd></dl>"
    )


def _disks(store: dict[str, Any]) -> str:
    def row(r: dict[str, Any]) -> list[str]:
        used, cap = r["used_bytes"], r["capacity_bytes"]
        return [
            field("path", r["path"]),
            field("state", r["state"], css=r["state"]),
            field("used_bytes", used, human_bytes(used)),
            field("capacity_bytes", cap, human_bytes(cap)),
            esc(percent(used / cap if cap else None)),
            field("objects", r["objects"]),
        ]

    return (
        f"<h2>Store</h2><p>{human_bytes(store['used_bytes'])} of "
        f"{human_bytes(store['capacity_bytes'])} in {store['objects']} objects</p>"
        + table(
            "store",
            ["root", "state", "used", "capacity", "use", "objects"],
            (row(r) for r in store["roots"]),
        )
    )


def _origins(origins: list[dict[str, Any]]) -> str:
    return "<h2>Origins</h2>" + table(
        "origins",
        ["origin", "state", "failures in a row", "last error"],
        (
            [
                field("url", o["url"]),
                field("state", o["state"], css=o["state"]),
                field("failures_in_a_row", o["failures_in_a_row"]),
                esc(o["last_error"]["message"] if o["last_error"] else "-"),
            ]
            for o in origins
        ),
    )


def _fill(f: dict[str, Any]) -> str:
    if not f["ran"]:
        shown = field("fill.outcome", "no fill has run", css="muted")
        return f'<h2>Last fill</h2><p data-section="fill">{shown}</p>'
    outcome = "running" if f["running"] else "succeeded" if f["succeeded"] else "failed"
    got = human_bytes(f["bytes_downloaded"])
    return (
        '<h2>Last fill</h2><p data-section="fill">'
        f"{field('fill.outcome', outcome, css='failed' if outcome == 'failed' else 'ok')}"
        f", last news {field('fill.at', _when(f['at']))}: "
        f"{field('fill.objects_added', f['objects_added'])} objects added, "
        f"{field('fill.bytes_downloaded', f['bytes_downloaded'], got)} downloaded, "
        f"{field('fill.errors', f['errors'])} errors, "
        f"{field('fill.checksum_mismatches', f['checksum_mismatches'])} checksum mismatches</p>"
    )


def _errors(records: list[dict[str, Any]]) -> str:
    head = "<h2>Recent warnings and errors</h2>"
    if not records:
        return head + '<p class="muted" data-table="recent_errors">none</p>'
    return head + table(
        "recent_errors",
        ["time", "level", "message"],
        (
            [esc(_when(e["time"])), field("level", e["level"]), field("message", e["message"])]
            for e in records
        ),
    )
