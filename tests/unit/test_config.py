"""The typed training config: YAML recipes, overrides and their errors."""

from __future__ import annotations

import pytest
import yaml

from specforge.config import load_train_config
from specforge.errors import SpecforgeError


def _recipe(tmp_path, body: str):
    p = tmp_path / "r.yaml"
    p.write_text(body)
    return p


def test_recipe_and_overrides(tmp_path):
    p = _recipe(tmp_path, "data:\n  train: a.jsonl\noptim:\n  lr: 1.0e-3\n")
    cfg = load_train_config(p, ["optim.batch_size=8", "ttt.steps=3", "log_with=[tensorboard]", "target=/m"])
    assert cfg.optim.lr == 1e-3 and cfg.optim.batch_size == 8 and cfg.ttt.steps == 3 and cfg.target == "/m"
    cfg.save(tmp_path / "resolved.yaml")
    assert yaml.safe_load((tmp_path / "resolved.yaml").read_text())["optim"]["batch_size"] == 8


@pytest.mark.parametrize(
    ("body", "overrides", "message"),
    [
        ("data:\n  train: a.jsonl\n  trian_extra: 1\n", [], "unknown key 'data.trian_extra'"),
        ("data:\n  train: a.jsonl\n", ["optim.lr=fast"], "optim.lr"),
        ("data:\n  train: a.jsonl\n", ["optim.nope=1"], "unknown key 'optim.nope'"),
        ("data:\n  train: a.jsonl\n", ["ttt.steps=0"], "ttt.steps"),
        ("data:\n  train: a.jsonl\n", ["hidden_states=cloud"], "hidden_states"),
        ("data:\n  train: a.jsonl\n", ["capture_engine=vllm"], "set hidden_states: offline"),
        ("optim:\n  lr: 1\n", [], "required key 'data'"),
        ("data: [unclosed\n", [], "not valid YAML"),
        ("- a\n- b\n", [], "must be a mapping"),
        ("data:\n  train: a.jsonl\n", ["lr"], "not key=value"),
    ],
)
def test_config_errors(tmp_path, body, overrides, message):
    with pytest.raises(SpecforgeError, match=message.replace("[", r"\[")):
        load_train_config(_recipe(tmp_path, body), overrides)


def test_missing_recipe(tmp_path):
    with pytest.raises(SpecforgeError, match="does not exist"):
        load_train_config(tmp_path / "none.yaml")


def test_mixed_precision_auto_follows_the_hardware(monkeypatch):
    from specforge.targets import dtype as dtype_mod
    from specforge.train import loop

    monkeypatch.setattr(
        loop, "choose_dtype", lambda device: dtype_mod.choose_dtype(device, "flags : avx2 amx_bf16")
    )
    assert loop._mixed_precision("auto") == "bf16"
    monkeypatch.setattr(loop, "choose_dtype", lambda device: dtype_mod.choose_dtype(device, "flags : avx2"))
    assert loop._mixed_precision("auto") == "no"
    assert loop._mixed_precision("fp16") == "fp16"
