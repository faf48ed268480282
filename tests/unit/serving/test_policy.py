"""The adaptive speculation policy: cost model, acceptance tracking, goodput and monotonicity."""

from __future__ import annotations

import itertools
import random

import pytest

from serving.acceptance import AcceptanceTracker, RequestAcceptance, alpha_from_histograms, chain_tau
from serving.policy import SpeculationPolicy
from serving.shape import NO_SPECULATION, TreeShape
from serving.step_cost import CostModel, OnlineStepCost, Profile, StartCost, StepTable, batch_bucket, isotonic

CANDIDATES = [
    TreeShape.chain(1),
    TreeShape.chain(2),
    TreeShape.chain(4),
    TreeShape(8, 4, 2),
    TreeShape(16, 5, 4),
]


def overhead_then_compute(flat_until: int, per_token: float, base: float) -> Profile:
    """A target that costs `base` until `flat_until` query tokens, then grows linearly."""
    pts = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]
    return Profile(pts, [base + per_token * max(0, n - flat_until) for n in pts])


def test_profile_interpolates_and_extrapolates():
    p = Profile([1, 10, 20], [1.0, 2.0, 4.0])
    assert p(1) == 1.0 and p(0.5) == 1.0
    assert p(5.5) == pytest.approx(1.5) and p(15) == pytest.approx(3.0)
    assert p(30) == pytest.approx(6.0)  # last slope continued
    noisy = Profile([1, 2, 3], [1.0, 0.8, 1.2])
    assert noisy.seconds == pytest.approx([0.9, 0.9, 1.2])  # never faster with more tokens
    assert isotonic([1.0, 5.0, 2.0, 3.0, 4.0]) == pytest.approx(
        [1.0, 10 / 3, 10 / 3, 10 / 3, 4.0]
    )  # a spike is pooled
    with pytest.raises(ValueError):
        Profile([2, 1], [1.0, 1.0])


def test_step_time_formula():
    cost = CostModel(target=Profile([1, 100], [1.0, 100.0]), draft=Profile([1, 100], [0.1, 10.0]))
    assert cost.step_time(4, NO_SPECULATION) == pytest.approx(4.0)
    s = TreeShape(num_draft_tokens=6, depth=3, top_k=2)
    # target(4 * 7) + draft(4) + 2 * draft(8)
    assert cost.step_time(4, s) == pytest.approx(28.0 + 0.4 + 2 * 0.8)


def test_chain_tau_and_tracker():
    assert chain_tau([0.5, 0.5], 2) == pytest.approx(1 + 0.5 + 0.25)
    assert chain_tau([0.8], 3) == pytest.approx(1 + 0.8 + 0.64 + 0.512)  # last alpha repeats
    tr = AcceptanceTracker.from_alpha([0.8, 0.7], CANDIDATES, beta=0.5)
    assert tr.tau(TreeShape.chain(2)) == pytest.approx(1 + 0.8 + 0.56)
    assert tr.tau(TreeShape(8, 4, 2)) == pytest.approx(
        chain_tau([0.8, 0.7], 4)
    )  # seeded as its depth's chain
    tr.observe(TreeShape.chain(2), 3.0)
    assert tr.tau(TreeShape.chain(2)) == pytest.approx(0.5 * (1 + 0.8 + 0.56) + 0.5 * 3.0)
    assert tr.tau(NO_SPECULATION) == 1.0


def _policy(alpha=(0.85, 0.85, 0.8, 0.8, 0.75), flat_until=64):
    cost = CostModel(
        target=overhead_then_compute(flat_until, 0.01, 1.0),
        draft=overhead_then_compute(flat_until, 0.001, 0.1),
    )
    return SpeculationPolicy(cost, AcceptanceTracker.from_alpha(list(alpha), CANDIDATES), CANDIDATES)


def test_small_batch_speculates_large_batch_does_not():
    pol = _policy()
    assert pol.choose(1) != NO_SPECULATION and pol.choose(1).num_draft_tokens >= 4
    assert pol.choose(512) == NO_SPECULATION
    # Goodput really is maximised at batch 1.
    best = max(pol.candidates, key=lambda s: pol.goodput(1, s))
    assert pol.goodput(1, pol.choose(1)) == pytest.approx(pol.goodput(1, best))


def test_poor_acceptance_means_no_speculation():
    pol = _policy(alpha=(0.02,))
    assert pol.choose(1) == NO_SPECULATION


def test_online_acceptance_moves_the_choice():
    pol = _policy()
    first = pol.choose(1)
    for _ in range(200):  # the chosen shape keeps emitting only 1 token per step
        pol.acceptance.observe(first, 1.0)
    assert pol.choose(1) != first


def test_monotone_in_batch_size_for_random_statistics():
    rng = random.Random(0)
    for _ in range(60):
        alpha = [rng.uniform(0.05, 0.95) for _ in range(5)]
        pol = _policy(alpha=alpha, flat_until=rng.choice([1, 8, 32, 128]))
        for s in CANDIDATES:  # random online observations too
            pol.acceptance.observe(s, rng.uniform(1.0, 1 + s.num_draft_tokens))
        choices = [pol.choose(b) for b in (1, 2, 3, 4, 8, 16, 32, 64, 128)]
        assert all(later <= earlier for earlier, later in itertools.pairwise(choices)), choices


def test_cost_model_round_trip(tmp_path):
    cost = CostModel(Profile([1, 8], [0.01, 0.02]), Profile([1, 8], [0.001, 0.002]))
    cost.save(tmp_path / "c.json", meta={"machine": "test"})
    again = CostModel.load(tmp_path / "c.json")
    assert again.step_time(2, TreeShape.chain(3)) == cost.step_time(2, TreeShape.chain(3))


def test_step_table_prices_measured_shapes_only():
    table = StepTable.chains({0: Profile([1, 8], [1.0, 2.0]), 2: Profile([1, 8], [1.5, 5.0])})
    assert table.ks == [0, 2]
    assert table.step_time(1, NO_SPECULATION) == 1.0
    assert table.step_time(4, TreeShape.chain(2)) == pytest.approx(1.5 + 3.5 * 3 / 7)
    with pytest.raises(KeyError, match="k=3"):
        table.step_time(1, TreeShape.chain(3))
    with pytest.raises(KeyError, match="tree depth 2"):
        table.step_time(1, TreeShape(4, 2, 2))
    with pytest.raises(ValueError, match="k = 0"):
        StepTable.chains({2: Profile([1], [1.0])})
    assert StepTable.from_json(table.to_json()) == table
    assert StepTable.from_json({"0": {"tokens": [1], "seconds": [1.0]}}).ks == [0]  # keyed by k alone
    trees = StepTable({NO_SPECULATION: Profile([1], [1.0]), TreeShape(8, 4, 2): Profile([1], [3.0])})
    assert StepTable.from_json(trees.to_json()).step_time(1, TreeShape(8, 4, 2)) == 3.0


def test_online_step_cost_learns_a_factor_per_shape_and_overall():
    prior = StepTable.chains({0: Profile([1, 8], [1.0, 1.0]), 2: Profile([1, 8], [2.0, 4.0])})
    cost = OnlineStepCost(prior, beta=0.5, min_count=2)
    cost.observe(1, TreeShape.chain(2), 4.0)  # twice the prior
    assert cost.scale == pytest.approx(0.5 * 1.0 + 0.5 * 2.0)
    # one observation is not enough to trust the shape's own factor: every shape uses the overall one
    assert cost.step_time(8, TreeShape.chain(2)) == pytest.approx(4.0 * 1.5)
    assert cost.step_time(8, NO_SPECULATION) == pytest.approx(1.0 * 1.5)
    cost.observe(8, TreeShape.chain(2), 12.0)  # three times the prior, at another batch size
    factor = 0.5 * 1.5 + 0.5 * 3.0
    assert cost.factor(TreeShape.chain(2)) == pytest.approx(factor)
    assert cost.step_time(1, TreeShape.chain(2)) == pytest.approx(2.0 * factor)  # pooled over batch sizes


def test_policy_with_live_step_times_stops_speculating_when_steps_get_slow():
    prior = StepTable.chains({0: Profile([1, 64], [1.0, 1.0]), 2: Profile([1, 64], [1.2, 1.2])})
    tracker = AcceptanceTracker.from_alpha([0.8, 0.8], [TreeShape.chain(2)])
    pol = SpeculationPolicy(OnlineStepCost(prior, beta=0.5, min_count=4), tracker, [TreeShape.chain(2)])
    assert pol.choose(1) == TreeShape.chain(2)  # tau 2.44 for 1.2x the time
    for _ in range(10):  # the server measures k = 2 steps at 3x the prior, k = 0 steps as predicted
        pol.observe(TreeShape.chain(2), 1, 2.44, 3.6)
        pol.observe(NO_SPECULATION, 1, 1.0, 1.0)
    assert pol.choose(1) == NO_SPECULATION
    assert pol.choose(8) == NO_SPECULATION  # the factor holds at batch sizes not measured


def test_sequential_drafting_costs_batch_times_one_sequence():
    cost = CostModel(Profile([1, 100], [1.0, 100.0]), Profile([1, 100], [0.1, 10.0]), batched_drafts=False)
    s = TreeShape(num_draft_tokens=6, depth=3, top_k=2)
    # target(4 * 7) + 4 * (draft(1) + 2 * draft(2))
    assert cost.step_time(4, s) == pytest.approx(28.0 + 4 * (0.1 + 2 * 0.2))


def test_per_position_acceptance_teaches_longer_chains():
    shapes = [TreeShape.chain(1), TreeShape.chain(3), TreeShape.chain(5)]
    tr = AcceptanceTracker.from_alpha([0.5] * 5, shapes, beta=0.5, per_position=True)
    assert tr.tau(TreeShape.chain(5)) == pytest.approx(chain_tau([0.5] * 5, 5))
    # running k = 3, two sequences accept all 3 drafts every step: positions 1-3 learn, 4-5 keep the seed
    for _ in range(20):
        tr.observe(TreeShape.chain(3), 4.0, accepted=[3, 3])
    assert tr.alpha[:3] == pytest.approx([1.0] * 3, abs=1e-5) and tr.alpha[3:] == [0.5, 0.5]
    assert tr.tau(TreeShape.chain(5)) == pytest.approx(1 + 1 + 1 + 1 + 0.5 + 0.25, abs=1e-4)
    # position 2 is reached only by sequences that accepted position 1
    # (a step weighs as many sequences as reached the position: beta 0.5 per sequence)
    tr.observe(TreeShape.chain(3), 1.5, accepted=[0, 1])
    assert tr.alpha[0] == pytest.approx(0.25 * 1.0 + 0.75 * 0.5, abs=1e-5)  # 1 of 2 accepted position 1
    assert tr.alpha[1] == pytest.approx(0.5 * 1.0 + 0.5 * 0.0, abs=1e-5)  # 0 of 1 accepted position 2


def test_request_acceptance_follows_each_sequence_and_shrinks_to_the_population():
    live = RequestAcceptance(prior_weight=2.0, decay=1.0)
    alpha = [0.5, 0.5]
    # never seen: the population's alpha; tau(k) = 1 + 0.5 + 0.25
    assert live.chain_taus(["new"], alpha, 2) == pytest.approx([1.0, 1.5, 1.75])
    for _ in range(8):  # "good" accepts both drafts every step, "bad" none
        live.observe("good", 2, 2)
        live.observe("bad", 2, 0)
    good = (8 + 1) / (8 + 2)  # 8 accepted of 8 reached, plus 2 pseudo-steps at 0.5
    assert live.chain_taus(["good"], alpha, 2) == pytest.approx([1.0, 1 + good, 1 + good + good**2])
    bad1 = (0 + 1) / (8 + 2)  # position 2 was never reached: it keeps the population's 0.5
    assert live.chain_taus(["bad"], alpha, 2) == pytest.approx([1.0, 1 + bad1, 1 + bad1 + bad1 * 0.5])
    both = live.chain_taus(["good", "bad"], alpha, 2)
    assert both[2] == pytest.approx((1 + good + good**2 + 1 + bad1 + bad1 * 0.5) / 2)
    live.forget("bad")
    assert live.chain_taus(["bad"], alpha, 2) == pytest.approx([1.0, 1.5, 1.75])


def test_request_acceptance_decays_old_steps():
    live = RequestAcceptance(prior_weight=1.0, decay=0.5)
    for _ in range(20):
        live.observe("s", 1, 1)
    live.observe("s", 1, 0)  # one miss after a long run of hits weighs half of everything before it
    assert live.trials["s"][0] == pytest.approx(2.0, abs=1e-5) and live.hits["s"][0] == pytest.approx(
        1.0, abs=1e-5
    )


def test_live_acceptance_overrides_the_tracker_and_stops_speculation_for_bad_sequences():
    prior = StepTable.chains({0: Profile([1, 64], [1.0, 2.0]), 2: Profile([1, 64], [1.3, 3.0])})
    tracker = AcceptanceTracker.from_alpha([0.8, 0.8], [TreeShape.chain(2)])
    pol = SpeculationPolicy(prior, tracker, [TreeShape.chain(2)])
    assert pol.choose(2) == TreeShape.chain(2)
    assert (
        pol.choose(2, tau={TreeShape.chain(2): 1.1}) == NO_SPECULATION
    )  # the batch left accepts almost nothing
    sizes = [1, 2, 4, 8, 64]
    before = [pol.choose(b) for b in sizes]
    pol.freeze_costs(8)  # step times precomputed up to batch 8: the same choices, and tau still live
    assert [pol.choose(b) for b in sizes] == before
    assert pol.choose(2, tau={TreeShape.chain(2): 1.1}) == NO_SPECULATION


def test_alpha_from_histograms_pools_chains_of_every_length():
    # k = 1: 60 of 100 accepted; k = 2: 50 rejected at once, 20 accepted one, 30 accepted both
    hists = {1: [40, 60], 2: [50, 20, 30]}
    alpha = alpha_from_histograms(hists, min_trials=10)
    # position 1: (60 + 50) of 200; position 2: 30 of the 50 chains of 2 that reached it
    assert alpha == pytest.approx([110 / 200, 30 / 50])
    assert alpha_from_histograms(hists, min_trials=100) == pytest.approx([110 / 200])  # 50 < 100
    assert alpha_from_histograms({}) == []


def _chain_table_policy(start=None):
    """Chains k = 1, 2 on measured steps: 10 ms without speculation, k = 1 10.5 ms, k = 2 11 ms at
    every batch size, alpha 0.6: k = 2 emits 1.96 tokens a step and wins on decode steps alone."""
    table = StepTable.chains({k: Profile([1, 64], [0.010 + 0.0005 * k] * 2) for k in (0, 1, 2)})
    shapes = [TreeShape.chain(1), TreeShape.chain(2)]
    return SpeculationPolicy(table, AcceptanceTracker.from_alpha([0.6, 0.6], shapes), shapes, start=start)


def test_start_cost_prices_each_request_start_over_its_tokens():
    # No start cost: per token 10 ms vs 11 ms / 1.96 = 5.6 ms, so k = 2 everywhere.
    assert _chain_table_policy().choose(4) == TreeShape.chain(2)
    # A draft's pass over every new prompt: 0.3 s per request started at k >= 1, 0.05 s at k = 0,
    # over 50 tokens a request. k = 2 at batch 4: 1.96 / (11 ms + 4 * 1.96 * 6 ms) = 33.6 tokens/s a
    # sequence; none: 1 / (10 ms + 4 * 1 ms) = 71.4.
    start = StartCost(
        {NO_SPECULATION: 0.05, TreeShape.chain(1): 0.3, TreeShape.chain(2): 0.3}, tokens_per_request=50
    )
    pol = _chain_table_policy(start)
    assert pol.goodput(4, TreeShape.chain(2)) == pytest.approx(4 * 1.96 / (0.011 + 4 * 1.96 * 0.3 / 50))
    assert pol.choose(4) == NO_SPECULATION
    # The same start cost over long answers is small: speculation pays again.
    start.tokens_per_request = 5000
    assert pol.choose(4) == TreeShape.chain(2)
    # A shape without a figure of its own pays the speculative shapes' mean.
    assert (
        StartCost({NO_SPECULATION: 0.0, TreeShape.chain(1): 0.2}, 10).per_request(TreeShape.chain(3)) == 0.2
    )


def test_start_cost_learns_answer_length_and_a_scale_online():
    start = StartCost(
        {NO_SPECULATION: 0.001, TreeShape.chain(2): 0.004}, tokens_per_request=100, min_starts=4
    )
    pol = _chain_table_policy(start)
    for _ in range(400):  # answers are 20 tokens here, not 100
        pol.observe_finished(20)
    assert start.tokens_per_request == pytest.approx(20, rel=0.01)
    for _ in range(3):
        pol.observe_start(TreeShape.chain(2), 4, 2, 0.011 + 2 * 0.008)  # twice the calibrated 4 ms
    assert start.scale == 1.0  # too few starts seen
    for _ in range(400):
        pol.observe_start(TreeShape.chain(2), 4, 2, 0.011 + 2 * 0.008)
        pol.observe_start(NO_SPECULATION, 4, 1, 0.010 + 0.002)
    assert start.scale == pytest.approx(2.0, rel=0.01)
    assert start.per_request(TreeShape.chain(2)) == pytest.approx(0.008, rel=0.01)


def test_start_costs_keep_the_choice_monotone():
    rng = random.Random(3)
    for _ in range(20):
        start = StartCost(
            {
                NO_SPECULATION: rng.uniform(0, 0.01),
                TreeShape.chain(1): rng.uniform(0, 0.05),
                TreeShape.chain(2): rng.uniform(0, 0.05),
            },
            tokens_per_request=rng.uniform(5, 200),
        )
        pol = _chain_table_policy(start)
        ks = [pol.choose(b).num_draft_tokens for b in range(1, 65)]
        assert ks == sorted(ks, reverse=True)


def test_online_step_cost_learns_a_ratio_per_shape_and_batch_bucket():
    """A prior that ranks shapes wrongly at some batch sizes is corrected there, and only there; a
    cell the server never ran keeps the prior times the overall factor; cells follow drift."""
    prior = StepTable.chains({k: Profile([1, 64], [1.0 + k, 1.0 + k]) for k in (0, 1, 2)})
    cost = OnlineStepCost(prior, beta=0.01, min_count=10**9, cell_prior=5)
    k1, k2 = TreeShape.chain(1), TreeShape.chain(2)
    assert batch_bucket(1) == 1 and batch_bucket(40) == batch_bucket(63) == 6 and batch_bucket(64) == 7
    for _ in range(300):  # the machine runs at 2x the prior; k = 1 at batch 32-63 at 3x
        cost.observe(1, k1, 4.0)
        cost.observe(1, k2, 6.0)
        cost.observe(40, k1, 6.0)
    assert cost.scale == pytest.approx(7 / 3, rel=0.02)  # the mean ratio over all steps
    assert cost.step_time(40, k1) == pytest.approx(6.0, rel=0.03)
    assert cost.step_time(1, k1) == pytest.approx(4.0, rel=0.03)
    assert cost.step_time(1, k2) == pytest.approx(6.0, rel=0.03)
    assert cost.step_time(40, k2) == pytest.approx(3.0 * cost.scale)  # k = 2 never ran at 32-63
    for _ in range(50):  # everything 1.5x slower
        cost.observe(1, k1, 6.0)
        cost.observe(1, k2, 9.0)
        cost.observe(40, k1, 9.0)
    assert cost.step_time(40, k1) == pytest.approx(9.0, rel=0.03)
    assert cost.step_time(1, k2) == pytest.approx(9.0, rel=0.03)
    few = OnlineStepCost(prior, beta=0.01, cell_prior=5)
    few.observe(40, k1, 4.0)  # one step at 2x weighs 1 / (1 + 5) against the overall factor
    assert few.step_time(40, k1) == pytest.approx(2.0 * (5 * few.scale + 2.0) / 6)
    assert OnlineStepCost(prior).step_time(40, k1) == 2.0  # off by default


def test_a_parallel_drafter_costs_one_pass_and_goes_deeper():
    """With the same forwards, a parallel drafter's step cost is about flat in k (one draft pass of
    batch * k tokens) and the policy picks a longer chain for it than for a sequential drafter."""
    from serving.acceptance import AcceptanceTracker
    from serving.policy import SpeculationPolicy
    from serving.shape import TreeShape
    from serving.step_cost import CostModel, Profile

    target = Profile([1, 8, 64], [0.040, 0.042, 0.060])
    draft = Profile([1, 8, 64], [0.010, 0.0105, 0.015])
    seq = CostModel(target, draft)
    par = CostModel(target, draft, parallel_drafts=True)
    k2, k6 = TreeShape.chain(2), TreeShape.chain(6)
    assert par.step_time(1, k6) - par.step_time(1, k2) < 0.002
    assert seq.step_time(1, k6) - seq.step_time(1, k2) > 0.035
    shapes = [TreeShape.chain(k) for k in range(1, 7)]

    def pick(cost):
        tracker = AcceptanceTracker.from_alpha([0.6] * 6, shapes, per_position=True)
        return SpeculationPolicy(cost, tracker, shapes).choose(1).num_draft_tokens

    assert pick(par) > pick(seq)
    restored = CostModel.load(_saved(par))
    assert restored.parallel_drafts and restored.step_time(1, k6) == par.step_time(1, k6)


def _saved(cost):
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / "cost.json"
    cost.save(path)
    return path
