"""Draft trees (EAGLE-2), their masks/positions/paths, and lossless verification."""

from __future__ import annotations

import math

import pytest
import torch

from serving.tree import DraftTree, ancestor_mask, build_tree, tree_paths, tree_tensors
from serving.verify import target_probs, verify_greedy, verify_sampling
from tests.helpers import chi2_pvalue


def test_build_tree_hand_checked():
    # Root prefers 0 (0.6) then 1 (0.3); after 0: 2 (0.5), 3 (0.4); after 1: 4 (0.9), 5 (0.05).
    table = {
        -1: [0.6, 0.3, 0.04, 0.03, 0.02, 0.01],
        0: [0.02, 0.02, 0.5, 0.4, 0.03, 0.03],
        1: [0.01, 0.01, 0.01, 0.02, 0.9, 0.05],
    }
    node_tokens: list[int] = []

    def expand(parents):
        logp = torch.log(torch.tensor([table[-1 if p == -1 else node_tokens[p]] for p in parents]))
        for row in logp:  # build_tree numbers each parent's top_k children in order
            node_tokens.extend(row.topk(2).indices.tolist())
        return logp

    tree = build_tree(expand, depth=2, top_k=2, num_draft_tokens=4)
    # Candidates: 0 (.6), 1 (.3), 0->2 (.30), 0->3 (.24), 1->4 (.27), 1->5 (.015); keep the top 4.
    assert tree.tokens.tolist() == [0, 1, 2, 4]
    assert tree.parents.tolist() == [-1, -1, 0, 1]
    assert tree.depth.tolist() == [1, 1, 2, 2]
    assert torch.allclose(tree.logp.exp(), torch.tensor([0.6, 0.3, 0.30, 0.27]))


def test_chain_is_a_tree_with_top_k_1():
    def expand(parents):
        return torch.log_softmax(torch.arange(5.0).flip(0), -1).expand(len(parents), 5)

    tree = build_tree(expand, depth=4, top_k=1, num_draft_tokens=4)
    assert tree.parents.tolist() == [-1, 0, 1, 2] and tree.depth.tolist() == [1, 2, 3, 4]


def test_mask_positions_paths_match_hand_built_tree():
    #        root
    #       /    \
    #      0      1
    #     / \      \
    #    2   3      4
    #    |
    #    5
    parents = torch.tensor([-1, -1, 0, 0, 1, 2])
    tree = DraftTree(
        tokens=torch.tensor([10, 11, 12, 13, 14, 15]),
        parents=parents,
        depth=torch.tensor([1, 1, 2, 2, 2, 3]),
        logp=torch.zeros(6),
    )
    t = tree_tensors(tree, root_pos=7)
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [0, 1, 0, 0, 0, 0],
            [1, 0, 1, 0, 0, 0],
            [1, 0, 0, 1, 0, 0],
            [0, 1, 0, 0, 1, 0],
            [1, 0, 1, 0, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(t.mask, expected)
    assert t.positions.tolist() == [8, 8, 9, 9, 9, 10]
    assert t.paths.tolist() == [[0, 3, -1], [1, 4, -1], [0, 2, 5]]
    # The anchors' construction: mask[i+1] |= mask[parent[i]] (with the root as index 0).
    n = 6
    m = torch.eye(n + 1, dtype=torch.bool)
    m[:, 0] = True
    for i in range(n):
        m[i + 1] |= m[int(parents[i]) + 1]
    assert torch.equal(m[1:, 1:], t.mask) and (m.sum(1) - 1)[1:].tolist() == (t.positions - 7).tolist()
    assert torch.equal(ancestor_mask(torch.tensor([-1])), torch.ones(1, 1, dtype=torch.bool))
    assert tree_paths(torch.tensor([-1, 0, 1])).tolist() == [[0, 1, 2]]


def _tree6() -> DraftTree:
    return DraftTree(
        tokens=torch.tensor([1, 2, 3, 4, 0, 2]),
        parents=torch.tensor([-1, -1, 0, 0, 1, 2]),
        depth=torch.tensor([1, 1, 2, 2, 2, 3]),
        logp=torch.tensor([-0.1, -0.2, -0.3, -0.4, -0.5, -0.6]),
    )


def test_verify_greedy_longest_path_and_bonus():
    tree = _tree6()
    logits = torch.zeros(7, 5)
    # root wants 1 (node 0); node 0 wants 3 (node 2); node 2 wants 2 (node 5); node 5 (leaf) wants 4.
    for row, tok in [(0, 1), (1, 3), (3, 2), (6, 4)]:
        logits[row, tok] = 5.0
    v = verify_greedy(tree, logits)
    assert v.accepted_nodes == [0, 2, 5] and v.tokens == [1, 3, 2, 4] and v.bonus
    # Root wants 2 (node 1); node 1 wants 3, but its only child is token 0: recovered token 3.
    logits = torch.zeros(7, 5)
    logits[0, 2] = 5.0
    logits[2, 3] = 5.0
    v = verify_greedy(tree, logits)
    assert v.accepted_nodes == [1] and v.tokens == [2, 3] and not v.bonus
    # Nothing matches at the root: just the recovered token.
    logits = torch.zeros(7, 5)
    logits[0, 4] = 5.0
    assert verify_greedy(tree, logits).tokens == [4]


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_tree_rejection_sampling_reproduces_the_target_distribution(temperature, top_p):
    """Chi-squared tests, as vLLM's rejection-sampler tests do: first token ~ q_root, and the token
    after an accepted child ~ q_child."""
    g = torch.Generator().manual_seed(0)
    vocab = 5
    tree = _tree6()
    logits = torch.randn(7, vocab, generator=g)
    logits[0] = torch.tensor([1.0, 1.2, 0.8, 0.3, -0.5])  # node 0 (token 1) is the root's favourite
    logits[1] = torch.tensor([0.2, 0.1, 0.5, 1.0, 0.6])
    probs = target_probs(logits, temperature, top_p)
    trials = 20_000
    first = torch.zeros(vocab)
    after_node0 = torch.zeros(vocab)
    accepted_any = 0
    for _ in range(trials):
        v = verify_sampling(tree, probs, g)
        first[v.tokens[0]] += 1
        if v.accepted_nodes[:1] == [0]:
            after_node0[v.tokens[1]] += 1
        accepted_any += v.num_accepted > 0
    assert chi2_pvalue(first, probs[0] * first.sum()) > 1e-3
    assert chi2_pvalue(after_node0, probs[1] * after_node0.sum()) > 1e-3
    # Acceptance is real: node 0's token is accepted about q_root(token 1) of the time.
    assert abs(after_node0.sum() / trials - probs[0, 1]) < 0.02
    assert accepted_any > 0


def test_target_probs_top_p():
    p = target_probs(torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])), 1.0, top_p=0.8)
    assert torch.allclose(p, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    assert math.isclose(float(target_probs(torch.zeros(1, 4), 2.0).sum()), 1.0, rel_tol=1e-6)
