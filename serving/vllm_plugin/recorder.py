"""Timing of the engine's own decode steps, for the adaptive plugin and for calibration.

Contract: :class:`StepRecorder` is driven by the plugin's scheduler hooks (``on_schedule`` at every
``schedule()``, ``on_output`` after every ``update_from_output``). It keeps, per (batch size, k),
the seconds of *steady* decode steps and the tokens they emitted per request (and, per k, how many
drafts each request accepted); per k, the *start* steps (steps that start requests while every other
request decodes at that k: batch size, requests started, seconds); and the tokens each finished
request emitted. It feeds each step, each request's acceptance and each finished request back to
the :class:`~serving.vllm_plugin.lookup.AdaptiveLookup`, and writes its summary as JSON: on
:meth:`StepRecorder.flush`, and when the engine drains (:meth:`StepRecorder.on_drain`) at most every
:data:`FLUSH_EVERY_S` seconds, never while :attr:`StepRecorder.hold` is set. A drain too soon after
the last write leaves a timer that writes the log when the period is up, if the engine is still
idle then (a server's engine-core process is killed at shutdown without running atexit); a write
at exit covers the rest. It never imports vllm: it reads the scheduler's output objects by attribute.
"""

from __future__ import annotations

import atexit
import functools
import json
import statistics
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from serving.step_cost import OnlineStepCost
from serving.vllm_plugin.draft_skip import SKIP_ATTR

if TYPE_CHECKING:
    from serving.vllm_plugin.lookup import AdaptiveLookup

# A drain writes the step log at most this often (the write runs inside a step; at batch 1 the
# engine drains after every request: docs/adaptive-speculation.md); benchmarks hold writes.
FLUSH_EVERY_S = 5.0


def _locked(method):
    """Run ``method`` holding the recorder's lock: the engine's thread records steps, a timer thread
    may write the log while the engine is idle."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return run


class StepRecorder:
    """Timing of steady decode steps per (batch size, k): median seconds and mean tokens emitted
    per request, written as JSON when asked.

    A step is *steady* when every scheduled request is decoding and verifies exactly as many draft
    tokens as the step proposes (so its time is the time of a step at constant k); with an explore
    lookup whose ``time_mixed`` is set (calibration for a loaded server), a step may also start new
    requests, and its batch size counts them. A step's time
    runs from its ``schedule()`` to the next ``schedule()`` (so it includes the engine loop's own
    work); a gap after ``update_from_output`` longer than ``max_gap`` seconds and half the step
    means the engine went idle, and the step is not timed.
    """

    def __init__(
        self, path: str | None, max_gap: float = 0.005, max_samples: int = 4096, trace: bool = False
    ):
        self.path, self.max_gap, self.max_samples = path, max_gap, max_samples
        # Every step when tracing: [schedule time, output time, requests, tokens, drafts, new requests,
        # tokens sampled, k proposed for the next step, whether the step skipped the draft]
        self.trace: list[list] | None = [] if trace else None
        self.cells: dict[
            tuple[int, int], tuple[list[float], list[float]]
        ] = {}  # (batch, k) -> seconds, emitted
        self.pending: tuple[int, int, float, float] | None = None  # batch, k, emitted, t0
        # k -> [batch size, requests started, seconds] of timed start steps (k = 0: only steps that
        # skipped the draft, whose starts run no draft)
        self.starts: dict[int, list[list[float]]] = {}
        self.pending_start: tuple[int, int, int, float] | None = None  # batch, k, started, t0
        self.request_tokens: dict[str, int] = {}  # request in flight -> tokens emitted so far
        self.finished = [0, 0]  # requests finished, their tokens
        # k -> histogram of tokens accepted per request on steady steps verifying k drafts
        # ([k + 1] counts: index j = request-steps that accepted exactly j)
        self.accepted: dict[int, list[int]] = {}
        # vLLM's speculative counters, kept per engine (vLLM's metrics registry is one per process, so
        # engines sharing a process cannot tell theirs apart): every step, every request verifying
        # drafts counts as one draft, its drafts as draft tokens, the leading ones it accepted.
        self.spec: dict = {"drafts": 0, "draft_tokens": 0, "accepted_tokens": 0, "accepted_per_pos": []}
        self.t_schedule = 0.0
        self.t_done = 0.0
        # Set by a benchmark while it measures: a drain writes nothing, the benchmark calls flush.
        self.hold = False
        self.flush_every = FLUSH_EVERY_S
        self._written_at = float("-inf")  # clock time of the last write on a drain
        self._dirty = False  # a drain left the log unwritten (held or too soon): the timer or exit writes it
        self._lookup: AdaptiveLookup | None = None  # the last drain's lookup, for that write
        self._lock = threading.RLock()
        self._idle = False  # drained, and no step scheduled since
        self._timer: threading.Timer | None = None  # writes what a drain left, once the period is up
        if path:
            atexit.register(self.flush_unwritten)

    def _busy(self, now: float, t0: float) -> bool:
        """Whether the engine went straight from the step begun at ``t0`` to the next one."""
        return now - self.t_done <= max(self.max_gap, 0.5 * (self.t_done - t0))

    @_locked
    def on_schedule(self, now: float, lookup: AdaptiveLookup | None) -> None:
        self._idle = False
        if self.pending is not None and self._busy(now, self.pending[3]):
            batch, k, emitted, t0 = self.pending
            seconds, emits = self.cells.setdefault((batch, k), ([], []))
            if len(seconds) < self.max_samples:
                seconds.append(now - t0)
                emits.append(emitted)
            if lookup is not None:
                lookup.observe(batch, k, emitted, now - t0)
        if self.pending_start is not None and self._busy(now, self.pending_start[3]):
            batch, k, started, t0 = self.pending_start
            starts = self.starts.setdefault(k, [])
            if len(starts) < self.max_samples:
                starts.append([batch, started, round(now - t0, 7)])
            if lookup is not None:
                lookup.observe_start(batch, k, started, now - t0)
        self.pending = self.pending_start = None
        self.t_schedule = now

    @_locked
    def on_output(
        self, now: float, scheduler_output, model_runner_output, lookup: AdaptiveLookup | None = None
    ) -> tuple[int, int, float] | None:
        """Record the step just finished, give every request's acceptance to ``lookup``; return
        (batch, verified k, mean emitted) of a steady step."""
        self.t_done = now
        sched = scheduler_output.num_scheduled_tokens or {}
        drafts = scheduler_output.scheduled_spec_decode_tokens or {}
        index = model_runner_output.req_id_to_index or {}
        sampled = model_runner_output.sampled_token_ids or []
        # tokens each scheduled request emitted this step
        emitted_by = {r: len(sampled[index[r]]) for r in sched if r in index and index[r] < len(sampled)}
        new = {getattr(r, "req_id", None) for r in scheduler_output.scheduled_new_reqs or ()}
        verified = {r: len(d) for r, d in drafts.items() if d and r in emitted_by}
        accepted = {r: min(max(emitted_by[r] - 1, 0), verified[r]) for r in verified}
        if verified:
            self._count(verified, accepted)
        self._count_requests(emitted_by, getattr(scheduler_output, "finished_req_ids", ()), lookup)
        if lookup is not None:
            idle = [r for r in emitted_by if r not in verified and r not in new]
            lookup.observe_requests(
                verified, accepted, getattr(scheduler_output, "finished_req_ids", ()), idle=idle
            )
        if self.trace is not None and sched and len(self.trace) < 100_000:
            self.trace.append(
                [
                    round(self.t_schedule, 6),
                    round(now, 6),
                    len(sched),
                    sum(sched.values()),
                    sum(len(d) for d in drafts.values()),
                    len(scheduler_output.scheduled_new_reqs or ()),
                    sum(emitted_by.values()),
                    int(getattr(scheduler_output, "num_spec_tokens_to_schedule", 0) or 0),
                    int(bool(getattr(scheduler_output, SKIP_ATTR, False))),
                ]
            )
        if not sched:
            return None
        decoding = {r: n for r, n in sched.items() if r not in new}
        ks = {len(drafts.get(r, ())) for r in decoding}
        if len(ks) > 1 or any(n != 1 + len(drafts.get(r, ())) for r, n in decoding.items()):
            return None  # a prefill chunk or mixed draft lengths
        k_next = int(getattr(scheduler_output, "num_spec_tokens_to_schedule", 0) or 0)
        k = next(iter(ks)) if ks else k_next  # the decoding requests' k (none decoding: the next k)
        if new:
            self._start(scheduler_output, len(sched), len(new), k, k_next, lookup)
            if not (lookup is not None and lookup.time_mixed) or not decoding:
                return None
        counts = [emitted_by[r] for r in decoding if r in emitted_by]
        if len(counts) != len(decoding) or len(emitted_by) != len(sched):
            return None
        emitted = sum(counts) / len(counts)  # per decoding request
        if k > 0:
            hist = self.accepted.setdefault(k, [0] * (k + 1))
            for c in counts:
                hist[min(max(c - 1, 0), k)] += 1
        recording = lookup is None or lookup.recording
        if recording and k == int(getattr(scheduler_output, "num_spec_tokens_to_schedule", k) or 0):
            self.pending = (len(sched), k, emitted, self.t_schedule)
        return len(sched), k, emitted

    def _start(self, scheduler_output, batch: int, started: int, k: int, k_next: int, lookup) -> None:
        """A step that starts ``started`` requests, the others decoding at ``k``: timed at the next
        schedule. A k = 0 start is kept only when it skipped the draft (vLLM's own k = 0 runs the
        draft over the new prompts like any k)."""
        if k != k_next or (k == 0 and not getattr(scheduler_output, SKIP_ATTR, False)):
            return
        sched = scheduler_output.num_scheduled_tokens
        for r in scheduler_output.scheduled_new_reqs or ():
            prompt = getattr(r, "prompt_token_ids", None)
            if prompt is not None and sched.get(r.req_id, 0) < len(prompt) - (r.num_computed_tokens or 0):
                return  # a prompt prefilled in chunks: this step holds only part of its start
        if lookup is None or lookup.recording:
            self.pending_start = (batch, k, started, self.t_schedule)

    def _count_requests(self, emitted_by: dict[str, int], finished, lookup) -> None:
        tokens = self.request_tokens
        for r, n in emitted_by.items():
            tokens[r] = tokens.get(r, 0) + n
        for r in finished or ():
            n = tokens.pop(r, 0)
            if n:
                self.finished[0] += 1
                self.finished[1] += n
                if lookup is not None:
                    lookup.observe_finished(n)

    def _count(self, verified: dict[str, int], accepted: dict[str, int]) -> None:
        spec = self.spec
        spec["drafts"] += len(verified)
        spec["draft_tokens"] += sum(verified.values())
        spec["accepted_tokens"] += sum(accepted.values())
        per_pos = spec["accepted_per_pos"]
        per_pos.extend([0] * (max(verified.values()) - len(per_pos)))
        for a in accepted.values():
            for i in range(a):
                per_pos[i] += 1

    def summary(self, lookup: AdaptiveLookup | None) -> dict:
        steps = [
            {
                "batch_size": b,
                "k": k,
                "steps": len(sec),
                "seconds": statistics.median(sec),
                "emitted": sum(em) / len(em),
            }
            for (b, k), (sec, em) in sorted(self.cells.items())
        ]
        out: dict = {
            "steps": steps,
            "accepted": {str(k): h for k, h in sorted(self.accepted.items())},
            "starts": {str(k): v for k, v in sorted(self.starts.items())},
            "finished": {"requests": self.finished[0], "tokens": self.finished[1]},
        }
        if self.trace is not None:
            out["trace_fields"] = [
                "t_schedule",
                "t_output",
                "requests",
                "tokens",
                "drafts",
                "new",
                "sampled",
                "k_next",
                "skip",
            ]
            out["trace"] = self.trace
        if lookup is not None:
            out["choices"] = {str(b): k for b, k in sorted(lookup.choices.items())}
            out["fell_back"] = lookup.policy is None and not lookup.explore
            if lookup.policy is not None:  # what the policy has learnt, for diagnosis
                cost = lookup.policy.cost
                out["alpha"] = list(lookup.policy.acceptance.alpha)
                if isinstance(cost, OnlineStepCost):
                    out["cost_factor"] = {
                        str(s.num_draft_tokens): [cost.factor(s), cost.count.get(s, 0)]
                        for s in lookup.policy.candidates
                    }
                    out[
                        "cost_cells"
                    ] = {  # "k@bucket": [measured / prior, timed steps]; bucket 7 = batch 64-127
                        f"{s.num_draft_tokens}@{bucket}": [round(cost.cell_ratio[(s, bucket)], 4), n]
                        for (s, bucket), n in sorted(cost.cell_count.items())
                    }
            out["probes"] = lookup.probes
        return out

    @_locked
    def on_drain(self, now: float, lookup: AdaptiveLookup | None) -> None:
        """The engine has no request left: write the log, unless held or written less than
        ``flush_every`` seconds ago (then a timer writes it when the period is up, if the engine is
        still idle; else the next drain after that, or the exit, does)."""
        if not self.path:
            return
        self._dirty, self._lookup, self._idle = True, lookup, True
        if self.hold:
            return
        wait = self.flush_every - (now - self._written_at)
        if wait > 0:
            self._arm(wait)
            return
        self._written_at = now
        self.flush(lookup)

    def _arm(self, delay: float) -> None:
        if self._timer is not None and self._timer.is_alive():
            return
        self._timer = threading.Timer(delay, self._flush_if_idle)
        self._timer.daemon = True
        self._timer.start()

    @_locked
    def _flush_if_idle(self) -> None:
        if self._idle and not self.hold:
            self.flush_unwritten()

    @_locked
    def flush_unwritten(self) -> None:
        """Write the log if a drain left it unwritten (the drain timer, and at exit)."""
        if self._dirty:
            try:
                self.flush(self._lookup)
            except OSError:  # at exit: the log's folder may be gone; nothing to report to
                pass

    @_locked
    def flush(self, lookup: AdaptiveLookup | None) -> None:
        """Write the summary now (atomically: a reader never sees half a file)."""
        self._dirty = False
        if not self.path:
            return
        p = Path(self.path)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(json.dumps(self.summary(lookup), indent=1))
        tmp.replace(p)
