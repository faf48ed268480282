"""The reference batched speculative generator on Hugging Face targets.

Contract
--------
:class:`SpeculativeEngine.generate` decodes a batch of token prompts with a frozen HF causal LM
(Llama/Qwen/Mistral layout) and an optional :class:`Drafter`. Each step it

1. asks the drafter for a tree below every sequence's root (its last emitted token) in the shape
   the ``shape`` callable picks for the live batch size (``num_draft_tokens == 0``: plain decoding);
2. runs ONE target forward over the prefix KV cache plus every sequence's flattened tree, with a
   4-D mask (cache slots the sequence owns + the tree's ancestor mask) and explicit positions;
3. verifies each tree (:mod:`serving.verify`: greedy, or lossless rejection sampling; chains are
   sampled for the whole batch in one call, by the batched kernel), emits the
   accepted tokens plus one recovered or bonus token, and applies EOS / ``max_new_tokens`` per
   sequence;
4. compacts the KV cache so that each sequence keeps its prefix, the root and its accepted path
   only, and drops finished sequences from the batch.

Greedy output is token-identical to plain greedy decoding; sampled output follows the target's
distribution. :class:`GenerationStats` counts target forwards, emitted, drafted and accepted
tokens, from which tau (bonus token included) and acceptance per position follow.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from transformers import DynamicCache

from draft_models.aux_hooks import AuxHiddenHooks
from serving.acceptance import conditional_acceptance
from serving.controller import SpeculationController
from serving.shape import NO_SPECULATION, TreeShape
from serving.tree import DraftTree, ancestor_mask
from serving.verify import is_chain, target_probs, verify_chains_sampling, verify_greedy, verify_sampling


class Drafter(Protocol):
    """What the engine needs from a proposer (see serving.drafters.eagle for EAGLE-3)."""

    feature_layers: list[int]  # target aux layer ids whose hidden states extend() consumes

    def reset(self, batch_size: int) -> None: ...

    def drop(self, keep: list[int]) -> None: ...

    def extend(self, b: int, features: torch.Tensor, next_tokens: torch.Tensor, start_pos: int) -> None: ...

    def propose(self, b: int, root_pos: int, depth: int, top_k: int, num_draft_tokens: int) -> DraftTree: ...


@dataclass
class GenerationStats:
    target_forwards: int = 0  # verification forwards (batched), prefill excluded
    sequence_steps: int = 0  # per-sequence verification steps (a batched forward counts once per sequence)
    emitted: int = 0  # tokens emitted by verification steps (accepted + recovered/bonus)
    drafted: int = 0  # draft tokens verified
    accepted: int = 0  # draft tokens accepted
    accepted_at_depth: list[int] = field(default_factory=list)  # [d]: steps that accepted >= d + 1 tokens
    seconds: float = 0.0

    @property
    def tau(self) -> float:
        """Mean tokens per target forward per sequence, bonus token included (plain decoding = 1)."""
        return self.emitted / max(1, self.sequence_steps)

    @property
    def acceptance_per_position(self) -> list[float]:
        return [c / max(1, self.sequence_steps) for c in self.accepted_at_depth]

    @property
    def alpha(self) -> list[float]:
        return conditional_acceptance(self.accepted_at_depth, self.sequence_steps)

    def merge(self, other: GenerationStats) -> None:
        """Add another run's counts to these (for results gathered over several batches)."""
        self.target_forwards += other.target_forwards
        self.sequence_steps += other.sequence_steps
        self.emitted += other.emitted
        self.drafted += other.drafted
        self.accepted += other.accepted
        self.seconds += other.seconds
        for d, c in enumerate(other.accepted_at_depth):
            if d == len(self.accepted_at_depth):
                self.accepted_at_depth.append(0)
            self.accepted_at_depth[d] += c

    def record(self, num_drafted: int, num_accepted: int, num_emitted: int) -> None:
        self.sequence_steps += 1
        self.drafted += num_drafted
        self.accepted += num_accepted
        self.emitted += num_emitted
        while len(self.accepted_at_depth) < num_accepted:
            self.accepted_at_depth.append(0)
        for d in range(num_accepted):
            self.accepted_at_depth[d] += 1


@dataclass
class GenerationOutput:
    tokens: list[list[int]]  # generated tokens per prompt (prompt excluded), EOS included if hit
    stats: GenerationStats


_EMPTY_TREE = DraftTree(
    tokens=torch.zeros(0, dtype=torch.long),
    parents=torch.zeros(0, dtype=torch.long),
    depth=torch.zeros(0, dtype=torch.long),
    logp=torch.zeros(0),
)


def _then(first: Callable[..., None], second: Callable[..., None] | None) -> Callable[..., None]:
    """A step callback that calls ``first``, then ``second`` (if any), with the same arguments."""

    def both(*step) -> None:
        first(*step)
        if second is not None:
            second(*step)

    return both


class SpeculativeEngine:
    def __init__(
        self, target: torch.nn.Module, drafter: Drafter | None = None, eos_token_id: int | None = None
    ):
        self.target = target.eval()
        self.drafter = drafter
        self.eos = eos_token_id
        self.hooks = AuxHiddenHooks(target, drafter.feature_layers) if drafter is not None else None
        p = next(target.parameters())
        self.device, self.dtype = p.device, p.dtype

    def close(self) -> None:
        if self.hooks is not None:
            self.hooks.close()

    def _forward(self, ids, positions, mask, cache):
        if self.hooks is not None:
            self.hooks.clear()
        out = self.target(
            input_ids=ids,
            position_ids=positions,
            attention_mask=mask[:, None],
            past_key_values=cache,
            use_cache=True,
        )
        aux = self.hooks.aux() if self.hooks is not None else None
        return out.logits.float(), aux

    @torch.no_grad()
    def generate(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        shape: TreeShape | Callable[[int], TreeShape] | SpeculationController = NO_SPECULATION,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        on_step: Callable[[TreeShape, int, float, float, list[int]], None] | None = None,
    ) -> GenerationOutput:
        """``shape`` is fixed, a function of the live batch size, or a
        :class:`~serving.controller.SpeculationController`, which then decides every step and learns
        from it; ``on_step(shape, batch_size, mean tokens emitted per sequence, step seconds, each
        sequence's accepted draft tokens)`` is called after every step as well."""
        if any(len(p) < 2 for p in prompts):
            raise ValueError("every prompt needs at least 2 tokens")
        pick = shape if callable(shape) else (lambda _b, s=shape: s)
        if isinstance(shape, SpeculationController):  # the controller learns from every step it decides
            on_step = _then(shape.observe_step, on_step)
        gen = torch.Generator().manual_seed(seed)
        stats = GenerationStats()
        t0 = time.perf_counter()
        B = len(prompts)
        outputs: list[list[int]] = [[] for _ in range(B)]
        active = list(range(B))  # prompt index of each live batch row
        lens = [len(p) - 1 for p in prompts]  # cache length per row: all prompt tokens but the root
        roots = [p[-1] for p in prompts]
        if self.drafter is not None:
            self.drafter.reset(B)

        # Prefill every prompt but its last token (right padding, 4-D mask).
        width = max(lens)
        ids = torch.zeros(B, width, dtype=torch.long)
        for b, p in enumerate(prompts):
            ids[b, : lens[b]] = torch.tensor(p[:-1])
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        keyok = torch.arange(width)[None, :] < torch.tensor(lens)[:, None]  # [B, width]
        mask = (causal[None] & keyok[:, None, :]) | torch.eye(width, dtype=torch.bool)[None]
        cache = DynamicCache()
        _, aux = self._forward(
            ids.to(self.device),
            torch.arange(width).expand(B, width).to(self.device),
            mask.to(self.device),
            cache,
        )
        if self.drafter is not None:
            for b, p in enumerate(prompts):
                self.drafter.extend(b, aux[b, : lens[b]].cpu(), torch.tensor(p[1:]), 0)

        while active:
            t_step = time.perf_counter()
            sh = pick(len(active))
            trees = [
                self.drafter.propose(b, lens[b], sh.depth, sh.top_k, sh.num_draft_tokens)
                if self.drafter is not None and sh.num_draft_tokens > 0
                else _EMPTY_TREE
                for b in range(len(active))
            ]
            q = 1 + max(t.size for t in trees)
            S = cache.get_seq_length()
            ids = torch.zeros(len(active), q, dtype=torch.long)
            pos = torch.zeros(len(active), q, dtype=torch.long)
            mask = torch.zeros(len(active), q, S + q, dtype=torch.bool)
            for b, t in enumerate(trees):
                n = t.size
                ids[b, 0] = roots[b]
                ids[b, 1 : 1 + n] = t.tokens
                pos[b, 0] = lens[b]
                pos[b, 1 : 1 + n] = lens[b] + t.depth
                pos[b, 1 + n :] = lens[b]
                mask[b, : 1 + n, : lens[b]] = True  # the sequence's own cache slots
                mask[b, : 1 + n, S] = True  # every tree row sees the root
                if n:
                    mask[b, 1 : 1 + n, S + 1 : S + 1 + n] = ancestor_mask(t.parents)
                mask[b, torch.arange(1 + n, q), S + torch.arange(1 + n, q)] = True  # padding rows: self only
            logits, aux = self._forward(ids.to(self.device), pos.to(self.device), mask.to(self.device), cache)
            stats.target_forwards += 1

            keep_rows, gather, new_lens = [], [], []
            step_emitted = 0
            accepted: list[int] = []  # [batch]: draft tokens each sequence accepted this step
            chains = temperature > 0 and q > 1 and all(t.size == q - 1 and is_chain(t) for t in trees)
            if chains:  # every sequence verifies a chain of q - 1 drafts: one batched call
                verdicts = verify_chains_sampling(trees, target_probs(logits.cpu(), temperature, top_p), gen)
            for b, t in enumerate(trees):
                rows = logits[b, : 1 + t.size].cpu()
                if chains:
                    verdict = verdicts[b]
                elif temperature > 0:
                    verdict = verify_sampling(t, target_probs(rows, temperature, top_p), gen)
                else:
                    verdict = verify_greedy(t, rows)
                emitted = verdict.tokens
                stats.record(t.size, verdict.num_accepted, len(emitted))
                accepted.append(verdict.num_accepted)
                step_emitted += len(emitted)
                out = outputs[active[b]]
                budget = max_new_tokens - len(out)
                emitted = emitted[:budget]
                if self.eos is not None and self.eos in emitted:
                    emitted = emitted[: emitted.index(self.eos) + 1]
                out.extend(emitted)
                done = len(out) >= max_new_tokens or (
                    self.eos is not None and emitted and emitted[-1] == self.eos
                )
                kept = [0] + [1 + i for i in verdict.accepted_nodes]  # root + accepted path rows
                if self.drafter is not None and not done:
                    self.drafter.extend(b, aux[b, kept].cpu(), torch.tensor(verdict.tokens), lens[b])
                if not done:
                    keep_rows.append(b)
                    gather.append(list(range(lens[b])) + [S + r for r in kept])
                    new_lens.append(lens[b] + len(kept))
                    roots[b] = verdict.tokens[-1]
            batch = len(trees)
            if keep_rows:
                self._compact(cache, keep_rows, gather)
                active = [active[b] for b in keep_rows]
                lens = new_lens
                roots = [roots[b] for b in keep_rows]
                if self.drafter is not None:
                    self.drafter.drop(keep_rows)
            else:
                active = []
            if on_step is not None:
                on_step(sh, batch, step_emitted / batch, time.perf_counter() - t_step, accepted)
        stats.seconds = time.perf_counter() - t0
        return GenerationOutput(tokens=outputs, stats=stats)

    def _compact(self, cache: DynamicCache, rows: list[int], gather: list[list[int]]) -> None:
        """Keep, for each kept batch row, only the listed cache slots (padded with slot 0)."""
        width = max(len(g) for g in gather)
        index = torch.tensor(
            [g + [0] * (width - len(g)) for g in gather], device=self.device
        )  # [rows, width]
        row_idx = torch.tensor(rows, device=self.device)
        for layer in cache.layers:
            k = layer.keys.index_select(0, row_idx)
            v = layer.values.index_select(0, row_idx)
            idx = index[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
            layer.keys = k.gather(2, idx)
            layer.values = v.gather(2, idx)
