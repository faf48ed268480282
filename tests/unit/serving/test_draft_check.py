"""The draft metadata checks shared by `specforge check` and the vLLM start-up check."""

from __future__ import annotations

import pytest

from serving.draft_check import (
    Deployment,
    DraftMeta,
    TargetFingerprint,
    d2t_sha256,
    embedding_probe,
    probe_cosine,
    static_findings,
)


def _fp(vocab=100, probe=None, tok="abc") -> TargetFingerprint:
    probe = (
        probe if probe is not None else [[(i * 7 + j * 3) % 11 - 5.0 for j in range(16)] for i in range(32)]
    )
    return TargetFingerprint(
        vocab_size=vocab, hidden_size=64, num_layers=8, tokenizer_sha256=tok, embedding_probe=probe
    )


def _meta() -> DraftMeta:
    return DraftMeta(
        draft_type="eagle3",
        method="eagle3",
        aux_layer_ids=[2, 4, 5],
        draft_vocab_size=10,
        d2t_sha256=d2t_sha256(list(range(10))),
        target=_fp(),
    )


def _deploy(**kw) -> Deployment:
    base = dict(
        method="eagle3",
        num_speculative_tokens=4,
        aux_layer_ids=[2, 4, 5],
        d2t_sha256=d2t_sha256(list(range(10))),
        target=_fp(),
    )
    return Deployment(**{**base, **kw})


def test_a_correct_deployment_has_no_findings():
    assert static_findings(_meta(), _deploy()) == []


@pytest.mark.parametrize(
    "change, cause",
    [
        (dict(method="eagle"), "method"),
        (dict(aux_layer_ids=[3, 5, 6]), "aux_layers"),
        (dict(d2t_sha256=d2t_sha256([1, 0, *list(range(2, 10))])), "d2t"),
        (dict(target=_fp(vocab=200)), "target"),
        (dict(target=_fp(tok="other")), "target"),
        (dict(target=_fp(probe=[[((i * 5 + j) % 7) - 3.0 for j in range(16)] for i in range(32)])), "target"),
    ],
)
def test_each_mismatch_is_named(change, cause):
    found = static_findings(_meta(), _deploy(**change))
    assert [f.cause for f in found] == [cause]
    assert found[0].message  # says what to change


def test_bf16_rounding_of_the_same_embedding_still_matches():
    import torch

    rows = torch.randn(32, 16, generator=torch.Generator().manual_seed(0))
    a = embedding_probe(rows.tolist())
    b = embedding_probe(rows.bfloat16().float().tolist())
    assert probe_cosine(a, b) > 0.999
    assert (
        static_findings(_meta().model_copy(update={"target": _fp(probe=a)}), _deploy(target=_fp(probe=b)))
        == []
    )


def test_the_last_hidden_feature_id_matches_the_capture_hooks_and_the_check_imports_no_torch():
    import subprocess
    import sys

    from draft_models.aux_hooks import LAST_HIDDEN
    from serving import draft_check

    assert draft_check.LAST_HIDDEN == LAST_HIDDEN
    code = "import sys, serving.draft_check; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    "draft_type, served_parallel, found",
    [("peagle", False, True), ("peagle", True, False), ("eagle3", True, True), ("eagle3", False, False)],
)
def test_parallel_drafting_must_match_the_head(draft_type, served_parallel, found):
    """A P-EAGLE head served without parallel_drafting (vLLM then skips mask_hidden and drafts it
    sequentially), or an EAGLE-3 head served with it, is named; an unknown flag is not checked."""
    meta = _meta().model_copy(update={"draft_type": draft_type})
    causes = [f.cause for f in static_findings(meta, _deploy(parallel_drafting=served_parallel))]
    assert causes == (["parallel_drafting"] if found else [])
    assert static_findings(meta, _deploy()) == []
