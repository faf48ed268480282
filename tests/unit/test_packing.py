"""Sequence packing: packed rows give the same capture, loss and gradients as the rows unpacked."""

from __future__ import annotations

import torch

from specforge.capture import CaptureConfig, OnlineCapture, collate_captured, pad_batch
from specforge.packing import pack_bins, same_sequence_ahead, sequence_ids
from specforge.train.batching import PackedBatches
from specforge.train.ttt import TargetHead, ttt_forward
from specforge.vocab import build_draft_vocab
from tests.helpers import small_eagle3, small_eagle3_config


def _rows(target, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        length = 9 + 5 * i % 17
        ids = torch.randint(3, target.vocab_size, (length,), generator=g).tolist()
        loss = [0] * (length // 3) + [1] * (length - length // 3)  # a prompt, then an answer
        rows.append({"input_ids": ids, "loss_mask": loss})
    return rows


def test_pack_bins_fill_and_keep_every_row():
    lengths = [7, 3, 9, 2, 5, 5, 12, 1]
    bins = pack_bins(lengths, 12)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 12 for b in bins)
    assert len(bins) == 4  # 44 tokens: the fewest bins of 12 that hold them
    assert pack_bins([20, 3], 12) == [[0], [1]]  # a row longer than a bin gets its own


def test_packed_batches_cover_each_row_once_per_epoch_reproducibly():
    lengths = [(i * 37) % 50 + 5 for i in range(100)]
    sampler = PackedBatches(lengths, 120, rows_per_batch=2, seed=3)
    batches = list(sampler)
    rows = [i for batch in batches for b in batch for i in b]
    assert sorted(rows) == list(range(100))
    assert all(sum(lengths[i] for i in b) <= 120 for batch in batches for b in batch)
    assert all(len(batch) <= 2 for batch in batches)
    assert batches == list(PackedBatches(lengths, 120, rows_per_batch=2, seed=3))
    sampler.set_epoch(1)
    assert list(sampler) != batches


def test_sequence_ids_and_lookahead():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 0]])
    attn = torch.tensor([[1, 1, 1, 1, 1, 0, 0]])
    ids = sequence_ids(pos, attn)
    assert ids.tolist() == [[0, 0, 0, 1, 1, -1, -1]]
    assert same_sequence_ahead(ids, 1).tolist() == [[True, True, False, True, False, False, False]]
    assert same_sequence_ahead(ids, 2).tolist() == [[True, False, False, False, False, False, False]]


def test_packed_capture_equals_unpacked(micro_target):
    rows = _rows(micro_target)
    pad = micro_target.tokenizer.pad_token_id
    cap = OnlineCapture(micro_target, CaptureConfig())
    try:
        plain = cap(**pad_batch(rows, pad))
        packed = cap(**pad_batch([rows[:3], rows[3:]], pad, packed=True))
    finally:
        cap.close()
    lengths = [len(r["input_ids"]) for r in rows]
    for j, (lo, hi) in enumerate([(0, 3), (3, 6)]):
        at = 0
        for i in range(lo, hi):
            n = lengths[i]
            for key in ("aux_hidden_states", "last_hidden_state"):
                torch.testing.assert_close(
                    getattr(packed, key)[j, at : at + n], getattr(plain, key)[i, :n], rtol=1e-5, atol=1e-5
                )
            assert torch.equal(packed.target_argmax[j, at : at + n], plain.target_argmax[i, :n])
            at += n
    # the argmax is stored exactly where the next token is an answer token of the same row
    assert (plain.target_argmax >= 0).sum() == sum(sum(r["loss_mask"][1:]) for r in rows)


def _draft_for(target, rows):
    cfg = small_eagle3_config(target.hidden_size, target.vocab_size, 40, head_dim=32)
    cfg.num_key_value_heads = 1
    draft = small_eagle3(cfg, [t for r in rows for t in r["input_ids"]])
    vocab = build_draft_vocab(
        [(r["input_ids"], r["loss_mask"]) for r in rows], target.vocab_size, cfg.draft_vocab_size
    )
    draft.set_vocab(vocab.d2t, vocab.t2d)
    draft.load_target_embedding(target.tensor("model.embed_tokens.weight"))
    return draft


def test_packed_batch_gives_the_same_loss_and_gradients(micro_target):
    """Capture rows once, then train on them padded and packed: one loss, one gradient."""
    rows = _rows(micro_target)
    pad = micro_target.tokenizer.pad_token_id
    cap = OnlineCapture(micro_target, CaptureConfig())
    try:
        captured = cap(**pad_batch(rows, pad))
    finally:
        cap.close()
    items = []
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        items.append(
            {
                k: getattr(captured, k)[i, :n]
                for k in ("input_ids", "loss_mask", "aux_hidden_states", "last_hidden_state", "target_argmax")
            }
        )
    draft = _draft_for(micro_target, rows)
    head = TargetHead.of(micro_target.tensor("lm_head.weight"), draft.t2d, keep_full=False)
    results = []
    for batch in (
        collate_captured(items, pad),
        collate_captured([items[:2], items[2:5], items[5:]], pad, packed=True),
    ):
        draft.zero_grad()
        out = ttt_forward(draft, batch, head, steps=4)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in draft.named_parameters() if p.requires_grad}
        results.append((out, grads))
    (plain, g_plain), (packed, g_packed) = results
    assert packed.loss.item() > 0
    torch.testing.assert_close(packed.step_losses, plain.step_losses, rtol=1e-5, atol=1e-6)
    for name in g_plain:
        torch.testing.assert_close(g_packed[name], g_plain[name], rtol=1e-4, atol=1e-6, msg=name)
    assert int(packed.valid.sum()) == int(plain.valid.sum()) > 0
    assert int(packed.correct.sum()) == int(plain.correct.sum())


def test_draft_rows_of_the_head_give_the_restricted_softmax(micro_target):
    """Soft labels from the draft-vocabulary rows alone equal the whole head's logits restricted to
    the draft vocabulary and renormalised; the full head is then needed only for the argmax."""
    rows = _rows(micro_target)
    pad = micro_target.tokenizer.pad_token_id
    cap = OnlineCapture(micro_target, CaptureConfig(store_logits=True))
    try:
        with_logits = cap(**pad_batch(rows, pad))
    finally:
        cap.close()
    draft = _draft_for(micro_target, rows)
    head = TargetHead.of(micro_target.tensor("lm_head.weight"), draft.t2d, keep_full=False)
    assert head.weight is None and head.draft_weight.shape[0] == int(draft.t2d.sum())
    from_logits = ttt_forward(draft, with_logits, None, steps=3)
    with_logits.logits = None
    from_rows = ttt_forward(draft, with_logits, head, steps=3)
    torch.testing.assert_close(from_rows.step_losses, from_logits.step_losses, rtol=1e-5, atol=1e-6)
    assert torch.equal(from_rows.in_vocab, from_logits.in_vocab)
