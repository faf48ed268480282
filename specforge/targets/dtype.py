"""Which floating-point type a target runs in on this machine.

Contract: :func:`choose_dtype` returns ``bfloat16`` where the hardware computes it natively (a CUDA
device that supports it; a CPU with AVX512-BF16 or AMX-BF16) and ``float32`` elsewhere, where bf16
is emulated and several times slower, together with the reason, so callers can say which they
chose. Losslessness checks against plain decoding should run in float32 either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclass(frozen=True)
class DtypeChoice:
    dtype: str  # "bfloat16" or "float32"
    reason: str


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (or of the given text); empty where unreadable."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def choose_dtype(device: str = "cpu", cpuinfo: str | None = None) -> DtypeChoice:
    if device.startswith("cuda"):
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return DtypeChoice("bfloat16", "the GPU computes bf16 natively")
        return DtypeChoice("float32", "the GPU has no native bf16")
    native = [f for f in BF16_CPU_FLAGS if f in cpu_flags(cpuinfo)]
    if native:
        return DtypeChoice("bfloat16", f"the CPU has {' and '.join(native)}")
    return DtypeChoice(
        "float32", "the CPU has neither AVX512-BF16 nor AMX-BF16: bf16 would be emulated, slowly"
    )
