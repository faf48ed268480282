"""Lossless verification of a draft tree against the target (pure functions, one sequence).

Terms (as vLLM uses them):

* *accepted* tokens: draft tokens the target agrees with, along one root-to-node path;
* *recovered* token: the token the target emits where it rejects every child of a node;
* *bonus* token: the token the target emits after the last node of an accepted path when that node
  has no children left to try.

Every verification step emits the accepted tokens plus exactly one recovered or bonus token.

Greedy (:func:`verify_greedy`): a child is accepted when its token is the target's argmax at its
parent; the longest such path wins (children tried most probable first; at most one child can
match).

Sampling over a batch of chains (:func:`verify_chains_sampling`): the same test, for every
sequence's chain at once, in :func:`serving.kernels.rejection.chain_rejection_sample` (Triton where
it runs, else torch).

Sampling (:func:`verify_sampling`): multi-candidate recursive rejection sampling (SpecInfer). At a
node with target distribution ``q`` (temperature/top-p already applied), each child ``x`` in turn
is accepted with probability ``min(1, r(x) / p(x))``, where ``r`` is the current residual (first
``q``) and ``p`` the distribution the child was proposed from. On rejection,
``r <- norm(max(0, r - p))``. When every child is rejected, the recovered token is drawn from
``r``. Our trees pick children deterministically (top-k), so ``p`` is a point mass on ``x``: the
acceptance probability is ``r(x)``, and rejection removes ``x`` from ``r``. The emitted token
therefore follows ``q`` exactly, at every depth.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from serving.kernels.rejection import chain_rejection_sample
from serving.tree import DraftTree


@dataclass
class Verdict:
    accepted_nodes: list[int]  # node indices along the accepted path, root excluded
    tokens: list[int]  # accepted draft tokens, then the recovered or bonus token
    bonus: bool  # True: the last token is a bonus token (the path ended at a leaf)

    @property
    def num_accepted(self) -> int:
        return len(self.accepted_nodes)


def _row(node: int) -> int:
    """Row of the verification logits for ``node``: row 0 is the root, row i + 1 is node i."""
    return node + 1


def verify_greedy(tree: DraftTree, target_logits: torch.Tensor) -> Verdict:
    """target_logits: [n + 1, vocab], row 0 at the root, row i + 1 at node i."""
    node, accepted, tokens = -1, [], []
    while True:
        want = int(target_logits[_row(node)].argmax())
        kids = tree.children(node)
        match = next((c for c in kids if int(tree.tokens[c]) == want), None)
        if match is None:
            tokens.append(want)
            return Verdict(accepted, tokens, bonus=not kids)
        accepted.append(match)
        tokens.append(want)
        node = match


def target_probs(logits: torch.Tensor, temperature: float, top_p: float = 1.0) -> torch.Tensor:
    """Softmax of ``logits / temperature`` restricted to the top-p nucleus, renormalised."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        cum = sorted_p.cumsum(-1)
        drop = cum - sorted_p > top_p  # keep the smallest prefix whose mass reaches top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def verify_sampling(
    tree: DraftTree, probs: torch.Tensor, generator: torch.Generator | None = None
) -> Verdict:
    """probs: [n + 1, vocab] target distributions (rows as in :func:`verify_greedy`)."""
    node, accepted, tokens = -1, [], []
    while True:
        residual = probs[_row(node)].clone()
        kids = tree.children(node)
        chosen = None
        for c in kids:
            x = int(tree.tokens[c])
            # p is a point mass on x: accept with probability min(1, r(x) / 1) = r(x).
            u = torch.rand((), generator=generator)
            if u < residual[x]:
                chosen = c
                break
            residual[x] = 0.0  # r <- norm(max(0, r - p))
            total = residual.sum()
            if total <= 0:
                break
            residual /= total
        if chosen is None:
            if residual.sum() <= 0:  # only through rounding: every candidate held all the mass
                residual = probs[_row(node)]
            tok = int(torch.multinomial(residual, 1, generator=generator))
            tokens.append(tok)
            return Verdict(accepted, tokens, bonus=not kids)
        accepted.append(chosen)
        tokens.append(int(tree.tokens[chosen]))
        node = chosen


def is_chain(tree: DraftTree) -> bool:
    """Whether the nodes form one chain below the root, numbered in order (node i's parent is i - 1)."""
    return bool(torch.equal(tree.parents, torch.arange(-1, tree.size - 1)))


def verify_chains_sampling(
    trees: list[DraftTree], probs: torch.Tensor, generator: torch.Generator | None = None
) -> list[Verdict]:
    """Rejection sampling of B chains of K nodes each (:func:`is_chain`) in one batched call.

    probs: [B, K + 1, vocab] target distributions, rows as in :func:`verify_greedy`. The randomness
    (a uniform per draft token, the exponentials of the race that draws recovered and bonus tokens)
    comes from ``generator``; the emitted tokens follow the target's distribution, as with
    :func:`verify_sampling`."""
    b, k = len(trees), trees[0].size
    drafts = torch.stack([t.tokens for t in trees])  # [B, K]
    uniforms = torch.rand(b, k, generator=generator)  # [B, K]
    exponentials = torch.empty(b, k + 1, probs.shape[-1]).exponential_(
        generator=generator
    )  # [B, K + 1, vocab]
    out = chain_rejection_sample(drafts, probs.float(), uniforms, exponentials).tolist()  # [B, K + 1]
    verdicts = []
    for row, draft in zip(out, drafts.tolist()):
        n = next((i for i in range(k) if row[i] != draft[i]), k)  # accepted draft tokens
        verdicts.append(Verdict(accepted_nodes=list(range(n)), tokens=row[: n + 1], bonus=n == k))
    return verdicts
