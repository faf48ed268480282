"""The EAGLE-1 draft head (Li et al., 2024), laid out as vLLM's ``EagleLlamaForCausalLM`` loads it.
EAGLE-2 is this head drafting dynamic trees (the reference engine's tree builder).

Contract
--------
* The feature is the target's last hidden state, after its final norm (feature layer id ``-1``:
  :class:`~draft_models.aux_hooks.AuxHiddenHooks` records it), which is what vLLM hands an EAGLE-1
  proposer.
* ``fc`` maps ``[embed(token t+1); feature at t]`` (width 2H, embedding first) to H; one Llama
  decoder layer follows, *without* its input norm (vLLM replaces layer 0's ``input_layernorm`` by
  the identity, as EAGLE's reference code does). Its output (residual stream included, no final
  norm) is the predicted feature at ``t + 1`` and the next step's input feature.
* Logits are the target's frozen LM head over that predicted feature, over the whole target
  vocabulary (``d2t`` is all zeros, ``t2d`` all True: the trainer and drafter need no special case).
* Loss weights: EAGLE's, feature regression (smooth L1 against the target's next feature) 1.0 and
  cross-entropy 0.1 (``feature_loss_weight``, ``ce_loss_weight``).
* The token embedding and the LM head are the target's and are not exported. vLLM 0.32's EAGLE-1
  loader has no HASS paired input norms (``add_para_norm``), so neither has this head.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from draft_models.eagle3 import AttnFn, DraftStep
from draft_models.layers import (
    MLP,
    Attention,
    FullVocabDraft,
    LastHiddenFullVocab,
    RMSNorm,
    llama_config_json,
    target_shape,
)
from draft_models.registry import VllmLayout, register_draft_type


@dataclass
class EagleConfig(LastHiddenFullVocab):
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int  # the target's vocabulary (the draft predicts over all of it)
    num_target_layers: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096
    feature_loss_weight: float = 1.0
    ce_loss_weight: float = 0.1

    # the trainer asks every head the same way; EAGLE-1 has no draft vocabulary and one feature
    @classmethod
    def from_target(cls, target_config, draft_vocab_size: int = 0, aux_layer_ids=None) -> EagleConfig:
        """A draft as wide as the target, with its attention shape and rotary settings (the
        draft-vocabulary size and feature layers a recipe may give are not used: see the contract)."""
        return cls(**target_shape(target_config))

    def to_dict(self) -> dict:
        return asdict(self)


class EagleLayer(nn.Module):
    """A Llama decoder layer without its input norm (vLLM's EAGLE-1 layer 0)."""

    def __init__(self, cfg: EagleConfig):
        super().__init__()
        h = cfg.hidden_size
        self.self_attn = Attention(
            h, h, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.rope_theta
        )
        self.post_attention_layernorm = RMSNorm(h, cfg.rms_norm_eps)
        self.mlp = MLP(h, cfg.intermediate_size)


class EagleDraft(FullVocabDraft, nn.Module):
    head_name = "EAGLE-1"
    config_class = EagleConfig
    frozen_target_head = True  # the trainer always loads the target's LM head into it

    def __init__(self, cfg: EagleConfig):
        super().__init__()
        self.config = cfg
        h = cfg.hidden_size
        self.embed_tokens = nn.Embedding(cfg.vocab_size, h)
        self.embed_tokens.weight.requires_grad_(False)
        self.fc = nn.Linear(2 * h, h, bias=False)
        self.layer = EagleLayer(cfg)
        self.lm_head = nn.Linear(h, cfg.vocab_size, bias=False)  # the target's, frozen
        self.lm_head.weight.requires_grad_(False)
        self.register_identity_vocab()
        self.feature_loss_weight, self.ce_loss_weight = cfg.feature_loss_weight, cfg.ce_loss_weight

    @torch.no_grad()
    def load_target_head(self, lm_head_weight: torch.Tensor, norm_weight: torch.Tensor | None = None) -> None:
        """The target's LM head [vocab, H] (required: it is the draft's output layer)."""
        self.lm_head.weight.copy_(lm_head_weight.to(self.lm_head.weight))

    def combine(self, features: torch.Tensor) -> torch.Tensor:
        """[batch, seq, H] target features (the last hidden state) are the draft's input as they are."""
        return features.to(self.fc.weight.dtype)

    def step(
        self,
        input_ids: torch.Tensor,
        hidden: torch.Tensor,
        positions: torch.Tensor,
        attn_fn: AttnFn,
        logit_mask: torch.Tensor | None = None,
        depth: int = 0,  # the draft step's index (heads with one module per depth use it)
    ) -> DraftStep:
        """One draft step. input_ids [batch, seq], hidden [batch, seq, H] (the feature at each
        position), positions [batch, seq]; ``logit_mask`` [batch, seq] bool: logits only there."""
        layer = self.layer
        emb = self.embed_tokens(input_ids).to(hidden.dtype)
        x = self.fc(torch.cat([emb, hidden], dim=-1))  # [batch, seq, H]
        q, k, v = layer.self_attn.project(x, positions)
        h = x + layer.self_attn.output(attn_fn(q, k, v))
        h = h + layer.mlp(layer.post_attention_layernorm(h))  # the predicted next feature
        out = h if logit_mask is None else h[logit_mask]
        return DraftStep(logits=self.lm_head(out), hidden=h, key=k, value=v)


def vllm_spec(cfg: EagleConfig) -> dict[str, tuple[tuple[int, ...], torch.dtype | None]]:
    """The tensors vLLM's ``EagleLlamaForCausalLM`` loads: name -> (shape, dtype; None = any float)."""
    h, hd, i = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    return {
        "fc.weight": ((h, 2 * h), None),
        "layers.0.self_attn.q_proj.weight": ((q, h), None),
        "layers.0.self_attn.k_proj.weight": ((kv, h), None),
        "layers.0.self_attn.v_proj.weight": ((kv, h), None),
        "layers.0.self_attn.o_proj.weight": ((h, q), None),
        "layers.0.post_attention_layernorm.weight": ((h,), None),
        "layers.0.mlp.gate_proj.weight": ((i, h), None),
        "layers.0.mlp.up_proj.weight": ((i, h), None),
        "layers.0.mlp.down_proj.weight": ((h, i), None),
    }


def vllm_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The draft's state dict in vLLM's names (the target's embedding and LM head left out)."""
    out = {"fc.weight": state["fc.weight"]}
    for name, t in state.items():
        if name.startswith("layer."):
            out["layers.0." + name[len("layer.") :]] = t
    return out


def from_vllm_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """vLLM's names back to the draft's state dict (without the target's embedding and LM head)."""
    out = {"fc.weight": tensors["fc.weight"]}
    for name, t in tensors.items():
        if name.startswith("layers.0."):
            out["layer." + name[len("layers.0.") :]] = t
    return out


def vllm_config(cfg: EagleConfig, dtype: str = "float32") -> dict:
    return llama_config_json(cfg, "EagleLlamaForCausalLM", dtype)


register_draft_type(
    "eagle",
    EagleConfig,
    EagleDraft,
    VllmLayout("eagle", "EagleLlamaForCausalLM", vllm_spec, vllm_tensors, from_vllm_tensors, vllm_config),
)
