"""``/_steer/status``: the fleet as this steering replica sees it, for a person.

What it shows: every appliance with its state (up, down, draining, failing,
unknown), site, utilization of its configured capacity, the age of the
inventory steering holds for it, and the answers given by class (and by site).
``?format=json`` gives the document the page is made from; ``/_steer/fleet``
has every detail of each appliance. Pure: the poller's records, the counters
and the time are passed in.
"""

from __future__ import annotations

from typing import Any

from edge.http.page import esc, field, page, percent, table
from steering.decide import CLASSES
from steering.health import UP


def document(
    records: list[Any], answers: dict[tuple[str, str], int], cfg: Any, now: float
) -> dict[str, Any]:
    appliances = []
    for rec in records:
        h = rec.health
        util = h.utilization(rec.spec.capacity)
        appliances.append(
            {
                "id": rec.spec.id,
                "site": rec.spec.site,
                "url": rec.spec.url,
                "state": h.shown(),
                "candidate": h.why_not(rec.spec.capacity, cfg.max_utilization) == "",
                "utilization": None if util is None else round(util, 4),
                "inventory_age_seconds": (
                    None if rec.inventory_at is None else round(now - rec.inventory_at, 1)
                ),
                "inventory_keys": None if rec.filter is None else rec.filter.count,
                "last_error": h.last_error or None,
            }
        )
    by_class = dict.fromkeys(CLASSES, 0)
    by_site: dict[str, dict[str, int]] = {}
    for (klass, site), n in answers.items():
        by_class[klass] = by_class.get(klass, 0) + n
        by_site.setdefault(site, dict.fromkeys(CLASSES, 0))[klass] = n
    up = sum(1 for a in appliances if a["state"] == UP)
    return {
        "status": "ok" if up else "failing",
        "appliances": appliances,
        "answers": {"by_class": by_class, "by_site": by_site, "total": sum(by_class.values())},
    }


def render(doc: dict[str, Any]) -> bytes:
    def row(a: dict[str, Any]) -> list[str]:
        age = a["inventory_age_seconds"]
        return [
            field("id", a["id"]),
            field("site", a["site"]),
            field("state", a["state"], css=a["state"]),
            field("candidate", a["candidate"], "yes" if a["candidate"] else "no"),
            field("utilization", a["utilization"], percent(a["utilization"])),
            field("inventory_age_seconds", age, "-" if age is None else f"{age:.0f} s"),
            esc(a["last_error"] or ""),
        ]

    fleet = table(
        "appliances",
        ["appliance", "site", "state", "gets players", "utilization", "inventory age", "error"],
        (row(a) for a in doc["appliances"]),
    )
    answers = doc["answers"]
    classes = table(
        "answers",
        ["class", "answers", "share"],
        (
            [
                field("class", k),
                field(f"answers.by_class.{k}", n),
                esc(percent(n / answers["total"] if answers["total"] else None)),
            ]
            for k, n in answers["by_class"].items()
        ),
    )
    sites = table(
        "answers_by_site",
        ["site", *CLASSES],
        (
            [esc(site), *(esc(counts.get(k, 0)) for k in CLASSES)]
            for site, counts in sorted(answers["by_site"].items())
        ),
    )
    links = (
        '<p><a href="/_steer/status?format=json">json</a> · <a href="/_steer/fleet">fleet</a> · '
        '<a href="/_steer/health">health</a> · <a href="/_steer/metrics">metrics</a></p>'
    )
    body = (
        f"<h2>Appliances</h2>{fleet}<h2>Answers since start</h2>{classes}"
        f"<h2>By site</h2>{sites}{links}"
    )
    return page("edgefleet steering", doc["status"], body)
