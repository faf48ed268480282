"""The demo conversation set."""

from __future__ import annotations

from specforge.data.demo import demo_conversations, write_demo_dataset
from specforge.data.formats import load_rows


def test_heldout_comes_from_other_files():
    train = demo_conversations("train", max_rows=400)
    heldout = demo_conversations("heldout")
    modules = lambda rows: {r["id"].split(":")[0] for r in rows}  # noqa: E731
    assert heldout and not (modules(train) & modules(heldout))
    kinds = {r["id"].rsplit(":", 1)[1] for r in heldout}
    assert kinds == {"complete", "explain"}


def test_deterministic_and_loadable(tmp_path):
    assert demo_conversations("train", 50, seed=3) == demo_conversations("train", 50, seed=3)
    counts = write_demo_dataset(tmp_path, max_train=30, max_heldout=10)
    assert counts == {"train": 30, "heldout": 10}
    ds, rep = load_rows(tmp_path / "train.jsonl")
    assert rep.rows == 30 and rep.skipped == 0
    first = ds[0]["messages"]
    assert [m["role"] for m in first] == ["user", "assistant"] and first[1]["content"]
