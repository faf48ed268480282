"""The multi-token-prediction (MTP) draft head, DeepSeek-V3 style, for any HF decoder target.

Contract
--------
* ``num_modules`` (D >= 1) sequential modules. Module k takes the previous depth's hidden state
  ``h_{k-1}`` (depth 0: the target's last hidden state, after its final norm as vLLM hands
  DeepSeek-V3's MTP layers, or with ``feature_layer = L`` before it, as it hands MiMo's) and the embedding of the token it follows:
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
* vLLM serves ``method: "mtp"`` only for architectures that carry MTP layers. EAGLE-1's layout
  cannot hold this function (no ``enorm``/``hnorm``, no input norm in the block, no final norm),
  but MiMo's can: vLLM's ``MiMoMTP`` layer is ``final_layernorm(block(input_proj([hidden_layernorm(h);
  token_layernorm(e)])))`` with a Qwen2 block, fed the last layer's output before the final norm.
  A D = 1 head with ``feature_layer = L`` exports to it (:func:`mimo_spec`), inside a copy of the
  target re-expressed as ``MiMoForCausalLM`` (``specforge.export``); Qwen2's q/k/v biases are zero,
  so a Llama target computes exactly what it did. vLLM's MiMo runs module 0 for every draft step,
  so a D > 1 head is served by the reference engine only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from draft_models.aux_hooks import LAST_HIDDEN
from draft_models.eagle3 import AttnFn, DraftStep
from draft_models.layers import MLP, Attention, FullVocabDraft, LastHiddenFullVocab, RMSNorm, target_shape
from draft_models.registry import VllmLayout, register_draft_type


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
    feature_layer: int = LAST_HIDDEN  # what depth 0 reads: -1 after the final norm, L before it

    @classmethod
    def from_target(cls, target_config, draft_vocab_size: int = 0, aux_layer_ids=None, num_modules: int = 1):
        """Modules as wide as the target, with its attention shape and rotary settings; depth 0
        reads the one feature layer in ``aux_layer_ids`` (default: the last hidden state)."""
        layers = list(aux_layer_ids) if aux_layer_ids is not None else [LAST_HIDDEN]
        shape = target_shape(target_config)
        if len(layers) != 1 or layers[0] not in (LAST_HIDDEN, shape["num_target_layers"]):
            raise ValueError(
                f"an MTP head reads one feature layer, {LAST_HIDDEN} (after the final norm) or "
                f"{shape['num_target_layers']} (before it), not {layers}"
            )
        return cls(**shape, num_modules=num_modules, feature_layer=layers[0])

    @property
    def aux_layer_ids(self) -> list[int]:
        return [self.feature_layer]

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


MIMO_LAYER = "model.mtp_layers.0."
_BLOCK = ("input_layernorm", "post_attention_layernorm", "self_attn", "mlp")


def _servable(cfg: MtpConfig) -> None:
    if cfg.num_modules != 1:
        raise ValueError(
            f"vLLM's MiMo MTP runs module 0 for every draft step; this head has D = {cfg.num_modules} "
            "modules, so it is served by the reference engine only (train D = 1 for vLLM)"
        )
    if cfg.feature_layer != cfg.num_target_layers:
        raise ValueError(
            f"vLLM hands MiMo's MTP layer the last layer's output before the final norm, but this head "
            f"reads layer {cfg.feature_layer}; train it with draft.aux_layers=[{cfg.num_target_layers}]"
        )


def mimo_spec(cfg: MtpConfig) -> dict[str, tuple[tuple[int, ...], torch.dtype | None]]:
    """The MTP tensors vLLM's ``MiMoMTP`` loads from the target's checkpoint (name -> shape, dtype)."""
    _servable(cfg)
    h, hd, i = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    shapes = {
        "token_layernorm.weight": (h,),
        "hidden_layernorm.weight": (h,),
        "input_proj.weight": (h, 2 * h),
        "final_layernorm.weight": (h,),
        "input_layernorm.weight": (h,),
        "post_attention_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (q, h),
        "self_attn.q_proj.bias": (q,),
        "self_attn.k_proj.weight": (kv, h),
        "self_attn.k_proj.bias": (kv,),
        "self_attn.v_proj.weight": (kv, h),
        "self_attn.v_proj.bias": (kv,),
        "self_attn.o_proj.weight": (h, q),
        "mlp.gate_proj.weight": (i, h),
        "mlp.up_proj.weight": (i, h),
        "mlp.down_proj.weight": (h, i),
    }
    return {MIMO_LAYER + k: (shape, None) for k, shape in shapes.items()}


def mimo_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Module 0 in MiMo's names: ``input_proj`` reads ``[hidden; embedding]`` (ours
    ``[embedding; hidden]``, so its column halves swap), zero q/k/v biases, and the shared final
    norm as the layer's ``final_layernorm``."""
    w = state["mtp.0.eh_proj.weight"]  # [H, 2H] over [emb; hidden]
    h = w.shape[0]
    out = {
        "token_layernorm.weight": state["mtp.0.enorm.weight"],
        "hidden_layernorm.weight": state["mtp.0.hnorm.weight"],
        "input_proj.weight": torch.cat([w[:, h:], w[:, :h]], dim=1),
        "final_layernorm.weight": state["norm.weight"],
    }
    for name, t in state.items():
        if name.startswith("mtp.0.block.") and name.split(".")[3] in _BLOCK:
            out[name[len("mtp.0.block.") :]] = t
    for p in ("q", "k", "v"):
        weight = out[f"self_attn.{p}_proj.weight"]
        out[f"self_attn.{p}_proj.bias"] = torch.zeros(weight.shape[0], dtype=weight.dtype)
    return {MIMO_LAYER + k: v for k, v in out.items()}


def from_mimo_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MiMo's module 0 back to this head's state dict (its q/k/v biases must be zero)."""
    t = {k[len(MIMO_LAYER) :]: v for k, v in tensors.items() if k.startswith(MIMO_LAYER)}
    nonzero = [p for p in ("q", "k", "v") if t[f"self_attn.{p}_proj.bias"].abs().max() > 0]
    if nonzero:
        raise ValueError(
            f"this MTP layer has non-zero {'/'.join(nonzero)}_proj biases, which the head cannot hold"
        )
    w = t["input_proj.weight"]  # [H, 2H] over [hidden; emb]
    h = w.shape[0]
    out = {
        "mtp.0.enorm.weight": t["token_layernorm.weight"],
        "mtp.0.hnorm.weight": t["hidden_layernorm.weight"],
        "mtp.0.eh_proj.weight": torch.cat([w[:, h:], w[:, :h]], dim=1),
        "norm.weight": t["final_layernorm.weight"],
    }
    for name, v in t.items():
        if name.split(".")[0] in _BLOCK and not name.endswith("_proj.bias"):
            out["mtp.0.block." + name] = v
    return out


def mimo_config(cfg: MtpConfig, dtype: str = "float32") -> dict:
    """The fields set on the target's config.json: MiMo, one MTP layer."""
    _servable(cfg)
    return {"architectures": ["MiMoForCausalLM"], "num_nextn_predict_layers": 1, "torch_dtype": dtype}


register_draft_type(
    "mtp",
    MtpConfig,
    MtpDraft,
    VllmLayout(
        "mtp", "MiMoForCausalLM", mimo_spec, mimo_tensors, from_mimo_tensors, mimo_config, in_target=True
    ),
)
