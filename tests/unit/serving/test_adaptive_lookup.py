"""The plugin's lookup object, without vLLM: policy choices, online feedback, fallback to k = 0."""

from __future__ import annotations

import logging

import pytest

from serving.policy import CostModel, Profile
from serving.vllm_plugin.adaptive import AdaptiveLookup, load_policy, write_policy_file


def _policy(tmp_path):
    cost = CostModel(Profile([1, 4, 5, 64], [1.0, 1.0, 50.0, 50.0]), Profile([1, 64], [0.01, 0.01]))
    return load_policy(write_policy_file(tmp_path / "p.json", cost, [0.9, 0.9, 0.9], [1, 2, 3]), k_max=3)


def test_lookup_follows_the_policy_and_learns(tmp_path):
    lookup = AdaptiveLookup(_policy(tmp_path), k_max=3)
    assert lookup[1] == 3 and lookup[8] == 0
    lookup[1]
    for _ in range(300):  # k = 3 keeps emitting a single token per request
        lookup.observe(1, 1.0)
    assert lookup[1] < 3


def test_policy_errors_fall_back_to_plain_decoding(tmp_path, caplog):
    class Broken:
        def choose(self, batch):
            raise RuntimeError("boom")

    lookup = AdaptiveLookup(Broken(), k_max=3)
    with caplog.at_level(logging.WARNING, logger="specforge.vllm_plugin"):
        assert lookup[1] == 0 and lookup[2] == 0
    assert sum("boom" in r.message for r in caplog.records) == 1  # one warning, then quiet
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(KeyError):  # a policy file without a cost model does not load
        load_policy(tmp_path / "bad.json", 3)
