"""Regeneration of assistant turns with the target, and its resume."""

from __future__ import annotations

import json

import pytest

from specforge.data import regenerate as regen_mod
from specforge.data.regenerate import generate_responses, regenerate


def _data(tmp_path, n=5):
    rows = [
        {
            "conversations": [
                {"from": "human", "value": f"question {i}"},
                {"from": "gpt", "value": "old answer"},
                {"from": "human", "value": "more"},
                {"from": "gpt", "value": "old again"},
            ]
        }
        for i in range(n)
    ]
    rows.append({"text": "def plain(): pass"})
    p = tmp_path / "in.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_greedy_regeneration_matches_target(micro_target, tmp_path):
    out = tmp_path / "out.jsonl"
    res = regenerate(micro_target, _data(tmp_path), out, batch_size=2, max_new_tokens=12, progress=False)
    assert res["rows"] == 6 and not res["cached"]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[-1] == {"text": "def plain(): pass"}
    first = rows[0]["messages"]
    assert [m["role"] for m in first] == ["user", "assistant", "user", "assistant"]
    assert first[1]["content"] != "old answer" and first[3]["content"] != "old again"
    # The first reply is the target's own greedy response to the first question.
    expected = generate_responses(micro_target, [[{"role": "user", "content": "question 0"}]], 12, 0.0)[0]
    assert first[1]["content"] == expected
    # A finished output is reused, not regenerated.
    assert regenerate(micro_target, _data(tmp_path), out, progress=False)["cached"]


def test_resume_after_kill_gives_same_output(micro_target, tmp_path, monkeypatch):
    data = _data(tmp_path)
    ref = tmp_path / "ref.jsonl"
    regenerate(
        micro_target, data, ref, batch_size=2, max_new_tokens=8, temperature=1.0, seed=7, progress=False
    )

    real = regen_mod.generate_responses
    calls = {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:  # third batch, first turn
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(regen_mod, "generate_responses", dying)
    out = tmp_path / "out.jsonl"
    with pytest.raises(KeyboardInterrupt):
        regenerate(
            micro_target, data, out, batch_size=2, max_new_tokens=8, temperature=1.0, seed=7, progress=False
        )
    partial = out.with_name(out.name + ".partial")
    assert len(partial.read_text().splitlines()) == 4 and not out.exists()
    monkeypatch.setattr(regen_mod, "generate_responses", real)
    res = regenerate(
        micro_target, data, out, batch_size=2, max_new_tokens=8, temperature=1.0, seed=7, progress=False
    )
    assert res["resumed_from"] == 4
    assert out.read_text() == ref.read_text()
