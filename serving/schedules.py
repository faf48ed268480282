"""Fixed and cycling speculation schedules: what benchmarks and calibration serve instead of the
controller (:mod:`serving.controller`).

* :class:`PinnedSchedule`: one k, or a dense ``batch size -> k`` list (vLLM's own table), for the arms
  of a paired benchmark.
* :class:`ExploreSchedule`: k cycles through given values whatever the batch size, held for a number
  of steps or of engine drains, so that step-time calibration measures every k; it also says which
  steps to time (the first ones after a change of k run slower).

Pure Python, no vllm.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PinnedSchedule:
    k: int | tuple[int, ...]  # one k, or k per batch size (index = batch size; past its end, the last)

    @classmethod
    def of(cls, k: int | Sequence[int]) -> PinnedSchedule:
        return cls(int(k) if isinstance(k, int) else tuple(int(x) for x in k))

    def k_at(self, batch: int) -> int:
        if isinstance(self.k, int):
            return self.k
        return self.k[min(batch, len(self.k) - 1)]


@dataclass(frozen=True)
class ExploreSchedule:
    """``ks`` in turn: the next every ``hold`` steps, of which the first ``skip_steps`` are not timed;
    or, with ``hold=0``, every ``drains_per_k`` times the engine drains, of which the first
    ``skip_drains`` batches are not timed. ``time_mixed``: also time steps that start requests."""

    ks: tuple[int, ...]
    hold: int = 4
    drains_per_k: int = 1
    skip_drains: int = 0
    skip_steps: int = 0
    time_mixed: bool = False

    def __post_init__(self) -> None:
        if not self.ks:
            raise ValueError("an explore schedule needs at least one k")
        object.__setattr__(self, "drains_per_k", max(1, self.drains_per_k))

    def k_at(self, step: int, drains: int) -> int:
        """k at the ``step``-th step (counting from 1), after ``drains`` drains."""
        i = drains // self.drains_per_k if self.hold <= 0 else (step - 1) // self.hold
        return self.ks[i % len(self.ks)]

    def recording(self, step: int, drains: int) -> bool:
        """Whether the ``step``-th step is timed."""
        if self.hold > 0:
            return (step - 1) % self.hold >= self.skip_steps
        return drains % self.drains_per_k >= self.skip_drains
