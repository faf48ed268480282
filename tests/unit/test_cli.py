"""The CLI: clear errors with exit status 2, and the capture command end to end."""

from __future__ import annotations

import json

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
