"""The run-time dtype choice follows the CPU's bf16 support, measured where flags do not settle it,
and says why."""

import json

import torch

from specforge.targets import dtype as dtype_mod
from specforge.targets.dtype import PROBE_FILE, bf16_speedup, choose_dtype, cpu_flags

AVX2 = "processor : 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
AVX512_BF16 = "processor : 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
AMX = "flags : avx2 avx512f amx_tile amx_bf16 amx_int8\n"


def _never(flags):
    raise AssertionError("the flags settle it: nothing to measure")


def test_flags_decide_where_they_can():
    assert choose_dtype(cpuinfo=AVX2, speedup=_never).dtype == "float32"
    assert "emulated" in choose_dtype(cpuinfo=AVX2, speedup=_never).reason
    assert choose_dtype(cpuinfo=AMX, speedup=_never).dtype == "bfloat16"
    assert choose_dtype(cpuinfo="no flags here", speedup=_never).dtype == "float32"


def test_avx512_bf16_without_amx_is_measured():
    # the 2-core Xeon of 2026-12-03 ran bf16 slower; the AMD EPYC of 2026-12-07 faster
    slow = choose_dtype(cpuinfo=AVX512_BF16, speedup=lambda flags: 0.62)
    fast = choose_dtype(cpuinfo=AVX512_BF16, speedup=lambda flags: 1.5)
    assert slow.dtype == "float32" and "0.62x" in slow.reason
    assert fast.dtype == "bfloat16" and "1.50x" in fast.reason


def test_the_probe_runs_once_per_cpu_and_survives_a_corrupt_cache(tmp_path):
    calls = []

    def timer(dtype):
        calls.append(dtype)
        return 2.0 if dtype == torch.float32 else 1.0

    flags = {"avx512f", "avx512_bf16"}
    (tmp_path / PROBE_FILE).write_text("{not json")
    assert bf16_speedup(flags, tmp_path, timer) == 2.0
    assert bf16_speedup(flags, tmp_path, timer) == 2.0  # cached: not timed again
    assert len(calls) == 2
    cached = json.loads((tmp_path / PROBE_FILE).read_text())
    assert list(cached.values()) == [2.0] and "avx512_bf16" in next(iter(cached))


def test_the_probe_times_real_matmuls():
    assert dtype_mod._time_matmul(torch.float32, repeats=1) > 0


def test_this_machine_reads_its_flags(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECFORGE_HOME", str(tmp_path))
    flags = cpu_flags()
    choice = choose_dtype()
    if "amx_bf16" in flags:
        assert choice.dtype == "bfloat16"
    elif "avx512_bf16" not in flags:
        assert choice.dtype == "float32"
    else:
        assert "measured" in choice.reason
