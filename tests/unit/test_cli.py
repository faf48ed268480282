"""The CLI: clear errors with exit status 2, and the capture command end to end."""

from __future__ import annotations

import json

import pytest

from specforge.cli import main


def test_missing_target_is_one_clear_error(tmp_path, capsys):
    rc = main(["target", "info", "--target", str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "does not exist" in err and "Traceback" not in err


def test_bad_override_is_one_clear_error(capsys):
    rc = main(["target", "build-tiny", "steps=many"])
    err = capsys.readouterr().err
    assert rc == 2 and "steps" in err
    rc = main(["target", "build-tiny", "no_such_key=1"])
    assert rc == 2 and "no_such_key" in capsys.readouterr().err


def test_capture_command(micro_target_dir, tmp_path, capsys):
    assert main(["data", "demo", "--out", str(tmp_path / "d"), "--max-train", "6", "--max-heldout", "2"]) == 0
    capsys.readouterr()
    rc = main(
        [
            "capture",
            "--target",
            str(micro_target_dir),
            "--data",
            str(tmp_path / "d" / "train.jsonl"),
            "--out",
            str(tmp_path / "c"),
            "--max-length",
            "320",
            "--sequences-per-shard",
            "3",
        ]
    )
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["sequences"] + res["dropped_truncated_rows"] == 6 and res["sequences"] >= 4
    assert res["shards"] == 2 and res["aux_layers"] == [2, 4, 5] and res["disk_mib"] > 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["capture", "--data", "d.jsonl", "--out", "o", "--layers", "2,four,5"],
            "--layers '2,four,5' is not",
        ),
        (["calibrate", "--token-counts", "1,x"], "--token-counts '1,x' is not a comma-separated list"),
        (
            ["bench", "acceptance", "--draft", "r", "--data", "d", "--out", "o", "--shapes", "chain:x"],
            "--shapes",
        ),
        (
            ["train", "data.train=x.jsonl", "draft.type=eagle9"],
            "unknown draft type 'eagle9'; known: eagle, eagle3, mtp",
        ),
        (["train", "data.train=x.jsonl", "optim.max_steps=0"], "optim.max_steps: Input should be greater"),
        (["train", "data.train=x.jsonl", "optim.max_steps=-1"], "optim.max_steps: Input should be greater"),
    ],
)
def test_bad_values_are_one_clear_error_before_any_work(micro_target_dir, argv, message, capsys):
    argv = [
        *argv[:1],
        *(["--target", str(micro_target_dir)] if argv[0] in ("capture", "calibrate") else []),
        *argv[1:],
    ]
    if argv[:2] == ["bench", "acceptance"]:
        argv += ["--target", str(micro_target_dir)]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err, err


def test_commands_given_a_run_default_to_the_target_it_was_trained_on(tmp_path, capsys):
    """bench serve / fidelity / acceptance and calibrate take the run's recorded target when
    --target is not given (the README's commands after the SmolLM2 demo name no target); a recorded
    target that is gone is one clear error."""
    from specforge.cli.options import target_path
    from specforge.export import recorded_target

    run, target = tmp_path / "run", tmp_path / "smollm2"
    run.mkdir()
    target.mkdir()
    (run / "config.yaml").write_text(f"target: {target}\noutput_dir: {run}\n")
    assert target_path(None, run=run) == target
    assert "recorded by the run" in capsys.readouterr().err
    assert target_path(str(tmp_path / "mine"), run=run) == tmp_path / "mine"  # --target wins
    assert recorded_target(tmp_path) is None  # not a run: the default target
    (run / "config.yaml").write_text("target: null\n")  # trained on the default target
    assert recorded_target(run) is None
    (run / "config.yaml").write_text(f"target: {tmp_path / 'gone'}\n")
    rc = main(["bench", "serve", "--run", str(run), "--data", str(tmp_path / "x.jsonl")])
    err = capsys.readouterr().err
    assert rc == 2 and "gone" in err and "--target" in err and "Traceback" not in err
