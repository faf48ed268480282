"""The EAGLE-3 training-time test (TTT).

Contract: :func:`ttt_forward` unrolls an EAGLE-3 draft for ``steps`` steps over a captured batch.

* Step 0 pairs the target's fused feature at position ``t`` with the embedding of token ``t+1``
  and predicts the target's distribution at ``t+1`` (its prediction of token ``t+2``).
* Step ``i`` feeds the draft its own step ``i-1`` feature (pre-norm residual stream) with token
  ``t+1+i`` at rotary position ``t+i`` (as vLLM positions its ``i``-th draft step), and predicts the
  target's distribution at ``t+1+i``. Its query at ``t`` attends to step 0's keys at positions
  ``<= t`` plus the keys that steps ``1..i`` produced at ``t`` itself — the cache it would see at
  inference after drafting ``i`` tokens from anchor ``t``.
* The loss of step ``i`` is the cross-entropy against the target's softmax restricted to the draft
  vocabulary, averaged over positions whose predicted token is an assistant token and whose target
  argmax lies in the draft vocabulary; step losses are weighted ``decay ** i``.

It also returns, per step, whether the draft's argmax equals the target's argmax, from which
:func:`acceptance_stats` derives alpha_k and the simulated tau of a greedy chain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from draft_models.eagle3 import Eagle3Draft
from draft_models.layers import attend
from serving.acceptance import chain_tau
from specforge.capture import CapturedBatch


@dataclass
class TTTOutput:
    loss: torch.Tensor  # [] weighted sum of step losses
    step_losses: torch.Tensor  # [steps] (detached)
    correct: torch.Tensor  # [steps, batch, seq] bool: draft argmax == target argmax
    valid: torch.Tensor  # [steps, batch, seq] bool: position counted at that step


def _shift(x: torch.Tensor, by: int, fill: float | int | bool = 0) -> torch.Tensor:
    """x[:, t + by] at position t, ``fill`` past the end. x [batch, seq, ...]."""
    if by == 0:
        return x
    pad = torch.full_like(x[:, :by], fill)
    return torch.cat([x[:, by:], pad], dim=1)


def _ttt_attention(
    q: torch.Tensor, k0: torch.Tensor, v0: torch.Tensor, extra: list[tuple[torch.Tensor, torch.Tensor]]
) -> torch.Tensor:
    """q [b, h, s, d]; k0/v0 [b, kvh, s, d] causal; each extra (k, v) is seen only on the diagonal."""
    _, h, s, d = q.shape
    if not extra:
        causal = torch.ones(s, s, dtype=torch.bool, device=q.device).tril()
        return attend(q, k0, v0, causal)
    rep = h // k0.shape[1]
    k0, v0 = k0.repeat_interleave(rep, 1), v0.repeat_interleave(rep, 1)
    scale = 1.0 / math.sqrt(d)
    scores = (q @ k0.transpose(-1, -2)) * scale  # [b, h, s, s]
    causal = torch.ones(s, s, dtype=torch.bool, device=q.device).tril()
    scores = scores.masked_fill(~causal, float("-inf"))
    diag_k = [k.repeat_interleave(rep, 1) for k, _ in extra]
    diag_v = [v.repeat_interleave(rep, 1) for _, v in extra]
    diag = torch.stack([(q * k).sum(-1) * scale for k in diag_k], dim=-1)  # [b, h, s, n_extra]
    probs = torch.cat([scores, diag], dim=-1).float().softmax(-1).to(q.dtype)
    out = probs[..., :s] @ v0
    for j, v in enumerate(diag_v):
        out = out + probs[..., s + j, None] * v
    return out


def target_logits(
    batch: CapturedBatch, lm_head: torch.nn.Module | None, where: torch.Tensor | None = None
) -> torch.Tensor:
    """The target's logits: stored, or recomputed from the last hidden state; [batch, seq, vocab],
    or [n, vocab] at the n True positions of ``where`` [batch, seq]."""
    if batch.logits is not None:
        return (batch.logits if where is None else batch.logits[where]).float()
    if lm_head is None:
        raise ValueError("the batch holds no logits and no target lm_head was given")
    hidden = batch.last_hidden_state if where is None else batch.last_hidden_state[where]
    with torch.no_grad():
        return lm_head(hidden.to(lm_head.weight.dtype)).float()


def ttt_forward(
    draft: Eagle3Draft,
    batch: CapturedBatch,
    lm_head: torch.nn.Module | None = None,
    steps: int = 7,
    decay: float = 0.8,
) -> TTTOutput:
    """Logits (the target's and the draft's) are computed only where a loss can fall: the target's
    at positions ``j`` whose next token is an assistant token, the draft's at each step's counted
    positions, so the cost follows the answer tokens, not the padded batch."""
    b, s = batch.input_ids.shape
    pos0 = torch.arange(s, device=batch.input_ids.device).expand(b, s)
    with torch.no_grad():
        lengths = batch.attention_mask.sum(1)  # [b]
        need = _shift(batch.loss_mask, 1).bool() & (pos0 + 1 < lengths[:, None])  # [b, s]
        logits_t = target_logits(batch, lm_head, need)  # [n, V] at the True of need
        row = torch.full((b, s), -1, dtype=torch.long, device=need.device)
        row[need] = torch.arange(logits_t.shape[0], device=need.device)  # [b, s] -> row of logits_t
        argmax_t = torch.zeros(b, s, dtype=torch.long, device=need.device)
        argmax_t[need] = logits_t.argmax(-1)  # [b, s] target ids where needed
        in_vocab = draft.t2d[argmax_t] & need  # [b, s]
        probs_t = logits_t[:, draft.t2d].softmax(-1)  # [n, Vd], draft ids ascend with target ids
    hidden = draft.combine(batch.aux_hidden_states)
    k0 = v0 = None
    extra: list[tuple[torch.Tensor, torch.Tensor]] = []
    losses, correct, valid = [], [], []
    for i in range(steps):
        ids_i = _shift(batch.input_ids, 1 + i)

        def attn_fn(q, k, v, _first=i == 0):
            nonlocal k0, v0
            if _first:
                k0, v0 = k, v
                return _ttt_attention(q, k, v, [])
            return _ttt_attention(q, k0, v0, [*extra, (k, v)])

        with torch.no_grad():
            # position t counts at step i when token t+2+i is an assistant token in the sequence
            # and the target's argmax at t+1+i is in the draft vocabulary
            mask_i = _shift(in_vocab, 1 + i, False) & (pos0 + 2 + i < lengths[:, None])  # [b, s]
            rows_i = _shift(row, 1 + i, -1)[mask_i]  # [n_i] rows of logits_t / probs_t
            target_i = _shift(argmax_t, 1 + i)  # [b, s]
        out = draft.step(ids_i, hidden, pos0 + i, attn_fn, logit_mask=mask_i)
        if i > 0:
            extra.append((out.key, out.value))
        logp = F.log_softmax(out.logits.float(), dim=-1)  # [n_i, Vd]
        ce = -(probs_t[rows_i] * logp).sum(-1)  # [n_i]
        losses.append(ce.sum() / mask_i.sum().clamp(min=1))
        with torch.no_grad():
            hit = torch.zeros(b, s, dtype=torch.bool, device=mask_i.device)
            hit[mask_i] = draft.draft_to_target(out.logits.argmax(-1)) == target_i[mask_i]
            correct.append(hit)
            valid.append(mask_i)
        hidden = out.hidden
    weights = torch.tensor([decay**i for i in range(steps)], device=hidden.device)
    step_losses = torch.stack(losses)
    return TTTOutput(
        loss=(weights * step_losses).sum(),
        step_losses=step_losses.detach(),
        correct=torch.stack(correct),
        valid=torch.stack(valid),
    )


@dataclass
class AcceptanceStats:
    alpha: list[float]  # alpha_k = P(step k correct | steps < k correct), k = 0..steps-1
    tau: float  # simulated greedy-chain tau, bonus token included
    acc: list[float]  # unconditional per-step accuracy


def acceptance_stats(correct: torch.Tensor, valid: torch.Tensor) -> AcceptanceStats:
    """From [steps, batch, seq] correct/valid masks (summed over any number of batches)."""
    steps = correct.shape[0]
    alive = valid[0].clone()  # anchors whose first step counts
    alpha, acc = [], []
    for k in range(steps):
        counted = alive & valid[k]
        n = int(counted.sum())
        hit = counted & correct[k]
        alpha.append(int(hit.sum()) / n if n else 0.0)
        acc.append(int((valid[k] & correct[k]).sum()) / max(1, int(valid[k].sum())))
        alive = hit
    return AcceptanceStats(alpha=alpha, tau=chain_tau(alpha, steps), acc=acc)
