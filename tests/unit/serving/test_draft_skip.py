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
    stale = StaleDrafts(sched, blocks="evict")
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


class _PrefixCache:
    """vLLM's single-group KV cache manager as StaleDrafts sees it: a block pool with a prefix cache
    (hash -> cached blocks, first copy served), and a coordinator whose lookup drops the last hit block
    while ``eagle_group_ids`` holds the group (as vLLM's UnitaryKVCacheCoordinator does)."""

    block_size = 16
    enable_caching = True

    def __init__(self):
        self.cached: dict[str, list[int]] = {}  # hash -> block ids, in the order cached
        self.owned: dict[str, list[int]] = {}  # request id -> its blocks
        self.next_id = 0
        self.block_pool = SimpleNamespace(
            get_new_blocks=self._new, get_cached_block=self._cached, evict_blocks=self._evict
        )
        self.coordinator = SimpleNamespace(
            block_pool=self.block_pool,
            block_size=self.block_size,
            eagle_group_ids={0},
            single_type_managers=[None],
            find_longest_cache_hit=self._longest_hit,
        )

    def _new(self, n: int) -> list[SimpleNamespace]:
        self.next_id += n
        return [SimpleNamespace(block_id=i) for i in range(self.next_id - n, self.next_id)]

    def _cached(self, block_hash: str, groups: list[int]) -> list[SimpleNamespace] | None:
        ids = self.cached.get(block_hash)
        return [SimpleNamespace(block_id=ids[0])] if ids else None

    def _evict(self, block_ids: set[int]) -> None:
        for ids in self.cached.values():
            ids[:] = [i for i in ids if i not in block_ids]

    def _longest_hit(self, block_hashes: list[str], max_length: int):
        hit = []
        for h in block_hashes[: max_length // self.block_size]:
            if not (cached := self._cached(h, [0])):
                break
            hit.append(cached[0])
        if 0 in self.coordinator.eagle_group_ids and hit:
            hit.pop()
        return (hit,), len(hit) * self.block_size, 0

    def get_computed_blocks(self, request):
        (blocks,), n, _ = self.coordinator.find_longest_cache_hit(
            request.block_hashes, request.num_tokens - 1
        )
        return blocks, n, 0

    def get_block_ids(self, rid: str) -> tuple[list[int]]:
        return (self.owned[rid],)

    def prefill(self, rid: str, hashes: list[str], hit: list[SimpleNamespace]) -> None:
        """``rid`` holds the hit blocks and new ones for the rest of its prompt, cached under ``hashes``."""
        new = self.block_pool.get_new_blocks(len(hashes) - len(hit))
        self.owned[rid] = [b.block_id for b in hit + new]
        for h, b in zip(hashes[len(hit) :], new, strict=True):
            self.cached.setdefault(h, []).append(b.block_id)


def test_marked_blocks_serve_requests_admitted_without_the_draft_and_no_others():
    """skipped_blocks "mark": a prompt prefilled in a skipped step stays in the prefix cache, marked. A
    request admitted under the load's k = 0 takes the whole hit (no EAGLE drop, marked blocks
    included) and is stale; a request admitted to speculate evicts the marked blocks on its chain and
    recomputes them; blocks handed out afresh lose their mark."""
    kv = _PrefixCache()
    prompt = ["h0", "h1", "h2", "h3"]  # 4 full blocks: a 70-token prompt
    reqs = {r: _request(r, 0, 70) for r in ("a", "b", "c")}
    for r in reqs.values():
        r.block_hashes, r.num_tokens = prompt, 70
    sched = SimpleNamespace(
        requests=reqs, block_size=16, kv_cache_manager=kv, running=[], waiting=[], max_num_running_reqs=64
    )
    stale = StaleDrafts(sched)
    assert stale.blocks == "mark"
    skipping = {"on": True}
    stale.admits_without_draft = lambda batch: skipping["on"]

    # "a" is admitted under the load's k = 0: nothing cached yet, so it is not stale until its prompt
    # is prefilled in a skipped step; then its blocks are marked, and stay cached
    _, hit, _ = kv.get_computed_blocks(reqs["a"])
    assert hit == 0 and not stale.is_stale("a")
    kv.prefill("a", prompt, [])
    reqs["a"].num_computed_tokens = 70
    stale.after_schedule(_step({"a": 70}, k=0))
    assert stale.stale == {"a": 0} and stale.holes == {0, 1, 2, 3}
    assert kv.cached == {h: [i] for i, h in enumerate(prompt)}  # nothing evicted
    stale.on_free(reqs["a"])
    assert not stale.is_stale("a") and stale.holes == {0, 1, 2, 3}  # the blocks keep their mark

    # "b", the same prompt, admitted under the same load: the whole hit (4 blocks, capped at 69
    # tokens: 64), without EAGLE's dropped block; stale from there, and it marks what it writes
    blocks, hit, _ = kv.get_computed_blocks(reqs["b"])
    assert hit == 64 and [b.block_id for b in blocks] == [0, 1, 2, 3]
    assert stale.stale == {"b": 64} and kv.coordinator.eagle_group_ids == {0}  # the drop is back
    kv.owned["b"] = [0, 1, 2, 3] + [b.block_id for b in kv.block_pool.get_new_blocks(1)]
    reqs["b"].num_computed_tokens = 70
    stale.after_schedule(_step({"b": 6}, k=2, skip=False))  # a step that drafts: "b" still marks
    assert 4 in stale.holes

    # "c" is admitted to speculate: the marked blocks on its chain leave the prefix cache first, so
    # it hits nothing and recomputes the prompt with the draft; it is not stale, and its fresh blocks
    # carry no mark
    skipping["on"] = False
    _, hit, _ = kv.get_computed_blocks(reqs["c"])
    assert hit == 0 and not stale.is_stale("c") and kv.cached["h0"] == []
    kv.prefill("c", prompt, [])
    assert kv.owned["c"] == [5, 6, 7, 8] and not stale.holes & {5, 6, 7, 8}
    reqs["c"].num_computed_tokens = 70
    stale.after_schedule(_step({"c": 70}, k=2, skip=False))
    assert not stale.holes & {5, 6, 7, 8}
    # a later speculating request hits the clean copy (less EAGLE's dropped block)
    reqs["d"] = _request("d", 0, 70)
    reqs["d"].block_hashes, reqs["d"].num_tokens = prompt, 70
    blocks, hit, _ = kv.get_computed_blocks(reqs["d"])
    assert hit == 48 and [b.block_id for b in blocks] == [5, 6, 7] and not stale.is_stale("d")
    # a marked block handed out afresh loses its mark
    kv.next_id = 0
    kv.block_pool.get_new_blocks(2)
    assert 0 not in stale.holes and 1 not in stale.holes and 2 in stale.holes


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
    # a request admitted into such a load will be served without the draft (StaleDrafts' "mark")
    assert lookup.admits_without_draft(5) and not lookup.admits_without_draft(2)
    lookup.pin(0)
    assert lookup[2] == 0 and lookup.skip_draft  # a pinned k = 0 skips (paired benchmarks, calibration)
    assert lookup.admits_without_draft(2)
    static = AdaptiveLookup(None, k_max=3, fallback=[0, 3, 2, 1])  # no policy: vLLM's table, no skipping
    assert [static[b] for b in (1, 2, 3, 9)] == [3, 2, 1, 1] and not static.skip_draft
    assert not static.admits_without_draft(9)

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
