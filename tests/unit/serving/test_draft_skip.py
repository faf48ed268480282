"""Skipping the draft model at k = 0, scheduler side, without vLLM: which requests become stale,
what is evicted from the prefix cache, and that stale requests do not pull k down."""

from __future__ import annotations

from types import SimpleNamespace

from serving.controller import SpeculationController
from serving.step_cost import Profile, StepTable
from serving.vllm_plugin.draft_skip import SKIP_ATTR, StaleDrafts
from serving.vllm_plugin.lookup import AdaptiveLookup
from serving.vllm_plugin.policy_file import load_policy, write_policy_file


class _Scheduler:
    def __init__(
        self, requests: dict[str, SimpleNamespace], blocks: dict[str, list[int]], block_size: int = 16
    ):
        self.requests, self.block_size = requests, block_size
        self.evicted: set[int] = set()
        pool = SimpleNamespace(evict_blocks=self.evicted.update)
        self.kv_cache_manager = SimpleNamespace(get_block_ids=lambda rid: (blocks[rid],), block_pool=pool)


def _lookup(policy, k_max, running=None, is_stale=None, fallback=None, **controller):
    """The plugin's lookup over a controller of ``policy`` (``controller``: its keyword arguments)."""
    return AdaptiveLookup(
        SpeculationController(policy, **controller),
        k_max,
        running=running,
        is_stale=is_stale,
        fallback=fallback,
    )


def _request(rid: str, computed: int, prompt: int, drafts: list[int] | None = None) -> SimpleNamespace:
    return SimpleNamespace(
        request_id=rid, num_computed_tokens=computed, num_prompt_tokens=prompt, spec_token_ids=drafts or []
    )


def _step(scheduled: dict[str, int], k: int, skip: bool = True) -> SimpleNamespace:
    out = SimpleNamespace(num_scheduled_tokens=scheduled, num_spec_tokens_to_schedule=k)
    setattr(out, SKIP_ATTR, skip)  # the scheduler marked a k = 0 that skips the draft
    return out


def test_a_step_at_k0_makes_its_requests_stale_and_evicts_blocks_computed_without_the_draft():
    # block size 16. "dec" decodes position 104 (prompt done); "pre" prefills prompt positions 50-99
    # after positions 0-49 were computed with the draft (blocks 30-32 wholly: whole draft KV, as a
    # prefix-cache hit has; block 33 from position 48). Counts are after the step, as vLLM's
    # schedule() leaves them
    reqs = {
        "dec": _request("dec", 105, 100),
        "pre": _request("pre", 100, 100),
        "other": _request("other", 9, 5),
    }
    blocks = {"dec": [1, 2, 3, 4, 5, 6, 7], "pre": [30, 31, 32, 33, 34, 35, 36], "other": [8]}
    sched = _Scheduler(reqs, blocks)
    stale = StaleDrafts(sched)
    stale.after_schedule(_step({"dec": 1, "pre": 50}, k=2))
    assert not stale.stale  # the draft ran: nothing to track
    stale.after_schedule(_step({"dec": 1, "pre": 50}, k=0, skip=False))
    assert not stale.stale  # vLLM's own k = 0 keeps the draft's KV current
    stale.after_schedule(_step({"dec": 1, "pre": 50}, k=0))
    assert stale.stale == {"dec": 104, "pre": 50} and stale.is_stale("pre") and not stale.is_stale("other")
    # the prompt blocks from position 50 on (block 3 = id 33) leave the prefix cache at once; the
    # prefix-cache hit stays cached, and the decoding request's prompt blocks too
    assert sched.evicted == {33, 34, 35, 36}
    # a later k = 0 step does not move where a request went stale
    reqs["dec"].num_computed_tokens = 106
    stale.after_schedule(_step({"dec": 1}, k=0))
    assert stale.stale["dec"] == 104
    # drafts proposed later for stale requests are dropped; others keep theirs
    reqs["dec"].spec_token_ids, reqs["other"].spec_token_ids = [7, 8], [9]
    stale.drop_drafts(["dec", "other"])
    assert reqs["dec"].spec_token_ids == [] and reqs["other"].spec_token_ids == [9]
    # when a stale request is freed, its blocks from the first draft-less position on leave the
    # prefix cache (position 104: block 6); a request that never went stale evicts nothing
    stale.on_free(reqs["dec"])
    assert sched.evicted == {33, 34, 35, 36, 7} and not stale.is_stale("dec")
    stale.on_free(reqs["other"])
    assert sched.evicted == {33, 34, 35, 36, 7}


def test_stale_requests_ride_along_without_changing_the_choice_of_k(tmp_path):
    table = StepTable.chains({0: Profile([1, 64], [1.0, 1.0]), 3: Profile([1, 64], [2.0, 2.0])})
    policy = load_policy(write_policy_file(tmp_path / "t.json", table, [0.9, 0.9, 0.9], [3]), k_max=3)
    batch = ["a", "b", "c", "d"]
    stale: set[str] = set()
    lookup = _lookup(policy, k_max=3, running=lambda b: batch[:b], max_batch=8, is_stale=stale.__contains__)
    assert lookup[4] == 3  # fresh requests: tau 3.44 at twice the step time pays
    # Stale requests do not pull k down (that fed back: each k = 0 step makes more requests stale),
    # so the fresh ones keep speculating.
    stale.update({"a", "b", "c"})
    assert lookup[4] == 3
    stale.add("d")
    assert lookup[4] == 0 and lookup.choices[4] == 0  # no request can speculate


def test_k0_skips_the_draft_only_when_the_load_calls_for_it(tmp_path):
    """With draft skipping on, k = 0 is the load's call: when the population's acceptance says no
    speculation at this batch size the step skips the draft; requests that accept poorly keep
    speculating at the cheapest k instead (vLLM's own k = 0 would run the draft anyway)."""
    # k = 1 and 3 cost 1.5x and 2x a plain step at batch 1-4, 4x from batch 5 on: with alpha 0.9
    # speculation pays up to batch 4 and no longer from 5
    table = StepTable.chains(
        {
            0: Profile([1, 64], [1.0, 1.0]),
            1: Profile([1, 4, 5, 64], [1.5, 1.5, 4.0, 4.0]),
            3: Profile([1, 4, 5, 64], [2.0, 2.0, 4.0, 4.0]),
        }
    )
    path = write_policy_file(tmp_path / "t.json", table, [0.9, 0.9, 0.9], [1, 3])
    batch = ["a", "b", "c", "d", "e"]
    stale: set[str] = set()
    lookup = _lookup(
        load_policy(path, k_max=3),
        k_max=3,
        running=lambda b: batch[:b],
        max_batch=8,
        is_stale=stale.__contains__,
    )
    assert lookup[2] == 3 and not lookup.skip_draft
    for _ in range(10):  # "a" and "b" reject every draft
        lookup.observe_requests({"a": 3, "b": 3}, {"a": 0, "b": 0}, finished=())
    assert lookup[2] == 1 and not lookup.skip_draft  # their poor acceptance: the cheapest speculation
    assert lookup[5] == 0 and lookup.skip_draft  # batch 5: the load says no speculation, draft skipped
    lookup.pin(0)
    assert lookup[2] == 0 and lookup.skip_draft  # a pinned k = 0 skips (paired benchmarks, calibration)
    static = AdaptiveLookup(None, k_max=3, fallback=[0, 3, 2, 1])  # no policy: vLLM's table, no skipping
    assert [static[b] for b in (1, 2, 3, 9)] == [3, 2, 1, 1] and not static.skip_draft

    # Without draft skipping their k = 0 is priced by the table; held there, their estimates decay
    # back towards the population's, and they speculate again
    plain = _lookup(load_policy(path, k_max=3), k_max=3, running=lambda b: batch[:b], max_batch=8)
    for _ in range(10):
        plain.observe_requests({"a": 3, "b": 3}, {"a": 0, "b": 0}, finished=())
    assert plain[2] == 0
    for _ in range(15):
        plain.observe_requests({}, {}, finished=(), idle=["a", "b"])
    assert plain[2] == 3


def test_the_loads_verdict_is_cached_until_the_next_refresh(tmp_path):
    """The population's "no speculation at this batch size" is asked once per batch size and
    refresh (at large batch it is the plugin's whole per-step cost); what the policy learns in the
    meantime reaches it at the next refresh."""
    table = StepTable.chains({0: Profile([1, 64], [1.0, 1.0]), 3: Profile([1, 64], [2.0, 2.0])})
    policy = load_policy(write_policy_file(tmp_path / "t.json", table, [0.3, 0.3, 0.3], [3]), k_max=3)
    batch = [f"r{i}" for i in range(8)]
    lookup = _lookup(policy, k_max=3, running=lambda b: batch[:b], max_batch=8, is_stale=set().__contains__)
    lookup.controller.refresh_steps = 4
    assert lookup[8] == 0 and lookup.skip_draft  # tau 1.43 at twice the step time: no speculation
    policy.acceptance.alpha[:] = [0.95, 0.95, 0.95]  # the population now accepts almost everything
    assert [lookup[8] for _ in range(3)] == [0, 0, 0]  # the cached verdict, until the refresh
    assert lookup[8] == 3 and not lookup.skip_draft
