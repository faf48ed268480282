"""The speculation controller on its own: the policy's choice, hysteresis and probing over trees
as well as chains, and what it learns from each step."""

from __future__ import annotations

from serving.acceptance import AcceptanceTracker
from serving.controller import SpeculationController
from serving.policy import SpeculationPolicy
from serving.shape import NO_SPECULATION, TreeShape
from serving.step_cost import OnlineStepCost, Profile, StepTable

CHAIN = TreeShape.chain(3)
TREE = TreeShape.tree(depth=3, top_k=2, num_draft_tokens=6)


def _controller(tree_seconds: float, **kwargs) -> tuple[SpeculationController, StepTable]:
    """Chain 3 and a 6-token tree, flat in batch size; tau 3.0 (chain, per-shape seed) and 3.3 (tree)."""
    table = StepTable(
        {
            NO_SPECULATION: Profile([1, 64], [1.0, 1.0]),
            CHAIN: Profile([1, 64], [2.0, 2.0]),
            TREE: Profile([1, 64], [tree_seconds, tree_seconds]),
        }
    )
    tracker = AcceptanceTracker({CHAIN: 3.0, TREE: 3.3})
    policy = SpeculationPolicy(OnlineStepCost(table, min_count=10**9), tracker, [CHAIN, TREE])
    return SpeculationController(policy, refresh_steps=1, **kwargs), table


def test_the_controller_serves_the_policys_choice_and_the_load_call():
    controller, _ = _controller(2.1)  # tree: 3.3 / 2.1 = 1.57 tokens a second, chain 1.5
    decision = controller.decide(4)
    assert decision.shape == TREE and not decision.skip_draft
    controller.policy.acceptance.seed.update({CHAIN: 1.2, TREE: 1.3})  # speculation no longer pays
    decision = controller.decide(4)
    assert decision.shape == NO_SPECULATION and decision.skip_draft  # the population's call: skip the draft
    assert controller.choices == {4: NO_SPECULATION} and controller.steps == 2


def test_hysteresis_keeps_a_tree_through_near_ties_and_leaves_it_for_a_clear_gain():
    controller, table = _controller(2.1, switch_margin=0.05)
    assert controller(8) == TREE
    table.seconds[TREE] = Profile([1, 64], [2.25, 2.25])  # chain now 2 % better: within the margin
    assert controller(8) == TREE
    table.seconds[TREE] = Profile([1, 64], [2.6, 2.6])  # chain now 18 % better
    assert controller(8) == CHAIN
    controller.switch_margin = 0.0
    table.seconds[TREE] = Profile([1, 64], [2.15, 2.15])  # without hysteresis any gain switches
    assert controller(8) == TREE


def test_probing_runs_the_runner_up_shape_now_and_then():
    controller, _ = _controller(2.1, probe_every=8, probe_steps=3)
    shapes = [controller(16) for _ in range(40)]
    # decisions 8, 16, 24, 32, 40 start a probe of the chain, held for 3 steps (the next two follow it)
    assert [i + 1 for i, s in enumerate(shapes) if s == CHAIN] == [
        8,
        9,
        10,
        18,
        19,
        20,
        28,
        29,
        30,
        38,
        39,
        40,
    ]
    assert controller.probes == 4 and controller.choices[16] == TREE  # probes are not the choice


def test_the_controller_learns_from_steps_and_requests():
    controller, _ = _controller(2.1)
    controller.observe_step(TREE, 4, 1.0, seconds=4.2)  # a tree step emitting 1 token, twice as slow
    assert controller.policy.acceptance.ema[TREE] < 3.3
    assert controller.policy.cost.factor(TREE) > 1.0
    controller.observe_requests({"a": 3}, {"a": 0}, finished=[])
    assert controller.live.hits["a"] == [0.0, 0.0, 0.0]
    controller.observe_requests({}, {}, finished=["a"])
    assert "a" not in controller.live.hits
