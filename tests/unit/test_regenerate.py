"""Regeneration of assistant turns with the target, and its resume."""

from __future__ import annotations

import json

import pytest
import torch

from specforge.data import regenerate as regen_mod
from specforge.data.regenerate import regenerate
from specforge.errors import SpecforgeError


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
    # The first reply is the target's own greedy response to the first question, by plain HF generate.
    tok, model = micro_target.tokenizer, micro_target.model
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "question 0"}], add_generation_prompt=True, tokenize=False
    )
    ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
    new = model.generate(
        ids, max_new_tokens=12, do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=0
    )
    assert first[1]["content"] == tok.decode(new[0, ids.shape[1] :], skip_special_tokens=True).strip()
    # A finished output is reused only for the same data, target and settings.
    assert regenerate(micro_target, _data(tmp_path), out, batch_size=2, max_new_tokens=12, progress=False)[
        "cached"
    ]


def test_a_stale_output_is_refused_not_reused(micro_target, tmp_path):
    """An existing output made from other data or settings, or whose provenance is unknown, is one
    clear error naming what changed; it is never returned as if it were this run's."""
    data = _data(tmp_path)
    out = tmp_path / "out.jsonl"
    regenerate(micro_target, data, out, batch_size=2, max_new_tokens=4, limit=2, progress=False)
    with pytest.raises(SpecforgeError, match=r"settings changed: max_new_tokens 4 -> 8, limit 2 -> None"):
        regenerate(micro_target, data, out, batch_size=2, max_new_tokens=8, progress=False)
    data.write_text(data.read_text() + json.dumps({"text": "one more row"}) + "\n")
    with pytest.raises(SpecforgeError, match="the input data changed"):
        regenerate(micro_target, data, out, batch_size=2, max_new_tokens=4, limit=2, progress=False)
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text('{"text": "x"}\n')
    with pytest.raises(SpecforgeError, match="records nothing about what produced it"):
        regenerate(micro_target, data, foreign, progress=False)
    assert foreign.read_text() == '{"text": "x"}\n'


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


def test_a_prompt_only_row_gets_the_target_answer_appended(micro_target, tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "question 0"}]}) + "\n")
    out = tmp_path / "out.jsonl"
    regenerate(micro_target, data, out, batch_size=2, max_new_tokens=12, progress=False)
    answered = json.loads(out.read_text())["messages"]
    assert [m["role"] for m in answered] == ["user", "assistant"]
    tok = micro_target.tokenizer
    prompt = tok.apply_chat_template(answered[:1], add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
    new = micro_target.model.generate(
        ids, max_new_tokens=12, do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=0
    )
    assert answered[1]["content"] == tok.decode(new[0, ids.shape[1] :], skip_special_tokens=True).strip()
