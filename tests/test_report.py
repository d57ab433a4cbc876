"""The inspection report (inspector/report/build.py): HTML and PDF from a real flag store.

The store holds frames of the shipped sample video with the shipped student's real tile
probabilities and heat-maps, reviewed through the store's review API. The PDF is checked with
poppler (``pdftoppm``/``pdftotext``) when it is installed: rendered pages must not be blank and
the text must come out as typed (non-ASCII included).
"""
import base64
import datetime as dt
import re
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from support import REPO, engine  # noqa: F401 - engine is a fixture

from inspector.paths import sample_video
from inspector.report.build import build_report
from inspector.report.content import IMAGE_WIDTH, ReportError
from inspector.store.database import FlagStore
from inspector.store.query import FlagFilter
from inspector.store.schema import ModelRef

STUDENT = ModelRef("crack-student", "1.1.0-int8", "ab" * 32)
TEACHER = ModelRef("crack-teachers", "1.0.0", "cd" * 32)
DAY = dt.datetime(2026, 11, 2, 8, 30, tzinfo=dt.timezone.utc)
BRUECKE = "Brücke Süd – Pfeiler 3"
SCRIPT_NOTE = "<script>alert('x')</script> & hairline"
POPPLER = shutil.which("pdftoppm") is not None and shutil.which("pdftotext") is not None
needs_poppler = pytest.mark.skipif(not POPPLER, reason="poppler-utils (pdftoppm, pdftotext) not installed")

# (video frame, frame label, location, note, days after DAY, teachers scored)
FLAGS = [
    (330, "crack", BRUECKE, "Riss ≥ 0.3 mm, Länge × 40 cm", 0, True),
    (250, "crack", "Pier 4", SCRIPT_NOTE, 1, True),
    (360, "crack", "Pier 4", None, 8, False),
    (40, "no_crack", "Pier 4", "stain, not a crack", 1, True),
    (100, "unsure", BRUECKE, None, 2, False),
    (140, None, None, None, 3, False),
]


@pytest.fixture(scope="module")
def inspected(engine):  # noqa: F811 - the fixture imported from support
    """{video frame index: (frame, heat-map, tiles, crack_prob_max)} by the shipped student."""
    cap = cv2.VideoCapture(str(sample_video()))
    out = {}
    try:
        for index in sorted({f[0] for f in FLAGS}):
            cap.set(cv2.CAP_PROP_POS_FRAMES, index)
            ok, bgr = cap.read()
            assert ok, f"cannot read frame {index} of the sample video"
            frame = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            r = engine.inspect(frame)
            tiles = [{"box": list(t.box), "crack_prob": float(t.crack_prob)} for t in r.tiles]
            out[index] = (frame, r.heatmap, tiles, float(r.crack_prob_max))
    finally:
        cap.release()
    return out


def _tile_labels(tiles) -> list[str]:
    labels = ["crack" if t["crack_prob"] >= 0.5 else "no_crack" for t in tiles]
    if "crack" not in labels:  # the inspector saw a crack the student missed
        labels[int(np.argmax([t["crack_prob"] for t in tiles]))] = "crack"
    return labels


@pytest.fixture
def filled(tmp_path, inspected):
    """A store with the FLAGS above, reviewed; yields (store, {label or None: [ids]})."""
    ids: dict = {}
    with FlagStore(tmp_path / "flags") as store:
        for index, label, location, note, days, scored in FLAGS:
            frame, heat, tiles, pmax = inspected[index]
            rec = store.add(frame, heat, tiles, reason="crack" if pmax >= 0.9 else "manual",
                            source="sample_inspection.avi", model=STUDENT, crack_prob_max=pmax,
                            location=location, note=note, created=DAY + dt.timedelta(days=days))
            if label is not None:
                store.set_review(rec.id, label=label, reviewer="A. Müller",
                                 tile_labels=_tile_labels(tiles) if label == "crack" else ["no_crack"] * len(tiles))
            if scored:
                store.set_teacher_probs(rec.id, [min(1.0, t["crack_prob"] + 0.05) for t in tiles], TEACHER)
            ids.setdefault(label, []).append(rec.id)
        yield store, ids


def _sections(html: str) -> list[int]:
    return [int(m) for m in re.findall(r'<section class="flag" id="flag-(\d+)"', html)]


def _pdf_text(path) -> str:
    return subprocess.run(["pdftotext", "-layout", str(path), "-"], check=True, capture_output=True,
                          text=True).stdout


def _pdf_pages(data: bytes) -> int:
    return len(re.findall(rb"/Type\s*/Page\b", data))


# --------------------------------------------------------------------------- HTML


def test_html_lists_only_the_frames_reviewed_as_crack(filled, tmp_path):
    store, ids = filled
    summary = build_report(store, tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text("utf-8")
    assert _sections(html) == ids["crack"]               # oldest first, and only those
    assert summary.flags == len(FLAGS) and summary.crack_frames == 3 and summary.images_missing == 0
    assert summary.counts == store.counts(FlagFilter())  # the review view's numbers
    assert summary.bytes == (tmp_path / "r.html").stat().st_size
    assert BRUECKE in html and "A. Müller" in html and "crack-teachers 1.0.0" in html
    assert "2026-11-02 08:30:00" in html and "2026-11-10 08:30:00" in html   # the date range
    # three red outlines drawn into the first frame's picture: its crack tiles
    first = html.split('<section class="flag"')[1]
    assert first.count('class="crack"') == sum(label == "crack" for label in store.get(ids["crack"][0]).tile_labels)


def test_html_is_escaped_and_self_contained(filled, tmp_path):
    store, _ = filled
    build_report(store, tmp_path / "r.html", title="Bridge <b>42</b>")
    html = (tmp_path / "r.html").read_text("utf-8")
    assert "<script>" not in html and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; hairline" in html
    assert "<b>42</b>" not in html and "Bridge &lt;b&gt;42&lt;/b&gt;" in html
    assert not re.search(r"https?:", html) and "<link" not in html and "@import" not in html and "url(" not in html
    sources = re.findall(r'src="([^"]*)"', html)
    assert len(sources) == 3 and all(s.startswith("data:image/jpeg;base64,") for s in sources)
    for s in sources:
        img = cv2.imdecode(np.frombuffer(base64.b64decode(s.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.shape[1] <= IMAGE_WIDTH
        assert len(s) < 150_000                  # JPEG, not a lossless copy of the stored PNG
        assert _red_pixels(img) > 500            # the crack tiles are outlined in red


def _red_pixels(bgr: np.ndarray) -> int:
    b, g, r = (bgr[..., i].astype(int) for i in range(3))
    return int(np.count_nonzero((r > 180) & (g < 80) & (b < 80)))


# --------------------------------------------------------------------------- PDF


def test_pdf_opens_and_renders(filled, tmp_path):
    store, ids = filled
    summary = build_report(store, tmp_path / "r.pdf")
    data = (tmp_path / "r.pdf").read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    assert summary.format == "pdf" and summary.crack_frames == 3
    assert _pdf_pages(data) == 3                 # the summary, then two frames to a page
    if not POPPLER:
        pytest.skip("poppler-utils not installed: rendering not checked")
    for page in (1, 2):
        img = _render(tmp_path / "r.pdf", page, tmp_path)
        assert (img < 200).mean() > 0.01, f"page {page} is blank"
    assert _red_pixels(_render(tmp_path / "r.pdf", 2, tmp_path)) > 200   # outlines and crack cells
    text = _pdf_text(tmp_path / "r.pdf")
    for expected in (BRUECKE, "Riss ≥ 0.3 mm, Länge × 40 cm", SCRIPT_NOTE, "A. Müller", "Frames reviewed as crack (3)"):
        assert expected in text
    assert f"Flag {ids['no_crack'][0]} " not in text and f"Flag {ids['unsure'][0]} " not in text


def _render(pdf, page: int, tmp_path) -> np.ndarray:
    prefix = tmp_path / f"page{page}"
    subprocess.run(["pdftoppm", "-r", "50", "-png", "-singlefile", "-f", str(page), "-l", str(page), str(pdf),
                    str(prefix)], check=True, capture_output=True)
    img = cv2.imread(f"{prefix}.png")
    assert img is not None
    return img


# --------------------------------------------------------------------------- filters and edge cases


def test_location_and_date_filters(filled, tmp_path):
    store, ids = filled
    s = build_report(store, tmp_path / "pier.html", location="Pier 4")
    html = (tmp_path / "pier.html").read_text("utf-8")
    assert (s.flags, s.crack_frames) == (3, 2) and s.counts == store.counts(FlagFilter(location="Pier 4"))
    assert _sections(html) == ids["crack"][1:] and BRUECKE not in html and "location = Pier 4" in html
    assert "Crack inspection report: Pier 4" in html                   # the default title names it
    s = build_report(store, tmp_path / "days.html", since="2026-11-03", until=dt.date(2026, 11, 4))
    html = (tmp_path / "days.html").read_text("utf-8")
    assert (s.flags, s.crack_frames) == (3, 1)   # the 3rd and the 4th, 'until' included
    assert _sections(html) == [ids["crack"][1]]
    s = build_report(store, tmp_path / "late.pdf", since=DAY + dt.timedelta(days=5))
    assert (s.flags, s.crack_frames) == (1, 1)


@pytest.mark.parametrize("kind", ["empty store", "no match"])
def test_nothing_matched_gives_a_valid_report_that_says_so(kind, filled, tmp_path):
    store, _ = filled
    if kind == "empty store":
        store.close()
        store = FlagStore(tmp_path / "empty")
    with store:
        for ext in ("html", "pdf"):
            s = build_report(store, tmp_path / f"r.{ext}", location="nowhere" if kind == "no match" else None)
            assert s.empty and s.flags == 0 and s.crack_frames == 0 and "nothing matched" in s.message()
    html = (tmp_path / "r.html").read_text("utf-8")
    assert "No flags match this report" in html and "</html>" in html and not _sections(html)
    data = (tmp_path / "r.pdf").read_bytes()
    assert data.startswith(b"%PDF-") and _pdf_pages(data) == 1
    if POPPLER:
        assert "No flags match this report" in _pdf_text(tmp_path / "r.pdf")


def test_a_flag_whose_image_is_gone_is_listed_as_missing(filled, tmp_path):
    store, ids = filled
    gone = store.get(ids["crack"][1])
    (store.root / gone.frame_file).unlink()
    s = build_report(store, tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text("utf-8")
    assert s.crack_frames == 3 and s.images_missing == 1 and "1 with the image missing" in s.message()
    section = html.split(f'id="flag-{gone.id}"')[1].split("</section>")[0]
    assert "image missing" in section and "<img" not in section and "hairline" in section
    assert len(re.findall(r"<img ", html)) == 2
    s = build_report(store, tmp_path / "r.pdf")
    assert s.images_missing == 1
    if POPPLER:
        assert "image missing" in _pdf_text(tmp_path / "r.pdf")


def test_bad_arguments_are_refused_clearly(filled, tmp_path):
    store, _ = filled
    with pytest.raises(ValueError, match=r"\.html or \.pdf"):
        build_report(store, tmp_path / "r.docx")
    with pytest.raises(ValueError, match="since"):
        build_report(store, tmp_path / "r.html", since="last tuesday")
    with pytest.raises(ReportError, match="cannot write"):
        build_report(store, tmp_path / "no" / "such" / "folder" / "r.html")
    assert not list(tmp_path.glob("r.*")) and not list(tmp_path.glob(".r.*"))


# --------------------------------------------------------------------------- the command line


def _cli(*args) -> subprocess.CompletedProcess:
    """``inspector ARGS`` in a fresh interpreter that fails if anything imported Qt."""
    code = ("import sys; from inspector.qt.main import main; rc = main(sys.argv[1:]); "
            "assert 'PySide6' not in sys.modules, 'the report path imported Qt'; sys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def test_cli_writes_the_report_without_qt(filled, tmp_path):
    store, _ = filled
    root = store.root
    store.close()   # one process per store
    out = tmp_path / "bridge.pdf"
    r = _cli("--store", root, "--report", out, "--report-location", "Pier 4", "--report-since", "2026-11-01",
             "--report-until", "2026-11-30", "--report-title", "Bridge 42")
    assert r.returncode == 0, r.stderr
    assert f"wrote {out}" in r.stdout and "3 flags" in r.stdout and "2 frames reviewed as crack" in r.stdout
    assert out.read_bytes().startswith(b"%PDF-")
    r = _cli("--store", root, "--report", tmp_path / "none.html", "--report-location", "nowhere")
    assert r.returncode == 0, r.stderr
    assert "nothing matched" in r.stdout and "No flags match" in (tmp_path / "none.html").read_text("utf-8")


@pytest.mark.parametrize("args, message", [
    (["--report", "{tmp}/r.txt"], ".html or .pdf"),
    (["--report", "{tmp}/r.pdf", "--report-since", "soon"], "since must be an ISO-8601 date"),
    (["--report-location", "x"], "only go with --report"),
])
def test_cli_refuses_bad_input_with_exit_2(args, message, filled, tmp_path):
    store, _ = filled
    root = store.root
    store.close()
    r = _cli("--store", root, *(a.format(tmp=tmp_path) for a in args))
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert not list(tmp_path.glob("r.*"))


def test_cli_refuses_a_folder_that_is_no_store(tmp_path):
    r = _cli("--store", tmp_path / "typo", "--report", tmp_path / "r.html")
    assert r.returncode == 2 and "no flag store in" in r.stderr
    assert not (tmp_path / "typo").exists()
