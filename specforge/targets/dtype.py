"""Which floating-point type a target runs in on this machine.

Contract: :func:`choose_dtype` returns ``bfloat16`` where the hardware computes it fast and
``float32`` elsewhere, together with the reason, so callers can say which they chose:

* a CUDA device that supports bf16, or a CPU with AMX-BF16 tiles: bf16;
* a CPU with AVX512-BF16 and no AMX: it depends on the CPU, so it is measured
  (:func:`bf16_speedup`: a training-sized matmul in both types, timed once per CPU model, flags and
  torch version and cached in ``$SPECFORGE_HOME/dtype-probe.json``); bf16 where it is at least
  :data:`BF16_MIN_SPEEDUP` times faster. On a 2-core Xeon with these flags (2026-12-03) a
  [3376 x 576] @ [576 x 1536] matmul ran at 144 GFLOP/s in bf16 and 233 in fp32, and vLLM
  regenerated SmolLM2-135M answers at 132 tokens/s in bf16 and 146 in fp32 (batch 64); on a 2-core
  AMD EPYC with the same flags (2026-12-07) plain vLLM decoded 76 tokens/s in bf16 and 50 in fp32
  at batch 1, 367 and 282 at batch 8;
* no bf16 instructions: fp32 (bf16 would be emulated, several times slower).

Losslessness checks against plain decoding should run in float32 either way.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

BF16_MIN_SPEEDUP = 1.1  # bf16 must beat fp32 by this much on the probe to be chosen
PROBE_FILE = "dtype-probe.json"


@dataclass(frozen=True)
class DtypeChoice:
    dtype: str  # "bfloat16" or "float32"
    reason: str


def _cpuinfo() -> str:
    """``/proc/cpuinfo`` ("" where unreadable)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (or of the given text); empty where unreadable."""
    for line in (_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else what ``platform`` knows)."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _time_matmul(dtype: torch.dtype, repeats: int = 5) -> float:
    """Best-of-``repeats`` seconds of a [1024 x 576] @ [576 x 1536] matmul (a training micro-batch
    through a SmolLM2-sized projection) in ``dtype``."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(1024, 576, generator=g).to(dtype)
    b = torch.randn(576, 1536, generator=g).to(dtype)
    torch.mm(a, b)  # first call: kernel selection, not timed
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        best = min(best, (time.perf_counter() - t0) / 4)
    return best


def _cpu_key(flags: set[str]) -> str:
    bf16 = sorted(f for f in flags if "bf16" in f or f.startswith("amx"))
    return f"{cpu_name()} | {' '.join(bf16)} | torch {torch.__version__}"


def bf16_speedup(flags: set[str], cache_dir: Path | None = None, timer: Callable = _time_matmul) -> float:
    """fp32 time / bf16 time of the probe matmul on this CPU, measured once and cached per CPU
    model, bf16 flags and torch version (a corrupt cache is measured again and rewritten)."""
    from specforge.targets.loader import default_cache_root

    path = (cache_dir or default_cache_root()) / PROBE_FILE
    key = _cpu_key(flags)
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if not isinstance(cached, dict):
        cached = {}
    if isinstance(cached.get(key), int | float):
        return float(cached[key])
    ratio = timer(torch.float32) / max(1e-12, timer(torch.bfloat16))
    cached[key] = round(ratio, 3)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cached, indent=1))
        tmp.replace(path)
    except OSError:
        pass  # a read-only home: measure again next time
    return ratio


def choose_dtype(
    device: str = "cpu", cpuinfo: str | None = None, speedup: Callable[[set[str]], float] = bf16_speedup
) -> DtypeChoice:
    if device.startswith("cuda"):
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return DtypeChoice("bfloat16", "the GPU computes bf16 natively")
        return DtypeChoice("float32", "the GPU has no native bf16")
    flags = cpu_flags(cpuinfo)
    if "amx_bf16" in flags:
        return DtypeChoice("bfloat16", "the CPU has amx_bf16 (bf16 matrix tiles)")
    if "avx512_bf16" in flags:
        ratio = speedup(flags)
        if ratio >= BF16_MIN_SPEEDUP:
            return DtypeChoice(
                "bfloat16",
                f"the CPU has avx512_bf16 and no AMX; bf16 measured {ratio:.2f}x fp32's speed here",
            )
        return DtypeChoice(
            "float32", f"the CPU has avx512_bf16 but no AMX; bf16 measured {ratio:.2f}x fp32's speed here"
        )
    return DtypeChoice("float32", "the CPU has no bf16 instructions: bf16 would be emulated, slowly")
