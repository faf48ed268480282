"""Building blocks of draft heads: RMSNorm, rotary embedding, attention projections, SwiGLU MLP,
and the target-shaped config fields every head shares (:func:`target_shape`, :func:`llama_config_json`).

Contract: plain torch modules whose parameter names match the Llama convention vLLM loads
(``q_proj``/``k_proj``/``v_proj``/``o_proj``, ``gate_proj``/``up_proj``/``down_proj``, ``weight``
of RMSNorm). Attention itself is left to the caller (training-time test and cached decoding attend
differently): :class:`Attention` projects and rotates, and :func:`attend` runs SDPA over given
keys and values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from draft_models.aux_hooks import LAST_HIDDEN


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rotary_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for ``positions`` [batch, seq] -> each [batch, 1, seq, head_dim] (neox layout)."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    )
    freqs = positions.float()[..., None] * inv_freq  # [batch, seq, head_dim / 2]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    """Q/K/V/O projections with rotary embedding; input width may differ from the output width."""

    def __init__(self, in_dim: int, hidden: int, heads: int, kv_heads: int, head_dim: int, rope_theta: float):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim, self.rope_theta = heads, kv_heads, head_dim, rope_theta
        self.q_proj = nn.Linear(in_dim, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(in_dim, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(in_dim, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, hidden, bias=False)

    def project(
        self, x: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [batch, seq, in_dim] -> q [batch, heads, seq, d], k and v [batch, kv_heads, seq, d]."""
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = rotary_cos_sin(positions, self.head_dim, self.rope_theta, q.dtype)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def output(self, attn: torch.Tensor) -> torch.Tensor:
        """attn [batch, heads, seq, d] -> [batch, seq, hidden]."""
        b, h, s, d = attn.shape
        return self.o_proj(attn.transpose(1, 2).reshape(b, s, h * d))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """SDPA with grouped KV heads; ``mask`` is boolean (True = may attend), broadcastable to scores."""
    if k.shape[1] != q.shape[1]:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def target_shape(target_config) -> dict:
    """The config fields a head as wide as its target copies: width, MLP, attention shape,
    vocabulary, depth, norm epsilon and rotary settings of an HF Llama-style config."""
    c = target_config
    heads = int(c.num_attention_heads)
    rope = getattr(c, "rope_parameters", None) or {}
    return {
        "hidden_size": int(c.hidden_size),
        "intermediate_size": int(c.intermediate_size),
        "num_attention_heads": heads,
        "num_key_value_heads": int(getattr(c, "num_key_value_heads", None) or heads),
        "head_dim": int(getattr(c, "head_dim", None) or c.hidden_size // heads),
        "vocab_size": int(c.vocab_size),
        "num_target_layers": int(c.num_hidden_layers),
        "rms_norm_eps": float(c.rms_norm_eps),
        "rope_theta": float(rope.get("rope_theta", getattr(c, "rope_theta", 10000.0))),
        "max_position_embeddings": int(c.max_position_embeddings),
    }


def llama_config_json(cfg, architecture: str, dtype: str) -> dict:
    """The ``config.json`` fields of a one-layer Llama draft checkpoint that vLLM loads."""
    return {
        "architectures": [architecture],
        "model_type": "llama",
        "num_hidden_layers": 1,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "max_position_embeddings": cfg.max_position_embeddings,
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": False,
        "torch_dtype": dtype,
    }


class LastHiddenFullVocab:
    """Config mixin of heads that read the target's last hidden state (feature layer
    :data:`~draft_models.aux_hooks.LAST_HIDDEN`) and predict over the whole target vocabulary;
    the trainer asks every head for these the same way."""

    vocab_size: int

    @property
    def draft_vocab_size(self) -> int:
        return self.vocab_size

    @property
    def aux_layer_ids(self) -> list[int]:
        return [LAST_HIDDEN]

    @staticmethod
    def default_feature_layers(num_layers: int) -> list[int]:
        return [LAST_HIDDEN]


class FullVocabDraft:
    """Module mixin of heads that predict over the whole target vocabulary and read the target's
    own (frozen) token embedding: the draft-to-target map is the identity."""

    config: LastHiddenFullVocab
    embed_tokens: nn.Embedding
    head_name: str  # for errors, e.g. "EAGLE-1"

    def register_identity_vocab(self) -> None:
        """The d2t [vocab] / t2d [vocab] buffers every head carries, here the identity map."""
        vocab = self.config.vocab_size
        self.register_buffer("d2t", torch.zeros(vocab, dtype=torch.long))  # type: ignore[attr-defined]
        self.register_buffer("t2d", torch.ones(vocab, dtype=torch.bool))  # type: ignore[attr-defined]

    def set_vocab(self, d2t: torch.Tensor, t2d: torch.Tensor) -> None:
        if int(t2d.sum()) != self.config.vocab_size:
            raise ValueError(f"an {self.head_name} draft predicts over the whole target vocabulary")

    def load_target_embedding(self, weight: torch.Tensor) -> None:
        self.embed_tokens.weight.data.copy_(weight)

    def draft_to_target(self, draft_ids: torch.Tensor) -> torch.Tensor:
        return draft_ids
