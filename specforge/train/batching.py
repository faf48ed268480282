"""Batches that waste little compute on padding: rows of similar length, or rows packed end to end.

Contract: :class:`LengthGroupedBatches` is a batch sampler over rows of known lengths. Each epoch
(:meth:`~LengthGroupedBatches.set_epoch`) permutes the rows with a generator seeded by the seed and
the epoch, sorts each window of ``window`` batches' worth of rows by length, cuts the window into
batches and permutes the batches. The order is random but reproducible (so a resumed run can skip
the batches it already trained on), every row appears once per epoch, and rows in one batch have
similar lengths.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import torch

from specforge.config import TrainConfig
from specforge.packing import PackedRows, pack_bins


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


class PackedBatches(torch.utils.data.Sampler[list[tuple[int, ...]]]):
    """Micro-batches of ``rows_per_batch`` packed rows of at most ``pack_length`` tokens each.

    Each epoch permutes the rows (seeded by the seed and the epoch), plans bins first-fit
    decreasing within windows of ``window`` rows (:func:`~specforge.packing.pack_bins`), permutes
    the bins and yields each micro-batch as a list of bins (tuples of row indices), to be fetched
    through :class:`~specforge.packing.PackedRows`."""

    def __init__(
        self,
        lengths: Sequence[int],
        pack_length: int,
        rows_per_batch: int = 1,
        seed: int = 0,
        window: int = 512,
    ) -> None:
        self.lengths = list(lengths)
        self.pack_length = pack_length
        self.rows_per_batch = rows_per_batch
        self.seed = seed
        self.window = window
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[tuple[int, ...]]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        bins: list[tuple[int, ...]] = []
        for lo in range(0, len(order), self.window):
            chunk = order[lo : lo + self.window]
            planned = pack_bins([self.lengths[i] for i in chunk], self.pack_length)
            bins += [tuple(chunk[i] for i in b) for b in planned]
        bins = [bins[i] for i in torch.randperm(len(bins), generator=g).tolist()]
        step = self.rows_per_batch
        return [bins[j : j + step] for j in range(0, len(bins), step)]

    def __len__(self) -> int:
        return len(self._batches())

    def __iter__(self) -> Iterator[list[tuple[int, ...]]]:
        yield from self._batches()


def make_loader(
    dataset: torch.utils.data.Dataset, lengths: Sequence[int], collate: Callable, cfg: TrainConfig
) -> tuple[torch.utils.data.DataLoader, LengthGroupedBatches | PackedBatches | None]:
    """The training loader, and its batch sampler when that orders batches itself (packed rows, or
    rows grouped by length) and so needs ``set_epoch`` each epoch."""
    if cfg.data.pack_length is not None:  # whole rows end to end in rows of at most pack_length tokens
        packed = PackedBatches(lengths, cfg.data.pack_length, cfg.optim.batch_size, cfg.seed)
        return torch.utils.data.DataLoader(
            PackedRows(dataset), batch_sampler=packed, collate_fn=collate
        ), packed
    if cfg.data.group_by_length:  # rows of similar length together: little compute lost to padding
        grouped = LengthGroupedBatches(lengths, cfg.optim.batch_size, cfg.seed)
        return torch.utils.data.DataLoader(dataset, batch_sampler=grouped, collate_fn=collate), grouped
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.optim.batch_size,
        shuffle=True,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    return loader, None
