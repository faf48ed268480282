"""Sequence packing: several rows laid end to end in one row, none attending to another.

Contract
--------
* :func:`pack_bins` plans bins of at most ``pack_length`` tokens over rows of known lengths,
  first-fit decreasing; a data loader's sampler yields the bins, :class:`PackedRows` fetches each
  bin's rows, and the collate function lays each bin's rows end to end.
* A packed row carries ``position_ids`` [batch, seq] that restart at 0 with every packed
  sequence (rotary positions, and the only record of where sequences start) and an
  ``attention_mask`` [batch, seq] that is 1 on real tokens. :func:`sequence_ids` numbers the
  sequences of each row (-1 on padding), :func:`block_causal_mask` builds the attention mask in
  which a token sees the earlier tokens of its own sequence only, and :func:`same_sequence_ahead`
  says where token ``t + k`` exists in ``t``'s sequence.
* A row longer than ``pack_length`` gets a bin of its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pack_bins(lengths: Sequence[int], pack_length: int) -> list[list[int]]:
    """First-fit decreasing: bins of row indices, each holding at most ``pack_length`` tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = lengths[i]
        for b, room in enumerate(free):
            if n <= room:
                bins[b].append(i)
                free[b] -= n
                break
        else:
            bins.append([i])
            free.append(max(0, pack_length - n))
    return bins


class PackedRows(torch.utils.data.Dataset):
    """A dataset indexed by bins: ``rows[bin]`` is the list of the bin's items."""

    def __init__(self, dataset: torch.utils.data.Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, bin_: Sequence[int]) -> list:
        return [self.dataset[i] for i in bin_]


def packed_positions(lengths: Sequence[int]) -> torch.Tensor:
    """[sum(lengths)] positions restarting at 0 for each sequence."""
    return torch.cat([torch.arange(n) for n in lengths]) if lengths else torch.zeros(0, dtype=torch.long)


def sequence_ids(position_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[batch, seq] index of each token's sequence within its row (0, 1, ...); -1 on padding."""
    starts = (position_ids == 0) & attention_mask.bool()
    return torch.where(attention_mask.bool(), starts.long().cumsum(1) - 1, -1)


def block_causal_mask(position_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[batch, 1, seq, seq] bool, True where query ``t`` may attend key ``u``: ``u <= t`` in the same
    sequence. Padding attends to earlier padding, so no row of the mask is empty."""
    ids = sequence_ids(position_ids, attention_mask)
    s = ids.shape[1]
    causal = torch.ones(s, s, dtype=torch.bool, device=ids.device).tril()
    return ((ids[:, :, None] == ids[:, None, :]) & causal)[:, None]


def same_sequence_ahead(ids: torch.Tensor, k: int) -> torch.Tensor:
    """[batch, seq] bool: token ``t + k`` exists and belongs to token ``t``'s sequence (``ids`` from
    :func:`sequence_ids`; padding belongs to none)."""
    if k == 0:
        return ids >= 0
    ahead = torch.cat([ids[:, k:], torch.full_like(ids[:, :k], -1)], dim=1)
    return (ahead == ids) & (ids >= 0)


def next_is_answer(loss_mask: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """[batch, seq] bool: token ``t + 1`` is an assistant token of token ``t``'s sequence (``ids``
    from :func:`sequence_ids`): where the target's prediction at ``t`` is a training label."""
    nxt = torch.cat([loss_mask[:, 1:], torch.zeros_like(loss_mask[:, :1])], 1).bool()
    return nxt.to(ids.device) & same_sequence_ahead(ids, 1)
