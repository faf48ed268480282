"""The shape of the code, read from its imports with ``ast``: no import loops, and the layering rules.

* No two modules import each other, directly or through a loop of any length (imports inside
  functions count: they still tie the modules together).
* ``serving`` never imports ``specforge``; ``draft_models`` imports neither.
* Only files under ``serving/vllm_plugin/`` import vllm (or sglang).
* No source file is over 500 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("specforge", "serving", "draft_models")
MAX_LINES = 500


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """Every module (ours or not) that ``path`` imports, as dotted names; ``from X import Y`` names the
    module ``X.Y`` when that is one of ours, else ``X``."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.add(sub if sub in known else base)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(path, name, known) for name, path in known.items()}


def test_no_two_modules_import_each_other(graph):
    ours = {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    loops: list[list[str]] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(ours[m]):
            if state.get(d) == 1:
                loops.append([*path[path.index(d) :], d])
            elif d not in state:
                visit(d, [*path, d])
        state[m] = 2

    for m in sorted(ours):
        if m not in state:
            visit(m, [m])
    assert not loops, "import loops: " + "; ".join(" -> ".join(loop) for loop in loops)


def test_serving_never_imports_specforge(graph):
    bad = {
        m: sorted(d for d in deps if d.split(".")[0] == "specforge")
        for m, deps in graph.items()
        if m.split(".")[0] in ("serving", "draft_models")
    }
    assert not {m: d for m, d in bad.items() if d}


def test_draft_models_import_no_other_package_of_ours(graph):
    bad = {
        m: sorted(d for d in deps if d.split(".")[0] == "serving")
        for m, deps in graph.items()
        if m.startswith("draft_models")
    }
    assert not {m: d for m, d in bad.items() if d}


def test_only_the_vllm_plugin_imports_vllm(graph):
    engines = ("vllm", "sglang")
    bad = {
        m: sorted(d for d in deps if d.split(".")[0] in engines)
        for m, deps in graph.items()
        if not m.startswith("serving.vllm_plugin")
    }
    assert not {m: d for m, d in bad.items() if d}


def test_the_checker_sees_the_plugin_import_vllm(graph):
    """The rules above are not vacuous: the plugin does import vllm, and the CLI imports the library."""
    assert any(d.startswith("vllm") for d in graph["serving.vllm_plugin.adaptive"])
    assert "specforge.cli.bench" in graph["specforge.cli.parser"]
    assert "serving.shape" in graph["specforge.cli.options"]


def test_no_source_file_is_over_500_lines():
    files = [
        p for p in ROOT.rglob("*.py") if not {".venv", ".git", "outputs"} & set(p.relative_to(ROOT).parts)
    ]
    long = {str(p.relative_to(ROOT)): n for p in files if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert files and not long


def test_a_loop_is_found_when_there_is_one(tmp_path):
    """The loop finder itself: two modules that import each other are reported."""
    (tmp_path / "a.py").write_text("from b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    import a\n")
    known = {"a": tmp_path / "a.py", "b": tmp_path / "b.py"}
    graph = {m: _imports(p, m, known) for m, p in known.items()}
    assert graph == {"a": {"b"}, "b": {"a"}}
    with pytest.raises(AssertionError, match="a -> b -> a"):
        test_no_two_modules_import_each_other(graph)
