"""MTP export: the head inside a copy of the target re-expressed as vLLM's MiMo (Qwen2) layout."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from draft_models.mtp import MIMO_LAYER, MtpConfig, MtpDraft, from_mimo_tensors
from specforge.errors import SpecforgeError
from specforge.export import check_vllm, export_vllm
from tests.helpers import write_draft_run


def _mtp(target, feature_layer: int | None = None, num_modules: int = 1, seed: int = 0) -> MtpDraft:
    torch.manual_seed(seed)
    layers = [target.num_layers if feature_layer is None else feature_layer]
    draft = MtpDraft(MtpConfig.from_target(target.model.config, 0, layers, num_modules=num_modules))
    for name, p in draft.named_parameters():
        if name.startswith("mtp."):
            torch.nn.init.normal_(p, std=0.1)
    draft.load_target_embedding(target.model.get_input_embeddings().weight.detach())
    draft.load_target_head(target.model.lm_head.weight.detach(), target.model.model.norm.weight.detach())
    return draft


def test_mtp_exports_into_a_mimo_copy_of_the_target(micro_target, micro_target_dir, tmp_path):
    """The export is the target as ``MiMoForCausalLM`` (Qwen2 config, zero q/k/v biases, an explicit LM
    head) plus module 0 in MiMo's names; transformers' Qwen2 reads it back computing exactly the
    target's logits, and MiMo's names map back to the head's weights."""
    from transformers import AutoModelForCausalLM

    draft = _mtp(micro_target)
    out = export_vllm(
        write_draft_run(tmp_path / "run", draft), tmp_path / "vllm", target_dir=micro_target_dir
    )
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["MiMoForCausalLM"] and cfg["model_type"] == "qwen2"
    assert cfg["num_nextn_predict_layers"] == 1 and cfg["tie_word_embeddings"] is False
    assert (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file()
    tensors = load_file(out / "model.safetensors")
    assert torch.equal(tensors["lm_head.weight"], micro_target.model.lm_head.weight.detach())
    assert tensors["model.layers.0.self_attn.q_proj.bias"].abs().max() == 0
    back = from_mimo_tensors(tensors)
    state = draft.state_dict()
    assert back and all(torch.equal(back[k], state[k]) for k in back)

    qwen2 = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.randint(0, micro_target.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(qwen2(ids).logits, micro_target.model(ids).logits, rtol=1e-5, atol=1e-5)


def test_mtp_heads_vllm_cannot_serve_are_refused_with_the_reason(micro_target, micro_target_dir, tmp_path):
    post_norm = write_draft_run(tmp_path / "post", _mtp(micro_target, feature_layer=-1))
    with pytest.raises(SpecforgeError, match=r"before the final norm.*draft.aux_layers=\[8\]"):
        export_vllm(post_norm, tmp_path / "a", target_dir=micro_target_dir)
    deep = write_draft_run(tmp_path / "deep", _mtp(micro_target, num_modules=3))
    with pytest.raises(SpecforgeError, match="module 0 for every draft step"):
        export_vllm(deep, tmp_path / "b", target_dir=micro_target_dir)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_mtp_key_checks(micro_target, micro_target_dir, tmp_path):
    draft = _mtp(micro_target)
    out = export_vllm(
        write_draft_run(tmp_path / "run", draft), tmp_path / "vllm", target_dir=micro_target_dir
    )
    layer = {k: v for k, v in load_file(out / "model.safetensors").items() if k.startswith(MIMO_LAYER)}
    check_vllm(layer, "mtp", draft.config)
    bad = {**layer, MIMO_LAYER + "input_proj.weight": torch.zeros(64, 64)}
    with pytest.raises(SpecforgeError, match=r"input_proj.weight has shape \(64, 64\), expected \(64, 128\)"):
        check_vllm(bad, "mtp", draft.config)
    missing = {k: v for k, v in layer.items() if not k.endswith("token_layernorm.weight")}
    with pytest.raises(SpecforgeError, match="missing tensor model.mtp_layers.0.token_layernorm.weight"):
        check_vllm(missing, "mtp", draft.config)
    with pytest.raises(SpecforgeError, match="expected a float dtype"):
        check_vllm(
            {**layer, MIMO_LAYER + "final_layernorm.weight": torch.ones(64, dtype=torch.int32)},
            "mtp",
            draft.config,
        )
