"""The embedded tiny target, built at reduced size by the real builder."""

from __future__ import annotations

import json

import torch

from specforge.data.stdlib_corpus import split_of, stdlib_files
from specforge.targets.tiny import TinyTargetConfig, build_tiny_target, tiny_target_dir


def test_build_writes_a_loadable_hf_directory(micro_target_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report = json.loads((micro_target_dir / "build_report.json").read_text())
    assert report["shape"]["num_layers"] == 8
    assert report["heldout_loss"] > 0 and 0 <= report["distinct4_mean"] <= 1
    model = AutoModelForCausalLM.from_pretrained(micro_target_dir)
    tok = AutoTokenizer.from_pretrained(micro_target_dir)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert tok.eos_token == "<|end|>" and tok.chat_template
    assert model.config.vocab_size == len(tok)


def test_build_is_deterministic_and_cached(tmp_path):
    cfg = TinyTargetConfig(
        vocab_size=300,
        hidden_size=16,
        num_layers=8,
        num_heads=2,
        num_kv_heads=1,
        intermediate_size=32,
        seq_len=32,
        batch_size=2,
        steps=2,
        warmup_steps=1,
        max_chat_rows=10,
        max_corpus_files=10,
        eval_windows=1,
        sample_prompts=1,
        sample_tokens=8,
        unlikelihood_steps=2,
        unlikelihood_batch=2,
        unlikelihood_prompt_tokens=8,
        unlikelihood_new_tokens=8,
    )
    a = build_tiny_target(cfg, out_dir=tmp_path / "a", progress=False)
    b = build_tiny_target(cfg, out_dir=tmp_path / "b", progress=False)
    from safetensors.torch import load_file

    report = json.loads((a / "build_report.json").read_text())
    assert report["before_unlikelihood"]["heldout_loss"] > 0  # the report shows the phase's effect
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    stamp = (a / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_target(cfg, out_dir=a, progress=False) == a
    assert (a / "model.safetensors").stat().st_mtime_ns == stamp  # cached, not rebuilt
    assert tiny_target_dir(cfg) != tiny_target_dir(cfg.model_copy(update={"seed": 1}))


def test_corpus_split_is_by_file():
    files = stdlib_files()
    heldout = [f for f in files if f.split == "heldout"]
    assert 0.02 < len(heldout) / len(files) < 0.12
    assert all(split_of(f.relpath) == f.split for f in files)
    assert not any("/test/" in f"/{f.relpath}" for f in files)
