"""The plugin's policy file: one typed schema, every bad key named with its file, round trips."""

from __future__ import annotations

import json

import pytest

from serving.shape import TreeShape
from serving.step_cost import Profile, StepTable
from serving.vllm_plugin.policy_file import (
    ExplorePolicyFile,
    PolicyFileError,
    ServedPolicyFile,
    load_policy,
    read_policy_file,
    write_explore_file,
    write_policy_file,
)

TABLE = StepTable.chains({0: Profile([1, 8], [0.01, 0.02]), 2: Profile([1, 8], [0.012, 0.03])})


def _good(tmp_path):
    return json.loads(write_policy_file(tmp_path / "p.json", TABLE, [0.7, 0.6], [2]).read_text())


def test_a_written_policy_file_reads_back_and_serves(tmp_path):
    path = write_policy_file(tmp_path / "p.json", TABLE, [0.7, 0.6], [2], skip_draft_at_k0=True)
    f = read_policy_file(path)
    assert isinstance(f, ServedPolicyFile) and f.skip_draft_at_k0 and f.alpha == [0.7, 0.6]
    assert load_policy(path, k_max=2).candidates == [TreeShape.chain(0), TreeShape.chain(2)]
    assert not (tmp_path / "p.json.tmp").exists()  # written atomically
    explore = read_policy_file(write_explore_file(tmp_path / "e.json", [0, 1, 2], hold=0))
    assert isinstance(explore, ExplorePolicyFile) and explore.ks == [0, 1, 2] and explore.hold == 0


@pytest.mark.parametrize(
    ("change", "names"),
    [
        (
            {"alpha": [5.0, -1.0]},
            ["alpha.0", "less than or equal to 1", "alpha.1", "greater than or equal to 0"],
        ),
        ({"steps": {"0:1:1": {"tokens": [1], "seconds": [-0.5]}}}, ["steps.0:1:1.seconds.0", "greater than"]),
        ({"swich_margin": 0.1}, ["swich_margin", "Extra inputs are not permitted"]),
        ({"beta": 0}, ["beta", "greater than 0"]),
        ({"ks": []}, ["ks", "at least 1"]),
        ({"cost": {"target": {"tokens": [1], "seconds": [0.1]}}}, ["exactly one step cost"]),
        ({"steps": {"0:1:1": {"tokens": [1, 2], "seconds": [0.1]}}}, ["differ in length"]),
        ({"skipped_blocks": "drop"}, ["skipped_blocks", "'mark', 'evict' or 'keep'"]),
        ({"evict_skipped_blocks": True}, ["now skipped_blocks", '"evict" (was true)']),
    ],
)
def test_every_bad_key_is_named_with_its_file(tmp_path, change, names):
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({**_good(tmp_path), **change}))
    with pytest.raises(PolicyFileError) as e:
        read_policy_file(path)
    assert str(e.value).startswith(f"{path}: ")
    for name in names:
        assert name in str(e.value)


def test_missing_and_malformed_files_are_one_clear_error(tmp_path):
    with pytest.raises(PolicyFileError, match="nope.json: no such file"):
        read_policy_file(tmp_path / "nope.json")
    (tmp_path / "x.json").write_text("[1, 2]")
    with pytest.raises(PolicyFileError, match="x.json: expected a JSON object, got list"):
        read_policy_file(tmp_path / "x.json")
    with pytest.raises(PolicyFileError, match="explore"):
        load_policy({"mode": "explore", "ks": [1]}, k_max=2)
    with pytest.raises(PolicyFileError, match="no k in \\[2\\] fits"):
        load_policy(_good(tmp_path), k_max=1)


def test_native_schedule_is_the_policys_table_in_vllms_own_format(tmp_path):
    """``calibrate --vllm`` also writes the table for a server without the plugin: vLLM's own
    validator accepts it and its dense expansion serves the policy's choice at every batch size."""
    from vllm.v1.spec_decode.dynamic.utils import build_dynamic_sd_schedule_lookup

    from serving.vllm_plugin.policy_file import native_schedule

    # k = 1..3 cost 1.2-2x a plain step at batch 1, rising to 4x at batch 16: speculation shortens,
    # then stops
    table = StepTable.chains(
        {
            0: Profile([1, 64], [1.0, 1.0]),
            1: Profile([1, 16, 64], [1.2, 2.0, 4.0]),
            2: Profile([1, 16, 64], [1.5, 3.0, 6.0]),
            3: Profile([1, 16, 64], [2.0, 4.0, 8.0]),
        }
    )
    policy = load_policy(write_policy_file(tmp_path / "p.json", table, [0.8] * 3, [1, 2, 3]), k_max=3)
    schedule = native_schedule(policy, max_batch=64, k_max=3)
    assert schedule[0][0] == 1 and schedule[-1][1] == 64 and len(schedule) > 2
    ks = [k for _, _, k in schedule]
    assert ks == sorted(ks, reverse=True) and ks[0] > 0 and ks[-1] == 0  # deep at batch 1, off at 64
    dense = build_dynamic_sd_schedule_lookup(schedule, vllm_max_batch_size=128, vllm_num_speculative_tokens=3)
    assert dense[1:65] == [policy.choose(b).num_draft_tokens for b in range(1, 65)]
    assert dense[128] == 0  # vLLM carries the last range past the table


def test_a_parallel_heads_cost_model_survives_the_policy_file(tmp_path):
    """``cost.parallel_drafts`` is written, read back and served: the loaded policy prices drafting as
    one pass, so its step time is about flat in k where the sequential one's grows."""
    from serving.step_cost import CostModel

    target, draft = Profile([1, 8, 64], [0.04, 0.042, 0.06]), Profile([1, 8, 64], [0.01, 0.0105, 0.015])
    steps = {}
    for parallel in (False, True):
        path = write_policy_file(
            tmp_path / f"p{parallel}.json",
            CostModel(target, draft, parallel_drafts=parallel),
            [0.6] * 6,
            [2, 6],
        )
        assert read_policy_file(path).cost.parallel_drafts is parallel
        cost = load_policy(path, k_max=6).cost
        steps[parallel] = cost.step_time(1, TreeShape.chain(6)) - cost.step_time(1, TreeShape.chain(2))
    assert steps[True] < 0.002 < 0.035 < steps[False]
