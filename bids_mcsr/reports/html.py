"""HTML assembly of the subject and group reports: self-contained pages, escaped text.

Pages reference their images by relative paths and load nothing else, so they open from
disk without a server or network. A small inline script marks ``<body>`` with
``data-images="ok"`` once every image has loaded (``"broken N"`` otherwise), which the
tests read back from a headless browser.
"""

from __future__ import annotations

import math
from html import escape
from typing import Sequence

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1250px;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}th{background:#f2f2f2}
figure{margin:.8em 0}img{max-width:100%}figcaption{font-size:.85em;color:#555}
.flag{color:#b00020;font-weight:600}.ok{color:#1b5e20}
svg text{font-size:11px}
"""

MARK_IMAGES = """
window.addEventListener("load", function () {
  var imgs = document.images, broken = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (!imgs[i].complete || imgs[i].naturalWidth === 0) { broken++; }
  }
  document.body.setAttribute("data-images", broken ? "broken " + broken : "ok");
});
"""


def fmt(value: object, digits: int = 4) -> str:
    """A table cell: floats to ``digits`` significant digits, None/NaN as ``n/a``."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if isinstance(value, (list, tuple)):
        return " x ".join(fmt(v, digits) for v in value)
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """An HTML table of escaped, formatted cells."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(fmt(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure(src: str, caption: str) -> str:
    """An ``<img>`` (relative ``src``) with its caption."""
    return (f'<figure><img src="{escape(src)}" alt="{escape(caption)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def section(title: str, content: str, anchor: str | None = None) -> str:
    """A titled section; ``content`` is already HTML."""
    ident = f' id="{escape(anchor)}"' if anchor else ""
    return f"<section{ident}><h2>{escape(title)}</h2>{content}</section>"


def paragraph(text: str, css: str | None = None) -> str:
    """An escaped paragraph, optionally with a CSS class."""
    klass = f' class="{escape(css)}"' if css else ""
    return f"<p{klass}>{escape(text)}</p>"


def page(title: str, body: str) -> str:
    """A complete HTML document: inline style, the image-load marker, ``body`` as given."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{STYLE}</style>"
            f"<script>{MARK_IMAGES}</script></head>"
            f"<body><h1>{escape(title)}</h1>{body}</body></html>\n")


def strip_plot_svg(metric: str, points: Sequence[tuple[str, float, bool]],
                   width: int = 900, height: int = 130) -> str:
    """An inline SVG strip plot of one metric: a dot per unit, hover shows its name.

    Parameters
    ----------
    metric : str
        Axis label.
    points : sequence of (label, value, flagged)
        One entry per subject/session/contrast; non-finite values are left out.
    width, height : int
        Size in pixels.

    Returns
    -------
    str
        ``<svg>`` markup; flagged points are red and labelled in place.
    """
    finite = [(lab, float(v), flag) for lab, v, flag in points
              if v is not None and math.isfinite(float(v))]
    pad, y0 = 60, height / 2
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="{escape(metric)}">',
             f'<line x1="{pad}" y1="{y0}" x2="{width - pad}" y2="{y0}" stroke="#999"/>']
    if finite:
        lo = min(v for _, v, _ in finite)
        hi = max(v for _, v, _ in finite)
        span = hi - lo or 1.0

        def xpos(v: float) -> float:
            return pad + (v - lo) / span * (width - 2 * pad) if hi > lo else width / 2

        for k, (lab, v, flag) in enumerate(finite):
            x, y = xpos(v), y0 + ((k % 5) - 2) * 7
            colour = "#c62828" if flag else "#1565c0"
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{colour}" '
                         f'fill-opacity="0.75"><title>{escape(lab)}: {fmt(v)}</title></circle>')
            if flag:
                parts.append(f'<text x="{x:.1f}" y="{y - 9:.1f}" text-anchor="middle" '
                             f'fill="#c62828">{escape(lab)}</text>')
        parts.append(f'<text x="{pad}" y="{height - 8}" text-anchor="middle">{fmt(lo)}</text>')
        parts.append(f'<text x="{width - pad}" y="{height - 8}" '
                     f'text-anchor="middle">{fmt(hi)}</text>')
    parts.append(f'<text x="4" y="14">{escape(metric)}</text></svg>')
    return "".join(parts)
