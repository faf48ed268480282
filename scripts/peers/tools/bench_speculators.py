"""One timed offline EAGLE-3 training run of vllm-project/speculators 0.9.0 on CPU.

Run with $PEERS_DIR/venv-speculators/bin/python (run_speculators.sh does). Calls speculators'
own trainer (speculators.train.cli.main with a TrainConfig resolved from CLI-style args) and adds
only what a CPU-only host needs plus the timing hooks:

* CPU placement: speculators' Trainer moves the model and every batch to ``get_local_rank()``
  (the int 0, i.e. cuda:0) and autocasts on device type "cuda" when no accelerator exists; the
  runner makes that device "cpu" (model/batches) and the autocast device type "cpu".
* ``torch.accelerator.synchronize()`` raises on a host without an accelerator; speculators' step
  profiler calls it on logged steps, so it becomes a no-op here.
* timing: tokens counted when a batch enters Eagle3DraftModel.forward, time taken after the
  optimizer + scheduler step (Trainer._schedulers_step).

Env: TARGET (target model directory, required: speculators' verifier), SPEC_DATA (the converted
data, default $PEERS_DIR/data-speculators), RUN_DIR (default $PEERS_DIR/runs/speculators), PEERS_DIR
(default ~/.cache/specforge/peers), STEPS (total optimizer steps including the warm-up, default
40; run_speculators.sh passes timed + warm-up), WARMUP (untimed first steps, default 5),
DTYPE (float32 | bfloat16 -> speculators' --hidden-states-dtype: bf16 hidden states + CPU bf16
autocast, fp32 master weights), ATTN (--draft-attn-impl, default sdpa: speculators' default
simple_flex_attention stops with "FlexAttention does not support backward on CPU"),
LOSS_IMPL (--loss-implementation, default eager: the default "fused" needs Triton/GPU),
SEQ_LEN (packed row length, default 1024; speculators truncates longer rows), WORKERS (dataloader
workers, default 0), SEED (default 0), SPEC_EXTRA_ARGS (more `speculators train` arguments),
BENCH_RESULT (result JSON path, default $RUN_DIR/result.json). The train_data_ratio comes from the
conversion's peer_conversion.json (see convert_speculators.py).
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
from steptimer import StepTimer

PEERS_DIR = Path(os.environ.get("PEERS_DIR") or Path.home() / ".cache" / "specforge" / "peers")
TARGET = os.environ.get("TARGET", "")
DATA = os.environ.get("SPEC_DATA", str(PEERS_DIR / "data-speculators"))
RUN_DIR = Path(os.environ.get("RUN_DIR", str(PEERS_DIR / "runs" / "speculators")))
STEPS = int(os.environ.get("STEPS", "40"))
WARMUP = int(os.environ.get("WARMUP", "5"))
DTYPE = os.environ.get("DTYPE", "float32")
ATTN = os.environ.get("ATTN", "sdpa")
SEQ_LEN = int(os.environ.get("SEQ_LEN", "1024"))
LOSS_IMPL = os.environ.get("LOSS_IMPL", "eager")  # "fused" = Triton kernels (GPU only)
WORKERS = int(os.environ.get("WORKERS", "0"))
SEED = int(os.environ.get("SEED", "0"))
RESULT = os.environ.get("BENCH_RESULT", str(RUN_DIR / "result.json"))

if not TARGET:
    raise SystemExit("set TARGET to the target model directory")
if DTYPE not in ("float32", "bfloat16"):
    raise SystemExit("DTYPE must be float32 or bfloat16")
try:
    CONVERSION = json.loads((Path(DATA) / "peer_conversion.json").read_text())
except FileNotFoundError:
    raise SystemExit(f"{DATA} holds no finished conversion: run prepare_data.sh") from None
if CONVERSION.get("max_row_tokens", 0) > SEQ_LEN:  # speculators' packer cuts them (only kept tokens count)
    print(
        f"[bench] the longest row has {CONVERSION['max_row_tokens']} tokens > SEQ_LEN {SEQ_LEN}: "
        "speculators truncates such rows",
        flush=True,
    )

# ---------------------------------------------------------------- CPU compatibility patches
if not torch.accelerator.is_available():
    torch.accelerator.synchronize = lambda *a, **k: None  # speculators' _StepTimer calls it

import speculators.train.trainer as sp_trainer  # noqa: E402
from speculators.models.eagle3.core import Eagle3DraftModel  # noqa: E402

sp_trainer.get_local_rank = lambda: "cpu"  # Trainer: model.to(local_rank), batch.to(local_rank)
_orig_init = sp_trainer.Trainer.__init__


def _init(self, *a, **k):
    _orig_init(self, *a, **k)
    self.device_type = "cpu"  # torch.autocast(device_type, dtype=hidden_states_dtype)
    params = list(self.model.parameters())
    timer.meta["trainable_params"] = sum(p.numel() for p in params if p.requires_grad)
    timer.meta["frozen_params"] = sum(p.numel() for p in params if not p.requires_grad)


sp_trainer.Trainer.__init__ = _init

# ---------------------------------------------------------------- timing hooks
timer = StepTimer(
    STEPS,
    WARMUP,
    RESULT,
    {
        "trainer": "speculators",
        "version": _version("speculators"),
        "mode": "offline",
        "dtype": DTYPE,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "attn": ATTN,
        "loss_impl": LOSS_IMPL,
        "total_seq_len": SEQ_LEN,
    },
)
_orig_forward = Eagle3DraftModel.forward


def _forward(self, *a, **kw):
    if self.training:
        doc = kw["document_ids"]
        n_docs = int(doc.max().item()) + 1 if bool((doc >= 0).any()) else 0
        # speculators drops the first token of every packed document (shift_batch), so a packed
        # row carries sum(len_i - 1) positions; real tokens = the unshifted conversation lengths
        timer.add_tokens(int((doc != -1).sum().item()) + n_docs, extra=int(doc.numel()))
    return _orig_forward(self, *a, **kw)


Eagle3DraftModel.forward = _forward
_orig_sched = sp_trainer.Trainer._schedulers_step


def _sched(self):
    _orig_sched(self)
    timer.step_done()


sp_trainer.Trainer._schedulers_step = _sched

# ---------------------------------------------------------------- run speculators' trainer
from speculators.train.cli import main  # noqa: E402
from speculators.train.config import TrainConfig  # noqa: E402

RUN_DIR.mkdir(parents=True, exist_ok=True)
# fmt: off
argv = [
    "--speculator-type", "eagle3",
    "--verifier-name-or-path", TARGET,
    "--data-path", DATA,
    "--save-path", str(RUN_DIR / "checkpoints"),
    "--log-dir", str(RUN_DIR / "logs"),
    "--num-layers", "1",
    "--target-layer-ids", "2", "15", "27",
    "--draft-vocab-size", "8192",
    "--ttt-steps", "7",
    "--total-seq-len", str(SEQ_LEN),
    "--hidden-states-dtype", DTYPE,
    "--draft-attn-impl", ATTN,
    "--loss-implementation", LOSS_IMPL,
    "--full-attention-indices", "0",
    "--optimizer", "adamw",
    "--lr", "1e-4",
    "--epochs", "1",
    "--max-steps", str(STEPS),
    "--train-data-ratio", repr(CONVERSION["train_data_ratio"]),
    "--on-missing", "raise",
    "--num-workers", str(WORKERS),
    "--no-resume-from-checkpoint",
    "--seed", str(SEED),
]
# fmt: on
extra = os.environ.get("SPEC_EXTRA_ARGS", "").split()
print("[bench] speculators train " + " ".join(argv + extra), flush=True)
main(TrainConfig.resolve(argv + extra))
raise SystemExit(f"speculators finished before step {STEPS} (epoch too short?)")
