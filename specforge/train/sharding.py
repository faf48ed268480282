"""What the training loop does differently when accelerate shards the draft with FSDP.

Contract: only the draft (inside the loop's ``TTTModule``) goes through ``accelerator.prepare``;
the frozen target, its LM head and online capture stay outside FSDP, whole on every process.
Under FSDP (version 2 only) the draft's parameters are DTensor shards, so:

* :func:`full_draft_state` gathers the whole draft state dict onto the main process (every
  process must call it: it is a collective) for the final ``draft.safetensors`` and for the
  served-acceptance estimate, which runs a plain copy built by :func:`plain_draft`;
* :func:`step_loss` reports an optimizer step's loss as the mean over its micro-batches and
  processes: the objective whose gradient the step applied, whatever the batch split.

FSDP on CPU (gloo), which accelerate 1.x does not enable by itself, takes two steps here:
:func:`use_cpu` is the ``cpu`` flag the loop gives :class:`accelerate.Accelerator` (accelerate's FSDP
launcher does not pass a config's ``use_cpu: true`` on to the processes it starts, so each process
of a CPU-only machine would otherwise train alone), and :func:`setup_fsdp` turns the resulting
multi-CPU state into an FSDP one when the launch asked for FSDP (accelerate applies an FSDP config
to accelerator devices only and would silently fall back to DDP).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from specforge.errors import SpecforgeError
from specforge.train.checkpoints import DRAFT_PREFIX


def use_cpu() -> bool:
    """True where torch sees no accelerator (CUDA, XPU, MPS, ...): train on CPU, over gloo when
    launched as several processes."""
    return not torch.accelerator.is_available()


def setup_fsdp(accelerator) -> bool:
    """Whether ``accelerator`` shards prepared models with FSDP, after enabling it on a gloo CPU group
    launched with an FSDP config; one clear error for FSDP 1."""
    import os

    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    if (
        os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
        and state.distributed_type == DistributedType.MULTI_CPU
    ):
        plugin = FullyShardedDataParallelPlugin()  # the launcher's FSDP_* settings
        if accelerator.mixed_precision != "no":
            plugin.set_mixed_precision(accelerator.mixed_precision)
        state.fsdp_plugin = plugin
        state.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # as accelerate does on GPUs
    if accelerator.distributed_type != DistributedType.FSDP:
        return False
    if not accelerator.is_fsdp2:
        raise SpecforgeError(
            "specforge trains under FSDP version 2 only (fsdp_config.fsdp_version: 2 in the accelerate "
            "config): version 1's flat parameters break gradient clipping over the trainable subset"
        )
    return True


def full_draft_state(accelerator, module: nn.Module) -> dict[str, torch.Tensor]:
    """The whole draft state dict (CPU tensors, ``draft.`` prefix dropped) on the main process; other
    processes get what accelerate returns them (empty under FSDP). Call it on every process."""
    state = accelerator.get_state_dict(module)
    return {
        k[len(DRAFT_PREFIX) :]: v.detach().cpu().contiguous()
        for k, v in state.items()
        if k.startswith(DRAFT_PREFIX)
    }


def plain_draft(
    accelerator, module: nn.Module, build: Callable[[], nn.Module], fsdp: bool
) -> nn.Module | None:
    """The draft as one ordinary module on the main process (None elsewhere): the trained module
    itself without FSDP, else a copy built by ``build`` and loaded from the gathered shards."""
    if not fsdp:
        return accelerator.unwrap_model(module).draft if accelerator.is_main_process else None
    state = full_draft_state(accelerator, module)
    if not accelerator.is_main_process:
        return None
    draft = build()
    draft.load_state_dict(state)
    return draft.to(accelerator.device).eval()


def step_loss(accelerator, sums: torch.Tensor, micro_batches: int) -> list[float]:
    """``sums`` (the step's micro-batch losses summed: total, then per TTT step) averaged over the
    micro-batches and then over the processes (one all-reduce)."""
    mean = sums / max(1, micro_batches)
    if accelerator.num_processes > 1:
        mean = accelerator.reduce(mean.to(accelerator.device), reduction="mean")
    return mean.tolist()
