"""The P-EAGLE parallel-drafting head: an EAGLE-3 head that drafts k tokens in one forward.

Contract
--------
* Everything of :class:`~draft_models.eagle3.Eagle3Draft` (fused low/mid/high target features, one
  decoder layer over ``[embed(token); feature]``, a draft-vocabulary head), plus two things:
  ``mask_hidden`` [3 * target_hidden], a learned stand-in for the target features a mask position
  does not have, and ``mask_token_id``, the (frozen, target-embedded) token fed at mask positions.
* One forward drafts ``k`` tokens after the last verified token ``x_{n+1}`` (at position ``n``, paired
  with the target's feature ``f_n``): that slot predicts ``x_{n+2}``, and ``k - 1`` mask slots at
  positions ``n + 1 .. n + k - 1`` (token ``mask_token_id``, feature ``fc(mask_hidden)``) predict
  ``x_{n+3} .. x_{n+k+1}``. Mask slot ``j`` attends causally: to the draft's cache of the verified
  prefix (computed from real target features) and to mask slots ``1..j``. This is the layout vLLM
  0.32 builds with ``parallel_drafting: true`` (``llm_base_proposer.py``,
  ``_copy_and_expand_eagle_inputs``): the bonus slot, then ``k - 1`` slots of the parallel-drafting
  token whose hidden state is ``combine_hidden_states(mask_hidden)``.
* The training-time test (:func:`specforge.train.ttt.ttt_forward`) therefore trains depth ``j`` of
  anchor ``t`` exactly as it trains a sequential head's step ``j`` (same keys visible, same rotary
  position ``t + j``, same label), with :meth:`mask_inputs` in place of the drafted token and the
  previous step's feature.
* vLLM layout: the EAGLE-3 checkpoint plus ``mask_hidden`` [1, 3 * target_hidden] and
  ``ptd_token_id`` in ``config.json``; served as ``{"method": "eagle3", "parallel_drafting": true}``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from draft_models import eagle3
from draft_models.eagle3 import Eagle3Config, Eagle3Draft
from draft_models.registry import VllmLayout, register_draft_type


@dataclass
class ParallelEagle3Config(Eagle3Config):
    # the token fed at mask positions; its embedding is the target's (frozen). <|endoftext|> (id 0)
    # on SmolLM2/Llama-3-style vocabularies: a special token chat answers never contain
    mask_token_id: int = 0

    @classmethod
    def from_target(
        cls, target_config, draft_vocab_size: int, aux_layer_ids: list[int], mask_token_id: int = 0
    ) -> ParallelEagle3Config:
        base = Eagle3Config.from_target(target_config, draft_vocab_size, aux_layer_ids)
        vocab = base.vocab_size
        if not 0 <= mask_token_id < vocab:
            raise ValueError(
                f"mask_token_id {mask_token_id} is outside the target's vocabulary (0..{vocab - 1})"
            )
        return cls(**base.to_dict(), mask_token_id=mask_token_id)


class ParallelEagle3Draft(Eagle3Draft):
    config_class = ParallelEagle3Config
    parallel_drafting = True  # drafts every position of a step in one forward

    def __init__(self, cfg: ParallelEagle3Config):
        super().__init__(cfg)
        # a feature at the scale of a target hidden state (RMS ~1 per entry); a zero start would put
        # hidden_norm at its 1/sqrt(eps) gradient
        gen = torch.Generator().manual_seed(0)
        self.mask_hidden = nn.Parameter(torch.randn(3 * cfg.target_hidden_size, generator=gen))

    def mask_feature(self) -> torch.Tensor:
        """[hidden] the feature every mask slot starts from: ``fc(mask_hidden)``, as vLLM computes it."""
        return self.fc(self.mask_hidden.to(self.fc.weight.dtype))

    def mask_inputs(self, batch: int, seq: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs of a block of mask slots: token ids [batch, seq] and features [batch, seq, hidden]."""
        ids = torch.full((batch, seq), self.config.mask_token_id, dtype=torch.long, device=self.d2t.device)
        return ids, self.mask_feature().expand(batch, seq, -1)


def vllm_spec(cfg: ParallelEagle3Config) -> dict[str, tuple[tuple[int, ...], torch.dtype | None]]:
    return {**eagle3.vllm_spec(cfg), "mask_hidden": ((1, 3 * cfg.target_hidden_size), None)}


def vllm_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = eagle3.vllm_tensors(state)
    out["mask_hidden"] = out["mask_hidden"].reshape(1, -1)
    return out


def from_vllm_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = dict(tensors)
    out["mask_hidden"] = out["mask_hidden"].reshape(-1)
    return out


def vllm_config(cfg: ParallelEagle3Config, dtype: str = "float32") -> dict:
    # vLLM reads the parallel-drafting token from the first of dflash_config.mask_token_id,
    # mask_token_id, dspark_noise_token_id, pard_token, ptd_token_id that the config has
    return {**eagle3.vllm_config(cfg, dtype), "ptd_token_id": cfg.mask_token_id}


register_draft_type(
    "peagle",
    ParallelEagle3Config,
    ParallelEagle3Draft,
    VllmLayout(
        "eagle3",
        "LlamaForCausalLMEagle3",
        vllm_spec,
        vllm_tensors,
        from_vllm_tensors,
        vllm_config,
        speculative_options={"parallel_drafting": True},
        config_marker="ptd_token_id",
    ),
)
