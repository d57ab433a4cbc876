"""Where a benchmark's results go: its JSON under runs/ and, with ``--docs``, the committed raw
rows and the markdown page made from them (docs/benchmarks/<name>.{rows.json,md})."""
from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "benchmarks"


def save(name: str, out: dict, text: str, *, json_path: str | Path, docs: bool, title: str, command: str) -> None:
    """``out`` as JSON at ``json_path``; with ``docs`` also ``<name>.rows.json`` and ``<name>.md``:
    the ``title``, the ``command`` that remakes it, a link to the rows, then ``text``."""
    body = json.dumps(out, indent=1) + "\n"
    Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    Path(json_path).write_text(body)
    if docs:
        (DOCS / f"{name}.rows.json").write_text(body)
        (DOCS / f"{name}.md").write_text(f"# {title} (`benchmarks/{name}.py`)\n\nMade by `{command}`; rows: "
                                         f"[{name}.rows.json]({name}.rows.json).\n\n" + text)
