"""Batches of similar length, so a padded batch wastes little compute on padding.

Contract: :class:`LengthGroupedBatches` is a batch sampler over rows of known lengths. Each epoch
(:meth:`~LengthGroupedBatches.set_epoch`) permutes the rows with a generator seeded by the seed and
the epoch, sorts each window of ``window`` batches' worth of rows by length, cuts the window into
batches and permutes the batches. The order is random but reproducible (so a resumed run can skip
the batches it already trained on), every row appears once per epoch, and rows in one batch have
similar lengths.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch


class LengthGroupedBatches(torch.utils.data.Sampler[list[int]]):
    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, window: int = 64) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.window = window
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        span = self.window * self.batch_size
        batches = []
        for lo in range(0, len(order), span):
            chunk = sorted(order[lo : lo + span], key=lambda i: self.lengths[i], reverse=True)
            batches += [chunk[j : j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
        for b in torch.randperm(len(batches), generator=g).tolist():
            yield batches[b]
