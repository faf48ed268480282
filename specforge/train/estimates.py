"""Training's estimates of served acceptance, from a draft on held-out conversations.

Contract: :func:`teacher_forced` runs the training-time test over tokenized held-out rows with the
target's hidden states captured online and returns the per-anchor masks (:class:`TeacherForced`);
:func:`estimate_logs` turns them into the scalars training logs: ``eval/alpha_*`` and ``eval/tau``
(every anchor alike, a target token outside the draft vocabulary a miss) and ``eval/walk_*`` (the
greedy ``k``-draft chain walked closed loop over each answer, :func:`~specforge.train.ttt.walked_acceptance`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from specforge.capture import CaptureConfig, CapturedBatch, OnlineCapture, pad_batch
from specforge.targets.loader import Target
from specforge.train.ttt import acceptance_stats, walked_acceptance


@dataclass
class TeacherForced:
    correct: torch.Tensor  # [steps, rows, seq] bool: draft argmax == target argmax
    valid: torch.Tensor  # [steps, rows, seq] bool: the step's predicted token is an answer token
    in_vocab: torch.Tensor  # [steps, rows, seq] bool: valid, and the target's token is in the draft vocab
    loss: float  # mean TTT loss over the batches


def _pad_cat(masks: list[torch.Tensor]) -> torch.Tensor:
    """[steps, batch_i, seq_i] bool masks -> [steps, sum(batch_i), max(seq_i)], padded with False."""
    width = max(m.shape[2] for m in masks)
    return torch.cat([nn.functional.pad(m, (0, width - m.shape[2])) for m in masks], dim=1)


def online_batches(
    target: Target, rows: dict[str, list], capture: OnlineCapture | CaptureConfig, batch_size: int
) -> Iterator[CapturedBatch]:
    """``rows`` (columns ``input_ids`` and ``loss_mask``) captured ``batch_size`` at a time through
    ``capture``: hooks already on the target, or a config to set them for the duration."""
    cap = capture if isinstance(capture, OnlineCapture) else OnlineCapture(target, capture)
    pad_id = target.tokenizer.pad_token_id
    try:
        for lo in range(0, len(rows["input_ids"]), batch_size):
            ids, masks = rows["input_ids"][lo : lo + batch_size], rows["loss_mask"][lo : lo + batch_size]
            chunk = [{"input_ids": a, "loss_mask": b} for a, b in zip(ids, masks)]
            yield cap(**pad_batch(chunk, pad_id))
    finally:
        if cap is not capture:
            cap.close()


@torch.no_grad()
def teacher_forced(ttt: Callable, batches: Iterable[CapturedBatch], head) -> TeacherForced:
    """``ttt(batch, head)``: the TTT (the trainer's module, or ``ttt_forward`` bound to a draft);
    ``batches``: captured held-out rows (:func:`online_batches`, or read from shards); ``head``:
    the target's output head (an ``nn.Linear`` or a :class:`~specforge.train.ttt.TargetHead`)."""
    corrects, valids, in_vocab, losses = [], [], [], []
    for batch in batches:
        res = ttt(batch, head)
        corrects.append(res.correct.cpu())
        valids.append(res.valid.cpu())
        in_vocab.append(res.in_vocab.cpu())
        losses.append(res.loss.item())
    return TeacherForced(_pad_cat(corrects), _pad_cat(valids), _pad_cat(in_vocab), sum(losses) / len(losses))


def estimate_logs(tf: TeacherForced, walk_k: int, max_new_tokens: int | None) -> dict[str, float]:
    st = acceptance_stats(tf.correct.flatten(1)[:, None], tf.valid.flatten(1)[:, None])
    walk = walked_acceptance(tf.correct, tf.valid, walk_k, max_new_tokens)
    return {
        "eval/loss": tf.loss,
        "eval/tau": st.tau,
        **{f"eval/alpha_{k}": a for k, a in enumerate(st.alpha)},
        "eval/walk_tau": walk.tau,
        **{f"eval/walk_acc_{k}": a for k, a in enumerate(walk.acceptance_per_position)},
    }
