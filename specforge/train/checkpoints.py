"""Checkpoints of a training run: where the latest is, and resuming from it.

Contract: a run keeps its checkpoints under ``<output_dir>/checkpoints/step-NNNNNNN`` (written by
``accelerator.save_state`` to a temporary directory renamed into place) and names the newest in
``latest.json``. :func:`latest_checkpoint` reads that pointer; :func:`resume` loads it, falling
back to the newest older checkpoint that loads, and says in one line which settings changed when
a checkpoint no longer fits the model. :func:`checkpoint_draft_state` reads the draft's whole state
dict out of a checkpoint, sharded (FSDP ``SHARDED_STATE_DICT``) or not, for ``specforge export``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch

from specforge.config import TrainConfig
from specforge.errors import SpecforgeError
from specforge.files import write_json_atomic

CKPT_DIR = "checkpoints"
LATEST = "latest.json"
SHARDED_MODEL_DIR = "pytorch_model_fsdp_0"  # accelerate's torch.distributed.checkpoint of the model
FULL_MODEL_FILE = "model.safetensors"  # accelerate's unsharded model file
DRAFT_PREFIX = "draft."  # the draft's keys inside the training loop's TTTModule


def latest_checkpoint(output_dir: Path) -> Path | None:
    pointer = output_dir / CKPT_DIR / LATEST
    if not pointer.is_file():
        return None
    try:
        path = output_dir / CKPT_DIR / json.loads(pointer.read_text())["dir"]
    except (json.JSONDecodeError, KeyError) as e:
        raise SpecforgeError(
            f"{pointer} is corrupt ({e}); delete it to start over, or point it at a checkpoint"
        ) from e
    if not path.is_dir():
        raise SpecforgeError(f"{pointer} names {path}, which does not exist; delete {pointer} to start over")
    return path


def _checkpoints(output_dir: Path) -> list[Path]:
    """The finished checkpoints, oldest first."""
    root = output_dir / CKPT_DIR
    return sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))


def _config_changes(ckpt: Path, cfg: TrainConfig) -> list[str]:
    """The keys whose values differ between the config saved in ``ckpt`` and ``cfg``."""
    import yaml

    try:
        saved = flat_hparams(yaml.safe_load((ckpt / "config.yaml").read_text()) or {})
    except (OSError, yaml.YAMLError):
        return []
    now = flat_hparams(cfg.model_dump(mode="json"))
    return [f"{k} ({saved.get(k)!r} -> {now.get(k)!r})" for k in sorted(now) if saved.get(k) != now.get(k)]


def resume(accelerator, output_dir: Path, latest: Path, cfg: TrainConfig) -> Path:
    """Load ``latest``; if its files are damaged, fall back to the newest older checkpoint that loads,
    with a warning. A checkpoint that does not fit the model (the config changed) is one clear error."""
    candidates = [latest] + [c for c in reversed(_checkpoints(output_dir)) if c != latest]
    for i, ckpt in enumerate(candidates):
        if not any(ckpt.glob("random_states_*.pkl")):
            accelerator.print(
                f"[train] warning: {ckpt} has no RNG state (random_states_*.pkl); the resumed run will not "
                "repeat the uninterrupted run exactly"
            )
        try:
            accelerator.load_state(str(ckpt))
            return ckpt
        except Exception as e:  # accelerate and torch raise many types for a damaged file
            problem = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            if "size mismatch" in str(e) or "Missing key" in str(e) or "Unexpected key" in str(e):
                changes = _config_changes(ckpt, cfg)
                raise SpecforgeError(
                    f"checkpoint {ckpt} does not fit the draft this config builds ({problem})"
                    + (f"; changed since it was saved: {', '.join(changes)}" if changes else "")
                    + ". Restore those settings to resume, or choose a new output_dir"
                ) from None
            older = candidates[i + 1] if i + 1 < len(candidates) else None
            if older is None:
                raise SpecforgeError(
                    f"checkpoint {ckpt} cannot be loaded ({problem}), and no older checkpoint is left; delete "
                    f"{output_dir / CKPT_DIR} to start over"
                ) from None
            accelerator.print(
                f"[train] warning: checkpoint {ckpt} cannot be loaded ({problem}); resuming from the older "
                f"checkpoint {older} instead"
            )
    raise AssertionError("unreachable")


def save_checkpoint(accelerator, output_dir: Path, step: int, cfg: TrainConfig, draft_json: dict) -> None:
    """Write step ``step``'s checkpoint (every process takes part): ``accelerator.save_state`` into
    a temporary directory, with the resolved config and ``draft_config.json`` (what ``specforge
    export`` reads), renamed into place; then point ``latest.json`` at it atomically and drop all
    but the newest ``cfg.keep_checkpoints``."""
    accelerator.wait_for_everyone()
    ckpt_root = output_dir / CKPT_DIR
    name = f"step-{step:07d}"
    tmp = ckpt_root / (name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        cfg.save(tmp / "config.yaml")
        write_json_atomic(tmp / "draft_config.json", draft_json)
        final = ckpt_root / name
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        pointer = ckpt_root / (LATEST + ".tmp")
        pointer.write_text(json.dumps({"dir": name, "step": step}))
        pointer.replace(ckpt_root / LATEST)
        for old in sorted(p for p in ckpt_root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))[
            : -cfg.keep_checkpoints
        ]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def flat_hparams(tree: dict, prefix: str = "") -> dict:
    """Nested config -> {"a.b": scalar} (trackers take scalars only; lists and None become strings)."""
    flat = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            flat.update(flat_hparams(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v if isinstance(v, int | float | str | bool) else str(v)
    return flat


def is_training_checkpoint(ckpt: Path) -> bool:
    """Whether ``ckpt`` holds a model ``accelerator.save_state`` wrote for a training run: FSDP shards,
    or ``model.safetensors`` whose keys are the training module's (``draft.*``)."""
    if (ckpt / SHARDED_MODEL_DIR).is_dir():
        return True
    if not (ckpt / FULL_MODEL_FILE).is_file():
        return False
    from safetensors import safe_open

    try:
        with safe_open(str(ckpt / FULL_MODEL_FILE), framework="pt") as f:
            keys = list(f.keys())
    except Exception:  # a damaged file is not recognisably a checkpoint; the caller reports it
        return False
    return bool(keys) and all(k.startswith(DRAFT_PREFIX) for k in keys)


def checkpoint_draft_state(ckpt: Path) -> dict[str, torch.Tensor]:
    """The draft's whole state dict from a checkpoint (see :func:`is_training_checkpoint`): the FSDP
    shards merged by accelerate's ``merge_fsdp_weights`` (torch.distributed.checkpoint's reader, one
    process), or the unsharded ``model.safetensors``; the ``draft.`` key prefix dropped."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException

    sharded = ckpt / SHARDED_MODEL_DIR
    source = sharded if sharded.is_dir() else ckpt / FULL_MODEL_FILE
    if sharded.is_dir() and not (sharded / ".metadata").is_file():
        raise SpecforgeError(
            f"{sharded} cannot be read as a training checkpoint's model (no .metadata: not a complete "
            "torch.distributed.checkpoint); export another checkpoint or the finished run"
        )
    try:
        if sharded.is_dir():
            from accelerate.utils import merge_fsdp_weights

            with tempfile.TemporaryDirectory() as tmp:
                merge_fsdp_weights(str(sharded), tmp, safe_serialization=True)
                state = load_file(str(Path(tmp) / FULL_MODEL_FILE))
        else:
            state = load_file(str(source))
    except (Exception, CheckpointException) as e:  # torch.distributed.checkpoint, safetensors: many types
        lines = str(e).strip().splitlines() or [type(e).__name__]
        problem = (lines[-1] if isinstance(e, CheckpointException) else lines[0])[:300]
        raise SpecforgeError(
            f"{source} cannot be read as a training checkpoint's model ({problem}); export another "
            "checkpoint or the finished run"
        ) from None
    other = [k for k in state if not k.startswith(DRAFT_PREFIX)]
    if other or not state:
        raise SpecforgeError(
            f"{source} is not a specforge training checkpoint: its tensors are not the draft's "
            f"({DRAFT_PREFIX}*), e.g. {other[:3]}"
        )
    return {k[len(DRAFT_PREFIX) :]: v for k, v in state.items()}
