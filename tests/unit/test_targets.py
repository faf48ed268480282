"""Loading arbitrary local HF targets, and the errors for bad directories."""

from __future__ import annotations

import json
import shutil

import pytest

from specforge.errors import SpecforgeError
from specforge.targets.loader import check_target_dir, load_target


def test_load_micro_target_is_frozen(micro_target):
    assert micro_target.num_layers == 8
    assert not any(p.requires_grad for p in micro_target.model.parameters())
    assert not micro_target.model.training


def _copy(src, dst, drop=()):
    shutil.copytree(src, dst)
    for name in drop:
        (dst / name).unlink()
    return dst


def test_missing_dir(tmp_path):
    with pytest.raises(SpecforgeError, match=r"does not exist.*build-tiny"):
        load_target(tmp_path / "nowhere")


def test_file_instead_of_dir(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(SpecforgeError, match="is a file"):
        load_target(tmp_path / "f")


def test_missing_config(micro_target_dir, tmp_path):
    d = _copy(micro_target_dir, tmp_path / "t", drop=["config.json"])
    with pytest.raises(SpecforgeError, match="no config.json"):
        check_target_dir(d)


def test_unsupported_model_type(micro_target_dir, tmp_path):
    d = _copy(micro_target_dir, tmp_path / "t")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SpecforgeError, match="model_type 'gpt2' is not supported"):
        check_target_dir(d)


def test_missing_weights(micro_target_dir, tmp_path):
    d = _copy(micro_target_dir, tmp_path / "t", drop=["model.safetensors"])
    with pytest.raises(SpecforgeError, match="holds no weights"):
        check_target_dir(d)


def test_missing_tokenizer(micro_target_dir, tmp_path):
    d = _copy(micro_target_dir, tmp_path / "t", drop=["tokenizer.json"])
    with pytest.raises(SpecforgeError, match="no tokenizer"):
        check_target_dir(d)


def test_missing_chat_template(micro_target_dir, tmp_path):
    d = _copy(micro_target_dir, tmp_path / "t")
    for name in ("chat_template.jinja", "chat_template.json"):
        (d / name).unlink(missing_ok=True)
    tc = json.loads((d / "tokenizer_config.json").read_text())
    tc.pop("chat_template", None)
    (d / "tokenizer_config.json").write_text(json.dumps(tc))
    with pytest.raises(SpecforgeError, match="no chat template"):
        check_target_dir(d)
    # Plain-text work does not need one.
    assert load_target(d, need_chat_template=False).tokenizer.chat_template is None


def test_corrupt_weights(micro_target_dir, tmp_path):
    d = _copy(micro_target_dir, tmp_path / "t")
    (d / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(SpecforgeError, match="could not load the target model weights"):
        load_target(d)


def test_a_foreign_tokenizer_is_refused(micro_target_dir, tmp_path):
    """A tokenizer trained for another model (smaller than the target's vocabulary, with the same
    special tokens, so every id is in range) is caught before training reports "coverage 100 %"."""
    from specforge.targets.loader import load_tokenizer
    from specforge.targets.tiny import train_tokenizer

    d = _copy(micro_target_dir, tmp_path / "t")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (d / name).unlink(missing_ok=True)
    train_tokenizer(["def f(x):\n    return x\n" * 50], 300).save_pretrained(d)
    with pytest.raises(SpecforgeError, match=r"has \d+ tokens, far fewer than the model.s vocab_size 400"):
        load_tokenizer(d)


def test_a_tokenizer_whose_eos_is_not_the_models_is_refused(micro_target_dir, tmp_path):
    d = _copy(micro_target_dir, tmp_path / "t")
    cfg = json.loads((d / "config.json").read_text())
    cfg["eos_token_id"] = 7
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        SpecforgeError,
        match=r"end-of-sequence token '<\|end\|>' \(id \d+\) is not the model's eos_token_id 7",
    ):
        load_target(d)


def test_fingerprint_of_the_loaded_target_equals_the_one_read_from_its_directory(
    micro_target, micro_target_dir
):
    from serving.draft_check import fingerprint_target_dir
    from specforge.targets.fingerprint import target_fingerprint

    live = fingerprint_target_dir(micro_target_dir)
    recorded = target_fingerprint(micro_target)
    assert live.model_dump() == recorded
    assert live.tokenizer_sha256 and len(live.embedding_probe) == 32
