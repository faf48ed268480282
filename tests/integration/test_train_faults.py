"""Training never loses work and explains bad input: a finished run is left alone, a damaged
checkpoint falls back to an older one, a changed config is named, bad data stops before training."""

from __future__ import annotations

import json
import shutil

import pytest

from specforge.config import load_train_config
from specforge.data.demo import write_demo_dataset
from specforge.errors import SpecforgeError
from specforge.train.loop import train
from tests.helpers import micro_train_config


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo-faults")
    write_demo_dataset(d, max_train=16, max_heldout=4)
    return d


def _cfg(target, data, out, *extra):
    return micro_train_config(target, data, out, "ttt.steps=2", *extra)


def _snapshot(run):
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_a_finished_run_is_left_exactly_as_it_was(micro_target_dir, demo_data, tmp_path, capsys):
    run = tmp_path / "run"
    first = train(_cfg(micro_target_dir, demo_data, run))
    before = _snapshot(run)
    again = train(_cfg(micro_target_dir, demo_data, run, "optim.lr=1e-2"))  # a new, unused value
    assert again["already_complete"] and again["steps"] == 8 and again["final"] == first["final"]
    assert "already complete (8 of 8 steps); nothing changed" in capsys.readouterr().out
    assert _snapshot(run) == before  # config.yaml, train_summary.json, checkpoints: untouched


@pytest.mark.parametrize("damaged", ["model.safetensors", "optimizer.bin"])
def test_a_damaged_last_checkpoint_falls_back_to_the_older_one(
    micro_target_dir, demo_data, tmp_path, capsys, damaged
):
    run = tmp_path / "run"
    train(_cfg(micro_target_dir, demo_data, run))
    last = run / "checkpoints" / "step-0000008"
    data = (last / damaged).read_bytes()
    (last / damaged).write_bytes(data[: len(data) // 2])  # truncated, as by a full disk
    res = train(_cfg(micro_target_dir, demo_data, run, "optim.max_steps=12"))
    out = capsys.readouterr().out
    assert f"checkpoint {last} cannot be loaded" in out and "step-0000004 instead" in out
    assert res["steps"] == 12 and [h["step"] for h in res["history"]] == [5, 6, 7, 8, 9, 10, 11, 12]


def test_a_changed_draft_is_named_and_nothing_is_written(micro_target_dir, demo_data, tmp_path):
    run = tmp_path / "run"
    train(_cfg(micro_target_dir, demo_data, run))
    before = _snapshot(run)
    with pytest.raises(SpecforgeError, match=r"does not fit .*draft\.draft_vocab_size \(200 -> 150\)"):
        train(_cfg(micro_target_dir, demo_data, run, "optim.max_steps=12", "draft.draft_vocab_size=150"))
    assert _snapshot(run) == before


def test_a_missing_rng_state_warns_that_resume_is_inexact(micro_target_dir, demo_data, tmp_path, capsys):
    run = tmp_path / "run"
    train(_cfg(micro_target_dir, demo_data, run, "optim.max_steps=4"))
    for f in (run / "checkpoints" / "step-0000004").glob("random_states_*.pkl"):
        f.unlink()
    res = train(_cfg(micro_target_dir, demo_data, run, "optim.max_steps=6"))
    assert "has no RNG state" in capsys.readouterr().out and res["steps"] == 6


def test_an_eval_set_that_fits_nothing_stops_before_training(micro_target_dir, demo_data, tmp_path):
    long = tmp_path / "long.jsonl"
    row = {"messages": [{"role": "user", "content": "word " * 400}, {"role": "assistant", "content": "yes"}]}
    long.write_text(json.dumps(row) + "\n")
    with pytest.raises(SpecforgeError, match=r"long.jsonl: none of its 1 rows .*max_length=256"):
        train(_cfg(micro_target_dir, demo_data, tmp_path / "run", f"data.eval={long}"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_plain_text_trains_on_a_target_without_a_chat_template(micro_target_dir, tmp_path):
    target = tmp_path / "no-template"
    shutil.copytree(micro_target_dir, target)
    (target / "chat_template.jinja").unlink(missing_ok=True)
    tc = json.loads((target / "tokenizer_config.json").read_text())
    tc.pop("chat_template", None)
    (target / "tokenizer_config.json").write_text(json.dumps(tc))
    text = tmp_path / "code.txt"
    text.write_text("def add(a, b):\n    return a + b\n" * 40)
    res = train(
        load_train_config(
            None,
            [
                f"target={target}",
                f"output_dir={tmp_path / 'run'}",
                f"data.train={text}",
                "draft.draft_vocab_size=100",
                "ttt.steps=2",
                "optim.max_steps=2",
                "log_with=[]",
                "progress=false",
            ],
        )
    )
    assert res["steps"] == 2
    conversations = tmp_path / "chat.jsonl"
    conversations.write_text(
        json.dumps(
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
        )
        + "\n"
    )
    with pytest.raises(SpecforgeError, match="no chat template, but the dataset holds conversations"):
        train(
            load_train_config(
                None, [f"target={target}", f"output_dir={tmp_path / 'run2'}", f"data.train={conversations}"]
            )
        )
