"""`specforge check`'s pure parts: the estimate it compares with, and the speculative config it takes."""

from __future__ import annotations

import pytest

from serving.draft_check import DraftMeta, Estimates, ServedFigure, TargetFingerprint
from specforge.check import expected_tau, parse_speculative_config
from specforge.errors import SpecforgeError


def _meta(**est) -> DraftMeta:
    return DraftMeta(
        draft_type="eagle3",
        method="eagle3",
        aux_layer_ids=[2, 4, 5],
        draft_vocab_size=4,
        d2t_sha256="x",
        target=TargetFingerprint(vocab_size=10, hidden_size=8, num_layers=8),
        estimates=Estimates(**est),
    )


def _served(alpha):
    return ServedFigure(
        k=4,
        temperature=0.0,
        prompts=1,
        max_new_tokens=8,
        tau=2.0,
        acceptance_per_position=[],
        alpha=alpha,
        output_tokens=8,
        seconds=1.0,
    )


def test_expected_tau_prefers_the_served_estimate_rechained_to_the_deployed_k():
    m = _meta(
        served={"t0": _served([0.5, 0.5, 0.5, 0.5])}, walk_tau=3.0, walk_k=4, teacher_forced_alpha=[0.9] * 4
    )
    assert expected_tau(m, 2, 0.0) == (pytest.approx(1.75), "served t0")
    assert expected_tau(m, 4, 0.0) == (pytest.approx(1.9375), "served t0")
    # no served estimate at temperature 1: the teacher-forced alphas
    assert expected_tau(m, 1, 1.0) == (pytest.approx(1.9), "teacher-forced")
    assert expected_tau(_meta(walk_tau=2.5, walk_k=4), 4, 0.0) == (2.5, "walk")
    assert expected_tau(None, 4, 0.0) == (None, "none")


def test_speculative_config_is_read_as_vllm_takes_it(tmp_path):
    assert parse_speculative_config('{"method": "eagle", "num_speculative_tokens": 3}', tmp_path, 4) == (
        "eagle",
        3,
    )
    assert parse_speculative_config(None, tmp_path, 4) == (None, 4)
    with pytest.raises(SpecforgeError, match="cannot apply draft_tensor_parallel_size"):
        parse_speculative_config('{"draft_tensor_parallel_size": 2}', tmp_path, 4)
    with pytest.raises(SpecforgeError, match="names model"):
        parse_speculative_config(f'{{"model": "{tmp_path / "other"}"}}', tmp_path, 4)
    with pytest.raises(SpecforgeError, match="not JSON"):
        parse_speculative_config("{method", tmp_path, 4)
