"""The run-time dtype choice follows the CPU's native bf16 support and says why."""

from specforge.targets.dtype import choose_dtype, cpu_flags

AVX2 = "processor : 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
XEON = "processor : 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
AMX = "flags : avx2 avx512f amx_tile amx_bf16 amx_int8\n"


def test_native_bf16_only_where_the_cpu_has_it():
    assert choose_dtype(cpuinfo=AVX2).dtype == "float32"
    assert "emulated" in choose_dtype(cpuinfo=AVX2).reason
    assert choose_dtype(cpuinfo=XEON).dtype == "float32"  # AVX512-BF16 without AMX: slower than fp32
    assert "avx512_bf16" in choose_dtype(cpuinfo=XEON).reason
    assert choose_dtype(cpuinfo=AMX).dtype == "bfloat16"
    assert choose_dtype(cpuinfo="no flags here").dtype == "float32"


def test_this_machine_reads_its_flags():
    flags = cpu_flags()
    assert choose_dtype().dtype == ("bfloat16" if "amx_bf16" in flags else "float32")
