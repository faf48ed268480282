"""The vLLM general plugin: adaptive speculation length per step, from specforge's policy.

Contract
--------
* ``register()`` is the ``vllm.general_plugins`` entry point. vLLM calls it in every process; it
  does nothing unless ``SPECFORGE_ADAPTIVE_SPEC`` names a policy file (:func:`~serving.vllm_plugin.policy_file.write_policy_file`),
  and it patches the scheduler once per process (idempotent).
* Switch it on: set ``SPECFORGE_ADAPTIVE_SPEC=/path/policy.json`` and give vLLM a speculative config
  with ``num_speculative_tokens`` = the largest k and ``num_speculative_tokens_per_batch_size`` =
  ``[[1, max_num_seqs, k]]``, which turns on vLLM's per-step k path. The plugin then replaces the
  scheduler's batch-size table with :class:`AdaptiveLookup`: each step, k is the policy's choice
  for the live batch size (chains only: this vLLM has no tree attention).
* Acceptance is tracked online per chain position (EMA of each position's conditional acceptance,
  from every request's accepted count at every step that verified drafts), seeded from the
  calibration's measured alpha_k, so running one k teaches the policy about the others; and per request in flight
  (:class:`serving.acceptance.RequestAcceptance`), so k follows the requests actually in the batch.
  Step times come from the policy file's prior (best: whole vLLM steps measured by ``specforge
  calibrate --vllm``), scaled online by one live/prior factor from the steps this scheduler times
  itself (:class:`StepRecorder`, :class:`serving.step_cost.OnlineStepCost`; a factor per shape only
  with ``"cost_min_steps"`` in the policy file), and corrected per (k, batch bucket) by a learnt
  measured ratio where the prior ranked k wrongly. To measure the k it does not choose, the plugin now
  and then runs the runner-up k for a few steps (:meth:`serving.controller.SpeculationController._probe`). Timing assumes
  vLLM's synchronous scheduling (the CPU default).
* ``SPECFORGE_STEP_LOG=/path/steps.json`` writes the timed steps (per batch size and k) and the
  current choices when the engine drains (at most every 5 s), when the scheduler shuts down (a
  server's engine-core process skips atexit) and at exit; with a policy file in
  ``"mode": "explore"`` k cycles through the given values, which is how ``specforge calibrate
  --vllm`` measures vLLM's steps.
* A parallel-drafting head (P-EAGLE) is served at every k the policy picks:
  :mod:`serving.vllm_plugin.parallel_k` mends vLLM 0.32's per-step k path for it.
* Anything that goes wrong (a missing or invalid policy file, an exception in the policy) logs one
  warning, naming the file and the key where the file is at fault, and falls back to the
  configured static k (vLLM's own ``num_speculative_tokens_per_batch_size`` table). It never takes
  the server down.

Only this package imports vllm.
"""

from __future__ import annotations

import logging
import os
import time

from serving.controller import SpeculationController
from serving.schedules import ExploreSchedule
from serving.vllm_plugin.draft_skip import (
    LAST_SKIP_ATTR,
    SKIP_ATTR,
    StaleDrafts,
    patch_engine_core,
    patch_proposer,
    patch_runner,
)
from serving.vllm_plugin.lookup import AdaptiveLookup
from serving.vllm_plugin.parallel_k import patch_parallel_k
from serving.vllm_plugin.policy_file import (
    ExplorePolicyFile,
    PolicyFileError,
    ServedPolicyFile,
    load_policy,
    read_policy_file,
)
from serving.vllm_plugin.recorder import StepRecorder

ENV = "SPECFORGE_ADAPTIVE_SPEC"
STEP_LOG_ENV = "SPECFORGE_STEP_LOG"
STEP_TRACE_ENV = "SPECFORGE_STEP_TRACE"  # "1": the step log also lists every step (diagnosis)
# A scheduler attribute: a function returning this engine's own time in seconds, for the step
# recorder (absent: time.perf_counter). Set by the lockstep benchmark, whose engines share one thread
# and step in turn: each engine's clock then stops while the others step.
CLOCK_ATTR = "_specforge_clock"
logger = logging.getLogger("specforge.vllm_plugin")
_PATCHED = False


def policy_lookup(
    scheduler, source: dict | ServedPolicyFile, k_max: int, stale: StaleDrafts | None = None
) -> AdaptiveLookup:
    """The lookup a served policy file (``source``: its parsed JSON, or the validated file) puts on
    ``scheduler``: the policy, k chosen per step from the requests in the batch, hysteresis and
    probing as the file says."""
    f = source if isinstance(source, ServedPolicyFile) else read_policy_file(source)
    if not isinstance(f, ServedPolicyFile):
        raise PolicyFileError('a "mode": "explore" file describes no policy to serve')
    policy = load_policy(f, k_max)
    table = getattr(scheduler, "dynamic_sd_lookup", None)  # vLLM's list, or the plugin's own lookup
    fallback = table.fallback if isinstance(table, AdaptiveLookup) else (list(table) if table else None)
    running = None
    if f.per_request:  # k from the acceptance of the requests in the batch

        def running(batch: int) -> list[str]:
            return [r.request_id for r in scheduler.running[:batch]]

    controller = SpeculationController(
        policy,
        switch_margin=f.switch_margin,
        # probing feeds the per-bucket ratios: pointless without them
        probe_every=f.probe_every if f.cell_prior else 0,
        probe_steps=f.probe_steps,
        max_batch=int(getattr(scheduler, "max_num_running_reqs", 256)),
    )
    return AdaptiveLookup(
        controller,
        k_max,
        running=running,
        is_stale=stale.is_stale if stale is not None else None,
        fallback=fallback,
    )


def _install(scheduler) -> None:
    path = os.environ.get(ENV)
    recorder = StepRecorder(os.environ.get(STEP_LOG_ENV), trace=os.environ.get(STEP_TRACE_ENV) == "1")
    scheduler._specforge_recorder = recorder
    if not path or getattr(scheduler, "dynamic_sd_lookup", None) is None:
        if path:
            logger.warning(
                "%s is set but vLLM's per-step k path is off: set num_speculative_tokens_per_batch_size "
                "in the speculative config (see the README); specforge leaves k as configured",
                ENV,
            )
        return
    k_max = int(scheduler.num_spec_tokens)
    configured = list(scheduler.dynamic_sd_lookup)  # vLLM's dense batch size -> k, as configured
    stale = None
    try:
        f = read_policy_file(path)
        if f.skip_draft_at_k0:
            stale = StaleDrafts(scheduler, blocks=f.skipped_blocks)
        if isinstance(f, ExplorePolicyFile):
            explore = ExploreSchedule(
                tuple(f.ks),
                hold=f.hold,
                drains_per_k=f.drains_per_k,
                skip_drains=f.skip_drains,
                skip_steps=f.skip_steps,
                time_mixed=f.time_mixed,
            )
            lookup = AdaptiveLookup(None, k_max, explore=explore)
            logger.info("specforge step-time exploration: k cycles through %s", list(explore.ks))
        else:
            lookup = policy_lookup(scheduler, f, k_max, stale)
            logger.info(
                "specforge adaptive speculation on: k per batch size %s",
                {b: s.num_draft_tokens for b, s in lookup.policy.table([1, 2, 4, 8, 16, 32, 64]).items()},
            )
    except Exception as e:  # a bad file never takes the server down: vLLM's configured table serves
        lookup = AdaptiveLookup(None, k_max, fallback=configured)
        lookup._fail(e)
    scheduler.dynamic_sd_lookup = lookup
    scheduler._specforge_stale = stale
    if stale is not None:
        stale.admits_without_draft = lookup.admits_without_draft


def _skip_draft_at_k0() -> bool:
    """Whether the policy file asks to skip the draft model at k = 0."""
    try:
        return read_policy_file(os.environ[ENV]).skip_draft_at_k0
    except (KeyError, PolicyFileError):  # no or broken policy file: the fallback does not skip
        return False


def register() -> None:
    global _PATCHED
    if _PATCHED or not (os.environ.get(ENV) or os.environ.get(STEP_LOG_ENV)):
        return
    from vllm.v1.core.sched.scheduler import Scheduler

    patch_parallel_k()  # worker processes: a parallel head drafts at any k the plugin picks
    if os.environ.get(ENV) and _skip_draft_at_k0():
        patch_proposer()  # worker processes: k = 0 runs no draft forward
        patch_runner()  # ... and takes the runner's plain path
        patch_engine_core()  # ... and the engine core fetches no drafts after it
    if getattr(Scheduler, "_specforge_patched", False):
        _PATCHED = True
        return
    original_init = Scheduler.__init__
    original_schedule = Scheduler.schedule
    original_update = Scheduler.update_from_output
    original_drafts = Scheduler.update_draft_token_ids
    original_free = Scheduler._free_request
    original_shutdown = Scheduler.shutdown

    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        try:
            _install(self)
        except Exception as e:  # pragma: no cover - defensive
            logger.warning("specforge adaptive speculation not installed: %s", e)

    def schedule(self, *args, **kwargs):
        recorder = getattr(self, "_specforge_recorder", None)
        if recorder is not None:
            lookup = getattr(self, "dynamic_sd_lookup", None)
            try:
                clock = getattr(self, CLOCK_ATTR, None) or time.perf_counter
                recorder.on_schedule(clock(), lookup if isinstance(lookup, AdaptiveLookup) else None)
            except Exception as e:  # pragma: no cover - defensive
                logger.warning("specforge step timing off: %s", e)
                self._specforge_recorder = None
        out = original_schedule(self, *args, **kwargs)
        stale = getattr(self, "_specforge_stale", None)
        if stale is not None:
            lookup = getattr(self, "dynamic_sd_lookup", None)
            skip = isinstance(lookup, AdaptiveLookup) and lookup.skip_draft
            if skip:
                setattr(out, SKIP_ATTR, True)  # read by the model runner (draft_skip.patch_runner)
            # read by the engine core after the step (draft_skip.patch_engine_core)
            setattr(self, LAST_SKIP_ATTR, skip and not int(out.num_spec_tokens_to_schedule or 0))
            stale.after_schedule(out)
        return out

    def update_draft_token_ids(self, draft_token_ids):
        original_drafts(self, draft_token_ids)
        stale = getattr(self, "_specforge_stale", None)
        if stale is not None:
            stale.drop_drafts(draft_token_ids.req_ids)

    def _free_request(self, request, *args, **kwargs):
        stale = getattr(self, "_specforge_stale", None)
        if stale is not None:
            stale.on_free(request)
        return original_free(self, request, *args, **kwargs)

    def shutdown(self, *args, **kwargs):
        # A server's engine core runs in a multiprocessing child, which exits without running
        # atexit handlers: write the log's final state here.
        recorder = getattr(self, "_specforge_recorder", None)
        if recorder is not None and recorder.path:
            lookup = getattr(self, "dynamic_sd_lookup", None)
            try:
                recorder.flush(lookup if isinstance(lookup, AdaptiveLookup) else None)
            except Exception as e:  # never in the way of vLLM's own shutdown
                logger.warning("specforge step log not written at shutdown: %s", e)
        return original_shutdown(self, *args, **kwargs)

    def update_from_output(self, scheduler_output, model_runner_output):
        result = original_update(self, scheduler_output, model_runner_output)
        recorder = getattr(self, "_specforge_recorder", None)
        if recorder is not None:
            lookup = getattr(self, "dynamic_sd_lookup", None)
            lookup = lookup if isinstance(lookup, AdaptiveLookup) else None
            try:
                clock = getattr(self, CLOCK_ATTR, None) or time.perf_counter
                recorder.on_output(clock(), scheduler_output, model_runner_output, lookup)
                if not self.running and not self.waiting:
                    if lookup is not None:
                        lookup.drained()
                    recorder.on_drain(clock(), lookup)  # a good moment to write the step log
            except Exception as e:
                logger.warning("specforge step timing off: %s", e)
                self._specforge_recorder = None
        return result

    Scheduler.__init__ = __init__
    Scheduler.schedule = schedule
    Scheduler.update_from_output = update_from_output
    Scheduler.update_draft_token_ids = update_draft_token_ids
    Scheduler._free_request = _free_request
    Scheduler.shutdown = shutdown
    Scheduler._specforge_patched = True
    _PATCHED = True
