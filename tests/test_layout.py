"""The house's layout, checked: no import cycles (imports inside functions count), no module over
550 lines, one exception root per package with one name per class, and every path the README and
``docs/`` name exists. The import-linter contracts (rooms and layers) are in test_boundaries.py."""
from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 550


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the components of more than one module are the cycles."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]; counter[0] += 1
        stack.append(root); on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]; counter[0] += 1
                    stack.append(child); on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop(); on_stack.discard(member); component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def import_graph(*packages: str) -> dict[str, set[str]]:
    graph = grimp.build_graph(*packages, cache_dir=None)
    return {m: set(graph.find_modules_directly_imported_by(m)) & graph.modules for m in graph.modules}


def test_strongly_connected_finds_a_cycle_and_nothing_else():
    """The cycle finder itself: a three-module loop and a tail hanging off it."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    cycles = strongly_connected(import_graph("inspector", "distill"))
    assert not cycles, "import cycles (function-level imports count): " + "; ".join(" ↔ ".join(c) for c in cycles)


def python_files():
    for root in ("inspector", "distill"):
        yield from sorted((REPO / root).rglob("*.py"))


def test_no_module_is_over_550_lines():
    long = {str(p.relative_to(REPO)): n for p in python_files() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these by responsibility (over {MAX_LINES} lines): {long}"


def all_modules(package: str):
    root = importlib.import_module(package)
    yield root
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        if not info.name.endswith("__main__"):
            yield importlib.import_module(info.name)


@pytest.mark.parametrize("package, root_name", [("inspector", "InspectorError"), ("distill", "DistillError")])
def test_one_exception_root_per_package(package, root_name):
    root = getattr(importlib.import_module(f"{package}.errors"), root_name)
    classes = {}
    for module in all_modules(package):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == module.__name__:
                classes.setdefault(value.__name__, set()).add(value)
    assert root in classes[root_name]
    outside = sorted(f"{c.__module__}.{c.__name__}" for group in classes.values() for c in group if not issubclass(c, root))
    assert not outside, f"every {package} error derives from {root_name}: {outside}"
    twice = sorted(name for name, group in classes.items() if len(group) > 1)
    assert not twice, f"one name per class in {package}: {twice}"


def test_exception_names_are_not_shared_between_the_packages():
    names = {}
    for package in ("inspector", "distill"):
        for module in all_modules(package):
            for value in vars(module).values():
                if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == module.__name__:
                    names.setdefault(value.__name__, set()).add(package)
    assert not [n for n, where in names.items() if len(where) > 1]


# A path as the README and docs write it: a top-level folder of the repository, then a file or folder.
TOP = ("inspector", "distill", "models", "resources", "tests", "scripts", "benchmarks", "docs", ".ci")
PATH = re.compile(r"(?<![\w./-])((?:%s)/[\w./-]*[\w/])" % "|".join(re.escape(t) for t in TOP))


def named_paths(text: str):
    for match in PATH.finditer(text):
        path = match.group(1).rstrip("/.")
        # placeholders and patterns (NAME-VERSION, *.png, <run>) name no one file
        if re.search(r"[*<>{}]|[A-Z]{3,}-", path) or path.endswith("-"):
            continue
        yield path


def test_named_paths_finds_paths_and_skips_placeholders():
    text = "see `inspector/edge/engine.py`, docs/design/ and models/crack-student-NAME-VERSION.crackpkg, runs/x"
    assert list(named_paths(text)) == ["inspector/edge/engine.py", "docs/design"]


@pytest.mark.parametrize("doc", ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").rglob("*.md"))])
def test_every_path_the_docs_name_exists(doc):
    missing = sorted({p for p in named_paths((REPO / doc).read_text()) if not (REPO / p).exists()})
    assert not missing, f"{doc} names paths that do not exist: {missing}"


# A dotted name in backticks, as docstrings and docs write a reference: ``inspector.x.y`` or :class:`~inspector.x.Y`.
DOTTED = re.compile(r"`~?((?:inspector|distill)(?:\.\w+)+)`")


def defined_at(name: str) -> bool:
    """True if ``name`` is a module, or an attribute of one that its module defines (a class or
    function named through a module that only imports it points a reader at the wrong file)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        if len(parts) == i + 1 and (isinstance(obj, type) or callable(obj)) and hasattr(obj, "__module__"):
            return obj.__module__ == ".".join(parts[:i])
        return True
    return False


def test_defined_at_tells_a_definition_from_an_import():
    assert defined_at("inspector.errors.InspectorError") and defined_at("inspector.edge")
    assert not defined_at("inspector.errors.NoSuchThing") and not defined_at("inspector.nowhere")
    assert not defined_at("inspector.qt.main.load_engine")    # main imports it from startup


def test_every_dotted_reference_resolves_where_it_is_defined():
    texts = [*python_files(), REPO / "README.md", *(REPO / "docs").rglob("*.md")]
    wrong = sorted({f"{p.relative_to(REPO)}: {m}" for p in texts
                    for m in DOTTED.findall(p.read_text()) if not defined_at(m)})
    assert not wrong, "references to names that are not defined there: " + "; ".join(wrong)
