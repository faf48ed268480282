"""Sampling through the engine itself: the first three emitted tokens follow the target's exact
distribution, for a branching tree of depth 3 (verified one sequence at a time) and for chains
(verified for the whole batch by the batched kernel); and the test has the power to see a broken
recovered-token draw."""

from __future__ import annotations

import itertools
from typing import ClassVar

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import serving.engine
import serving.verify
from serving.engine import SpeculativeEngine
from serving.shape import TreeShape
from serving.tree import DraftTree
from serving.verify import target_probs
from tests.helpers import chi2_pvalue

VOCAB, TEMPERATURE, SAMPLES = 8, 1.0, 6000
CHAIN_SAMPLE = serving.verify.chain_rejection_sample  # the real batched sampler
PROMPT = [1, 5, 2, 7]


@pytest.fixture(scope="module")
def target():
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg).double().eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(60.0)  # peaked enough that drafts are often accepted
    return model


@pytest.fixture(scope="module")
def exact(target):
    """p(x1, x2, x3 | PROMPT) at TEMPERATURE, from the target's own conditionals: [V, V, V]."""
    with torch.no_grad():

        def probs(prefixes):
            logits = target(torch.tensor([PROMPT + list(p) for p in prefixes])).logits[:, -1]
            return target_probs(logits, TEMPERATURE)

        p1 = probs([()])[0]  # [V]
        p2 = probs([(a,) for a in range(VOCAB)])  # [V, V]
        p3 = probs(list(itertools.product(range(VOCAB), repeat=2))).view(VOCAB, VOCAB, VOCAB)
    return p1[:, None, None] * p2[:, :, None] * p3


def _greedy(target, n: int) -> list[int]:
    ids = target.generate(torch.tensor([PROMPT]), max_new_tokens=n, do_sample=False, pad_token_id=0)
    return ids[0, len(PROMPT) :].tolist()


class FixedDrafter:
    """Proposes the same tree below every root (a test double: any proposal must stay lossless)."""

    feature_layers: ClassVar[list[int]] = [1]

    def __init__(self, tree: DraftTree):
        self.tree = tree

    def reset(self, batch_size):
        pass

    def drop(self, keep):
        pass

    def extend(self, b, features, next_tokens, start_pos):
        pass

    def propose(self, b, root_pos, depth, top_k, num_draft_tokens):
        return self.tree


def _tree(tokens: list[int], parents: list[int]) -> DraftTree:
    depth: list[int] = []
    for p in parents:
        depth.append(1 if p < 0 else depth[p] + 1)
    n = len(tokens)
    return DraftTree(
        tokens=torch.tensor(tokens),
        parents=torch.tensor(parents),
        depth=torch.tensor(depth),
        logp=-torch.arange(1, n + 1, dtype=torch.float64) / 10,  # children tried in node order
    )


def _branching(target) -> DraftTree:
    """Depth 3, with branches at the root and at node 0: 0 <- 2 <- 4, 0 <- 3, root <- 1 <- 5."""
    g = _greedy(target, 3)
    other = [(t + 1) % VOCAB for t in g]
    return _tree([g[0], other[0], g[1], other[1], g[2], g[1]], [-1, -1, 0, 0, 2, 1])


def _chain(target) -> DraftTree:
    return _tree(_greedy(target, 3), [-1, 0, 1])


def _sample(target, tree: DraftTree | None, shape: TreeShape, seed: int, drafter=None, min_accepted=0.2):
    """SAMPLES independent draws of the first three tokens through the engine: [SAMPLES, 3]."""
    engine = SpeculativeEngine(target, drafter or FixedDrafter(tree))
    try:
        out = engine.generate([PROMPT] * SAMPLES, 3, shape=shape, temperature=TEMPERATURE, seed=seed)
    finally:
        engine.close()
    assert out.stats.accepted > min_accepted * SAMPLES  # the drafts were accepted often enough
    return torch.tensor(out.tokens)


def _pvalues(samples: torch.Tensor, exact: torch.Tensor) -> dict[str, float]:
    n = len(samples)
    joint = torch.zeros(VOCAB, VOCAB, VOCAB, dtype=torch.float64)
    joint.index_put_(tuple(samples.T), torch.ones(n, dtype=torch.float64), accumulate=True)
    return {
        "position 1": chi2_pvalue(joint.sum((1, 2)), n * exact.sum((1, 2))),
        "position 2 given 1": chi2_pvalue(joint.sum(2).flatten(), n * exact.sum(2).flatten()),
        "positions 1-3": chi2_pvalue(joint.flatten(), n * exact.flatten()),
    }


@pytest.mark.parametrize("kind", ["branching tree", "chain"])
def test_sampled_tokens_follow_the_target_through_the_engine(target, exact, kind):
    tree = _branching(target) if kind == "branching tree" else _chain(target)
    shape = TreeShape.tree(3, 2, 6) if kind == "branching tree" else TreeShape.chain(3)
    p = _pvalues(_sample(target, tree, shape, seed=1), exact)
    assert min(p.values()) > 1e-3, p


def _broken_verify_sampling(tree, probs, generator=None):
    """verify_sampling with the residual never updated: a rejected token can be drawn again."""
    node, accepted, tokens = -1, [], []
    while True:
        kids = tree.children(node)
        row = probs[node + 1]
        chosen = next(
            (c for c in kids if torch.rand((), generator=generator) < row[int(tree.tokens[c])]), None
        )
        if chosen is None:
            tokens.append(int(torch.multinomial(row, 1, generator=generator)))
            return serving.verify.Verdict(accepted, tokens, bonus=not kids)
        accepted.append(chosen)
        tokens.append(int(tree.tokens[chosen]))
        node = chosen


def _broken_chain_sample(draft_tokens, target_probs, uniforms, exponentials, use_triton=None):
    """The chain sampler with the recovered token drawn uniformly from the other tokens, not from the
    residual of the target's distribution."""
    out = CHAIN_SAMPLE(draft_tokens, target_probs, uniforms, exponentials)
    b, k = draft_tokens.shape
    for row in range(b):
        n = next((i for i in range(k) if out[row, i] != draft_tokens[row, i]), k)
        if n < k:  # rejected at n
            flat = 1.0 / exponentials[row, n]
            flat[draft_tokens[row, n]] = 0.0
            out[row, n] = int(flat.argmax())
    return out


@pytest.mark.parametrize("kind", ["branching tree", "chain"])
def test_the_test_sees_a_broken_recovered_token(target, exact, kind, monkeypatch):
    if kind == "branching tree":
        monkeypatch.setattr(serving.engine, "verify_sampling", _broken_verify_sampling)
        tree, shape = _branching(target), TreeShape.tree(3, 2, 6)
    else:
        monkeypatch.setattr(serving.verify, "chain_rejection_sample", _broken_chain_sample)
        tree, shape = _chain(target), TreeShape.chain(3)
    p = _pvalues(_sample(target, tree, shape, seed=2), exact)
    assert min(p.values()) < 1e-6, p


def test_an_eagle1_head_samples_the_targets_distribution_through_the_engine(target, exact):
    """A real EAGLE-1 head (random weights, the target's embedding and LM head) drafting EAGLE-2
    trees from the target's last hidden state: sampled tokens still follow the target."""
    from draft_models.eagle import EagleConfig, EagleDraft
    from serving.drafters.eagle import EagleDrafter

    torch.manual_seed(3)
    draft = EagleDraft(EagleConfig.from_target(target.config)).double()
    draft.load_target_embedding(target.get_input_embeddings().weight.detach())
    draft.load_target_head(target.get_output_embeddings().weight.detach())
    shape = TreeShape.tree(3, 2, 6)
    p = _pvalues(_sample(target, None, shape, seed=4, drafter=EagleDrafter(draft), min_accepted=0.05), exact)
    assert min(p.values()) > 1e-3, p


def test_an_mtp_head_samples_the_targets_distribution_through_the_engine(target, exact):
    """A real MTP head (D = 2, random modules, the target's embedding, final norm and LM head) reading
    the last layer's output before the final norm, drafting EAGLE-2 trees: sampled tokens still
    follow the target."""
    from draft_models.mtp import MtpConfig, MtpDraft
    from serving.drafters.eagle import EagleDrafter

    torch.manual_seed(5)
    layers = target.config.num_hidden_layers
    draft = MtpDraft(MtpConfig.from_target(target.config, 0, [layers], num_modules=2)).double()
    draft.load_target_embedding(target.get_input_embeddings().weight.detach())
    draft.load_target_head(target.get_output_embeddings().weight.detach(), target.model.norm.weight.detach())
    shape = TreeShape.tree(3, 2, 6)
    p = _pvalues(_sample(target, None, shape, seed=6, drafter=EagleDrafter(draft), min_accepted=0.05), exact)
    assert min(p.values()) > 1e-3, p


def test_a_parallel_drafting_head_samples_the_targets_distribution_through_the_engine(target, exact):
    """A P-EAGLE head, briefly trained on the target's own samples so that its drafts are accepted,
    drafting a chain of 3 in one forward from its mask slots: sampled tokens still follow the target."""
    from draft_models.aux_hooks import AuxHiddenHooks
    from draft_models.peagle import ParallelEagle3Config, ParallelEagle3Draft
    from serving.drafters.parallel import ParallelDrafter
    from specforge.capture import CapturedBatch
    from specforge.train.ttt import ttt_forward

    torch.manual_seed(7)
    cfg = ParallelEagle3Config.from_target(target.config, VOCAB, [0, 1, 2], mask_token_id=3)
    draft = ParallelEagle3Draft(cfg).double()
    draft.load_target_embedding(target.get_input_embeddings().weight.detach())
    draft.load_target_head(target.get_output_embeddings().weight.detach(), target.model.norm.weight.detach())
    with torch.no_grad():
        ids = target.generate(
            torch.tensor([PROMPT] * 64), do_sample=True, max_new_tokens=8, top_k=0, pad_token_id=0
        )
        hooks = AuxHiddenHooks(target, cfg.aux_layer_ids)
        logits = target(ids).logits
        aux = hooks.aux()
        hooks.close()
    ones = torch.ones_like(ids)
    batch = CapturedBatch(ids, ones, ones.clone(), aux, aux[..., -cfg.hidden_size :], logits)
    opt = torch.optim.Adam([p for p in draft.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        ttt_forward(draft, batch, steps=3).loss.backward()
        opt.step()
    drafter = ParallelDrafter(draft.eval(), max_depth=3)
    p = _pvalues(_sample(target, None, TreeShape.chain(3), seed=8, drafter=drafter, min_accepted=0.3), exact)
    assert min(p.values()) > 1e-3, p
