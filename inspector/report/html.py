"""The inspection report as one self-contained HTML file (see :mod:`inspector.report.build`).

Images are inline (``data:image/jpeg;base64``), the CSS is inline, nothing is fetched: the file
opens the same offline, in a mail attachment or years later. Every text that came from a user
or a file (location, note, source, reviewer, title, model names) goes through ``html.escape``.
"""
from __future__ import annotations

import base64
from html import escape

from inspector.report.content import (
    IMAGE_WIDTH,
    NO_CRACK_FRAMES,
    NOTHING_MATCHED,
    TILE_LEGEND,
    FrameSection,
    ReportContent,
    TileRow,
    fmt_prob,
    tile_list,
)

_CSS = """
body{font-family:"DejaVu Sans",Arial,Helvetica,sans-serif;color:#1d2329;margin:24px auto;max-width:960px;
     padding:0 16px;font-size:14px;line-height:1.4}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:18px;margin:28px 0 8px;border-bottom:2px solid #c8ced4;padding-bottom:4px}
h3{font-size:16px;margin:0 0 8px}
.sub{color:#59636e;margin:0 0 16px}
table{border-collapse:collapse;margin:6px 0 12px}
th,td{border:1px solid #c8ced4;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#eef1f4;font-weight:600}
td.n{text-align:right;font-variant-numeric:tabular-nums}
table.kv th{width:150px}
.nothing{border:2px solid #d08a00;background:#fff6e0;padding:12px 16px;font-weight:600;margin:16px 0}
.flag{border:1px solid #c8ced4;border-radius:4px;padding:12px 14px;margin:18px 0;page-break-inside:avoid;
      break-inside:avoid}
.flag .cols{display:flex;flex-wrap:wrap;gap:16px}
.flag img{max-width:100%;height:auto;display:block;border:1px solid #888}
.missing{display:flex;align-items:center;justify-content:center;background:#eceff1;color:#8a1c1c;
         border:1px dashed #8a1c1c;font-weight:700;font-size:18px;max-width:100%}
.note{white-space:pre-wrap;overflow-wrap:anywhere}
td,th,h1,h3{overflow-wrap:anywhere}
.problem{color:#8a1c1c;font-weight:600}
table.grid td{width:86px;text-align:center;font-size:12px;font-variant-numeric:tabular-nums}
table.grid td.crack{background:#f8d3d3;border:2px solid #dc1e1e}
.legend{font-size:12px;color:#59636e}
footer{margin-top:32px;color:#59636e;font-size:12px}
@media print{body{margin:0;max-width:none}.flag{border:none;border-top:1px solid #c8ced4;border-radius:0}}
"""


def render_html(content: ReportContent) -> str:
    title = escape(content.title)
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{title}</title><style>{_CSS}</style></head><body>", f"<h1>{title}</h1>"]
    parts += _summary(content)
    parts += _sections(content)
    parts.append("<footer>Crack Inspector: frames flagged by the student model, reviewed by an inspector. "
                 "Heat-map: where the model sees a crack; red outline: tiles the inspector marked as crack."
                 "</footer></body></html>")
    return "\n".join(parts)


def _summary(c: ReportContent) -> list[str]:
    out = ["<h2>Summary</h2>"]
    if c.empty:
        out.append(f'<p class="nothing">{escape(NOTHING_MATCHED.format(filter=c.filter_text))}</p>')
    out.append(_key_values(c.facts()))
    if not c.empty:
        out.append("<h3>Review</h3>" + _table(*c.review_table()))
        out.append("<h3>By location</h3>" + _table(*c.location_table()))
    return out


def _sections(c: ReportContent) -> list[str]:
    if c.empty:
        return []
    out = [f"<h2>Frames reviewed as crack ({len(c.sections)})</h2>"]
    if not c.sections:
        out.append(f'<p class="nothing">{escape(NO_CRACK_FRAMES)}</p>')
    if c.images_missing:
        out.append(f'<p class="problem">{c.images_missing} of them are listed without their image '
                   f"(the image file is missing from the flag store).</p>")
    return out + [_section(s) for s in c.sections]


def _section(s: FrameSection) -> str:
    heading = f"Flag {s.flag_id}" + (f" — {s.location}" if s.location else "")
    problem = f'<p class="problem">{escape(s.image_problem)}</p>' if s.image_problem else ""
    return (f'<section class="flag" id="flag-{s.flag_id}"><h3>{escape(heading)}</h3>'
            f'<div class="cols"><div>{_picture(s)}{problem}</div><div>{_key_values(s.details())}</div></div>'
            f"{_tiles(s)}</section>")


def _key_values(rows) -> str:
    return '<table class="kv">' + "".join(
        f'<tr><th>{escape(k)}</th><td{_NOTE if k == "Note" else ""}>{escape(v)}</td></tr>' for k, v in rows) + "</table>"


_NOTE = ' class="note"'


def _picture(s: FrameSection) -> str:
    w, h = s.image_size
    if s.image_jpeg is None:
        shown_w = min(w, IMAGE_WIDTH)
        return (f'<div class="missing" style="width:{shown_w}px;height:{round(h * shown_w / w)}px">'
                f"image missing</div>")
    data = base64.b64encode(s.image_jpeg).decode("ascii")
    return (f'<img src="data:image/jpeg;base64,{data}" width="{w}" height="{h}" '
            f'alt="flag {s.flag_id}: frame with heat-map, crack tiles outlined in red">')


def _tiles(s: FrameSection) -> str:
    if not s.grid_fits:
        return "<h3>Tiles</h3>" + _table(*tile_list(s))
    rows = ("<tr>" + "".join(_cell(s.tiles[i]) if i is not None else "<td></td>" for i in row) + "</tr>"
            for row in s.grid)
    return f'<h3>Tiles</h3><table class="grid">{"".join(rows)}</table><p class="legend">{escape(TILE_LEGEND)}</p>'


def _cell(t: TileRow) -> str:
    cls = ' class="crack"' if t.label == "crack" else ""
    return f"<td{cls}>#{t.index + 1}<br>S {fmt_prob(t.student)}<br>T {fmt_prob(t.teacher)}</td>"


def _table(header, rows) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="n">{v}</td>' if isinstance(v, int) else f"<td>{escape(str(v))}</td>"
                                    for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"
