"""The plugin's stand-in for vLLM's batch-size table: k per step, from specforge's policy.

Contract: :class:`AdaptiveLookup` is indexed like vLLM's dense ``dynamic_sd_lookup`` list
(``lookup[batch_size] -> k``) and is fed back by the step recorder (``observe*`` methods). It
serves the policy's choice (per request in the batch, with hysteresis, optionally probing), an
explore cycle (calibration), or a pinned k or table (paired benchmarks); any exception in the
policy logs one warning and falls back to the configured static k (vLLM's own table). Installed on vLLM's scheduler by
:mod:`serving.vllm_plugin.adaptive`; it never imports vllm itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from serving.acceptance import RequestAcceptance
from serving.policy import SpeculationPolicy
from serving.shape import NO_SPECULATION, TreeShape
from serving.step_cost import batch_bucket

# Why these values, and what was measured with others: docs/adaptive-speculation.md.
# A change of k needs a predicted goodput gain above this fraction (policy file: "switch_margin").
SWITCH_MARGIN = 0.05
# Probing (policy file: "probe_every", "probe_steps"): every PROBE_EVERY policy steps in a batch
# bucket, the runner-up k runs PROBE_STEPS steps; only with "cell_prior" set.
PROBE_EVERY = 64
PROBE_STEPS = 6
# A policy step is timed only from the SETTLE_STEPS-th step after a change of k.
SETTLE_STEPS = 2


logger = logging.getLogger("specforge.vllm_plugin")


class AdaptiveLookup:
    """Stands in for vLLM's dense ``dynamic_sd_lookup`` list: ``lookup[batch_size] -> k``.

    Without ``running`` (the ids of the requests in the batch being scheduled), the policy's choice
    for a batch size is cached and recomputed every ``refresh_steps`` lookups. With it, k is chosen
    every step from the acceptance of the requests actually in the batch (:class:`RequestAcceptance`,
    fed by :meth:`observe_requests`); the step-time table is re-frozen every ``refresh_steps``
    lookups, so a step costs a few hundred arithmetic operations. In explore mode (calibration) k
    cycles through ``ks``, held for ``hold`` steps each (``hold=0``: until the engine has drained
    ``drains_per_k`` times, :meth:`drained`), whatever the batch size; :attr:`recording` is False
    during the first ``skip_steps`` steps of each hold (``hold=0``: the first ``skip_drains`` of
    those batches). ``time_mixed`` asks the recorder to time steps that start new requests too.
    :meth:`pin` overrides all of this with a fixed k or table (paired benchmarks), and while pinned
    the policy learns nothing: a served policy sees only its own steps. ``probe_every`` > 0 makes
    the live choice run the runner-up k now and then (:meth:`_probe`).
    """

    def __init__(
        self,
        policy: SpeculationPolicy | None,
        k_max: int,
        explore: list[int] | None = None,
        hold: int = 4,
        refresh_steps: int = 16,
        running: Callable[[int], list[str]] | None = None,
        max_batch: int = 256,
        drains_per_k: int = 1,
        skip_drains: int = 0,
        is_stale: Callable[[str], bool] | None = None,
        skip_steps: int = 0,
        time_mixed: bool = False,
        switch_margin: float = 0.0,
        probe_every: int = 0,
        probe_steps: int = PROBE_STEPS,
        fallback: Sequence[int] | None = None,
    ):
        self.policy, self.k_max = policy, k_max
        # What is served without a policy (none given, or it failed): vLLM's own dense batch size -> k
        # table as the user configured it; None: k_max at every batch size.
        self.fallback = list(fallback) if fallback is not None else None
        self.is_stale = is_stale  # requests that can no longer speculate (draft_skip.StaleDrafts)
        self.explore, self.hold, self.refresh_steps = explore, hold, refresh_steps
        self.running, self.max_batch = running, max_batch
        self.drains_per_k, self.skip_drains = max(1, drains_per_k), skip_drains
        self.skip_steps, self.time_mixed = skip_steps, bool(explore) and time_mixed
        self.switch_margin = switch_margin
        self.probe_every, self.probe_steps = probe_every, max(1, probe_steps)
        self._bucket_steps: dict[int, int] = {}  # batch bucket -> policy steps taken there
        self._probing: tuple[int, int, int] | None = None  # bucket, k, steps left
        self._policy_k = 0  # the policy's own last choice (probes excluded): hysteresis keeps it
        self.probes = 0
        self._changed_at = -(10**9)  # the step at which the policy's served k last changed
        self.live = RequestAcceptance()
        self.last_k = 0
        self.steps = 0
        self.drains = 0
        self.choices: dict[int, int] = {}  # batch size -> k last chosen
        self._age: dict[int, int] = {}
        self._load_choice: dict[int, bool] = {}  # batch size -> the population's choice is no speculation
        self._frozen_at = -(10**9)
        self._warned = False
        self.pinned: int | list[int] | None = None
        # Whether this step is a k = 0 that should skip the draft model (with draft_skip on): when the
        # load says no speculation, not when only the requests in the batch accept too little to pay.
        self.skip_draft = False

    def pin(self, k: int | Sequence[int] | None) -> None:
        """Serve a fixed ``k`` (an int), a dense ``batch size -> k`` list (vLLM's own lookup, as
        ``build_dynamic_sd_schedule_lookup`` makes it), or, with None, the policy again. This is how
        one engine serves every configuration of a paired benchmark."""
        if k is None:  # the policy's hysteresis resumes from its own last choice (_policy_k)
            self.pinned = None
            return
        self.pinned = int(k) if isinstance(k, int) else [int(x) for x in k]

    def _static_k(self, batch: int) -> int:
        """The configured static k: vLLM's own table at ``batch``, or k_max."""
        if self.fallback:
            return min(int(self.fallback[min(batch, len(self.fallback) - 1)]), self.k_max)
        return self.k_max

    def _fail(self, err: Exception, batch: int = 1) -> int:
        """Turn the policy off for good (one warning) and serve the configured static k instead."""
        if not self._warned:
            logger.warning(
                "specforge adaptive speculation disabled, serving the configured num_speculative_tokens "
                "per batch size instead: %s",
                err,
            )
            self._warned = True
        self.policy = None
        self.explore = None
        return self._static_k(batch)

    @property
    def recording(self) -> bool:
        """Whether this step's time should be recorded: False while a new k warms up (explore mode:
        as configured; served by the policy: the step that changes k and the next
        :data:`SETTLE_STEPS` - 1, which run slower on vLLM-CPU and would price the new k too high)."""
        if not self.explore:
            return self.pinned is not None or self.steps - self._changed_at >= SETTLE_STEPS
        if self.hold > 0:  # self.steps counts this step: its index in the hold is (steps - 1) % hold
            return (self.steps - 1) % self.hold >= self.skip_steps
        return self.drains % self.drains_per_k >= self.skip_drains

    def drained(self) -> None:
        """The engine has no request left (explore mode with ``hold=0`` moves to the next k)."""
        self.drains += 1

    def __getitem__(self, batch_size: int) -> int:
        self.steps += 1
        b = int(batch_size)
        # pinned, explore (calibration) and population choices: a k = 0 is the load's, skip the draft
        self.skip_draft = True
        if self.pinned is not None:
            k = self.pinned if isinstance(self.pinned, int) else self.pinned[min(b, len(self.pinned) - 1)]
            self.last_k = min(k, self.k_max)
            self.skip_draft = self.last_k == 0
            return self.last_k
        if self.explore:
            i = self.drains // self.drains_per_k if self.hold <= 0 else (self.steps - 1) // self.hold
            self.last_k = min(self.explore[i % len(self.explore)], self.k_max)
            self.skip_draft = self.last_k == 0
            return self.last_k
        if self.policy is None:  # none given, or it failed: the configured static k
            self.last_k, self.skip_draft = self._static_k(b), False
            return self.last_k
        try:
            if self.running is not None:
                k = self._choose_live(b)
            else:
                if b not in self.choices or self.steps - self._age[b] >= self.refresh_steps:
                    self.choices[b] = min(self.policy.choose(b).num_draft_tokens, self.k_max)
                    self._age[b] = self.steps
                k = self.choices[b]
        except Exception as e:  # never take the server down
            k = self._fail(e, b)
            self.skip_draft = False
        if k != self.last_k:
            self._changed_at = self.steps
        self.last_k = k
        self.skip_draft = self.skip_draft and k == 0
        return k

    def _choose_live(self, batch: int) -> int:
        policy = self.policy
        if self.steps - self._frozen_at >= self.refresh_steps:
            policy.freeze_costs(self.max_batch)
            self._frozen_at = self.steps
            self._load_choice.clear()
        if self.is_stale is not None:
            # Draft skipping on: k = 0 is the load's call alone. When the policy, on the population's
            # acceptance, chooses no speculation at this batch size, the step skips the draft (its
            # requests go stale). Asked first, and cached per batch size until the next refresh: at
            # large batch this is the whole per-step cost of the plugin (a step there takes a few ms).
            load = self._load_choice.get(batch)
            if load is None:
                load = self._load_choice[batch] = policy.choose(batch) == NO_SPECULATION
            if load:
                self.choices[batch] = 0
                return 0
        alpha = policy.acceptance.alpha
        ids = self.running(batch)
        fresh = [r for r in ids if not self.is_stale(r)] if self.is_stale is not None else ids
        if ids and not fresh:
            self.choices[batch] = 0
            return 0  # no request in the batch can speculate
        # k is chosen from the fresh requests alone; stale ones ride along with no drafts (diluting
        # tau by the stale share feeds back on itself: docs/adaptive-speculation.md).
        taus = self.live.chain_taus(fresh, alpha, self.k_max)
        tau = {s: taus[s.num_draft_tokens] for s in policy.candidates if s.num_draft_tokens <= self.k_max}
        if self.is_stale is not None:
            # The load calls for speculation. A k = 0 here would be vLLM's own, which runs the
            # draft's forward anyway: k = 1 costs about as much and may accept, so the choice is
            # among k >= 1 (docs/adaptive-speculation.md).
            tau[NO_SPECULATION] = 0.0
        best = policy.choose(batch, tau)
        k = min(best.num_draft_tokens, self.k_max)
        if self.switch_margin > 0 and k != self._policy_k and self._policy_k <= self.k_max:
            # Hysteresis: keep the running k unless the best one is predicted to be clearly better.
            # The live estimates move step to step, near-ties between k are common, and a change of
            # k costs vLLM-CPU slower steps right after it. The kept k must also be near-best at
            # every smaller batch (the monotone cap, up to the margin).
            keep = TreeShape.chain(self._policy_k)
            if keep in tau and policy.near_best_below(batch, keep, self.switch_margin, tau):
                rate_best = policy.rate(batch, best, tau[best])
                rate_keep = policy.rate(batch, keep, tau[keep])
                if rate_best < (1 + self.switch_margin) * rate_keep:
                    k = self._policy_k
        self.skip_draft = False  # a k = 0 from here on is the requests' (no draft skipping, or hysteresis)
        self.choices[batch] = self._policy_k = k
        if self.probe_every > 0 and k > 0:
            k = self._probe(batch, k, tau)
        return k

    def _probe(self, batch: int, k: int, tau: dict[TreeShape, float]) -> int:
        """Now and then run the runner-up k for a few steps instead of the policy's ``k``, so that the
        step cost learns how fast it really is at this batch size (its per-bucket ratio,
        :class:`serving.step_cost.OnlineStepCost`): a shape the prior prices too high would otherwise
        never run, and never be measured. Every ``probe_every`` policy steps in a batch bucket, the
        best other k >= 1 by predicted goodput runs for ``probe_steps`` steps (the first one, which
        verifies the previous k's drafts, is not timed as steady; nor is the step back). Only a
        speculating step probes, and never k = 0: with draft skipping, a k = 0 step leaves its
        requests without drafts for good."""
        bucket = batch_bucket(batch)
        if self._probing is not None:
            where, probe_k, left = self._probing
            if where == bucket and left > 0:
                self._probing = (where, probe_k, left - 1)
                return probe_k
            self._probing = None
        n = self._bucket_steps[bucket] = self._bucket_steps.get(bucket, 0) + 1
        if n % self.probe_every:
            return k
        others = [s for s in tau if 0 < s.num_draft_tokens <= self.k_max and s.num_draft_tokens != k]
        if not others:
            return k
        policy = self.policy
        alt = max(others, key=lambda s: policy.rate(batch, s, tau[s])).num_draft_tokens
        self._probing = (bucket, alt, self.probe_steps - 1)
        self.probes += 1
        return alt

    def observe_requests(
        self, verified: dict[str, int], accepted: dict[str, int], finished, idle: Sequence[str] = ()
    ) -> None:
        """Every request's drafts verified and accepted this step (any step), the decoding requests
        that verified none (``idle``), and the requests that finished since the last step."""
        if self.pinned is None:
            for r, v in verified.items():
                self.live.observe(r, v, accepted.get(r, 0))
            for r in idle:
                self.live.rest(r)
            if verified and self.policy is not None:
                try:  # the population's acceptance per position, from every step that verified drafts
                    self.policy.acceptance.observe_verified(
                        list(verified.values()), [accepted.get(r, 0) for r in verified]
                    )
                except Exception as e:
                    self._fail(e)
        for r in finished or ():
            self.live.forget(r)

    def _teach(self, learn: Callable[[SpeculationPolicy], None]) -> None:
        """Feed the policy (not while pinned: a pinned step teaches it nothing); an exception in the
        policy turns it off for the configured static k (:meth:`_fail`), never reaches vLLM."""
        if self.policy is None or self.pinned is not None:
            return
        try:
            learn(self.policy)
        except Exception as e:
            self._fail(e)

    def observe_start(self, batch_size: int, k: int, started: int, seconds: float) -> None:
        """A timed step of ``batch_size`` requests that started ``started`` of them, the others
        decoding at ``k``."""
        self._teach(lambda p: p.observe_start(TreeShape.chain(k), batch_size, started, seconds))

    def observe_finished(self, tokens: int) -> None:
        """A request finished after emitting ``tokens`` tokens."""
        self._teach(lambda p: p.observe_finished(tokens))

    def observe(self, batch_size: int, k: int, emitted_per_request: float, seconds: float | None) -> None:
        """One steady decode step: ``k`` drafts were verified per request and ``k`` proposed. Its time
        teaches the step cost; acceptance is learnt from every step in :meth:`observe_requests`."""
        self._teach(lambda p: p.observe(TreeShape.chain(k), batch_size, emitted_per_request, seconds))
