"""EAGLE-2 dynamic draft trees, and the tensors a target needs to verify one.

Contract
--------
A tree hangs below a *root*: the last token the target has emitted, which sits at position
``root_pos`` and is not itself verified. Nodes are numbered ``0..n-1`` in the order they were
added (parents always before children). :func:`build_tree` grows the tree the EAGLE-2 way:

1. the root's top-``top_k`` draft tokens are the first frontier;
2. for ``depth - 1`` more steps, the ``top_k`` frontier nodes with the highest cumulative draft
   log-probability are expanded, each by its ``top_k`` most probable children;
3. of all nodes grown, the ``num_draft_tokens`` with the highest cumulative log-probability are
   kept (a child's cumulative log-probability never exceeds its parent's, so the kept set contains
   every kept node's ancestors; ties are broken towards earlier nodes).

A chain is a tree with ``top_k = 1``. :func:`tree_tensors` returns the verification inputs: the
ancestor mask (``mask[i, j]`` = node ``j`` is node ``i`` or one of its ancestors), positions
(``root_pos + depth``), and ``paths``: one row per leaf with the node indices from the root's
child down to the leaf, padded with -1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# expand(parent_nodes) -> [len(parent_nodes), vocab] log-probs of each listed node's children.
# parent_nodes are node indices (-1 = the root). The top_k children of parent_nodes[i] become nodes
# n + i * top_k + j (n = nodes so far, j = rank), so a drafter can follow the tree as it grows.
ExpandFn = Callable[[list[int]], torch.Tensor]


@dataclass
class DraftTree:
    tokens: torch.Tensor  # [n] int64 target-vocabulary token of each node
    parents: torch.Tensor  # [n] int64 parent node index, -1 for children of the root
    depth: torch.Tensor  # [n] int64 1 for children of the root
    logp: torch.Tensor  # [n] float cumulative draft log-probability

    @property
    def size(self) -> int:
        return int(self.tokens.numel())

    def children(self, node: int) -> list[int]:
        """Children of ``node`` (-1 = root), most probable first."""
        idx = (self.parents == node).nonzero().flatten().tolist()
        return sorted(idx, key=lambda i: (-float(self.logp[i]), i))


def build_tree(expand: ExpandFn, depth: int, top_k: int, num_draft_tokens: int) -> DraftTree:
    """Grow an EAGLE-2 tree (see the module docstring); ``expand`` runs the draft."""
    if depth < 1 or top_k < 1 or num_draft_tokens < 1:
        raise ValueError("depth, top_k and num_draft_tokens must be >= 1")
    tokens: list[int] = []
    parents: list[int] = []
    depths: list[int] = []
    logps: list[float] = []
    frontier = [-1]
    frontier_logp = [0.0]
    for d in range(1, depth + 1):
        logp = expand(frontier)  # [len(frontier), vocab]
        top_lp, top_tok = logp.topk(top_k, dim=-1)  # [len(frontier), top_k]
        new_nodes = []
        for fi, parent in enumerate(frontier):
            for j in range(top_k):
                tokens.append(int(top_tok[fi, j]))
                parents.append(parent)
                depths.append(d)
                logps.append(frontier_logp[fi] + float(top_lp[fi, j]))
                new_nodes.append(len(tokens) - 1)
        # Expand the top_k most probable new nodes next (EAGLE-2's frontier).
        new_nodes.sort(key=lambda i: (-logps[i], i))
        frontier = new_nodes[:top_k]
        frontier_logp = [logps[i] for i in frontier]
    order = sorted(range(len(tokens)), key=lambda i: (-logps[i], depths[i], i))[:num_draft_tokens]
    keep = sorted(order)  # keep creation order: parents before children
    remap = {old: new for new, old in enumerate(keep)}
    remap[-1] = -1
    return DraftTree(
        tokens=torch.tensor([tokens[i] for i in keep], dtype=torch.long),
        parents=torch.tensor([remap[parents[i]] for i in keep], dtype=torch.long),
        depth=torch.tensor([depths[i] for i in keep], dtype=torch.long),
        logp=torch.tensor([logps[i] for i in keep]),
    )


def ancestor_mask(parents: torch.Tensor) -> torch.Tensor:
    """[n, n] bool: mask[i, j] is True when node j is node i or one of its ancestors."""
    n = parents.numel()
    mask = torch.eye(n, dtype=torch.bool)
    for i in range(n):
        p = int(parents[i])
        if p >= 0:
            mask[i] |= mask[p]
    return mask


def tree_paths(parents: torch.Tensor) -> torch.Tensor:
    """[num_leaves, max_depth] node indices from the root's child to each leaf, padded with -1."""
    n = parents.numel()
    is_parent = torch.zeros(n, dtype=torch.bool)
    valid = parents[parents >= 0]
    is_parent[valid] = True
    paths = []
    for leaf in (~is_parent).nonzero().flatten().tolist():
        path, node = [], leaf
        while node >= 0:
            path.append(node)
            node = int(parents[node])
        paths.append(path[::-1])
    width = max((len(p) for p in paths), default=0)
    return torch.tensor([p + [-1] * (width - len(p)) for p in paths], dtype=torch.long).reshape(
        len(paths), width
    )


@dataclass
class TreeTensors:
    mask: torch.Tensor  # [n, n] bool ancestor-or-self mask among the tree's nodes
    positions: torch.Tensor  # [n] int64 absolute positions: root_pos + depth
    paths: torch.Tensor  # [num_leaves, max_depth] node indices root -> leaf, -1 padded


def tree_tensors(tree: DraftTree, root_pos: int) -> TreeTensors:
    return TreeTensors(
        mask=ancestor_mask(tree.parents),
        positions=tree.depth + root_pos,
        paths=tree_paths(tree.parents),
    )
