"""The reference engine: greedy output identical to plain decoding, across batch sizes, tree shapes,
prompt lengths and EOS inside a tree; KV compaction; the EAGLE-3 drafter."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from transformers import DynamicCache

from serving.drafters.eagle import EagleDrafter
from serving.engine import SpeculativeEngine
from serving.shape import TreeShape
from serving.tree import DraftTree
from tests.helpers import small_eagle3, small_eagle3_config


@pytest.fixture(scope="module")
def target64(micro_target):
    """The micro target in float64, so batched and single-token forwards agree far below any tie."""
    return copy.deepcopy(micro_target.model).double()


@pytest.fixture(scope="module")
def prompts(micro_target):
    tok = micro_target.tokenizer
    texts = [
        "def add(a, b):\n    return",
        "import os\n\nclass Path:\n    def __init__(self",
        "x = [",
        "while True:\n",
    ]
    return [tok(t)["input_ids"] for t in texts]


def reference(model, prompts, n, eos=None):
    out = []
    for p in prompts:
        ids = model.generate(
            torch.tensor([p]), max_new_tokens=n, do_sample=False, eos_token_id=eos, pad_token_id=0
        )
        out.append(ids[0, len(p) :].tolist())
    return out


class OracleDrafter:
    """Proposes the reference continuation with random corruption and wrong siblings (test double)."""

    def __init__(self, full: list[list[int]], seed: int = 0):
        self.full, self.rng = full, random.Random(seed)
        self.feature_layers = [2, 4, 5]

    def reset(self, batch_size):
        self.rows = list(range(batch_size))

    def drop(self, keep):
        self.rows = [self.rows[i] for i in keep]

    def extend(self, b, features, next_tokens, start_pos):
        assert features.shape[0] == next_tokens.shape[0]

    def propose(self, b, root_pos, depth, top_k, num_draft_tokens):
        truth = self.full[self.rows[b]][root_pos + 1 : root_pos + 1 + depth]
        tokens, parents, depths, parent = [], [], [], -1
        for d, tok in enumerate(truth):
            wrong = (tok + 1 + self.rng.randrange(50)) % 400
            good = tok if self.rng.random() < 0.8 else wrong
            kids = [good] + ([wrong if good == tok else tok] if top_k > 1 else [])
            for k in kids:
                tokens.append(k)
                parents.append(parent)
                depths.append(d + 1)
            parent = len(tokens) - len(kids)  # continue below the first child
        n = min(num_draft_tokens, len(tokens))
        return DraftTree(
            torch.tensor(tokens[:n]), torch.tensor(parents[:n]), torch.tensor(depths[:n]), torch.zeros(n)
        )


@pytest.mark.parametrize("batch", [1, 4])
def test_plain_decoding_matches_hf_generate(target64, prompts, batch):
    ref = reference(target64, prompts[:batch], 20)
    out = SpeculativeEngine(target64).generate(prompts[:batch], 20)
    assert out.tokens == ref
    assert out.stats.tau == 1.0


@pytest.mark.parametrize(
    "shape", [TreeShape.chain(1), TreeShape.chain(4), TreeShape(depth=4, top_k=2, num_draft_tokens=7)]
)
@pytest.mark.parametrize("batch", [1, 3, 4])
def test_oracle_trees_are_lossless_and_accept(target64, prompts, shape, batch):
    n = 24
    ref = reference(target64, prompts[:batch], n)
    full = [p + r for p, r in zip(prompts[:batch], ref)]
    out = SpeculativeEngine(target64, OracleDrafter(full)).generate(prompts[:batch], n, shape)
    assert out.tokens == ref
    if shape.num_draft_tokens > 1:
        assert out.stats.tau > 1.5 and out.stats.accepted > 0


def test_eos_inside_a_tree(target64, prompts):
    ref = reference(target64, prompts[:1], 24)[0]
    eos = ref[6]  # a token the greedy continuation emits mid-way
    cut = ref[: ref.index(eos) + 1]
    assert reference(target64, prompts[:1], 24, eos=eos)[0] == cut
    full = [prompts[0] + ref]
    for shape in (TreeShape.chain(5), TreeShape(depth=5, top_k=2, num_draft_tokens=9)):
        engine = SpeculativeEngine(target64, OracleDrafter(full), eos_token_id=eos)
        assert engine.generate(prompts[:1], 24, shape).tokens[0] == cut
    # Mixed batch: the other sequences go on after one stops.
    many = prompts[:3]
    refs = reference(target64, many, 16, eos=eos)
    full = [p + r for p, r in zip(many, reference(target64, many, 16))]
    out = SpeculativeEngine(target64, OracleDrafter(full), eos_token_id=eos).generate(
        many, 16, TreeShape.chain(3)
    )
    assert out.tokens == refs


@pytest.mark.parametrize("shape", [TreeShape.chain(3), TreeShape(depth=3, top_k=3, num_draft_tokens=8)])
def test_eagle3_drafter_is_lossless(target64, micro_target, prompts, shape):
    cfg = small_eagle3_config(64, micro_target.vocab_size, 128, head_dim=32)
    draft = small_eagle3(cfg, list(range(micro_target.vocab_size))).double()
    draft.load_target_embedding(target64.get_input_embeddings().weight)
    ref = reference(target64, prompts, 16)
    out = SpeculativeEngine(target64, EagleDrafter(draft)).generate(prompts, 16, shape)
    assert out.tokens == ref
    assert out.stats.drafted > 0


@pytest.mark.parametrize("shape", [TreeShape.chain(3), TreeShape(depth=3, top_k=3, num_draft_tokens=8)])
def test_eagle1_drafter_is_lossless(target64, prompts, shape):
    """EAGLE-1 (the target's last hidden state as its feature, the target's LM head) as a chain and
    with EAGLE-2 dynamic trees: greedy output equals plain decoding."""
    from draft_models.eagle import EagleConfig, EagleDraft

    torch.manual_seed(0)
    draft = EagleDraft(EagleConfig.from_target(target64.config)).double()
    draft.load_target_embedding(target64.get_input_embeddings().weight.detach())
    draft.load_target_head(target64.get_output_embeddings().weight.detach())
    ref = reference(target64, prompts, 16)
    out = SpeculativeEngine(target64, EagleDrafter(draft)).generate(prompts, 16, shape)
    assert out.tokens == ref
    assert out.stats.drafted > 0


@pytest.mark.parametrize("k", [1, 3])
def test_parallel_drafter_is_lossless(target64, micro_target, prompts, k):
    from draft_models.peagle import ParallelEagle3Config, ParallelEagle3Draft
    from serving.drafters.parallel import ParallelDrafter, make_drafter
    from specforge.vocab import build_draft_vocab

    torch.manual_seed(0)
    cfg = ParallelEagle3Config.from_target(target64.config, micro_target.vocab_size, [1, 2, 3])
    draft = ParallelEagle3Draft(cfg).double()
    vocab = build_draft_vocab(
        [(list(range(cfg.vocab_size)), [1] * cfg.vocab_size)], cfg.vocab_size, cfg.vocab_size
    )
    draft.set_vocab(vocab.d2t, vocab.t2d)
    draft.load_target_embedding(target64.get_input_embeddings().weight.detach())
    draft.load_target_head(
        target64.get_output_embeddings().weight.detach(), target64.model.norm.weight.detach()
    )
    plain = SpeculativeEngine(target64).generate(prompts, 16).tokens
    drafter = make_drafter(draft, max_depth=k)
    assert isinstance(drafter, ParallelDrafter)
    out = SpeculativeEngine(target64, drafter).generate(prompts, 16, TreeShape.chain(k))
    assert out.tokens == plain
    assert out.stats.drafted > 0
    with pytest.raises(ValueError, match="chains"):
        drafter.propose(0, 5, 2, 2, 4)


@pytest.mark.parametrize("modules", [1, 2])
def test_mtp_drafter_is_lossless(target64, prompts, modules):
    """An MTP head (D = 1 applied recursively, D = 2 a module per depth) drafting EAGLE-2 trees."""
    from draft_models.mtp import MtpConfig, MtpDraft

    torch.manual_seed(0)
    draft = MtpDraft(MtpConfig.from_target(target64.config, num_modules=modules)).double()
    draft.load_target_embedding(target64.get_input_embeddings().weight.detach())
    draft.load_target_head(
        target64.get_output_embeddings().weight.detach(), target64.model.norm.weight.detach()
    )
    ref = reference(target64, prompts, 16)
    out = SpeculativeEngine(target64, EagleDrafter(draft)).generate(prompts, 16, TreeShape.tree(3, 2, 6))
    assert out.tokens == ref
    assert out.stats.drafted > 0


def test_kv_compaction_keeps_listed_slots():
    cache = DynamicCache()
    keys = torch.arange(2 * 1 * 6 * 2, dtype=torch.float).view(2, 1, 6, 2)
    cache.update(keys, -keys, 0)
    engine = SpeculativeEngine.__new__(SpeculativeEngine)
    engine.device = torch.device("cpu")
    engine._compact(cache, rows=[1], gather=[[0, 1, 4]])
    layer = cache.layers[0]
    assert torch.equal(layer.keys, keys[1:2, :, [0, 1, 4]]) and torch.equal(
        layer.values, -keys[1:2, :, [0, 1, 4]]
    )


def test_engine_consults_the_controller_every_step(target64, prompts):
    """The engine's adapter to the controller: passed as the shape, it decides every step and
    learns from every step (no on_step needed; a caller's on_step still sees each step)."""
    from serving.acceptance import AcceptanceTracker
    from serving.controller import SpeculationController
    from serving.policy import SpeculationPolicy
    from serving.step_cost import CostModel, Profile

    shapes = [TreeShape.chain(2), TreeShape.chain(4), TreeShape.tree(depth=4, top_k=2, num_draft_tokens=7)]
    # Verifying up to 8 tokens costs one step, more costs 100: speculate alone, not at batch 3.
    cost = CostModel(
        target=Profile([1, 8, 9, 64], [1.0, 1.0, 100.0, 100.0]), draft=Profile([1, 64], [0.01, 0.01])
    )
    policy = SpeculationPolicy(cost, AcceptanceTracker.from_alpha([0.8] * 4, shapes), shapes)
    controller = SpeculationController(policy, switch_margin=0.05)
    seen: list[tuple[TreeShape, int]] = []

    def record(shape, batch, *_step):
        seen.append((shape, batch))

    lengths = [8, 16, 24]
    refs = reference(target64, prompts[:3], max(lengths))
    full = [p + r for p, r in zip(prompts[:3], refs)]
    engine = SpeculativeEngine(target64, OracleDrafter(full))
    outs = [
        engine.generate([p], n, controller, on_step=record).tokens[0] for p, n in zip(prompts[:3], lengths)
    ]
    assert outs == [r[:n] for r, n in zip(refs, lengths)]
    batch3 = engine.generate(prompts[:3], 12, controller, on_step=record)
    assert batch3.tokens == [r[:12] for r in refs]
    assert all(s.is_none for s, b in seen if b >= 3)
    assert any(not s.is_none for s, b in seen if b == 1)
    assert controller.steps == len(seen)  # one decision per step
    assert policy.acceptance.ema  # online statistics were recorded


def test_engine_reports_each_sequences_accepted_drafts(target64, prompts):
    """on_step's last argument is every sequence's accepted draft count: a per-position tracker
    seeded far too low (0.2) learns the oracle drafter's ~0.8 at chain position 1."""
    from serving.acceptance import AcceptanceTracker

    refs = reference(target64, prompts[:3], 24)
    full = [p + r for p, r in zip(prompts[:3], refs)]
    shape = TreeShape.chain(3)
    tracker = AcceptanceTracker.from_alpha([0.2] * 3, [shape], beta=0.2, per_position=True)
    steps: list[tuple[int, list[int]]] = []

    def on_step(sh, batch, emitted, seconds, accepted):
        steps.append((batch, accepted))
        tracker.observe(sh, emitted, accepted)

    out = SpeculativeEngine(target64, OracleDrafter(full)).generate(prompts[:3], 24, shape, on_step=on_step)
    assert out.tokens == refs
    assert all(len(acc) == batch and all(0 <= a <= 3 for a in acc) for batch, acc in steps)
    # Every sequence-step emits its accepted drafts plus one token, except past the token budget on
    # a sequence's last step (at most 3 drafts cut there).
    verified = sum(sum(acc) + batch for batch, acc in steps)
    assert 0 <= verified - sum(map(len, out.tokens)) <= 3 * len(refs)
    assert tracker.alpha[0] > 0.5
