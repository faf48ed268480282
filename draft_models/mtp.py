"""The multi-token-prediction (MTP) draft head, DeepSeek-V3 style, for any HF decoder target.

Contract
--------
* ``num_modules`` (D >= 1) sequential modules. Module k takes the previous depth's hidden state
  ``h_{k-1}`` (depth 0: the target's last hidden state after its final norm, what vLLM hands an MTP
  proposer) and the embedding of the token it follows:
  ``h'_k = eh_proj([enorm(embed(t_{i+k})); hnorm(h_{k-1})])`` (embedding first, as vLLM's
  ``DeepSeekMultiTokenPredictorLayer``), then one full Llama decoder block. Its output (residual
  stream included) is ``h_k``; the target's final norm and LM head, frozen and shared, give the
  logits over the whole target vocabulary.
* Draft step ``i`` runs module ``min(i, D - 1)``: a D = 1 head is applied recursively, as vLLM
  reuses an MTP layer for every speculative token. Every step attends to the step-0 keys over the
  prefix plus its own earlier steps' keys at its anchor (the training-time test's pattern,
  :mod:`specforge.train.ttt`), so the reference engine's cache holds step-0 keys only.
* Loss: the cross-entropy of every depth, weighted ``ttt.decay ** i`` (1.0 averages the depths
  equally, as the DeepSeek-V3 MTP loss does up to its overall factor).
* vLLM serves ``method: "mtp"`` only for architectures that carry MTP layers; for a Llama target
  it has no layout that computes this function (EAGLE-1's has no ``enorm``/``hnorm``, no input
  norm in the block and no final norm), so this head has no vLLM layout.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from draft_models.eagle3 import AttnFn, DraftStep
from draft_models.layers import MLP, Attention, FullVocabDraft, LastHiddenFullVocab, RMSNorm, target_shape
from draft_models.registry import register_draft_type


@dataclass
class MtpConfig(LastHiddenFullVocab):
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int  # the target's vocabulary (the head predicts over all of it)
    num_target_layers: int
    num_modules: int = 1  # D
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096

    @classmethod
    def from_target(cls, target_config, draft_vocab_size: int = 0, aux_layer_ids=None, num_modules: int = 1):
        """Modules as wide as the target, with its attention shape and rotary settings."""
        return cls(**target_shape(target_config), num_modules=num_modules)

    def to_dict(self) -> dict:
        return asdict(self)


class MtpBlock(nn.Module):
    """A full Llama decoder layer."""

    def __init__(self, cfg: MtpConfig):
        super().__init__()
        h = cfg.hidden_size
        self.input_layernorm = RMSNorm(h, cfg.rms_norm_eps)
        self.self_attn = Attention(
            h, h, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.rope_theta
        )
        self.post_attention_layernorm = RMSNorm(h, cfg.rms_norm_eps)
        self.mlp = MLP(h, cfg.intermediate_size)


class MtpModule(nn.Module):
    def __init__(self, cfg: MtpConfig):
        super().__init__()
        h = cfg.hidden_size
        self.enorm = RMSNorm(h, cfg.rms_norm_eps)
        self.hnorm = RMSNorm(h, cfg.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * h, h, bias=False)
        self.block = MtpBlock(cfg)


class MtpDraft(FullVocabDraft, nn.Module):
    head_name = "MTP"
    config_class = MtpConfig
    frozen_target_head = True  # the trainer always loads the target's final norm and LM head

    def __init__(self, cfg: MtpConfig):
        super().__init__()
        self.config = cfg
        h = cfg.hidden_size
        self.embed_tokens = nn.Embedding(cfg.vocab_size, h)
        self.mtp = nn.ModuleList(MtpModule(cfg) for _ in range(cfg.num_modules))
        self.norm = RMSNorm(h, cfg.rms_norm_eps)  # the target's final norm, frozen
        self.lm_head = nn.Linear(h, cfg.vocab_size, bias=False)  # the target's, frozen
        for frozen in (self.embed_tokens.weight, self.norm.weight, self.lm_head.weight):
            frozen.requires_grad_(False)
        self.register_identity_vocab()

    @torch.no_grad()
    def load_target_head(self, lm_head_weight: torch.Tensor, norm_weight: torch.Tensor) -> None:
        """The target's LM head [vocab, H] and final norm [H] (required: they are the shared head)."""
        self.lm_head.weight.copy_(lm_head_weight.to(self.lm_head.weight))
        self.norm.weight.copy_(norm_weight.to(self.norm.weight))

    def combine(self, features: torch.Tensor) -> torch.Tensor:
        """[batch, seq, H] target features (the last hidden state) are depth 0's ``h``."""
        return features.to(self.mtp[0].eh_proj.weight.dtype)

    def step(
        self,
        input_ids: torch.Tensor,
        hidden: torch.Tensor,
        positions: torch.Tensor,
        attn_fn: AttnFn,
        logit_mask: torch.Tensor | None = None,
        depth: int = 0,
    ) -> DraftStep:
        """Draft step ``depth`` (module ``min(depth, D - 1)``). input_ids [batch, seq], hidden
        [batch, seq, H] (the previous depth's output), positions [batch, seq]; ``logit_mask``
        [batch, seq] bool: logits only there."""
        m = self.mtp[min(depth, len(self.mtp) - 1)]
        emb = self.embed_tokens(input_ids).to(hidden.dtype)
        x = m.eh_proj(torch.cat([m.enorm(emb), m.hnorm(hidden)], dim=-1))  # [batch, seq, H]
        block = m.block
        q, k, v = block.self_attn.project(block.input_layernorm(x), positions)
        h = x + block.self_attn.output(attn_fn(q, k, v))
        h = h + block.mlp(block.post_attention_layernorm(h))
        out = h if logit_mask is None else h[logit_mask]
        return DraftStep(logits=self.lm_head(self.norm(out)), hidden=h, key=k, value=v)


register_draft_type("mtp", MtpConfig, MtpDraft)
