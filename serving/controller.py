"""The speculation controller: the one place a step's draft shape is decided, and learnt from.

Contract
--------
* :meth:`SpeculationController.decide` takes the live batch size (and, where the server knows them,
  the ids of the requests in the batch) and returns a :class:`Decision`: the draft shape to run and
  whether the draft's forward can be skipped. It is the policy's goodput choice
  (:class:`~serving.policy.SpeculationPolicy`), priced with the acceptance of the requests in the
  batch when their ids are given, kept through near-ties by hysteresis (``switch_margin``), and now
  and then replaced by the runner-up shape for a few steps so that the step cost measures it
  (``probe_every``, ``probe_steps``).
* The ``observe_*`` methods are everything it learns: a step's time and tokens
  (:meth:`observe_step`, whose signature is the reference engine's ``on_step``), each request's
  verified and accepted drafts (:meth:`observe_requests`), what starting requests costs
  (:meth:`observe_start`) and how long answers are (:meth:`observe_finished`).
* Adapters stay thin: the reference engine calls the controller as its ``shape`` function and
  ``on_step`` (:meth:`SpeculationEngine.generate <serving.engine.SpeculativeEngine.generate>`); the
  vLLM plugin's :class:`~serving.vllm_plugin.lookup.AdaptiveLookup` turns a decision into vLLM's k.
  Fixed and cycling schedules for benchmarks and calibration live beside it
  (:mod:`serving.schedules`).

Pure Python, no torch, no vllm. Why the defaults are what they are: docs/adaptive-speculation.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from serving.acceptance import RequestAcceptance
from serving.policy import SpeculationPolicy
from serving.shape import NO_SPECULATION, TreeShape
from serving.step_cost import batch_bucket

# A change of shape needs a predicted goodput gain above this fraction (policy file: "switch_margin").
SWITCH_MARGIN = 0.05
# Probing (policy file: "probe_every", "probe_steps"): every PROBE_EVERY decisions in a batch
# bucket, the runner-up shape runs PROBE_STEPS steps.
PROBE_EVERY = 64
PROBE_STEPS = 6


@dataclass(frozen=True)
class Decision:
    shape: TreeShape
    # True when the load itself says no speculation (the population's acceptance at this batch size),
    # or no request in the batch can speculate: the draft's forward can be skipped. False for a
    # no-speculation choice made only because this batch's requests accept too little.
    skip_draft: bool = False


class SpeculationController:
    """Decides every step's shape from one :class:`SpeculationPolicy` and teaches it.

    The step-time table is re-frozen every ``refresh_steps`` decisions (``max_batch``: the largest
    batch it tabulates), so a decision costs a few hundred arithmetic operations; without request
    ids the choice per batch size is cached until then.
    """

    def __init__(
        self,
        policy: SpeculationPolicy,
        *,
        switch_margin: float = 0.0,
        probe_every: int = 0,
        probe_steps: int = PROBE_STEPS,
        refresh_steps: int = 16,
        max_batch: int = 256,
    ):
        self.policy = policy
        self.switch_margin = switch_margin
        self.probe_every, self.probe_steps = probe_every, max(1, probe_steps)
        self.refresh_steps, self.max_batch = refresh_steps, max_batch
        self.live = RequestAcceptance()  # acceptance per request in flight
        self.steps = 0  # decisions taken
        self.probes = 0  # probes started
        self.choices: dict[int, TreeShape] = {}  # batch size -> the policy's last choice there
        self._kept = NO_SPECULATION  # the policy's own last choice (probes excluded): hysteresis keeps it
        self._frozen_at = -(10**9)
        self._population: dict[int, TreeShape] = {}  # batch size -> choice on the population's acceptance
        self._bucket_steps: dict[int, int] = {}  # batch bucket -> decisions taken there
        self._probing: tuple[int, TreeShape, int] | None = None  # bucket, shape, steps left

    def __call__(self, batch: int) -> TreeShape:
        """The shape for a step of ``batch`` sequences (the reference engine's ``shape`` function)."""
        return self.decide(batch).shape

    def decide(
        self,
        batch: int,
        requests: Sequence[str] | None = None,
        is_stale: Callable[[str], bool] | None = None,
    ) -> Decision:
        """The shape for a step of ``batch`` sequences. ``requests``: the ids of the requests in the
        batch (their acceptance prices the shapes); ``is_stale``: requests that can no longer
        speculate (the server skipped their draft). With ``is_stale``, no speculation is the load's
        call alone, made on the population's acceptance; otherwise the choice is among k >= 1 (a
        server whose k = 0 still runs the draft pays about as much for k = 1, which may accept)."""
        policy = self.policy
        self.steps += 1
        if self.steps - self._frozen_at >= self.refresh_steps:
            policy.freeze_costs(self.max_batch)
            self._frozen_at = self.steps
            self._population.clear()
        if is_stale is not None and self.load_says_no_speculation(batch):
            self.choices[batch] = NO_SPECULATION
            return Decision(NO_SPECULATION, skip_draft=True)
        if requests is None:
            tau = {s: policy.acceptance.tau(s) for s in policy.candidates}
            best = self._population_choice(batch)
        else:
            fresh = [r for r in requests if not is_stale(r)] if is_stale is not None else list(requests)
            if requests and not fresh:
                self.choices[batch] = NO_SPECULATION
                return Decision(NO_SPECULATION, skip_draft=True)  # no request in the batch can speculate
            # Stale requests ride along with no drafts; diluting tau by their share feeds back on
            # itself (docs/adaptive-speculation.md).
            k_max = max(s.num_draft_tokens for s in policy.candidates)
            taus = self.live.chain_taus(fresh, policy.acceptance.alpha, k_max)
            tau = {s: taus[s.num_draft_tokens] for s in policy.candidates}
            if is_stale is not None:
                tau[NO_SPECULATION] = 0.0
            best = policy.choose(batch, tau)
        shape = self._hysteresis(batch, best, tau)
        self.choices[batch] = self._kept = shape
        if self.probe_every > 0 and shape != NO_SPECULATION:
            shape = self._probe(batch, shape, tau)
        # without request ids no speculation is the population's choice: the load's
        return Decision(shape, skip_draft=requests is None and shape == NO_SPECULATION)

    def load_says_no_speculation(self, batch: int) -> bool:
        """Whether the policy, on the population's acceptance, chooses no speculation for a step of
        ``batch`` sequences: the load's k = 0, which a server with draft skipping serves without the
        draft."""
        return self._population_choice(batch) == NO_SPECULATION

    def _population_choice(self, batch: int) -> TreeShape:
        """The policy's choice on the population's acceptance, cached per batch size until the next
        refresh (at large batch this is the whole per-step cost: a step there takes a few ms)."""
        shape = self._population.get(batch)
        if shape is None:
            shape = self._population[batch] = self.policy.choose(batch)
        return shape

    def _hysteresis(self, batch: int, best: TreeShape, tau: dict[TreeShape, float]) -> TreeShape:
        """Keep the running shape unless ``best`` is predicted clearly better (by ``switch_margin``):
        live estimates move step to step, near-ties are common, and a change costs vLLM-CPU slower
        steps right after it. The kept shape must also be near-best at every smaller batch (the
        monotone cap, up to the margin)."""
        keep, policy = self._kept, self.policy
        if self.switch_margin <= 0 or best == keep or keep not in tau:
            return best
        if not policy.near_best_below(batch, keep, self.switch_margin, tau):
            return best
        if policy.rate(batch, best, tau[best]) < (1 + self.switch_margin) * policy.rate(
            batch, keep, tau[keep]
        ):
            return keep
        return best

    def _probe(self, batch: int, shape: TreeShape, tau: dict[TreeShape, float]) -> TreeShape:
        """Now and then run the runner-up shape instead of ``shape``, so that the step cost learns how
        fast it really is at this batch size (its per-bucket ratio,
        :class:`serving.step_cost.OnlineStepCost`): a shape the prior prices too high would otherwise
        never run, and never be measured. Every ``probe_every`` decisions in a batch bucket, the best
        other speculating shape by predicted goodput runs for ``probe_steps`` steps. Only a
        speculating step probes, and never with no speculation: a server that skips the draft then
        leaves its requests without drafts for good."""
        bucket = batch_bucket(batch)
        if self._probing is not None:
            where, probe, left = self._probing
            if where == bucket and left > 0:
                self._probing = (where, probe, left - 1)
                return probe
            self._probing = None
        n = self._bucket_steps[bucket] = self._bucket_steps.get(bucket, 0) + 1
        if n % self.probe_every:
            return shape
        others = [s for s in tau if s != NO_SPECULATION and s != shape]
        if not others:
            return shape
        policy = self.policy
        alt = max(others, key=lambda s: policy.rate(batch, s, tau[s]))
        self._probing = (bucket, alt, self.probe_steps - 1)
        self.probes += 1
        return alt

    def observe_step(
        self,
        shape: TreeShape,
        batch: int,
        emitted_per_sequence: float,
        seconds: float | None = None,
        accepted: list[int] | None = None,
    ) -> None:
        """One step of ``batch`` sequences at ``shape``: its time teaches the step cost; ``accepted``
        (each sequence's accepted drafts, when the caller has them) the acceptance per position."""
        self.policy.observe(shape, batch, emitted_per_sequence, seconds, accepted)

    def observe_requests(
        self,
        verified: dict[str, int],
        accepted: dict[str, int],
        finished: Sequence[str] = (),
        idle: Sequence[str] = (),
    ) -> None:
        """Every request's drafts verified and accepted this step (any step), the decoding requests
        that verified none (``idle``), and the requests that finished since the last step."""
        for r, v in verified.items():
            self.live.observe(r, v, accepted.get(r, 0))
        for r in idle:
            self.live.rest(r)
        if verified:  # the population's acceptance per position, from every step that verified drafts
            self.policy.acceptance.observe_verified(
                list(verified.values()), [accepted.get(r, 0) for r in verified]
            )
        for r in finished:
            self.live.forget(r)

    def forget(self, finished: Sequence[str]) -> None:
        """Requests that finished (while the controller was not deciding: nothing else is learnt)."""
        for r in finished:
            self.live.forget(r)

    def observe_start(self, shape: TreeShape, batch: int, started: int, seconds: float) -> None:
        """A timed step of ``batch`` sequences that started ``started`` of them, the others at ``shape``."""
        self.policy.observe_start(shape, batch, started, seconds)

    def observe_finished(self, tokens: int) -> None:
        """A request finished after emitting ``tokens`` tokens."""
        self.policy.observe_finished(tokens)
