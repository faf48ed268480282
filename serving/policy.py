"""Adaptive speculation: pick the draft shape that maximises goodput at the live batch size.

Contract
--------
* :class:`SpeculationPolicy.choose` returns the candidate maximising
  ``goodput = B * tau(shape) / (step_time(B, shape) + B * tau(shape) * start(shape) / tokens_per_request)``
  (without a :class:`~serving.step_cost.StartCost`: ``B * tau / step_time``), with "no speculation"
  (tau = 1) always a candidate. Step time comes from a cost model (:mod:`serving.step_cost`), tau
  from an acceptance tracker (:mod:`serving.acceptance`).
* Choices are *monotone*: for the same statistics, a larger batch never gets more speculation
  (shapes are ordered by draft tokens, then depth, then top-k; the choice at ``B`` is the best shape
  no more speculative than the choice at ``B - 1``). ``choose`` takes the expected tau of the live
  batch when the caller knows it (:class:`~serving.acceptance.RequestAcceptance`).

Pure Python, no torch: the engine, the vLLM plugin and the tests drive it the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from serving.acceptance import AcceptanceTracker
from serving.shape import NO_SPECULATION, TreeShape
from serving.step_cost import OnlineStepCost, StartCost, StepCost


@dataclass
class SpeculationPolicy:
    cost: StepCost
    acceptance: AcceptanceTracker
    candidates: list[TreeShape]
    start: StartCost | None = None  # None: steps are priced as pure decode steps

    # batch -> step_time(batch, candidates[i]) for every i, frozen by freeze_costs() and filled as
    # batch sizes are asked for (a fast path for a server that chooses every step); None: ask the
    # cost model each time
    _times: dict[int, list[float]] | None = field(default=None, repr=False)
    _max_frozen: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        self.candidates = sorted(set(self.candidates) | {NO_SPECULATION})

    def freeze_costs(self, max_batch: int) -> None:
        """Tabulate the step times of every candidate up to ``max_batch``; :meth:`choose` reads the table
        until the next call (the cost model's online updates are picked up by calling it again). Rows
        are tabulated when first asked for, so a refresh costs only the batch sizes in use."""
        self._times, self._max_frozen = {}, max_batch

    def _row(self, batch: int) -> list[float]:
        """Step times of every candidate at ``batch``."""
        if self._times is not None and batch <= self._max_frozen:
            row = self._times.get(batch)
            if row is None:
                row = self._times[batch] = [self.cost.step_time(batch, s) for s in self.candidates]
            return row
        return [self.cost.step_time(batch, s) for s in self.candidates]

    def _start_per_token(self) -> list[float]:
        """Seconds each output token carries for its request's start, per candidate."""
        if self.start is None:
            return [0.0] * len(self.candidates)
        return [self.start.per_token(s) for s in self.candidates]

    @staticmethod
    def _rate(batch: int, tau: float, step: float, start: float) -> float:
        """Tokens per second per sequence: ``tau`` tokens a step, each carrying ``start`` seconds of
        its request's start (``B * tau * start`` per step)."""
        return tau / (step + batch * tau * start)

    def goodput(self, batch: int, shape: TreeShape) -> float:
        """Expected tokens per second for the whole batch."""
        return batch * self.rate(batch, shape, self.acceptance.tau(shape))

    def _taus(self, tau: dict[TreeShape, float] | None) -> list[float]:
        return [tau[s] if tau and s in tau else self.acceptance.tau(s) for s in self.candidates]

    def rate(self, batch: int, shape: TreeShape, tau: float) -> float:
        """Tokens per second per sequence of ``shape`` at ``batch`` if it emits ``tau`` tokens a step."""
        start = self.start.per_token(shape) if self.start is not None else 0.0
        return self._rate(batch, tau, self.cost.step_time(batch, shape), start)

    def _best_index(self, batch: int, taus: list[float], upto: int, start: list[float]) -> int:
        """The candidate (among the first ``upto + 1``) with the highest tokens per second; ``start``:
        :meth:`_start_per_token`."""
        row = self._row(batch)
        best, best_rate = 0, self._rate(batch, taus[0], row[0], start[0])
        for i in range(1, upto + 1):
            rate = self._rate(batch, taus[i], row[i], start[i])
            if rate > best_rate:  # ties go to less speculation (earlier in the order)
                best, best_rate = i, rate
        return best

    def choose(self, batch: int, tau: dict[TreeShape, float] | None = None) -> TreeShape:
        """The goodput-maximising shape among those no more speculative than the choice at ``batch - 1``
        (and so at every smaller batch): going up from batch 1, each batch size picks the best shape
        still allowed, which caps every larger one.

        ``tau`` (expected tokens per sequence per step, by shape) overrides the tracker's estimate, e.g.
        with the acceptance of the sequences actually in the batch (:class:`RequestAcceptance`)."""
        if batch < 1:
            raise ValueError("batch must be >= 1")
        taus, start = self._taus(tau), self._start_per_token()
        cap = len(taus) - 1
        for b in range(1, batch + 1):  # the best at b among the shapes still allowed
            cap = self._best_index(b, taus, cap, start)
            if cap == 0:
                break
        return self.candidates[cap]

    def near_best_below(
        self, batch: int, shape: TreeShape, margin: float, tau: dict[TreeShape, float] | None = None
    ) -> bool:
        """Whether, at every batch size below ``batch`` whose best shape is less speculative than
        ``shape``, ``shape``'s predicted goodput is within ``margin`` of that best: keeping it at
        ``batch`` then stays consistent with the monotone cap up to the margin (hysteresis must not
        keep more speculation than smaller batches clearly refuse)."""
        taus, start = self._taus(tau), self._start_per_token()
        i = self.candidates.index(shape)
        for b in range(1, batch):
            row = self._row(b)
            rates = [self._rate(b, t, s, c) for t, s, c in zip(taus, row, start)]
            j = max(range(len(rates)), key=rates.__getitem__)
            if j < i and rates[i] * (1 + margin) < rates[j]:
                return False
        return True

    def observe_start(self, shape: TreeShape, batch: int, started: int, seconds: float) -> None:
        """A timed step of ``batch`` sequences that started ``started`` of them (the others decoding
        with ``shape``): what it took beyond a decode step of ``batch`` teaches the start cost."""
        if self.start is not None and started > 0:
            self.start.observe_start(shape, started, seconds - self.cost.step_time(batch, shape))

    def observe_finished(self, tokens: int) -> None:
        """A request finished after emitting ``tokens`` tokens."""
        if self.start is not None:
            self.start.observe_request(tokens)

    def table(self, batch_sizes: list[int]) -> dict[int, TreeShape]:
        return {b: self.choose(b) for b in batch_sizes}

    def observe(
        self,
        shape: TreeShape,
        batch: int,
        emitted_per_sequence: float,
        seconds: float | None = None,
        accepted: list[int] | None = None,
    ) -> None:
        """Step feedback (matches ``SpeculativeEngine.generate(on_step=...)``); ``seconds``, the step's
        measured time, reaches the cost model when it learns online (:class:`OnlineStepCost`);
        ``accepted``, each sequence's accepted draft tokens, the per-position acceptance."""
        self.acceptance.observe(shape, emitted_per_sequence, accepted)
        if seconds is not None and isinstance(self.cost, OnlineStepCost):
            self.cost.observe(batch, shape, seconds)
