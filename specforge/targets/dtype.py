"""Which floating-point type a target runs in on this machine.

Contract: :func:`choose_dtype` returns ``bfloat16`` where the hardware computes it fast (a CUDA
device that supports it; a CPU with AMX-BF16 tiles) and ``float32`` elsewhere, together with the
reason, so callers can say which they chose. AVX512-BF16 alone does not pay: on a 2-core Xeon with
it and no AMX (2026-12-03) a [3376 x 576] @ [576 x 1536] matmul ran at 144 GFLOP/s in bf16 and
233 in fp32, and vLLM regenerated answers from SmolLM2-135M at 132 tokens/s in bf16 and 146 in
fp32 (batch 64); without either flag bf16 is emulated, several times slower. Losslessness checks
against plain decoding should run in float32 either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


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
    flags = cpu_flags(cpuinfo)
    if "amx_bf16" in flags:
        return DtypeChoice("bfloat16", "the CPU has amx_bf16 (bf16 matrix tiles)")
    if "avx512_bf16" in flags:
        return DtypeChoice(
            "float32", "the CPU has avx512_bf16 but no AMX: bf16 measured slower than fp32 here"
        )
    return DtypeChoice("float32", "the CPU has no bf16 instructions: bf16 would be emulated, slowly")
