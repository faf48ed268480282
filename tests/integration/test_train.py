"""The accelerate training loop on the micro target: learning, resume equivalence, offline mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from serving.acceptance import chain_tau
from specforge import capture as capture_mod
from specforge.data.demo import write_demo_dataset
from specforge.train import checkpoints as checkpoints_mod
from specforge.train.loop import train
from tests.helpers import micro_train_config


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    write_demo_dataset(d, max_train=24, max_heldout=8)
    return d


def _cfg(micro_target_dir, demo_data, out, *extra):
    return micro_train_config(
        micro_target_dir, demo_data, out, "optim.lr=3e-3", "log_with=[tensorboard]", *extra
    )


def test_training_reduces_loss_and_reports_acceptance(micro_target_dir, demo_data, tmp_path):
    res = train(_cfg(micro_target_dir, demo_data, tmp_path / "run", "optim.max_steps=20", "eval_every=10"))
    hist = res["history"]
    assert hist[-1]["train/loss"] < hist[0]["train/loss"]
    final = res["final"]
    alpha = [final[f"eval/alpha_{k}"] for k in range(3)]
    assert final["eval/tau"] == pytest.approx(chain_tau(alpha, 3))  # tau is the alphas' chain, bonus included
    # The micro target's greedy text is easy: a trained head predicts most of it, an untrained one
    # (chance over a 200-token draft vocabulary) scores tau ~1.0.
    assert final["eval/tau"] > 3.0 and min(alpha) > 0.6
    assert 0 < res["coverage"] <= 1
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file() and (run / "draft.safetensors").is_file()
    latest = json.loads((run / "checkpoints" / "latest.json").read_text())
    assert latest["step"] == 20 and (run / "checkpoints" / latest["dir"] / "config.yaml").is_file()
    assert list((run / "logs").rglob("events.out.tfevents*"))
    curve = json.loads((run / "train_summary.json").read_text())["eval_history"]
    assert [e["step"] for e in curve] == [10, 20] and curve[-1]["eval/tau"] == final["eval/tau"]


def test_resume_is_exact(micro_target_dir, demo_data, tmp_path, monkeypatch):
    straight = train(_cfg(micro_target_dir, demo_data, tmp_path / "a"))

    real_log = None

    class Killed(Exception):
        pass

    def kill_after_step_5(self, values, step=None, log_kwargs=None):
        if step == 5:
            raise Killed
        return real_log(self, values, step=step, log_kwargs=log_kwargs or {})

    from accelerate import Accelerator

    real_log = Accelerator.log
    monkeypatch.setattr(Accelerator, "log", kill_after_step_5)
    with pytest.raises(Killed):
        train(_cfg(micro_target_dir, demo_data, tmp_path / "b"))
    monkeypatch.setattr(Accelerator, "log", real_log)
    latest = json.loads((tmp_path / "b" / "checkpoints" / "latest.json").read_text())
    assert latest["step"] == 4
    resumed = train(_cfg(micro_target_dir, demo_data, tmp_path / "b"))
    a = {h["step"]: h["train/loss"] for h in straight["history"]}
    b = {h["step"]: h["train/loss"] for h in resumed["history"]}
    assert sorted(b) == [5, 6, 7, 8]
    for step in b:
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6), step
    from safetensors.torch import load_file

    wa, wb = load_file(tmp_path / "a" / "draft.safetensors"), load_file(tmp_path / "b" / "draft.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


def test_offline_mode_matches_online(micro_target_dir, demo_data, tmp_path):
    on = train(_cfg(micro_target_dir, demo_data, tmp_path / "on", "optim.max_steps=3"))
    off = train(
        _cfg(
            micro_target_dir,
            demo_data,
            tmp_path / "off",
            "optim.max_steps=3",
            "hidden_states=offline",
            "mixed_precision=no",
        )
    )
    assert (tmp_path / "off" / "capture" / capture_mod.MANIFEST).is_file()
    for x, y in zip(on["history"], off["history"]):
        assert x["train/loss"] == pytest.approx(y["train/loss"], rel=1e-4)


def test_corrupt_latest_pointer(micro_target_dir, demo_data, tmp_path):
    from specforge.errors import SpecforgeError

    ck = tmp_path / "r" / checkpoints_mod.CKPT_DIR
    ck.mkdir(parents=True)
    (ck / checkpoints_mod.LATEST).write_text("{not json")
    with pytest.raises(SpecforgeError, match="corrupt"):
        train(_cfg(micro_target_dir, demo_data, tmp_path / "r"))


def test_ddp_with_two_cpu_processes(micro_target_dir, demo_data, tmp_path):
    """`accelerate launch` with 2 CPU processes trains, checkpoints and saves one draft."""
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(Path(__file__).resolve().parents[2] / "recipes/accelerate/cpu-2proc.yaml"),
        "--main_process_port",
        "0",  # a free port
        "--dynamo_backend",
        "no",
        "-m",
        "specforge.train",
        f"target={micro_target_dir}",
        f"output_dir={out}",
        f"data.train={demo_data / 'train.jsonl'}",
        "data.max_length=256",
        "draft.draft_vocab_size=200",
        "ttt.steps=2",
        "optim.batch_size=2",
        "optim.max_steps=4",
        "save_every=2",
        "eval_every=100",
        "log_with=[]",
        "progress=false",
    ]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 4
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 4
    assert (out / "draft.safetensors").is_file()
    # Two processes trained: each saved its random state in the last checkpoint.
    assert len(list((out / "checkpoints" / "step-0000004").glob("random_states_*.pkl"))) == 2


@pytest.mark.parametrize(
    ("head", "extra"),
    [("eagle", ()), ("mtp", ("draft.options={num_modules: 2}",))],
)
def test_every_head_trains_offline_and_serves_losslessly(micro_target_dir, demo_data, tmp_path, head, extra):
    """EAGLE-1 and MTP (D = 2) through the one trainer, from shards of the target's last hidden state
    (feature layer -1): the loss falls, the held-out estimate is reported, and the reference engine
    serves the trained head as a chain and as an EAGLE-2 tree with greedy output unchanged."""
    from serving.drafters.eagle import EagleDrafter
    from serving.engine import SpeculativeEngine
    from serving.shape import TreeShape
    from specforge.errors import SpecforgeError
    from specforge.export import export_vllm, load_draft
    from specforge.targets.loader import load_target

    cfg = _cfg(
        micro_target_dir,
        demo_data,
        tmp_path / "run",
        f"draft.type={head}",
        "hidden_states=offline",
        "optim.max_steps=20",
        "eval_every=10",
        *extra,
    )
    res = train(cfg)
    hist = res["history"]
    assert hist[-1]["train/loss"] < hist[0]["train/loss"] and res["final"]["eval/tau"] > 1.0
    assert res["coverage"] == 1.0  # the whole target vocabulary
    manifest = json.loads((tmp_path / "run" / "capture" / "manifest.json").read_text())
    assert manifest["aux_layers"] == [-1]
    target = load_target(micro_target_dir)
    draft = load_draft(tmp_path / "run", target.model.get_input_embeddings().weight.detach())
    assert type(draft).__name__ == {"eagle": "EagleDraft", "mtp": "MtpDraft"}[head]
    prompts = [target.tokenizer.encode(t) for t in ("def add(a, b):\n    return", "import os\n")]
    plain = SpeculativeEngine(target.model).generate(prompts, 16).tokens
    engine = SpeculativeEngine(target.model, EagleDrafter(draft))
    for shape in (TreeShape.chain(3), TreeShape.tree(depth=3, top_k=2, num_draft_tokens=6)):
        out = engine.generate(prompts, 16, shape)
        assert out.tokens == plain and out.stats.drafted > 0
    if head == "mtp":  # vLLM's MiMo layout runs one MTP module for every step: one clear error
        with pytest.raises(SpecforgeError, match="vLLM cannot serve this mtp draft.*D = 2 modules"):
            export_vllm(tmp_path / "run", tmp_path / "vllm")
