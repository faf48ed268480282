"""The harness request's schema: what bench and calibrate send vLLM's child process, checked up front."""

from __future__ import annotations

import pytest

from serving.vllm_plugin.harness.request import LockstepArm, PolicyVariant, parse_request
from serving.vllm_plugin.harness.runner import run_vllm

BASE = {"target": "/t", "prompts": [[1, 2]], "max_tokens": 8}


def test_a_paired_sweep_request_reads_every_kind_of_arm():
    req = parse_request(
        {
            **BASE,
            "draft": "/d",
            "num_speculative_tokens": 5,
            "num_speculative_tokens_per_batch_size": [[1, 64, 5]],
            "sweep": {
                "batch_sizes": [1, 4],
                "repeats": 2,
                "arms": {
                    "none": "plain",
                    "k2": 2,
                    "table": [[1, 16, 5], [17, 64, 3]],
                    "specforge": None,
                    "specforge-probe": {"policy": {"cell_prior": 5.0}},
                },
            },
        }
    )
    arms = req.sweep.arms
    assert arms["none"] == "plain" and arms["k2"] == 2 and arms["table"] == [[1, 16, 5], [17, 64, 3]]
    assert arms["specforge"] is None and isinstance(arms["specforge-probe"], PolicyVariant)
    assert req.speculative_config() == {
        "method": "eagle3",
        "model": "/d",
        "num_speculative_tokens": 5,
        "num_speculative_tokens_per_batch_size": [[1, 64, 5]],
    }
    assert parse_request(BASE).speculative_config() is None and parse_request(BASE).sweep is None
    assert parse_request(req.model_dump_json()) == req  # what the child reads back


def test_a_lockstep_sweep_needs_engine_arms():
    spec = {"batch_sizes": [1], "design": "lockstep", "arms": {"none": {"speculative_config": None}}}
    req = parse_request({**BASE, "sweep": spec})
    assert isinstance(req.sweep.arms["none"], LockstepArm) and req.sweep.turn_steps == 32
    with pytest.raises(ValueError, match="lockstep sweep needs"):
        parse_request({**BASE, "sweep": {**spec, "arms": {"k1": 1}}})
    with pytest.raises(ValueError, match='need "design": "lockstep"'):
        parse_request({**BASE, "sweep": {**spec, "design": "paired"}})


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"max_token": 8}, ["max_token: Extra inputs are not permitted"]),
        ({"max_tokens": 0}, ["max_tokens: Input should be greater than or equal to 1"]),
        ({"draft": "/d"}, ["needs num_speculative_tokens"]),
        ({"sweep": {"batch_sizes": []}}, ["sweep.batch_sizes"]),
        ({"sweep": {"batch_sizes": [1], "repeat": 2}}, ["sweep.repeat: Extra inputs"]),
        ({"temperature": -1}, ["temperature"]),
    ],
)
def test_a_bad_request_names_its_key_before_vllm_starts(tmp_path, change, names):
    with pytest.raises(ValueError) as e:
        run_vllm({**BASE, **change}, tmp_path / "run")
    for name in names:
        assert name in str(e.value)
    assert not (tmp_path / "run" / "vllm_request.json").exists()


def test_a_capture_request_is_a_mode_of_its_own():
    capture = {"layers": [2, 8], "out_dir": "/o", "chunks": [{"name": "shard-0", "prompts": [0], "ids": [7]}]}
    req = parse_request({**BASE, "capture": capture, "tensor_parallel_size": 2})
    assert req.capture.chunks[0].ids == [7] and req.tensor_parallel_size == 2
    with pytest.raises(ValueError, match="capture is a mode of its own"):
        parse_request({**BASE, "capture": capture, "draft": "/d", "num_speculative_tokens": 1})
    with pytest.raises(ValueError, match="past the 1 given"):
        parse_request({**BASE, "capture": {**capture, "chunks": [{"name": "c", "prompts": [3]}]}})
    with pytest.raises(ValueError, match="one id per prompt"):
        parse_request({**BASE, "capture": {**capture, "chunks": [{"name": "c", "prompts": [0], "ids": []}]}})


def test_engine_cache_settings_are_optional_and_checked():
    assert parse_request(BASE).enable_prefix_caching is None and parse_request(BASE).block_size is None
    req = parse_request({**BASE, "enable_prefix_caching": False, "block_size": 32})
    assert req.enable_prefix_caching is False and req.block_size == 32
    with pytest.raises(ValueError, match="block_size"):
        parse_request({**BASE, "block_size": 0})
