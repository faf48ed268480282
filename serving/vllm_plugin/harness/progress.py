"""A long sweep's progress, from the vLLM child to its caller: one JSON line per measurement.

The child (:func:`~serving.vllm_plugin.harness.sweeps.run_sweep`,
:func:`~serving.vllm_plugin.harness.lockstep.lockstep_sweep`) appends ``{"done", "total", ...}`` to
the file named by :data:`PROGRESS_ENV`, when the caller set it; :class:`ProgressReader` gives the
caller the lines written since it last looked (call it from ``run_vllm``'s ``poll``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

PROGRESS_ENV = "SPECFORGE_SWEEP_PROGRESS"


class SweepProgress:
    """The child's side: counts measurements and appends one line per measurement."""

    def __init__(self, total: int):
        path = os.environ.get(PROGRESS_ENV)
        self.path = Path(path) if path else None
        self.total, self.done = total, 0

    def measured(self, **fields: object) -> None:
        self.done += 1
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps({"done": self.done, "total": self.total, **fields}) + "\n")


class ProgressReader:
    """The caller's side: the whole lines appended to ``path`` since the last call."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0
        path.unlink(missing_ok=True)

    def new(self) -> list[dict]:
        if not self.path.is_file():
            return []
        with self.path.open() as f:
            f.seek(self.offset)
            text = f.read()
        whole = text[: text.rfind("\n") + 1]  # a line still being written waits for the next call
        self.offset += len(whole)
        return [json.loads(line) for line in whole.splitlines() if line.strip()]


def describe(p: dict, arm: str | None = None) -> str:
    """``[done/total] b=B ARM: N tok/s`` (or ``(warm-up)``) for one progress line; ``arm`` names
    what the line's own ``arm`` field does not (e.g. the k a burst calibration ran)."""
    arm = arm if arm is not None else p.get("arm")
    rate = f": {p['tokens_per_s']} tok/s" if "tokens_per_s" in p else " (warm-up)"
    return f"[{p['done']}/{p['total']}] b={p['batch_size']}{f' {arm}' if arm else ''}{rate}"
