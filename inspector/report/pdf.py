"""The inspection report as a PDF (see :mod:`inspector.report.build`), with fpdf2 (pure Python).

A4 portrait. Text is set in DejaVu Sans (shipped in ``resources/fonts``, embedded as a subset),
so notes like "Brücke Süd – Pfeiler 3, Riss ≥ 0.3 mm" print as typed; the frames are the
report's JPEGs, embedded as they are (no re-encoding). A frame's section is kept on one page
when it fits on one: its height is measured before it is drawn.
"""
from __future__ import annotations

import io

from fpdf import FPDF
from fpdf.enums import XPos, YPos

from inspector.paths import resource
from inspector.report.content import (
    NO_CRACK_FRAMES,
    NOTHING_MATCHED,
    TILE_LEGEND,
    FrameSection,
    ReportContent,
    fmt_prob,
    tile_list,
)

FONT = "DejaVu"
FONT_FILES = {"": "fonts/DejaVuSans.ttf", "B": "fonts/DejaVuSans-Bold.ttf"}
MARGIN = 15.0                     # mm
IMAGE_W = 92.0                    # mm: a frame's picture (two frames fit a page); the facts beside it
GAP = 3.0
KEY_W = 21.0                      # mm: the label column of a frame's facts
SUMMARY_KEY_W = 34.0              # mm: the label column of the summary's facts
CELL_H = 8.5                      # mm: a tile's cell in the tile grid
LINE = 4.2                        # mm per line of 8 pt text
INK = (29, 35, 41)
MUTED = (89, 99, 110)
RULE = (200, 206, 212)
HEAD_FILL = (238, 241, 244)
CRACK_FILL = (248, 211, 211)
CRACK_LINE = (220, 30, 30)
WARN_FILL = (255, 246, 224)
WARN_LINE = (208, 138, 0)


class _ReportPDF(FPDF):
    def __init__(self, content: ReportContent) -> None:
        super().__init__(orientation="P", unit="mm", format="A4")
        self.content = content
        for style, name in FONT_FILES.items():
            self.add_font(FONT, style, str(resource(name)))
        self.set_margins(MARGIN, MARGIN, MARGIN)
        self.set_auto_page_break(True, margin=MARGIN + 3)
        self.set_title(content.title)
        self.set_creator("Crack Inspector")
        self.set_text_color(*INK)
        self.set_draw_color(*RULE)

    def footer(self) -> None:
        self.set_y(-MARGIN)
        self.set_font(FONT, "", 7)
        self.set_text_color(*MUTED)
        self.cell(0, 4, f"{self.content.title} · generated {self.content.generated_utc}", align="L")
        self.set_x(self.l_margin)
        self.cell(0, 4, f"page {self.page_no()} of {{nb}}", align="R")
        self.set_text_color(*INK)


def render_pdf(content: ReportContent) -> bytes:
    pdf = _ReportPDF(content)
    pdf.add_page()
    pdf.set_font(FONT, "B", 18)
    pdf.multi_cell(0, 8, content.title, align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(2)
    _summary(pdf, content)
    if not content.empty:
        if content.sections:
            pdf.add_page()  # the summary is page 1; the frames follow, two to a page
        _heading(pdf, f"Frames reviewed as crack ({len(content.sections)})")
        if not content.sections:
            _notice(pdf, NO_CRACK_FRAMES)
        if content.images_missing:
            _text(pdf, f"{content.images_missing} of them are listed without their image "
                       f"(the image file is missing from the flag store).", colour=CRACK_LINE)
        for section in content.sections:
            _section(pdf, section)
    return bytes(pdf.output())


# --------------------------------------------------------------------------- summary


def _summary(pdf: FPDF, c: ReportContent) -> None:
    _heading(pdf, "Summary")
    if c.empty:
        _notice(pdf, NOTHING_MATCHED.format(filter=c.filter_text))
    _key_values(pdf, c.facts(), pdf.epw, key_w=SUMMARY_KEY_W)
    if c.empty:
        return
    _subheading(pdf, "Review")
    _table(pdf, *c.review_table())
    _subheading(pdf, "By location")
    _table(pdf, *c.location_table(), first_col=2.2)


def _heading(pdf: FPDF, text: str) -> None:
    if pdf.will_page_break(20):
        pdf.add_page()
    pdf.ln(3)
    pdf.set_font(FONT, "B", 13)
    pdf.cell(0, 7, text, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_draw_color(*RULE)
    pdf.set_line_width(0.5)
    pdf.line(pdf.l_margin, pdf.y, pdf.l_margin + pdf.epw, pdf.y)
    pdf.set_line_width(0.2)
    pdf.ln(2.5)
    pdf.after_heading = pdf.y


def _subheading(pdf: FPDF, text: str) -> None:
    pdf.ln(1.5)
    pdf.set_font(FONT, "B", 10)
    pdf.cell(0, 6, text, new_x=XPos.LMARGIN, new_y=YPos.NEXT)


def _notice(pdf: FPDF, text: str) -> None:
    pdf.set_font(FONT, "B", 10)
    pdf.set_fill_color(*WARN_FILL)
    pdf.set_draw_color(*WARN_LINE)
    pdf.set_line_width(0.5)
    pdf.multi_cell(0, 6, text, border=1, fill=True, padding=3, align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_line_width(0.2)
    pdf.set_draw_color(*RULE)
    pdf.ln(3)


def _text(pdf: FPDF, text: str, *, size: float = 8, colour=INK) -> None:
    pdf.set_font(FONT, "", size)
    pdf.set_text_color(*colour)
    pdf.multi_cell(0, LINE, text, align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_text_color(*INK)


def _table(pdf: FPDF, header, rows, *, first_col: float = 1.0) -> None:
    pdf.set_font(FONT, "", 8.5)
    widths = (first_col,) + (1.0,) * (len(header) - 1)
    numeric = [bool(rows) and all(isinstance(r[col], int) for r in rows) for col in range(len(header))]
    with pdf.table(col_widths=widths, line_height=5, padding=(1, 1.5), text_align="LEFT",
                   headings_style=_bold(), cell_fill_color=HEAD_FILL, cell_fill_mode="ROWS") as table:
        for row in [header, *rows]:
            cells = table.row()
            for col, value in enumerate(row):
                cells.cell(_clip(str(value)), align="RIGHT" if numeric[col] else "LEFT")
    pdf.ln(2)


def _clip(text: str, limit: int = 300) -> str:
    """A table cell's text, cut where a row could outgrow a page (fpdf2 cannot split a row)."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def _bold():
    from fpdf.fonts import FontFace

    return FontFace(emphasis="BOLD", fill_color=HEAD_FILL)


# --------------------------------------------------------------------------- key/value blocks


def _key_values(pdf: FPDF, rows, width: float, *, key_w: float = KEY_W, size: float = 8.5) -> None:
    """Labels in bold on the left, values wrapped on the right, starting at the current x/y."""
    x = pdf.x
    for key, value in rows:
        y = pdf.y
        pdf.set_xy(x, y)
        pdf.set_font(FONT, "B", size)
        pdf.multi_cell(key_w, LINE, key, align="L", new_x=XPos.RIGHT, new_y=YPos.TOP)
        key_bottom = y + _lines_height(pdf, key, key_w)
        pdf.set_font(FONT, "", size)
        pdf.multi_cell(width - key_w, LINE, value, align="L", new_x=XPos.LEFT, new_y=YPos.NEXT)
        pdf.set_xy(x, max(pdf.y, key_bottom) + 0.8)
    pdf.set_x(pdf.l_margin)


def _key_values_height(pdf: FPDF, rows, width: float, *, key_w: float = KEY_W, size: float = 8.5) -> float:
    total = 0.0
    for key, value in rows:
        pdf.set_font(FONT, "B", size)
        key_h = _lines_height(pdf, key, key_w)
        pdf.set_font(FONT, "", size)
        total += max(key_h, _lines_height(pdf, value, width - key_w)) + 0.8
    return total


def _lines_height(pdf: FPDF, text: str, width: float) -> float:
    return pdf.multi_cell(width, LINE, text, align="L", dry_run=True, output="HEIGHT")


# --------------------------------------------------------------------------- one frame


def _section(pdf: FPDF, s: FrameSection) -> None:
    facts = [(k, v) for k, v in s.details() if k != "Note"]
    note = s.note or "—"
    facts_w = pdf.epw - IMAGE_W - GAP
    image_h = IMAGE_W * s.image_size[1] / s.image_size[0]
    pdf.set_font(FONT, "", 8.5)
    note_h = _lines_height(pdf, note, pdf.epw - KEY_W)
    heading = f"Flag {s.flag_id}" + (f" — {_clip(s.location, 120)}" if s.location else "")
    pdf.set_font(FONT, "B", 11)
    heading_h = pdf.multi_cell(0, 6, heading, dry_run=True, output="HEIGHT")
    height = (4 + heading_h + 1 + max(image_h + (5 if s.image_problem else 0), _key_values_height(pdf, facts, facts_w))
              + GAP + note_h + 0.8 + _tiles_height(s))
    if pdf.will_page_break(height) and pdf.y > pdf.t_margin + 30:
        pdf.add_page()
    if pdf.y > getattr(pdf, "after_heading", 0) + 0.1:   # a rule between frames, not under the heading
        pdf.ln(2)
        pdf.set_draw_color(*RULE)
        pdf.line(pdf.l_margin, pdf.y, pdf.l_margin + pdf.epw, pdf.y)
        pdf.ln(2)
    pdf.set_font(FONT, "B", 11)
    pdf.multi_cell(0, 6, heading, align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    top = pdf.y + 1
    _picture(pdf, s, top, image_h)
    pdf.set_xy(pdf.l_margin + IMAGE_W + GAP, top)
    _key_values(pdf, facts, facts_w)
    pdf.set_y(max(pdf.y, top + image_h + (5 if s.image_problem else 0)) + GAP)
    _key_values(pdf, [("Note", note)], pdf.epw)
    _tiles(pdf, s)


def _picture(pdf: FPDF, s: FrameSection, top: float, height: float) -> None:
    x = pdf.l_margin
    if s.image_jpeg is None:
        pdf.set_fill_color(236, 239, 241)
        pdf.set_draw_color(*CRACK_LINE)
        pdf.rect(x, top, IMAGE_W, height, style="DF")
        pdf.set_xy(x, top + height / 2 - 4)
        pdf.set_font(FONT, "B", 14)
        pdf.set_text_color(*CRACK_LINE)
        pdf.cell(IMAGE_W, 8, "image missing", align="C")
        pdf.set_text_color(*INK)
        pdf.set_draw_color(*RULE)
        return
    pdf.image(io.BytesIO(s.image_jpeg), x=x, y=top, w=IMAGE_W, h=height)
    pdf.set_draw_color(*MUTED)
    pdf.rect(x, top, IMAGE_W, height)
    pdf.set_draw_color(*RULE)
    if s.image_problem:
        pdf.set_xy(x, top + height + 0.5)
        pdf.set_font(FONT, "", 7.5)
        pdf.set_text_color(*CRACK_LINE)
        pdf.cell(IMAGE_W, 4, s.image_problem)
        pdf.set_text_color(*INK)


def _tile_cell(pdf: FPDF, t, x: float, y: float, w: float) -> None:
    crack = t.label == "crack"
    pdf.set_fill_color(*(CRACK_FILL if crack else (255, 255, 255)))
    pdf.rect(x, y, w, CELL_H, style="DF")
    pdf.set_xy(x, y + 0.4)
    pdf.set_font(FONT, "B", 7)
    pdf.cell(w, 3.8, f"#{t.index + 1}" + ("  crack" if crack else ""), align="C")
    pdf.set_xy(x, y + 4.1)
    pdf.set_font(FONT, "", 7.5)
    pdf.cell(w, 3.8, f"S {fmt_prob(t.student)}   T {fmt_prob(t.teacher)}", align="C")


def _tiles_height(s: FrameSection) -> float:
    if s.grid_fits:
        return 1 + 6 + len(s.grid) * CELL_H + 1 + LINE
    return 6 + (len(s.tiles) + 1) * 5.5


def _tiles(pdf: FPDF, s: FrameSection) -> None:
    pdf.ln(1)
    pdf.set_font(FONT, "B", 9)
    pdf.cell(0, 6, "Tiles", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    if not s.grid_fits:
        _table(pdf, *tile_list(s), first_col=0.6)
        return
    cols = len(s.grid[0])
    cell_w = min(45.0, pdf.epw / cols)
    top = pdf.y
    cells = [(r, c, s.tiles[i]) for r, row in enumerate(s.grid) for c, i in enumerate(row) if i is not None]
    for r, c, t in cells:
        _tile_cell(pdf, t, pdf.l_margin + c * cell_w, top + r * CELL_H, cell_w)
    pdf.set_draw_color(*CRACK_LINE)   # crack outlines last, so no neighbour's grey border covers them
    pdf.set_line_width(0.6)
    for r, c, t in cells:
        if t.label == "crack":
            pdf.rect(pdf.l_margin + c * cell_w, top + r * CELL_H, cell_w, CELL_H)
    pdf.set_line_width(0.2)
    pdf.set_draw_color(*RULE)
    pdf.set_xy(pdf.l_margin, top + len(s.grid) * CELL_H + 1)
    _text(pdf, TILE_LEGEND, size=7, colour=MUTED)
