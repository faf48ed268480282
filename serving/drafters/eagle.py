"""EAGLE heads (EAGLE-1, EAGLE-3) and MTP heads as a drafter for the reference engine, with its own
per-sequence KV cache.

Contract: the engine calls :meth:`EagleDrafter.extend` with verified pairs (the target's feature
at position ``p``: EAGLE-3's fused aux layers, EAGLE-1's last hidden state; the token at ``p + 1``); the drafter runs its layer over them,
appends their keys and values to the sequence's cache, and keeps the last output, whose logits
propose the root's children. :meth:`EagleDrafter.propose` grows an EAGLE-2 tree: expanding node
``u`` at depth ``d`` feeds (its parent's output feature, ``u``'s token) at position
``root_pos - 1 + d``, attending to the cache plus the tree entries of ``u``'s ancestors — the same
attention the training-time test teaches. Tree entries are discarded after each proposal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from draft_models.eagle import EagleDraft
from draft_models.eagle3 import Eagle3Draft
from draft_models.layers import attend
from draft_models.mtp import MtpDraft
from serving.tree import DraftTree, build_tree


@dataclass
class _SeqCache:
    keys: torch.Tensor  # [kv_heads, length, head_dim]
    values: torch.Tensor  # [kv_heads, length, head_dim]
    last_hidden: torch.Tensor | None = None  # [hidden] output at the last verified pair
    last_logp: torch.Tensor | None = None  # [target_vocab] root-children log-probs
    tree_k: list[torch.Tensor] = field(default_factory=list)  # per expanded tree node [kv_heads, head_dim]
    tree_v: list[torch.Tensor] = field(default_factory=list)


@dataclass
class _Nodes:
    """The tree as it grows: per node token, parent, depth; per expanded node its outputs."""

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    depth: list[int] = field(default_factory=list)
    hidden: dict[int, torch.Tensor] = field(default_factory=dict)  # [hidden] output feature
    logp: dict[int, torch.Tensor] = field(default_factory=dict)  # [target_vocab] children log-probs
    slot: dict[int, int] = field(default_factory=dict)  # index into the sequence's tree K/V


class EagleDrafter:
    def __init__(self, draft: Eagle3Draft | EagleDraft | MtpDraft):
        self.draft = draft.eval()
        self.feature_layers = list(draft.config.aux_layer_ids)
        cfg = draft.config
        self._empty = torch.zeros(
            cfg.num_key_value_heads, 0, cfg.head_dim, dtype=draft.embed_tokens.weight.dtype
        )
        self._seqs: list[_SeqCache] = []
        # draft-vocabulary row -> target-vocabulary log-prob scatter index
        self._draft_to_target = torch.arange(cfg.draft_vocab_size) + draft.d2t

    def reset(self, batch_size: int) -> None:
        self._seqs = [_SeqCache(self._empty.clone(), self._empty.clone()) for _ in range(batch_size)]

    def drop(self, keep: list[int]) -> None:
        """Keep only the listed sequences (in that order)."""
        self._seqs = [self._seqs[i] for i in keep]

    def _to_target_logp(self, logits: torch.Tensor) -> torch.Tensor:
        """[n, draft_vocab] logits -> [n, target_vocab] log-probs (-inf outside the draft vocabulary)."""
        logp = torch.log_softmax(logits.float(), dim=-1)
        out = torch.full((logits.shape[0], self.draft.config.vocab_size), float("-inf"))
        out[:, self._draft_to_target] = logp
        return out

    def _causal_step(
        self, seq: _SeqCache, ids: torch.Tensor, hidden: torch.Tensor, start_pos: int, keep: int
    ):
        """One draft step over ``q`` queries (ids [1, q], hidden [1, q, H]) at positions start_pos..,
        each attending to the sequence's cache and, causally, to the queries before it; the first
        ``keep`` queries' keys and values are appended to the cache. Returns the step's output."""
        q = ids.shape[1]
        positions = torch.arange(start_pos, start_pos + q)[None]
        past = seq.keys.shape[1]
        mask = torch.ones(q, past + q, dtype=torch.bool)
        mask[:, past:] = torch.ones(q, q, dtype=torch.bool).tril()

        def attn(qs, k, v):
            keys = torch.cat([seq.keys[None], k], dim=2)
            vals = torch.cat([seq.values[None], v], dim=2)
            return attend(qs, keys, vals, mask)

        out = self.draft.step(ids, hidden, positions, attn)
        seq.keys = torch.cat([seq.keys, out.key[0, :, :keep]], dim=1)
        seq.values = torch.cat([seq.values, out.value[0, :, :keep]], dim=1)
        return out

    @torch.no_grad()
    def extend(self, b: int, features: torch.Tensor, next_tokens: torch.Tensor, start_pos: int) -> None:
        """features [m, feature width] (the hooks' aux states) at positions start_pos.., next_tokens [m]."""
        seq = self._seqs[b]
        m = features.shape[0]
        out = self._causal_step(seq, next_tokens[None], self.draft.combine(features[None]), start_pos, m)
        seq.last_hidden = out.hidden[0, -1]
        seq.last_logp = self._to_target_logp(out.logits[0, -1:])[0]

    @torch.no_grad()
    def propose(self, b: int, root_pos: int, depth: int, top_k: int, num_draft_tokens: int) -> DraftTree:
        """An EAGLE-2 tree below the root token at ``root_pos`` (the last emitted token)."""
        seq = self._seqs[b]
        if seq.last_logp is None:
            raise RuntimeError("extend() must run before propose()")
        nodes = _Nodes()
        seq.tree_k, seq.tree_v = [], []

        def expand(parents: list[int]) -> torch.Tensor:
            todo = [p for p in parents if p >= 0]
            if todo:
                self._expand_nodes(seq, todo, nodes, root_pos)
            logp = torch.stack([seq.last_logp if p < 0 else nodes.logp[p] for p in parents])
            for p, row in zip(parents, logp):  # build_tree numbers each parent's top_k children in order
                nodes.tokens.extend(row.topk(top_k).indices.tolist())
                nodes.parents.extend([p] * top_k)
                nodes.depth.extend([1 if p < 0 else nodes.depth[p] + 1] * top_k)
            return logp

        tree = build_tree(expand, depth, top_k, num_draft_tokens)
        seq.tree_k, seq.tree_v = [], []
        return tree

    def _expand_nodes(self, seq: _SeqCache, todo: list[int], nodes: _Nodes, root_pos: int) -> None:
        """Run the draft layer on tree nodes, batched as queries of one sequence."""
        n = len(todo)
        parent_hidden = torch.stack(
            [seq.last_hidden if nodes.parents[u] < 0 else nodes.hidden[nodes.parents[u]] for u in todo]
        )
        tokens = torch.tensor([nodes.tokens[u] for u in todo])
        positions = torch.tensor([root_pos - 1 + nodes.depth[u] for u in todo])
        past, n_tree = seq.keys.shape[1], len(seq.tree_k)
        mask = torch.zeros(n, past + n_tree + n, dtype=torch.bool)  # [queries, cache + tree + new]
        mask[:, :past] = True
        for i, u in enumerate(todo):
            a = nodes.parents[u]
            while a >= 0:  # the tree entries of u's ancestors
                mask[i, past + nodes.slot[a]] = True
                a = nodes.parents[a]
            mask[i, past + n_tree + i] = True

        def attn(q, k, v):
            tk = torch.stack(seq.tree_k, dim=1)[None] if n_tree else k[:, :, :0]
            tv = torch.stack(seq.tree_v, dim=1)[None] if n_tree else v[:, :, :0]
            keys = torch.cat([seq.keys[None], tk, k], dim=2)
            vals = torch.cat([seq.values[None], tv, v], dim=2)
            return attend(q, keys, vals, mask)

        depths = {nodes.depth[u] for u in todo}  # the tree grows a level at a time
        if len(depths) != 1:
            raise RuntimeError(f"expanding nodes of several depths at once: {sorted(depths)}")
        out = self.draft.step(tokens[None], parent_hidden[None], positions[None], attn, depth=depths.pop())
        logp = self._to_target_logp(out.logits[0])
        for i, u in enumerate(todo):
            nodes.slot[u] = len(seq.tree_k)
            seq.tree_k.append(out.key[0, :, i])
            seq.tree_v.append(out.value[0, :, i])
            nodes.hidden[u] = out.hidden[0, i]
            nodes.logp[u] = logp[i]
