"""Lockstep benchmark: one engine per configuration in one process, stepped in turn.

Why: on the 2-core machine here the speed of the machine drifts over seconds (one measurement's
deviation from its cell's median correlates at 0.55 with the next one's), so two identical
configurations measured one after the other, each for 1-2 s, differed by 15-20 % (standard deviation
of the log ratio, 12 pairs), and a 3 % bar could not be read even from 18 paired samples. Taking
turns of one step, every engine meets the same slow and fast moments: the same identical pair
differed by 1.7 % (8 samples). The price: engines sharing a process and a core slow each other (one
step per turn: ~15 % below the same engine alone), and not evenly: a static k = 1 engine served
1.065x no speculation at batch 16 in lockstep, 1.015x alone (20 paired samples each). Turns of 32
steps: 1.023x (0.97x alone), with a spread of 0.085 (alone: 0.165). :data:`~.request.TURN_STEPS` is 32.

Contract
--------
* :class:`ClosedLoop` serves ``B`` clients on one engine, each sending its next prompt as soon as the
  last one ends, one engine step per :meth:`ClosedLoop.tick`. The engine keeps its own clock: only the
  time inside its ticks counts, so its throughput, its requests' latencies and the step times its
  scheduler records (the plugin's recorder reads :data:`~serving.vllm_plugin.adaptive.CLOCK_ATTR`)
  are those of an engine serving alone.
* :func:`lockstep_sweep` measures every batch size ``repeats`` times (after one unrecorded warm-up
  pass); in a measurement, every engine runs its own closed loop on the same prompts and the engines
  take one step each, in an order shuffled every round of steps, until all have drained. Throughput
  counts the window until each engine's last prompt is sent (exactly ``B`` requests in flight), on
  that engine's clock.
* Rows carry what a paired sweep's carry (``config``, ``tokens_per_s``, latencies, the speculative
  counters from the engine's own step recorder, ``decode`` steps, output digest), so the summary
  reads either.

Only this package imports vllm; this module touches engines through their public ``LLMEngine``
methods (``add_request``, ``step``, ``has_unfinished_requests``) and the scheduler the plugin patched.
"""

from __future__ import annotations

import copy
import random
import time
from typing import Any

from serving.vllm_plugin.adaptive import CLOCK_ATTR
from serving.vllm_plugin.harness.counters import decode_since, diff, digest, recorded_steps
from serving.vllm_plugin.harness.progress import SweepProgress
from serving.vllm_plugin.harness.request import SweepSpec


class EngineClock:
    """An engine's own time: ``time.perf_counter`` stopped outside the engine's ticks."""

    def __init__(self) -> None:
        self.outside = 0.0  # seconds spent outside this engine's ticks so far
        self.left_at: float | None = None  # when the last tick ended

    def enter(self) -> None:
        now = time.perf_counter()
        if self.left_at is not None:
            self.outside += now - self.left_at
        self.left_at = None

    def leave(self) -> None:
        self.left_at = time.perf_counter()

    def __call__(self) -> float:
        return (self.left_at if self.left_at is not None else time.perf_counter()) - self.outside


class ClosedLoop:
    """``b`` clients on one engine (an ``LLMEngine``), one step per :meth:`tick`, timed on ``clock``."""

    def __init__(self, engine: Any, params: Any, prompts: list[dict], b: int, clock: EngineClock, tag: str):
        self.engine, self.params, self.prompts, self.b, self.clock = engine, params, prompts, b, clock
        self.tag = tag  # request ids must be unique per engine across measurements: batch size, repeat
        self.next = 0
        self.sent: dict[str, float] = {}  # request id -> engine time at submission
        self.tokens: dict[str, list[int]] = {}
        self.latency: dict[str, float] = {}  # request id -> engine seconds from submission to its end
        self.window: tuple[float, int] | None = None  # engine seconds and tokens until the last send
        self.started = clock()
        self.steps = 0
        for _ in range(min(b, len(prompts))):
            self._send()

    def _send(self) -> None:
        rid = f"{self.tag}-{self.next}"
        self.engine.add_request(rid, self.prompts[self.next], self.params)
        self.sent[rid], self.tokens[rid] = self.clock(), []
        self.next += 1

    @property
    def active(self) -> bool:
        return bool(self.engine.has_unfinished_requests())

    def tick(self) -> None:
        self.clock.enter()
        try:
            for out in self.engine.step():
                self.tokens[out.request_id] += out.outputs[0].token_ids
                if out.finished:
                    self.latency[out.request_id] = self.clock() - self.sent[out.request_id]
                    if self.next < len(self.prompts):
                        self._send()
                    elif self.window is None:
                        self.window = (self.clock() - self.started, sum(map(len, self.tokens.values())))
            self.steps += 1
        finally:
            self.clock.leave()

    def result(self) -> dict:
        """Throughput in the window, mean latency and time per output token, output digest."""
        elapsed = self.clock() - self.started
        seconds, tokens = self.window or (elapsed, sum(map(len, self.tokens.values())))
        outputs = [self.tokens[f"{self.tag}-{i}"] for i in range(self.next)]
        n = max(len(self.latency), 1)
        return {
            "seconds": elapsed,
            "output_tokens": sum(map(len, outputs)),
            "tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
            "tokens_per_s_all": sum(map(len, outputs)) / elapsed if elapsed > 0 else 0.0,
            "latency_mean": sum(self.latency.values()) / n,
            "tpot_mean": sum(self.latency[r] / max(len(self.tokens[r]), 1) for r in self.latency) / n,
            "outputs_sha": digest(outputs),
        }


def _counters(scheduler: Any) -> dict:
    recorder = getattr(scheduler, "_specforge_recorder", None)
    return copy.deepcopy(recorder.spec) if recorder is not None else {}


def lockstep_sweep(
    engines: dict[str, Any],
    schedulers: dict[str, Any],
    params: Any,
    prompts: list[dict],
    sweep: SweepSpec,
) -> list[dict]:
    """Measure every arm (``engines``: arm -> ``LLM``, ``schedulers``: arm -> its scheduler) at every
    batch size of ``sweep`` in lockstep.

    ``sweep``: ``batch_sizes``, ``repeats``, ``min_requests``, ``closed_loop`` (requests per client),
    ``seed``, ``warmup``, ``turn_steps`` (:class:`~.request.SweepSpec`)."""
    from vllm.sampling_params import RequestOutputKind

    params = params.clone()
    params.output_kind = RequestOutputKind.DELTA  # every step's new tokens, to count the window
    sizes = list(sweep.batch_sizes)
    per_slot = max(1, sweep.closed_loop)
    min_requests = sweep.min_requests
    needed = max(max(b, min_requests, per_slot * b) for b in sizes)
    if needed > len(prompts):
        prompts = [prompts[i % len(prompts)] for i in range(needed)]
    clocks = {arm: EngineClock() for arm in engines}
    for arm, sched in schedulers.items():
        setattr(sched, CLOCK_ATTR, clocks[arm])
    rng = random.Random(sweep.seed)
    turn = sweep.turn_steps

    def measure(b: int, rep: int) -> list[dict]:
        ps = prompts[: max(min_requests, per_slot * b)]
        before = {arm: (_counters(s), recorded_steps(s)) for arm, s in schedulers.items()}
        loops = {
            arm: ClosedLoop(llm.llm_engine, params, ps, b, clocks[arm], f"b{b}-r{rep}")
            for arm, llm in engines.items()
        }
        order = list(loops)
        while True:
            live = [arm for arm in order if loops[arm].active]
            if not live:
                break
            rng.shuffle(live)
            for arm in live:
                for _ in range(turn):
                    if not loops[arm].active:
                        break
                    loops[arm].tick()
        rows = []
        for arm, loop in loops.items():
            sched = schedulers[arm]
            counters, steps = before[arm]
            rows.append(
                {
                    "config": arm,
                    "decode": decode_since(sched, steps, b),
                    "batch_size": b,
                    "repeat": rep,
                    **loop.result(),
                    "spec": diff(_counters(sched), counters),
                    "steps": loop.steps,
                }
            )
        return rows

    progress = SweepProgress(len(sizes) * (sweep.repeats + bool(sweep.warmup)))
    for b in sizes if sweep.warmup else []:
        measure(b, -1)
        progress.measured(batch_size=b, repeat=-1)
    rows: list[dict] = []
    for rep in range(sweep.repeats):
        for b in sizes if rep % 2 == 0 else sizes[::-1]:
            rows += measure(b, rep)
            progress.measured(
                batch_size=b,
                repeat=rep,
                tokens_per_s={r["config"]: round(r["tokens_per_s"], 1) for r in rows[-len(engines) :]},
            )
    for sched in schedulers.values():
        setattr(sched, CLOCK_ATTR, None)
    return rows
