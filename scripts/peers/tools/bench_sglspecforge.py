"""One timed offline EAGLE-3 training run of sgl-project SpecForge 0.2.0 on CPU.

Run with $PEERS_DIR/venv-sglspecforge/bin/python (run_sglspecforge.sh does). Writes a SpecForge
run config (YAML) and calls SpecForge's own CLI entry point (``specforge.cli.main(["train", ...])``,
single local worker: gloo process group, DDP wrapper via fsdp_sharding=NO_SHARD), with only the
changes a CPU-only host needs plus the timing hooks:

* loss: SpecForge's EAGLE-3 objective runs a Triton kernel (specforge.core.loss.LogSoftmaxLoss),
  which cannot take CPU tensors. It is replaced by SpecForge's own reference implementation of the
  same loss from the same file (specforge.core.loss._compute_loss, torch.compile'd by SpecForge);
  SGL_LOSS=eager uses the uncompiled reference function instead.
* teacher head dtype: SpecForge's TargetHead.from_pretrained always casts the frozen target
  lm_head to bfloat16 (then fp32 features would hit a dtype error). For DTYPE=float32 the head is
  kept in float32; for DTYPE=bfloat16 it is left as SpecForge makes it.
* DTYPE=bfloat16 only: offline features are cast to bf16 when loaded (SpecForge's own capture
  stores bf16 features; ours are fp32).
* timing: real tokens = attention_mask sum of each batch entering Eagle3TrainStrategy.forward_loss;
  time taken after FSDPTrainingBackend.step (optimizer step).

Env: SGL_DATA (the converted data, default $PEERS_DIR/data-sglspecforge), RUN_DIR (default
$PEERS_DIR/runs/sglspecforge), PEERS_DIR (default ~/.cache/specforge/peers), STEPS (total optimizer
steps including the warm-up, default 40; run_sglspecforge.sh passes timed + warm-up; at most one
epoch, rows // BATCH), WARMUP (default 5), DTYPE (float32 | bfloat16 -> model.torch_dtype),
BATCH (sequences per step, default 5: about 940 real tokens at a mean row length of 188),
ATTN (default sdpa; SpecForge's default flex_attention stops with "FlexAttention does not
support backward on CPU"),
WORKERS (data.dataloader_num_workers, default 0), SGL_LOSS (compiled | eager), SEED (default 0),
SGL_PATCH_LOSS=0 / SGL_PATCH_HEAD=0 (stock loss / head, to see the CPU failures),
BENCH_RESULT (result JSON path, default $RUN_DIR/result.json). The row count and the teacher's
lm_head key come from the conversion's peer_conversion.json (see convert_sglspecforge.py).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from importlib.metadata import version as _version

import torch
import yaml
from steptimer import StepTimer

PEERS_DIR = Path(os.environ.get("PEERS_DIR") or Path.home() / ".cache" / "specforge" / "peers")
DATA = Path(os.environ.get("SGL_DATA", str(PEERS_DIR / "data-sglspecforge")))
RUN_DIR = Path(os.environ.get("RUN_DIR", str(PEERS_DIR / "runs" / "sglspecforge")))
STEPS = int(os.environ.get("STEPS", "40"))
WARMUP = int(os.environ.get("WARMUP", "5"))
DTYPE = os.environ.get("DTYPE", "float32")
BATCH = int(os.environ.get("BATCH", "5"))
ATTN = os.environ.get("ATTN", "sdpa")
WORKERS = int(os.environ.get("WORKERS", "0"))
SEED = int(os.environ.get("SEED", "0"))
SGL_LOSS = os.environ.get("SGL_LOSS", "compiled")
PATCH_LOSS = os.environ.get("SGL_PATCH_LOSS", "1") == "1"  # 0: stock Triton loss (fails on CPU)
RESULT = os.environ.get("BENCH_RESULT", str(RUN_DIR / "result.json"))

if DTYPE not in ("float32", "bfloat16"):
    raise SystemExit("DTYPE must be float32 or bfloat16")
try:
    CONVERSION = json.loads((DATA / "peer_conversion.json").read_text())
except FileNotFoundError:
    raise SystemExit(f"{DATA} holds no finished conversion: run prepare_data.sh") from None
ROWS = CONVERSION["rows"]
if STEPS > ROWS // BATCH:
    raise SystemExit(
        f"one epoch of the {ROWS} conversations holds {ROWS // BATCH} steps of {BATCH}; "
        f"asked for {STEPS} (timed + warm-up)"
    )
run_dtype = getattr(torch, DTYPE)

import specforge.algorithms.eagle3.data as e3data  # noqa: E402
import specforge.algorithms.eagle3.model as e3model  # noqa: E402
import specforge.core.loss as sf_loss  # noqa: E402
from specforge.modeling.target.target_head import TargetHead  # noqa: E402
from specforge.training.backend import FSDPTrainingBackend  # noqa: E402
from specforge.training.strategies.base import Eagle3TrainStrategy  # noqa: E402

# ---------------------------------------------------------------- CPU compatibility patches
if PATCH_LOSS:
    if SGL_LOSS == "eager":
        _ref = (
            getattr(sf_loss._compute_loss, "_torchdynamo_orig_callable", None)
            or sf_loss._compute_loss.__wrapped__
        )
    else:
        _ref = sf_loss._compute_loss

    class _ReferenceLogSoftmaxLoss:
        """Same contract as specforge.core.loss.LogSoftmaxLoss.apply(logits, target_p, mask)."""

        @staticmethod
        def apply(logits, target_p, position_mask):
            return _ref(logits, target_p, position_mask)

    e3model.LogSoftmaxLoss = _ReferenceLogSoftmaxLoss

_orig_head = TargetHead.from_pretrained.__func__


def _head(cls, *a, **k):
    head = _orig_head(cls, *a, **k)
    return head.to(dtype=run_dtype) if run_dtype != torch.bfloat16 else head


if os.environ.get("SGL_PATCH_HEAD", "1") == "1":  # 0: stock bf16 head (fp32 features then fail)
    TargetHead.from_pretrained = classmethod(_head)

if DTYPE == "bfloat16":
    _orig_norm = e3data.normalize_offline_sample

    def _norm(raw, max_len):
        out = _orig_norm(raw, max_len)
        return {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in out.items()}

    e3data.normalize_offline_sample = _norm

# ---------------------------------------------------------------- timing hooks
timer = StepTimer(
    STEPS,
    WARMUP,
    RESULT,
    {
        "trainer": "sglspecforge",
        "version": _version("specforge"),
        "mode": "offline",
        "dtype": DTYPE,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "attn": ATTN,
        "batch_size": BATCH,
        "loss_impl": (f"reference_{SGL_LOSS}" if PATCH_LOSS else "triton"),
    },
)
_orig_fl = Eagle3TrainStrategy.forward_loss


def _forward_loss(self, batch, ctx=None):
    am = batch.tensors["attention_mask"]
    timer.add_tokens(int(am.sum().item()), extra=int(am.numel()))
    return _orig_fl(self, batch, ctx)


Eagle3TrainStrategy.forward_loss = _forward_loss
_orig_step = FSDPTrainingBackend.step


def _step(self, *a, **k):
    if "trainable_params" not in timer.meta:
        params = list(self.module.parameters())
        timer.meta["trainable_params"] = sum(p.numel() for p in params if p.requires_grad)
        timer.meta["frozen_params"] = sum(p.numel() for p in params if not p.requires_grad)
    out = _orig_step(self, *a, **k)
    timer.step_done()
    return out


FSDPTrainingBackend.step = _step

# ---------------------------------------------------------------- run SpecForge's trainer
RUN_DIR.mkdir(parents=True, exist_ok=True)
config = {
    "run_id": "bench",
    "output_dir": str(RUN_DIR / "output"),
    "model": {
        "target_model_path": str(DATA / "target"),
        "draft_model_config": str(DATA / "draft_config.json"),
        "embedding_key": "model.embed_tokens.weight",
        # model.embed_tokens.weight for tied embeddings (no lm_head.weight), as SmolLM2 has
        "lm_head_key": CONVERSION.get("lm_head_key", "model.embed_tokens.weight"),
        "torch_dtype": DTYPE,
    },
    "data": {
        "hidden_states_path": str(DATA / "features"),
        "max_length": 2048,
        "dataloader_num_workers": WORKERS,
        "cache_dir": str(RUN_DIR / "cache"),
    },
    "training": {
        "strategy": "eagle3",
        "batch_size": BATCH,
        "accumulation_steps": 1,
        "num_epochs": 1,
        "max_steps": STEPS,
        "learning_rate": 1e-4,
        "ttt_length": 7,
        "attention_backend": ATTN,
        "fsdp_sharding": "NO_SHARD",
        "save_interval": 0,
        "eval_interval": 0,
        "log_interval": 1000000,
        "seed": SEED,
    },
}
cfg_path = RUN_DIR / "run.yaml"
cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
print(f"[bench] specforge train --config {cfg_path}", flush=True)

from specforge.cli import main  # noqa: E402

rc = main(["train", "--config", str(cfg_path)])
raise SystemExit(f"SpecForge returned {rc} before step {STEPS} (epoch too short?)")
