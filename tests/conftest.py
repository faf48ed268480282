"""Shared fixtures: a micro target built by the real tiny-target builder at reduced size."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# An 8-layer, 64-wide Llama (head_dim 32, as vLLM's CPU attention needs) with its own BPE tokenizer.
MICRO_TARGET = dict(
    vocab_size=400,
    hidden_size=64,
    num_layers=8,
    num_heads=2,
    num_kv_heads=1,
    intermediate_size=128,
    seq_len=64,
    batch_size=8,
    steps=40,
    lr=1e-2,
    warmup_steps=2,
    max_chat_rows=60,
    max_corpus_files=40,
    eval_windows=2,
    sample_prompts=2,
    sample_tokens=16,
    unlikelihood_steps=3,
    unlikelihood_batch=4,
    unlikelihood_prompt_tokens=16,
    unlikelihood_new_tokens=16,
)


@pytest.fixture(scope="session")
def micro_target_dir(tmp_path_factory):
    """An 8-layer, 64-wide Llama (head_dim 32, as vLLM's CPU attention needs) with its own BPE tokenizer."""
    from specforge.targets.tiny import TinyTargetConfig, build_tiny_target

    cfg = TinyTargetConfig(**MICRO_TARGET)
    return build_tiny_target(cfg, out_dir=tmp_path_factory.mktemp("targets") / "micro", progress=False)


@pytest.fixture(scope="session")
def micro_target(micro_target_dir):
    from specforge.targets.loader import load_target

    return load_target(micro_target_dir)


@pytest.fixture(scope="session")
def varied_micro_target_dir(tmp_path_factory):
    """The micro target trained longer (300 steps, 10 unlikelihood steps; ~1 minute): its greedy
    output varies from token to token where the 40-step one repeats one token, so a draft is
    accepted at some positions and not at others (tests that compare acceptance counts need that)."""
    from specforge.targets.tiny import TinyTargetConfig, build_tiny_target

    cfg = TinyTargetConfig(**{**MICRO_TARGET, "steps": 300, "unlikelihood_steps": 10, "max_chat_rows": 200})
    return build_tiny_target(cfg, out_dir=tmp_path_factory.mktemp("targets") / "micro-varied", progress=False)


@pytest.fixture(scope="session")
def micro_draft(micro_target_dir, tmp_path_factory):
    """A trained EAGLE-3 head for the micro target (40 steps, 3 TTT steps), with its data: acceptance
    is well above zero, so a lossless check through it means something. Returns (workdir, run, vLLM
    export); the data is under workdir/data (train.jsonl, heldout.jsonl)."""
    from specforge.data.demo import write_demo_dataset
    from tests.helpers import train_micro_vllm_draft

    work = tmp_path_factory.mktemp("micro-draft")
    write_demo_dataset(work / "data", max_train=64, max_heldout=12)
    vllm_dir = train_micro_vllm_draft(
        micro_target_dir,
        work,
        ttt_steps=3,
        max_steps=40,
        overrides=("optim.lr=5e-3", f"data.eval={work / 'data' / 'heldout.jsonl'}"),
    )
    return work, work / "run", vllm_dir
