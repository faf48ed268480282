"""The EAGLE-3 draft head (Li et al., 2025), laid out as vLLM's ``LlamaForCausalLMEagle3`` loads it.

Contract
--------
* ``fc`` fuses the target's low/mid/high hidden states (``[.., 3 * target_hidden]``) into one
  feature of width ``hidden``; it runs once, on target features only.
* One decoder layer (``midlayer``) attends over ``[input_layernorm(embed(token)); hidden_norm(feature)]``
  (width 2H, embedding first); its residual stream starts from the un-normed feature.
* ``norm`` then ``lm_head`` give logits over the *draft vocabulary*; draft id ``d`` is target id
  ``d + d2t[d]``. ``t2d[t]`` is True where target id ``t`` is in the draft vocabulary.
* :meth:`Eagle3Draft.step` runs one draft step for a whole sequence and returns the pre-norm
  residual stream as the feature for the next step (vLLM's convention). How the step attends is
  the caller's choice (``attn_fn``): the training-time test and cached decoding attend differently.
* The token embedding is the target's, frozen, and is not exported.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from draft_models.layers import MLP, Attention, RMSNorm, llama_config_json, target_shape
from draft_models.registry import VllmLayout, register_draft_type

AttnFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Eagle3Config:
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int  # the target's vocabulary
    draft_vocab_size: int
    target_hidden_size: int
    num_target_layers: int
    aux_layer_ids: list[int] = field(default_factory=list)
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096

    @staticmethod
    def default_feature_layers(num_layers: int) -> list[int]:
        """EAGLE-3's low, middle and high layers: ``(2, L // 2, L - 3)``."""
        return [2, num_layers // 2, num_layers - 3]

    @classmethod
    def from_target(cls, target_config, draft_vocab_size: int, aux_layer_ids: list[int]) -> Eagle3Config:
        """A draft as wide as the target, with the target's attention shape and rotary settings."""
        shape = target_shape(target_config)
        return cls(
            **shape,
            draft_vocab_size=draft_vocab_size,
            target_hidden_size=shape["hidden_size"],
            aux_layer_ids=list(aux_layer_ids),
        )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DraftStep:
    logits: torch.Tensor  # [batch, seq, draft_vocab]; [n, draft_vocab] at the n True of logit_mask
    hidden: torch.Tensor  # [batch, seq, hidden] pre-norm residual stream: the next step's feature
    key: torch.Tensor  # [batch, kv_heads, seq, head_dim] this step's keys (rotated)
    value: torch.Tensor  # [batch, kv_heads, seq, head_dim]


class Eagle3Layer(nn.Module):
    def __init__(self, cfg: Eagle3Config):
        super().__init__()
        h = cfg.hidden_size
        self.input_layernorm = RMSNorm(h, cfg.rms_norm_eps)
        self.hidden_norm = RMSNorm(h, cfg.rms_norm_eps)
        self.self_attn = Attention(
            2 * h, h, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.rope_theta
        )
        self.post_attention_layernorm = RMSNorm(h, cfg.rms_norm_eps)
        self.mlp = MLP(h, cfg.intermediate_size)


class Eagle3Draft(nn.Module):
    config_class = Eagle3Config

    def __init__(self, cfg: Eagle3Config):
        super().__init__()
        self.config = cfg
        h = cfg.hidden_size
        self.embed_tokens = nn.Embedding(cfg.vocab_size, h)
        self.embed_tokens.weight.requires_grad_(False)
        self.fc = nn.Linear(3 * cfg.target_hidden_size, h, bias=False)
        self.midlayer = Eagle3Layer(cfg)
        self.norm = RMSNorm(h, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(h, cfg.draft_vocab_size, bias=False)
        self.register_buffer("d2t", torch.zeros(cfg.draft_vocab_size, dtype=torch.long))
        self.register_buffer("t2d", torch.ones(cfg.vocab_size, dtype=torch.bool))  # set_vocab() fills both

    def set_vocab(self, d2t: torch.Tensor, t2d: torch.Tensor) -> None:
        self.d2t.copy_(d2t)
        self.t2d.copy_(t2d)

    def load_target_embedding(self, weight: torch.Tensor) -> None:
        self.embed_tokens.weight.data.copy_(weight)

    @torch.no_grad()
    def load_target_head(self, lm_head_weight: torch.Tensor, norm_weight: torch.Tensor) -> None:
        """Start ``lm_head`` from the target's output rows of the draft vocabulary (call after
        :meth:`set_vocab`) and ``norm`` from the target's final norm. lm_head_weight [vocab, H]."""
        ids = self.draft_to_target(torch.arange(self.config.draft_vocab_size, device=self.d2t.device))
        self.lm_head.weight.copy_(lm_head_weight[ids.to(lm_head_weight.device)].to(self.lm_head.weight))
        self.norm.weight.copy_(norm_weight.to(self.norm.weight))

    @torch.no_grad()
    def load_target_layer(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Start ``midlayer`` from a target decoder layer (its ``state_dict``, HF Llama names).
        The feature half of the 2H-wide q/k/v projections takes the target's weights; the
        embedding half keeps its random start."""
        layer, h = self.midlayer, self.config.hidden_size
        for name in ("q_proj", "k_proj", "v_proj"):
            getattr(layer.self_attn, name).weight[:, h:].copy_(weights[f"self_attn.{name}.weight"])
        layer.self_attn.o_proj.weight.copy_(weights["self_attn.o_proj.weight"])
        for name in ("gate_proj", "up_proj", "down_proj"):
            getattr(layer.mlp, name).weight.copy_(weights[f"mlp.{name}.weight"])
        layer.hidden_norm.weight.copy_(weights["input_layernorm.weight"])
        layer.post_attention_layernorm.weight.copy_(weights["post_attention_layernorm.weight"])

    def combine(self, aux_hidden_states: torch.Tensor) -> torch.Tensor:
        """[batch, seq, 3 * target_hidden] target features -> [batch, seq, hidden]."""
        return self.fc(aux_hidden_states.to(self.fc.weight.dtype))

    def step(
        self,
        input_ids: torch.Tensor,
        hidden: torch.Tensor,
        positions: torch.Tensor,
        attn_fn: AttnFn,
        logit_mask: torch.Tensor | None = None,
        depth: int = 0,  # the draft step's index (heads with one module per depth use it)
    ) -> DraftStep:
        """One draft step. input_ids [batch, seq], hidden [batch, seq, H], positions [batch, seq];
        ``logit_mask`` [batch, seq] bool: compute logits only where it is True (training)."""
        layer = self.midlayer
        emb = self.embed_tokens(input_ids).to(hidden.dtype)
        x = torch.cat([layer.input_layernorm(emb), layer.hidden_norm(hidden)], dim=-1)
        q, k, v = layer.self_attn.project(x, positions)
        h = hidden + layer.self_attn.output(attn_fn(q, k, v))
        h = h + layer.mlp(layer.post_attention_layernorm(h))
        out = h if logit_mask is None else h[logit_mask]
        return DraftStep(logits=self.lm_head(self.norm(out)), hidden=h, key=k, value=v)

    def draft_to_target(self, draft_ids: torch.Tensor) -> torch.Tensor:
        return draft_ids + self.d2t[draft_ids]


def vllm_spec(cfg: Eagle3Config) -> dict[str, tuple[tuple[int, ...], torch.dtype | None]]:
    """The tensors vLLM's ``LlamaForCausalLMEagle3`` loads: name -> (shape, dtype; None = any float)."""
    h, hd = cfg.hidden_size, cfg.head_dim
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    return {
        "fc.weight": ((h, 3 * cfg.target_hidden_size), None),
        "midlayer.input_layernorm.weight": ((h,), None),
        "midlayer.hidden_norm.weight": ((h,), None),
        "midlayer.post_attention_layernorm.weight": ((h,), None),
        "midlayer.self_attn.q_proj.weight": ((q, 2 * h), None),
        "midlayer.self_attn.k_proj.weight": ((kv, 2 * h), None),
        "midlayer.self_attn.v_proj.weight": ((kv, 2 * h), None),
        "midlayer.self_attn.o_proj.weight": ((h, q), None),
        "midlayer.mlp.gate_proj.weight": ((cfg.intermediate_size, h), None),
        "midlayer.mlp.up_proj.weight": ((cfg.intermediate_size, h), None),
        "midlayer.mlp.down_proj.weight": ((h, cfg.intermediate_size), None),
        "norm.weight": ((h,), None),
        "lm_head.weight": ((cfg.draft_vocab_size, h), None),
        "d2t": ((cfg.draft_vocab_size,), torch.int64),
    }


def vllm_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict in vLLM's names (the same names; the target's embedding and t2d left out)."""
    return {k: v for k, v in state.items() if k not in ("embed_tokens.weight", "t2d")}


def from_vllm_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return dict(tensors)


def vllm_config(cfg: Eagle3Config, dtype: str = "float32") -> dict:
    return {
        **llama_config_json(cfg, "LlamaForCausalLMEagle3", dtype),
        "draft_vocab_size": cfg.draft_vocab_size,
        "target_hidden_size": cfg.target_hidden_size,
        "eagle_config": {"eagle_aux_hidden_state_layer_ids": list(cfg.aux_layer_ids)},
    }


register_draft_type(
    "eagle3",
    Eagle3Config,
    Eagle3Draft,
    VllmLayout("eagle3", "LlamaForCausalLMEagle3", vllm_spec, vllm_tensors, from_vllm_tensors, vllm_config),
)
