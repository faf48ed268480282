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
  argmax lies in the draft vocabulary; step losses are weighted ``decay ** i``. A head with a
  ``feature_loss_weight`` (EAGLE-1) adds smooth L1 between its output feature and the target's
  last hidden state at the predicted position, with the cross-entropy weighted by its
  ``ce_loss_weight`` (EAGLE's 1.0 and 0.1). The same unrolling is EAGLE-1's training-time test.
* A parallel-drafting head (``draft.parallel_drafting``, P-EAGLE) is unrolled the same way, with
  one difference: steps ``i >= 1`` are mask slots, fed the head's mask token and mask feature
  (:meth:`~draft_models.peagle.ParallelEagle3Draft.mask_inputs`) instead of token ``t+1+i`` and
  the previous step's output. Their keys and visibility are those of serving (the verified
  prefix's step-0 keys, plus the mask slots ``1..i`` of the same anchor), and no step depends on
  another's output, so each depth learns to predict from the prefix alone.

It also returns, per step, whether the draft's argmax equals the target's argmax at every position
whose predicted token is an assistant token (``valid``; a target argmax outside the draft
vocabulary is a miss, as at serving time), and two estimates derived from it:

* :func:`acceptance_stats`: alpha_k over every anchor (teacher-forced), and the tau of a greedy
  chain built from those alphas;
* :func:`walked_acceptance`: the greedy chain replayed closed loop over each answer, as a server
  walks it (a step at anchor ``t`` that accepts ``a`` drafts moves to anchor ``t + a + 1``). Served
  anchors are not a uniform sample of positions: runs the draft gets right are crossed in few steps,
  stretches it gets wrong are visited token by token, so the all-anchor average overstates tau.
  On greedily regenerated data the walk is what a greedy server sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from draft_models.eagle import EagleDraft
from draft_models.eagle3 import Eagle3Draft
from draft_models.mtp import MtpDraft
from serving.acceptance import chain_tau
from specforge.capture import CapturedBatch
from specforge.packing import block_causal_mask, next_is_answer, same_sequence_ahead, sequence_ids
from specforge.train.attention import ttt_attention


@dataclass
class TTTOutput:
    loss: torch.Tensor  # [] weighted sum of step losses
    step_losses: torch.Tensor  # [steps] (detached)
    correct: torch.Tensor  # [steps, batch, seq] bool: draft argmax == target argmax
    valid: torch.Tensor  # [steps, batch, seq] bool: the step's predicted token is an assistant token
    in_vocab: torch.Tensor  # [steps, batch, seq] bool: valid, and the target argmax is in the draft vocab
    draft_tokens: (
        torch.Tensor
    )  # [steps, batch, seq] int64 the draft's argmax (target ids) where in_vocab, else -1


def _shift(x: torch.Tensor, by: int, fill: float | int | bool = 0) -> torch.Tensor:
    """x[:, t + by] at position t, ``fill`` past the end. x [batch, seq, ...]."""
    if by == 0:
        return x
    pad = torch.full_like(x[:, :by], fill)
    return torch.cat([x[:, by:], pad], dim=1)


@dataclass
class TargetHead:
    """The frozen target's output head as training uses it: the soft labels need only the rows of
    the draft vocabulary (the target's softmax restricted to the draft vocabulary and renormalised
    is computed from those columns alone); the whole head is needed only for the target's argmax
    where a batch does not carry it (captures made before ``target_argmax`` was stored)."""

    draft_weight: torch.Tensor  # [draft_vocab, H] rows of the draft vocabulary, ascending target ids
    weight: torch.Tensor | None = None  # [vocab, H] the whole head, or None

    @classmethod
    def of(
        cls, lm_head: torch.nn.Module | torch.Tensor | TargetHead, t2d: torch.Tensor, keep_full: bool = True
    ) -> TargetHead:
        """From the head (a module, or its [vocab, H] weight) and the draft vocabulary ``t2d`` [vocab]."""
        if isinstance(lm_head, TargetHead):
            return lm_head
        weight = (lm_head if isinstance(lm_head, torch.Tensor) else lm_head.weight).detach()
        rows = weight if bool(t2d.all()) else weight[t2d.to(weight.device)]
        return cls(draft_weight=rows, weight=weight if keep_full else None)


def _target_labels(batch: CapturedBatch, head: TargetHead | None, need: torch.Tensor, t2d: torch.Tensor):
    """At the n True positions of ``need`` [batch, seq]: the target's argmax over its whole vocabulary
    [n] and its softmax restricted to the draft vocabulary [n, draft_vocab]."""
    if batch.logits is not None:
        logits = batch.logits[need].float()
        return logits.argmax(-1), logits[:, t2d].softmax(-1)
    if head is None:
        raise ValueError("the batch holds no logits and no target head was given")
    hidden = batch.last_hidden_state[need]
    if batch.target_argmax is not None:
        argmax = batch.target_argmax[need]
    elif head.weight is not None:
        argmax = (hidden.to(head.weight.dtype) @ head.weight.T).argmax(-1)
    else:
        raise ValueError("the batch carries no target_argmax and the target head holds only draft rows")
    logits = hidden.to(head.draft_weight.dtype) @ head.draft_weight.T  # [n, draft_vocab]
    return argmax, logits.float().softmax(-1)


def ttt_forward(
    draft: Eagle3Draft | EagleDraft | MtpDraft,
    batch: CapturedBatch,
    lm_head: torch.nn.Module | TargetHead | None = None,
    steps: int = 7,
    decay: float = 0.8,
) -> TTTOutput:
    """Logits (the target's and the draft's) are computed only where a loss can fall: the target's
    at positions ``j`` whose next token is an assistant token, the draft's at each step's counted
    positions, so the cost follows the answer tokens, not the padded batch. Packed rows
    (``batch.position_ids``) are handled as separate sequences: positions restart, attention is
    block-diagonal, and no step looks across a sequence's end."""
    b, s = batch.input_ids.shape
    device = batch.input_ids.device
    packed = batch.position_ids is not None
    pos0 = batch.position_ids if packed else torch.arange(s, device=device).expand(b, s)
    with torch.no_grad():
        seq = sequence_ids(pos0, batch.attention_mask)  # [b, s] sequence of each token, -1 on padding
        mask0 = block_causal_mask(pos0, batch.attention_mask) if packed else None  # None: causal
        need = next_is_answer(batch.loss_mask, seq)  # [b, s]
        head = TargetHead.of(lm_head, draft.t2d) if lm_head is not None else None
        argmax_n, probs_t = _target_labels(batch, head, need, draft.t2d)  # [n], [n, Vd]
        row = torch.full((b, s), -1, dtype=torch.long, device=device)
        row[need] = torch.arange(argmax_n.shape[0], device=device)  # [b, s] -> row of probs_t
        argmax_t = torch.zeros(b, s, dtype=torch.long, device=device)
        argmax_t[need] = argmax_n  # [b, s] target ids where needed
        in_vocab = draft.t2d[argmax_t] & need  # [b, s]
    ce_weight = getattr(draft, "ce_loss_weight", 1.0)
    feature_weight = getattr(draft, "feature_loss_weight", 0.0)
    hidden = draft.combine(batch.aux_hidden_states)
    k0 = v0 = None
    extra: list[tuple[torch.Tensor, torch.Tensor]] = []
    losses, correct, valid, counted, tokens = [], [], [], [], []
    parallel = getattr(draft, "parallel_drafting", False)
    for i in range(steps):
        ids_i = _shift(batch.input_ids, 1 + i)
        if parallel and i > 0:  # a mask slot: the mask token and feature, not the drafted ones
            ids_i, hidden = draft.mask_inputs(b, s)

        def attn_fn(q, k, v, _first=i == 0):
            nonlocal k0, v0
            if _first:
                k0, v0 = k, v
                return ttt_attention(q, k, v, [], mask0)
            return ttt_attention(q, k0, v0, [*extra, (k, v)], mask0)

        with torch.no_grad():
            # position t counts at step i when token t+2+i is an assistant token of t's sequence
            # and the target's argmax at t+1+i is in the draft vocabulary
            ahead = same_sequence_ahead(seq, 2 + i)  # [b, s]
            mask_i = _shift(in_vocab, 1 + i, False) & ahead  # [b, s]
            valid_i = _shift(need, 1 + i, False) & ahead  # [b, s]
            rows_i = _shift(row, 1 + i, -1)[mask_i]  # [n_i] rows of probs_t
            target_i = _shift(argmax_t, 1 + i)  # [b, s]
        out = draft.step(ids_i, hidden, pos0 + i, attn_fn, logit_mask=mask_i, depth=i)
        if i > 0:
            extra.append((out.key, out.value))
        logp = F.log_softmax(out.logits.float(), dim=-1)  # [n_i, Vd]
        ce = -(probs_t[rows_i] * logp).sum(-1)  # [n_i]
        n_i = mask_i.sum().clamp(min=1)
        loss_i = ce_weight * ce.sum() / n_i
        if feature_weight:  # EAGLE-1: regress the target's next feature (its last hidden state)
            want = _shift(batch.last_hidden_state, 1 + i)[mask_i].float()  # [n_i, H]
            reg = F.smooth_l1_loss(out.hidden[mask_i].float(), want, reduction="none").mean(-1)  # [n_i]
            loss_i = loss_i + feature_weight * reg.sum() / n_i
        losses.append(loss_i)
        with torch.no_grad():
            picked = torch.full((b, s), -1, dtype=torch.long, device=mask_i.device)
            picked[mask_i] = draft.draft_to_target(out.logits.argmax(-1))
            hit = (picked == target_i) & mask_i
            tokens.append(picked)
            correct.append(hit)
            valid.append(valid_i)
            counted.append(mask_i)
        hidden = out.hidden
    weights = torch.tensor([decay**i for i in range(steps)], device=hidden.device)
    step_losses = torch.stack(losses)
    return TTTOutput(
        loss=(weights * step_losses).sum(),
        step_losses=step_losses.detach(),
        correct=torch.stack(correct),
        valid=torch.stack(valid),
        in_vocab=torch.stack(counted),
        draft_tokens=torch.stack(tokens),
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


@dataclass
class WalkStats:
    tau: float  # tokens emitted per step, bonus included
    acceptance_per_position: list[float]  # [k]: P(a step accepts >= i + 1 drafts)
    steps: int  # verification steps walked
    tokens: int  # tokens they emitted


def walked_acceptance(
    correct: torch.Tensor, valid: torch.Tensor, k: int, max_new_tokens: int | None = None
) -> WalkStats:
    """Replay a greedy ``k``-draft chain over every answer in [steps, batch, seq] ``correct`` /
    ``valid`` masks (``steps >= k``; anchor ``t``'s step ``i`` predicts token ``t + 2 + i``).

    An answer is a run of anchors valid at step 0. Its first token comes from the prefill, so the
    first verification step drafts from the anchor after the run's first; a step at anchor ``t``
    accepts the leading correct drafts ``a`` (at most ``k``, and only while the answer lasts), emits
    ``a + 1`` tokens (capped at the tokens left) and moves to ``t + a + 1``. ``max_new_tokens``
    truncates each answer as a server's length limit does."""
    if correct.shape[0] < k:
        raise ValueError(f"a {k}-draft walk needs masks of at least {k} steps, got {correct.shape[0]}")
    ok = (correct[:k] & valid[:k]).cpu().tolist()  # [k][batch][seq]
    hist = [0] * (k + 1)  # steps that accepted exactly j drafts
    tokens = 0
    for b in range(len(ok[0])):
        starts = valid[0, b].cpu().tolist()
        t, n = 0, len(starts)
        while t < n:
            if not starts[t] or (t > 0 and starts[t - 1]):
                t += 1
                continue
            end = t
            while end < n and starts[end]:
                end += 1
            # anchors t..end-1 predict answer tokens t+2..end+1; the first comes from the prefill
            last = end + 1 if max_new_tokens is None else min(end + 1, t + 2 + max_new_tokens - 1)
            anchor = t + 1
            while anchor + 1 < last:  # the root (token anchor + 1) is not the answer's last token
                left = last - (anchor + 1)  # tokens still to emit
                a = 0
                while a < min(k, left) and ok[a][b][anchor]:
                    a += 1
                hist[a] += 1
                emitted = min(a + 1, left)
                tokens += emitted
                anchor += emitted
            t = end
    steps = sum(hist)
    per_pos = [sum(hist[i + 1 :]) / max(1, steps) for i in range(k)]
    return WalkStats(tau=tokens / max(1, steps), acceptance_per_position=per_pos, steps=steps, tokens=tokens)
