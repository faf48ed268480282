"""Hidden-state capture: hooks vs output_hidden_states, offline shards vs online, resume."""

from __future__ import annotations

import pytest
import torch

from specforge import capture as capture_mod
from specforge.capture import (
    CaptureConfig,
    Manifest,
    OnlineCapture,
    ShardDataset,
    collate_captured,
    default_aux_layers,
    pad_batch,
    write_shards,
)
from specforge.data.demo import demo_conversations
from specforge.data.formats import load_rows
from specforge.data.tokenize import tokenize_dataset
from specforge.errors import SpecforgeError


@pytest.fixture(scope="module")
def token_ds(micro_target, tmp_path_factory):
    import json

    rows = demo_conversations("heldout", max_rows=30)
    path = tmp_path_factory.mktemp("data") / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = tokenize_dataset(load_rows(path)[0], micro_target.tokenizer, max_length=320)
    assert len(ds) >= 13
    return ds.select(range(13))


def test_default_layers():
    assert default_aux_layers(32) == [2, 16, 29]
    assert default_aux_layers(8) == [2, 4, 5]


def test_hooks_agree_with_output_hidden_states(micro_target, token_ds):
    cap = OnlineCapture(micro_target, CaptureConfig(store_logits=True))
    try:
        batch = pad_batch([token_ds[i] for i in range(4)], micro_target.tokenizer.pad_token_id)
        got = cap(**batch)
        with torch.no_grad():
            ref = micro_target.model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                output_hidden_states=True,
            )
        hs = ref.hidden_states
        H = micro_target.hidden_size
        assert got.aux_hidden_states.shape == (*batch["input_ids"].shape, 3 * H)
        for j, k in enumerate(cap.layers):
            torch.testing.assert_close(got.aux_hidden_states[..., j * H : (j + 1) * H], hs[k], rtol=0, atol=0)
        torch.testing.assert_close(got.last_hidden_state, hs[-1], rtol=0, atol=0)
        torch.testing.assert_close(got.logits, ref.logits, rtol=1e-6, atol=1e-6)
    finally:
        cap.close()
    assert cap.closed


def test_pre_norm_layer_id(micro_target, token_ds):
    """Layer id L is the last layer's output before the final norm (what vLLM hands MiMo's MTP)."""
    L = micro_target.num_layers
    cap = OnlineCapture(micro_target, CaptureConfig(aux_layers=[L, -1]))
    try:
        batch = pad_batch([token_ds[i] for i in range(2)], micro_target.tokenizer.pad_token_id)
        got = cap(**batch)
        H = micro_target.hidden_size
        pre, post = got.aux_hidden_states[..., :H], got.aux_hidden_states[..., H:]
        torch.testing.assert_close(post, got.last_hidden_state, rtol=0, atol=0)
        with torch.no_grad():
            torch.testing.assert_close(micro_target.model.model.norm(pre), post, rtol=0, atol=0)
        assert not torch.allclose(pre, post)
    finally:
        cap.close()


def test_bad_layer_ids(micro_target):
    with pytest.raises(SpecforgeError, match="out of range"):
        OnlineCapture(micro_target, CaptureConfig(aux_layers=[1, 99]))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_offline_shards_equal_online(micro_target, token_ds, tmp_path, dtype):
    cfg = CaptureConfig(dtype=dtype, store_logits=True)
    manifest = write_shards(
        micro_target, token_ds, tmp_path, cfg, batch_size=4, sequences_per_shard=5, progress=False
    )
    assert manifest.complete and len(manifest.shards) == 3 and manifest.bytes > 0
    shards = ShardDataset(tmp_path)
    assert len(shards) == len(token_ds)
    cap = OnlineCapture(micro_target, cfg)
    try:
        # The writer batches 4 sequences at a time within each shard of 5: replay the same batches.
        for lo, hi in [(0, 4), (4, 5), (5, 9), (9, 10), (10, 13)]:
            rows = [token_ds[i] for i in range(lo, hi)]
            online = cap(**pad_batch(rows, micro_target.tokenizer.pad_token_id))
            offline = collate_captured(
                [shards[i] for i in range(lo, hi)], micro_target.tokenizer.pad_token_id
            )
            assert torch.equal(online.attention_mask, offline.attention_mask)
            lengths = online.attention_mask.sum(1).tolist()
            for key in ("input_ids", "loss_mask", "aux_hidden_states", "last_hidden_state", "logits"):
                a, b = getattr(online, key), getattr(offline, key)
                assert a.dtype == b.dtype, key
                for i, n in enumerate(lengths):  # real tokens are bit-identical; padding is not stored
                    assert torch.equal(a[i, :n], b[i, :n]), key
    finally:
        cap.close()


def test_resume_after_kill_skips_finished_shards(micro_target, token_ds, tmp_path, monkeypatch):
    cfg = CaptureConfig()
    calls = {"n": 0}
    real_save = capture_mod.save_file

    def dying_save(tensors, path, metadata=None):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill while writing the second shard")
        real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(capture_mod, "save_file", dying_save)
    with pytest.raises(KeyboardInterrupt):
        write_shards(
            micro_target, token_ds, tmp_path, cfg, batch_size=4, sequences_per_shard=5, progress=False
        )
    partial = Manifest.load(tmp_path)
    assert not partial.complete and [s.file for s in partial.shards] == ["shard-00000.safetensors"]
    with pytest.raises(SpecforgeError, match="unfinished"):
        ShardDataset(tmp_path)
    first_mtime = (tmp_path / "shard-00000.safetensors").stat().st_mtime_ns

    written = []
    monkeypatch.setattr(
        capture_mod,
        "save_file",
        lambda t, p, metadata=None: (written.append(p), real_save(t, p, metadata=metadata)),
    )
    manifest = write_shards(
        micro_target, token_ds, tmp_path, cfg, batch_size=4, sequences_per_shard=5, progress=False
    )
    assert manifest.complete and len(manifest.shards) == 3
    assert len(written) == 2  # only the two unfinished shards were captured again
    assert (tmp_path / "shard-00000.safetensors").stat().st_mtime_ns == first_mtime

    # The resumed capture equals one done in a single run.
    fresh = tmp_path / "fresh"
    write_shards(micro_target, token_ds, fresh, cfg, batch_size=4, sequences_per_shard=5, progress=False)
    a, b = ShardDataset(tmp_path), ShardDataset(fresh)
    for i in range(len(a)):
        for k in a[i]:
            assert torch.equal(a[i][k], b[i][k])


def test_resume_refuses_other_config(micro_target, token_ds, tmp_path):
    write_shards(
        micro_target, token_ds, tmp_path, CaptureConfig(), batch_size=4, sequences_per_shard=5, progress=False
    )
    with pytest.raises(SpecforgeError, match="another target, dataset, engine or capture config"):
        write_shards(micro_target, token_ds, tmp_path, CaptureConfig(aux_layers=[1, 2, 3]), progress=False)


def test_corrupt_shard_is_a_clear_error(micro_target, token_ds, tmp_path):
    write_shards(
        micro_target, token_ds, tmp_path, CaptureConfig(), batch_size=4, sequences_per_shard=5, progress=False
    )
    (tmp_path / "shard-00001.safetensors").write_bytes(b"not a safetensors file")
    ds = ShardDataset(tmp_path)
    with pytest.raises(SpecforgeError, match="missing or corrupt"):
        ds[7]


def test_one_wide_capture_serves_every_head(micro_target, token_ds, tmp_path, monkeypatch):
    """A capture of layers (2, 4, 8) is reused for a head that reads (4, 2) or the last hidden state
    (EAGLE-1): no shard is written again, and the picked layers equal a capture of those alone."""
    kw = dict(batch_size=4, sequences_per_shard=5, progress=False)
    wide = write_shards(micro_target, token_ds, tmp_path / "wide", CaptureConfig(aux_layers=[2, 4, 8]), **kw)
    narrow = tmp_path / "narrow"
    write_shards(micro_target, token_ds, narrow, CaptureConfig(aux_layers=[4, 2]), **kw)
    monkeypatch.setattr(capture_mod, "save_file", lambda *a, **k: pytest.fail("re-captured"))
    again = write_shards(micro_target, token_ds, tmp_path / "wide", CaptureConfig(aux_layers=[4, 2]), **kw)
    assert again.aux_layers == wide.aux_layers == [2, 4, 8]
    write_shards(micro_target, token_ds, tmp_path / "wide", CaptureConfig(aux_layers=[-1]), **kw)

    picked, ref = ShardDataset(tmp_path / "wide", layers=[4, 2]), ShardDataset(narrow)
    last = ShardDataset(tmp_path / "wide", layers=[-1])
    for i in range(len(ref)):
        for key in ref[i]:
            assert torch.equal(picked[i][key], ref[i][key]), key
        assert torch.equal(last[i]["aux_hidden_states"], ref[i]["last_hidden_state"])
    with pytest.raises(SpecforgeError, match=r"holds aux layers \[2, 4, 8\], not \[3\]"):
        ShardDataset(tmp_path / "wide", layers=[2, 3])
