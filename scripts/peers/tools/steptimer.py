"""Step-boundary timing shared by the peer benchmark runners (stdlib only).

A runner calls ``add_tokens(n)`` when a training batch enters the model and ``step_done()`` right
after the optimizer step. Timed window = steps WARMUP+1 .. STEPS: seconds from the end of step
WARMUP to the end of step STEPS, tokens = real tokens of those steps. After step STEPS the result
JSON is written to $BENCH_RESULT and the process exits at once (no final checkpoint, no
validation: neither is part of the timed work).
"""

from __future__ import annotations

import json
import os
import statistics
import time


class StepTimer:
    def __init__(self, steps: int, warmup: int, result_path: str, meta: dict):
        if steps <= warmup:
            raise SystemExit(f"STEPS ({steps}) must exceed WARMUP ({warmup})")
        self.steps, self.warmup, self.result_path, self.meta = steps, warmup, result_path, meta
        self.t_start = time.perf_counter()
        self.pending = 0
        self.step = 0
        self.t_end: list[float] = []
        self.cpu_end: list[float] = []  # process CPU time (all threads) at each step end
        self.tokens: list[int] = []
        self.step_tokens_extra: list[int] = []

    def add_tokens(self, n: int, extra: int = 0) -> None:
        self.pending += int(n)
        self._extra = getattr(self, "_extra", 0) + int(extra)

    def step_done(self) -> None:
        now = time.perf_counter()
        self.step += 1
        self.t_end.append(now)
        self.cpu_end.append(time.process_time())
        self.tokens.append(self.pending)
        self.step_tokens_extra.append(getattr(self, "_extra", 0))
        self.pending = 0
        self._extra = 0
        if os.environ.get("BENCH_VERBOSE", "1") == "1":
            dt = now - (self.t_end[-2] if len(self.t_end) > 1 else self.t_start)
            print(f"[bench] step {self.step}: {self.tokens[-1]} real tokens, {dt:.2f} s", flush=True)
        if self.step >= self.steps:
            self.finish()

    def finish(self) -> None:
        w = self.warmup
        seconds = self.t_end[-1] - self.t_end[w - 1] if w > 0 else self.t_end[-1] - self.t_start
        real = sum(self.tokens[w:])
        res = dict(self.meta)
        res.update(
            {
                "steps": self.steps - w,
                "warmup_steps": w,
                "real_tokens": real,
                "seconds": round(seconds, 3),
                "real_tokens_per_s": round(real / seconds, 1) if seconds > 0 else None,
                "mean_real_tokens_per_step": round(real / (self.steps - w), 1),
                # robust to a transient slowdown (e.g. another job on the host): median over the
                # timed steps of (step real tokens / step seconds)
                "median_step_real_tokens_per_s": round(
                    statistics.median(
                        tok / (b - a)
                        for tok, a, b in zip(
                            self.tokens[w:],
                            self.t_end[w - 1 : -1] if w > 0 else [self.t_start, *self.t_end[:-1]],
                            self.t_end[w:],
                        )
                    ),
                    1,
                ),
                # CPU seconds the trainer process burnt per wall second in the timed window:
                # ~= usable cores; well below the host's core count means contention
                "timed_cores_used": round(
                    (self.cpu_end[-1] - (self.cpu_end[w - 1] if w > 0 else 0.0)) / seconds, 2
                )
                if seconds > 0
                else None,
                "startup_plus_warmup_s": round(self.t_end[w - 1] - self.t_start, 1) if w > 0 else 0.0,
                "per_step_s": [round(b - a, 3) for a, b in zip([self.t_start, *self.t_end[:-1]], self.t_end)],
                "per_step_real_tokens": self.tokens,
            }
        )
        if any(self.step_tokens_extra):
            res["per_step_padded_tokens"] = self.step_tokens_extra
        with open(self.result_path, "w") as f:
            json.dump(res, f)
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
