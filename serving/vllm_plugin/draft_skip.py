"""Make the plugin's k = 0 real "no speculation": skip the draft model, not just its proposals.

vLLM's own k = 0 (``num_spec_tokens_to_schedule == 0``) still runs the draft's first forward on
every step, to keep the draft's KV cache in step with the target's (``SpecDecodeBaseProposer.
propose``). Measured here (tiny target, EAGLE-3 head): such steps took 5.1 ms at batch 1 and 12.5
ms at batch 64 against 3.6-4.2 and 9.2-11.0 ms for an engine without a draft, and the draft's
prefill doubled the prefill step. So no choice of k could reach plain decoding's throughput.

Contract
--------
* Which k = 0 steps skip the draft: the scheduler marks them (``SKIP_ATTR`` on the scheduler
  output); the plugin's lookup marks a k = 0 that the load calls for (the policy, on the
  population's acceptance, chooses no speculation at this batch size), not one chosen because the
  requests in the batch accept poorly: those keep their draft current and may speculate again.
* Worker side (:func:`patch_runner`): a marked step, with no draft token scheduled, takes the model
  runner's plain path: no draft forward, no spec-decode metadata, no rejection sampler on zero
  drafts, no drafter input preparation. (:func:`patch_proposer`): should ``propose`` still be
  called on a marked step, it returns no drafts without running the draft model.
* Engine core (:func:`patch_engine_core`): after a marked step it does not ask the worker for
  drafts (there are none).
* Scheduler side (:class:`StaleDrafts`): the requests in a marked step now have holes in their draft
  KV cache, so they are *stale* for the rest of their life: their drafts are dropped
  (``update_draft_token_ids``), so they never speculate again, and their acceptance counts as
  none. Output stays lossless either way (verification never trusts a draft); this keeps the
  target from verifying drafts that attend to garbage.
* The prefix cache must not hand a block with draft-KV holes to a request that will draft, whose
  drafts would then read the holes. With ``"skipped_blocks": "mark"`` (the default) every block a
  stale request writes stays cached but is marked (until vLLM hands the block out afresh):
  - a request admitted while the load calls for k = 0 (:meth:`AdaptiveLookup.admits_without_draft`,
    at the batch of the running and waiting requests) takes the whole cached prefix, marked blocks
    included and without the block EAGLE engines recompute before the first new token (vLLM's
    ``drop_eagle_block``), and is stale from there: at large batch a resent prompt or a shared system
    prompt hits the cache as it would on an engine without a draft;
  - any other request's lookup evicts the marked blocks on its cached chain first, so it recomputes
    them with the draft (or hits a clean copy) and may speculate.
  ``"evict"`` instead drops a stale request's blocks from the first draft-less position on (at once
  for a prompt prefilled in a skipped step, the rest when the request is freed); ``"keep"`` leaves
  the prefix cache alone, at the risk above. "mark" needs vLLM's single-group KV cache (one
  attention type), and falls back to "evict" elsewhere.
* Switched by ``"skip_draft_at_k0"`` in the policy file: ``specforge calibrate --vllm`` and ``bench
  serve`` write true unless given ``--no-skip-draft-at-k0``; a file without the key leaves vLLM's
  own k = 0.
* Measured (docs/adaptive-speculation.md): with all three, a k = 0 step costs what an engine without
  a draft pays. The trade-off: a request made stale never speculates again, even when the batch
  shrinks. Only this package imports vllm.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import get_args

import torch

from serving.vllm_plugin.policy_file import SkippedBlocks

logger = logging.getLogger("specforge.vllm_plugin")
_PATCHED = False
# Set by the scheduler on a SchedulerOutput whose k = 0 step skips the draft (the plugin's lookup
# decides: when the load says no speculation); read by the model runner. A plain attribute of the
# dataclass, so it travels wherever the scheduler output does.
SKIP_ATTR = "specforge_skip_draft"
# Set by the scheduler on itself: whether the step it scheduled last is a marked k = 0 step (read by
# the engine core after the step, patch_engine_core).
LAST_SKIP_ATTR = "_specforge_last_skip"
SKIPPED_BLOCKS = get_args(SkippedBlocks)  # the policy file's "skipped_blocks" values
# The model runner's verdict for the step it is executing, read by the proposer (same worker).
_STEP = {"skip": False}


def patch_proposer() -> None:
    """Make ``SpecDecodeBaseProposer.propose`` skip the draft model when asked for 0 tokens
    (idempotent; every vLLM process may call it)."""
    global _PATCHED
    if _PATCHED:
        return
    from vllm.v1.spec_decode.llm_base_proposer import SpecDecodeBaseProposer

    if getattr(SpecDecodeBaseProposer, "_specforge_skip", False):
        _PATCHED = True
        return
    original = SpecDecodeBaseProposer.propose
    said = []

    def propose(self, num_speculative_tokens, *args, **kwargs):
        if num_speculative_tokens == 0 and _STEP["skip"] and "common_attn_metadata" in kwargs:
            if not said:
                said.append(True)
                logger.warning("specforge: k = 0, skipping the draft model (skip_draft_at_k0)")
            self.num_speculative_tokens = 0
            self._last_draft_probs = None
            next_token_ids = kwargs.get("next_token_ids")
            device = next_token_ids.device if next_token_ids is not None else None
            # [batch_size, 0]: no drafts, and no draft forward
            return torch.empty(
                (kwargs["common_attn_metadata"].batch_size(), 0), dtype=torch.int64, device=device
            )
        return original(self, num_speculative_tokens, *args, **kwargs)

    SpecDecodeBaseProposer.propose = propose
    SpecDecodeBaseProposer._specforge_skip = True
    _PATCHED = True


def patch_runner() -> None:
    """Run a step whose k is 0 through the model runner's plain path (idempotent).

    With no draft token scheduled anywhere in the batch, the runner's speculative work (spec-decode
    metadata, the rejection sampler on zero drafts, the drafter's input preparation) is hidden: the
    runner's ``speculative_config`` reads ``None`` from ``execute_model`` to the end of the matching
    ``sample_tokens``. The target still returns its auxiliary hidden states (EAGLE-3); they are
    unused on such a step."""
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    if getattr(GPUModelRunner, "_specforge_plain_k0", False):
        return
    execute, sample = GPUModelRunner.execute_model, GPUModelRunner.sample_tokens

    def is_plain(self, scheduler_output) -> bool:
        return (
            self.speculative_config is not None
            and getattr(scheduler_output, SKIP_ATTR, False)
            and int(getattr(scheduler_output, "num_spec_tokens_to_schedule", 1) or 0) == 0
            and not scheduler_output.scheduled_spec_decode_tokens
            and scheduler_output.total_num_scheduled_tokens > 0
        )

    def execute_model(self, scheduler_output, *args, **kwargs):
        self._specforge_hidden = None
        _STEP["skip"] = bool(getattr(scheduler_output, SKIP_ATTR, False))
        if not is_plain(self, scheduler_output):
            return execute(self, scheduler_output, *args, **kwargs)
        spec, self.speculative_config = self.speculative_config, None
        try:
            out = execute(self, scheduler_output, *args, **kwargs)
        finally:
            self.speculative_config = spec
        if out is None:  # sample_tokens follows: keep the plain path for it
            self._specforge_hidden = spec
        return out

    def sample_tokens(self, *args, **kwargs):
        spec = getattr(self, "_specforge_hidden", None)
        if spec is None:
            return sample(self, *args, **kwargs)
        self._specforge_hidden, self.speculative_config = None, None
        try:
            return sample(self, *args, **kwargs)
        finally:
            self.speculative_config = spec

    GPUModelRunner.execute_model = execute_model
    GPUModelRunner.sample_tokens = sample_tokens
    GPUModelRunner._specforge_plain_k0 = True


def patch_engine_core() -> None:
    """After a marked step, skip the engine core's fetch of the step's drafts (idempotent).

    A synchronous engine with a draft asks the worker for the step's draft tokens after every step
    (``EngineCore.post_step`` -> ``take_draft_token_ids``), a round trip to the worker process: 0.4
    ms a step here, against 13 ms for a batch-64 step. A marked step proposed none (its requests are
    stale, and the scheduler cleared their draft tokens when it scheduled them), so there is nothing
    to fetch."""
    from vllm.v1.engine.core import EngineCore

    if getattr(EngineCore, "_specforge_skip_take", False):
        return
    original = EngineCore.post_step

    def post_step(self, model_executed: bool) -> None:
        if getattr(self.scheduler, LAST_SKIP_ATTR, False):
            return
        return original(self, model_executed)

    EngineCore.post_step = post_step
    EngineCore._specforge_skip_take = True


class StaleDrafts:
    """The scheduler's record of requests whose draft KV cache missed a step, and of the KV blocks that
    hold such holes (see module doc). ``blocks``: what happens to those blocks in the prefix cache
    (``"mark"``, ``"evict"`` or ``"keep"``, :data:`SKIPPED_BLOCKS`); ``"mark"`` needs vLLM's
    single-group KV cache and falls back to ``"evict"`` elsewhere."""

    def __init__(self, scheduler, blocks: str = "mark"):
        if blocks not in SKIPPED_BLOCKS:
            raise ValueError(f"skipped_blocks must be one of {SKIPPED_BLOCKS}, not {blocks!r}")
        self.scheduler, self.blocks = scheduler, blocks
        # request id -> the first token position computed without the draft (or after a hit taken
        # without the draft's rules): positions before it hold valid draft KV
        self.stale: dict[str, int] = {}
        # ids of the KV blocks whose draft KV has holes ("mark"): cleared when vLLM hands the block out
        # afresh
        self.holes: set[int] = set()
        # set by the plugin: whether a request admitted now, with this many requests running and
        # waiting, will be served with the draft skipped (AdaptiveLookup.admits_without_draft)
        self.admits_without_draft: Callable[[int], bool] = lambda batch: False
        self._admitting = False
        if blocks == "mark":
            self._hook_prefix_cache()

    def _hook_prefix_cache(self) -> None:
        """Wrap this scheduler's KV cache manager (instance attributes, not vLLM's classes): a
        request admitted under the draft-skipping load takes the whole prefix-cache hit, holes and
        EAGLE's recomputed last block included, and is stale; any other request's lookup evicts the
        marked blocks it meets (another copy of the block, or a recomputation, serves it)."""
        kv = self.scheduler.kv_cache_manager
        coordinator = getattr(kv, "coordinator", None)
        if not getattr(kv, "enable_caching", False):  # no prefix cache: nothing to keep apart
            self.blocks = "evict"
            return
        if len(getattr(coordinator, "single_type_managers", ())) != 1:  # vLLM's UnitaryKVCacheCoordinator
            logger.info("specforge: skipped_blocks 'mark' needs a single-group KV cache; evicting instead")
            self.blocks = "evict"
            return
        pool, holes = coordinator.block_pool, self.holes
        get_new_blocks, find_hit = pool.get_new_blocks, coordinator.find_longest_cache_hit
        get_computed_blocks = kv.get_computed_blocks

        def new_blocks(num_blocks: int):
            blocks = get_new_blocks(num_blocks)
            holes.difference_update(b.block_id for b in blocks)  # fresh contents, written from now on
            return blocks

        def computed_blocks(request):
            sched = self.scheduler
            load = min(len(sched.running) + len(sched.waiting), int(sched.max_num_running_reqs))
            self._admitting = self.admits_without_draft(load)
            try:
                blocks, hit, *rest = get_computed_blocks(request)
            finally:
                admitting, self._admitting = self._admitting, False
            if admitting and hit > 0:  # hit taken without the draft's rules: no drafts for this one
                self.stale.setdefault(request.request_id, hit)
            return (blocks, hit, *rest)

        def longest_hit(block_hashes, max_cache_hit_length):
            if self._admitting:  # the whole hit: no EAGLE drop of the last block
                eagle, coordinator.eagle_group_ids = coordinator.eagle_group_ids, set()
                try:
                    return find_hit(block_hashes, max_cache_hit_length)
                finally:
                    coordinator.eagle_group_ids = eagle
            if holes:
                self._evict_holes_on(block_hashes, max_cache_hit_length // coordinator.block_size)
            return find_hit(block_hashes, max_cache_hit_length)

        pool.get_new_blocks = new_blocks
        kv.get_computed_blocks = computed_blocks
        coordinator.find_longest_cache_hit = longest_hit

    def _evict_holes_on(self, block_hashes, max_blocks: int) -> None:
        """Evict from the prefix cache the marked blocks on the cached chain of ``block_hashes`` (a
        clean copy under the same hash, if vLLM holds one, then serves the hit)."""
        pool = self.scheduler.kv_cache_manager.coordinator.block_pool
        for block_hash in itertools.islice(block_hashes, max_blocks):
            while (cached := pool.get_cached_block(block_hash, [0])) and cached[0].block_id in self.holes:
                pool.evict_blocks({cached[0].block_id})
            if not cached:
                return

    def after_schedule(self, scheduler_output) -> None:
        """Call after ``schedule()``: a step at k = 0 that skips the draft (``SKIP_ATTR`` set) makes
        every request in it stale; with ``"mark"``, every block a stale request writes is marked."""
        scheduled = scheduler_output.num_scheduled_tokens or {}
        if not scheduled:
            return
        skip = getattr(scheduler_output, SKIP_ATTR, False) and not int(
            scheduler_output.num_spec_tokens_to_schedule or 0
        )
        if not skip and not (self.blocks == "mark" and self.stale):
            return
        prefilled = []
        # a drafting step: only the stale requests in it write blocks to mark
        for rid in scheduled if skip else scheduled.keys() & self.stale.keys():
            n = scheduled[rid]
            req = self.scheduler.requests.get(rid)
            if req is None:
                continue
            start = req.num_computed_tokens - n  # num_computed_tokens already counts this step's tokens
            if skip:
                self.stale.setdefault(rid, start)
                if start < req.num_prompt_tokens:
                    prefilled.append(rid)
            if self.blocks == "mark" and rid in self.stale:
                self._mark(rid, max(start, self.stale[rid]), req.num_computed_tokens)
        if self.blocks == "evict":
            self._evict(prefilled)

    def drop_drafts(self, req_ids) -> None:
        """Call after ``update_draft_token_ids``: stale requests keep no drafts."""
        for rid in req_ids:
            if rid in self.stale:
                req = self.scheduler.requests.get(rid)
                if req is not None and req.spec_token_ids:
                    req.spec_token_ids = []

    def on_free(self, request) -> None:
        """Call before a request's blocks are freed."""
        rid = request.request_id
        if rid in self.stale:
            if self.blocks == "evict":
                self._evict([rid])
            del self.stale[rid]

    def is_stale(self, rid: str) -> bool:
        return rid in self.stale

    def _mark(self, rid: str, start: int, end: int) -> None:
        """Mark the blocks of ``rid`` that hold positions ``start .. end - 1``."""
        block_size = int(self.scheduler.block_size)
        try:
            (group,) = self.scheduler.kv_cache_manager.get_block_ids(rid)
        except (KeyError, AssertionError, ValueError):  # no blocks (yet)
            return
        self.holes.update(group[start // block_size : -(-end // block_size)])

    def _evict(self, req_ids: list[str]) -> None:
        """Evict from the prefix cache the blocks of ``req_ids`` that hold a position computed without
        the draft. Blocks wholly before that position keep their place: a shared system prompt or a
        repeated prompt stays cached."""
        if not req_ids:
            return
        kv = self.scheduler.kv_cache_manager
        block_size = int(self.scheduler.block_size)
        blocks: set[int] = set()
        for rid in req_ids:
            first = self.stale[rid] // block_size  # the block holding the first draft-less position
            try:
                for group in kv.get_block_ids(rid):
                    blocks.update(group[first:])
            except (KeyError, AssertionError):  # the request holds no blocks (yet)
                continue
        if blocks:
            kv.block_pool.evict_blocks(blocks)
