"""EAGLE-3 head, draft vocabulary and the training-time test."""

from __future__ import annotations

import pytest
import torch

from draft_models.eagle3 import Eagle3Config, Eagle3Draft
from draft_models.registry import get_draft_type
from specforge.capture import CapturedBatch
from specforge.errors import SpecforgeError
from specforge.train.ttt import acceptance_stats, ttt_forward
from specforge.vocab import build_draft_vocab
from tests.helpers import small_eagle3, small_eagle3_config

H, V, VD = 16, 50, 20


def _draft(seed=0) -> Eagle3Draft:
    return small_eagle3(small_eagle3_config(H, V, VD, head_dim=8), list(range(V)), seed)


def _batch(b=3, s=12, seed=1, lengths=(12, 9, 5)) -> CapturedBatch:
    g = torch.Generator().manual_seed(seed)
    attn = torch.zeros(b, s, dtype=torch.long)
    for i, n in enumerate(lengths):
        attn[i, :n] = 1
    return CapturedBatch(
        input_ids=torch.randint(0, V, (b, s), generator=g) * attn,
        attention_mask=attn,
        loss_mask=attn.clone(),
        aux_hidden_states=torch.randn(b, s, 3 * H, generator=g),
        last_hidden_state=torch.randn(b, s, H, generator=g),
        logits=torch.randn(b, s, V, generator=g) * 3,
    )


def test_registry_knows_eagle3():
    t = get_draft_type("eagle3")
    assert t.model_cls is Eagle3Draft and t.config_cls is Eagle3Config
    with pytest.raises(KeyError, match="unknown draft type"):
        get_draft_type("medusa9")


def test_draft_vocab_top_n_and_coverage():
    rows = [([5, 5, 5, 7, 7, 9, 1], [1, 1, 1, 1, 1, 1, 0])]  # token 1 is not an assistant token
    v = build_draft_vocab(rows, target_vocab_size=12, draft_vocab_size=2)
    assert v.draft_to_target.tolist() == [5, 7]
    assert (torch.arange(2) + v.d2t).tolist() == [5, 7]
    assert v.t2d.nonzero().flatten().tolist() == [5, 7]
    assert v.coverage == pytest.approx(5 / 6) and v.counted_tokens == 6
    with pytest.raises(SpecforgeError, match="outside the target's vocabulary"):
        build_draft_vocab([([99], [1])], 12, 2)
    with pytest.raises(SpecforgeError, match="draft_vocab_size"):
        build_draft_vocab(rows, 12, 13)


def test_ttt_shapes_and_masks():
    d, batch = _draft(), _batch()
    out = ttt_forward(d, batch, steps=4)
    assert out.step_losses.shape == (4,) and out.correct.shape == out.valid.shape == (4, 3, 12)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    lengths = batch.attention_mask.sum(1)
    for i in range(4):
        for r in range(3):
            counted = out.valid[i, r].nonzero().flatten()
            # Step i at position t predicts token t+2+i, which must exist in the sequence.
            assert counted.numel() == 0 or int(counted.max()) + 2 + i < int(lengths[r])
    # Later steps count fewer positions: each step looks one token further ahead.
    assert out.valid[0].sum() > out.valid[3].sum() > 0


def test_ttt_step_zero_does_not_see_the_future():
    d, batch = _draft(), _batch(lengths=(12, 12, 12))
    out_a = ttt_forward(d, batch, steps=1)
    batch.input_ids[:, 8:] = 0
    batch.aux_hidden_states[:, 8:] = 0
    out_b = ttt_forward(d, batch, steps=1)
    # Predictions at positions <= 6 depend on tokens <= 7 and features <= 6 only.
    assert torch.equal(out_a.correct[0, :, :7], out_b.correct[0, :, :7])


def test_ttt_overfits_a_handful_of_samples():
    d, batch = _draft(), _batch(lengths=(12, 12, 12))
    opt = torch.optim.AdamW([p for p in d.parameters() if p.requires_grad], lr=1e-2)
    first = None
    for _ in range(150):
        out = ttt_forward(d, batch, steps=3)
        first = first if first is not None else out.step_losses.clone()
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    final = ttt_forward(d, batch, steps=3)
    assert (final.step_losses < 0.5 * first).all(), (first, final.step_losses)
    # where the target's token is in the draft vocabulary (the rest are misses it cannot learn)
    stats = acceptance_stats(final.correct, final.in_vocab)
    assert stats.alpha[0] > 0.8 and stats.tau > 2.0


def test_acceptance_stats_hand_checked():
    # 2 steps, 1 row, 4 anchors: step0 correct at 0,1,2; step1 correct at 0,2 (valid at 0..2).
    correct = torch.tensor([[[1, 1, 1, 0]], [[1, 0, 1, 1]]], dtype=torch.bool)
    valid = torch.tensor([[[1, 1, 1, 1]], [[1, 1, 1, 0]]], dtype=torch.bool)
    st = acceptance_stats(correct, valid)
    assert st.alpha == [0.75, pytest.approx(2 / 3)]
    assert st.tau == pytest.approx(1 + 0.75 + 0.75 * 2 / 3)


def test_length_grouped_batches_cover_every_row_once_and_group_lengths():
    from specforge.train.batching import LengthGroupedBatches

    lengths = [(i * 37) % 101 + 1 for i in range(500)]
    sampler = LengthGroupedBatches(lengths, batch_size=8, seed=3, window=16)
    epoch0 = list(sampler)
    assert sorted(i for b in epoch0 for i in b) == list(range(500)) and len(epoch0) == len(sampler)
    # padding: a batch's widest row over its mean, far below a random batch's
    waste = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in epoch0)
    assert waste < 0.1 * sum(lengths)
    assert list(sampler) == epoch0  # the same epoch repeats (a resumed run skips what it trained)
    sampler.set_epoch(1)
    assert list(sampler) != epoch0


def test_draft_starts_from_the_targets_head_and_last_layer(micro_target):
    """draft.init: the lm_head rows are the target's output rows of the draft vocabulary, the
    decoder layer's feature half is the target's last layer; the embedding half stays random."""
    from specforge.train.draft_init import init_from_target

    model = micro_target.model
    cfg = Eagle3Config.from_target(model.config, 16, [1, 4, 5])
    draft = Eagle3Draft(cfg)
    d2t = torch.arange(16) * 3  # draft id d -> target id 4 d
    draft.set_vocab(d2t, torch.zeros(cfg.vocab_size, dtype=torch.bool))
    before = draft.midlayer.self_attn.q_proj.weight[:, : cfg.hidden_size].clone()
    init_from_target(draft, micro_target, "target_head_layer")
    out_rows = model.get_output_embeddings().weight
    torch.testing.assert_close(draft.lm_head.weight, out_rows[torch.arange(16) * 4])
    last = model.model.layers[-1]
    torch.testing.assert_close(
        draft.midlayer.self_attn.q_proj.weight[:, cfg.hidden_size :], last.self_attn.q_proj.weight
    )
    torch.testing.assert_close(draft.midlayer.mlp.down_proj.weight, last.mlp.down_proj.weight)
    torch.testing.assert_close(draft.norm.weight, model.model.norm.weight)
    assert torch.equal(draft.midlayer.self_attn.q_proj.weight[:, : cfg.hidden_size], before)


def test_walk_hand_checked():
    from specforge.train.ttt import walked_acceptance

    # One answer: anchors 0..7 valid at step 0 (tokens 2..9 are the answer), k = 2.
    # The walk starts at anchor 1 (token 2 comes from the prefill, root token 2).
    valid = torch.zeros(2, 1, 10, dtype=torch.bool)
    valid[0, 0, :8] = True
    valid[1, 0, :7] = True  # step 1 at anchor t predicts t + 3 <= 9
    correct = torch.zeros(2, 1, 10, dtype=torch.bool)
    correct[0, 0, [1, 3, 4, 6]] = True
    correct[1, 0, [1, 4]] = True
    w = walked_acceptance(correct, valid, k=2)
    # anchor 1: both drafts right -> 3 tokens (3, 4, 5), anchor 4: both -> 3 tokens (6, 7, 8);
    # anchor 7: draft wrong -> 1 token (9), the answer's last. 7 tokens in 3 steps.
    assert (w.steps, w.tokens) == (3, 7)
    assert w.tau == pytest.approx(7 / 3)
    assert w.acceptance_per_position == [pytest.approx(2 / 3), pytest.approx(2 / 3)]
    # The all-anchor estimate weights every position alike; the walk skips anchors 2, 3, 5, 6.
    assert acceptance_stats(correct, valid).alpha[0] == pytest.approx(4 / 8)
    # A server's length limit: 4 new tokens (2..5): steps at anchors 1 (3 tokens), done.
    short = walked_acceptance(correct, valid, k=2, max_new_tokens=4)
    assert (short.steps, short.tokens) == (1, 3)


def test_ttt_counts_out_of_vocabulary_targets_as_misses():
    # A draft vocabulary of 5 of the 50 ids: most target argmaxes are outside it.
    d = small_eagle3(small_eagle3_config(H, V, 5, head_dim=8), list(range(5)))
    out = ttt_forward(d, _batch(), steps=2)
    assert out.in_vocab.sum() < out.valid.sum()
    assert not (out.correct & ~out.in_vocab).any()  # a miss wherever the target's token is out of vocab
    assert (out.in_vocab <= out.valid).all()
