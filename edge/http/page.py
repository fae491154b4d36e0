"""The operators' status pages (``/_edge/status``, ``/_steer/status``): plain HTML.

Rules it keeps: a page is whole in one response (inline style and an inline
SVG chart; no script, font or image from anywhere), so it works on a box
without Internet access and in any browser or ``curl``; every value shown is
escaped; each figure a test or a script may want carries a ``data-field``
attribute named like the field of the JSON the page is made from
(``?format=json`` on the same URL).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

from edge.core.sizes import human_size

STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em 2em;color:#222}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse}
td,th{padding:.25em .9em;text-align:left;border-bottom:1px solid #ddd}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok,.up,.closed{color:#070}.draining,.half-open,.failing,.unknown{color:#a60}
.down,.open,.failed{color:#b00}.muted{color:#777}svg{background:#f7f7f7}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dd{margin:0}"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def field(name: str, value: object, shown: str | None = None, css: str = "") -> str:
    """A value with its JSON field name, for people and for tests alike; when
    it is shown another way (``1.5 MiB``), the value itself is in ``data-value``."""
    extra = f' class="{esc(css)}"' if css else ""
    if shown is not None:
        extra += f' data-value="{esc(value)}"'
    return f'<span data-field="{esc(name)}"{extra}>{esc(value if shown is None else shown)}</span>'


def human_bytes(n: float | None) -> str:
    """Binary units, one style everywhere (``human_size``): ``512 B``, ``1.5 MiB``."""
    return "-" if n is None else human_size(n)


def percent(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f}%"


def table(name: str, headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Cells are HTML already (``field`` or ``esc``)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table data-table="{esc(name)}"><tr>{head}</tr>{body}</table>'


def chart(name: str, points: Sequence[tuple[float, float]], unit: str = "B/s") -> str:
    """A line chart of (time, value) points as inline SVG; its points are in
    ``data-points`` so what it draws can be read back."""
    width, height, pad = 600, 120, 4
    if not points:
        return f'<svg data-chart="{esc(name)}" data-points="0" width="{width}" height="{height}"/>'
    t0, t1 = points[0][0], points[-1][0]
    top = max(v for _, v in points) or 1.0
    span = (t1 - t0) or 1.0
    coords = " ".join(
        f"{pad + (t - t0) / span * (width - 2 * pad):.1f},"
        f"{height - pad - v / top * (height - 2 * pad):.1f}"
        for t, v in points
    )
    label = f"peak {human_bytes(top)}/s" if unit == "B/s" else f"peak {top:g} {unit}"
    return (
        f'<svg data-chart="{esc(name)}" data-points="{len(points)}" width="{width}" '
        f'height="{height}" role="img" aria-label="{esc(name)}: {esc(label)}">'
        f'<polyline fill="none" stroke="#2a6" stroke-width="2" points="{coords}"/>'
        f'<text x="8" y="16" font-size="12" fill="#555">{esc(label)}</text></svg>'
    )


def page(title: str, status: str, body: str, refresh: int = 10) -> bytes:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<title>{esc(title)}</title><meta http-equiv="refresh" content="{refresh}">'
        f"<style>{STYLE}</style></head><body><h1>{esc(title)} "
        f"{field('status', status, css=status)}</h1>{body}</body></html>\n"
    ).encode()
