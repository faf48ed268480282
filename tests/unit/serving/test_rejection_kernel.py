"""The batched chain rejection sampler: Triton (interpreted on CPU) equals torch; torch is lossless."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from serving.kernels.rejection import HAVE_TRITON, chain_rejection_sample_torch
from tests.helpers import chi2_pvalue


def _inputs(b=6, k=4, v=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.softmax(torch.randn(b, k + 1, v, generator=g) * 2, -1)
    draft = torch.multinomial(q[:, :k].reshape(-1, v), 1, generator=g).view(b, k)
    u = torch.rand(b, k, generator=g)
    e = torch.empty(b, k + 1, v).exponential_(generator=g)
    return draft, q, u, e


def test_torch_path_structure():
    draft, q, u, e = _inputs()
    out = chain_rejection_sample_torch(draft, q, u, e)
    for row, d in zip(out.tolist(), draft.tolist()):
        n = next((i for i, t in enumerate(row) if t == -1), len(row))
        assert n >= 1 and all(t == -1 for t in row[n:])
        assert row[: n - 1] == d[: n - 1]  # accepted prefix, then one recovered/bonus token


def test_greedy_limit_accepts_the_argmax_prefix():
    draft, q, u, e = _inputs()
    onehot = torch.nn.functional.one_hot(q.argmax(-1), q.shape[-1]).float()
    draft[:, :2] = q.argmax(-1)[:, :2]
    out = chain_rejection_sample_torch(draft, onehot, u, e)
    assert torch.equal(out[:, :2], draft[:, :2])
    assert torch.equal(
        out[:, 2], q.argmax(-1)[:, 2]
    )  # third draft is random: recovered = argmax, or accepted


def test_first_token_follows_the_target_distribution():
    """Chi-squared on the first emitted token over many trials, as vLLM's sampler tests do."""
    v, trials = 8, 40_000
    g = torch.Generator().manual_seed(1)
    q = torch.softmax(torch.randn(1, 3, v, generator=g), -1).expand(trials, 3, v).contiguous()
    draft = torch.full((trials, 2), int(q[0, 0].argmax()))
    u = torch.rand(trials, 2, generator=g)
    e = torch.empty(trials, 3, v).exponential_(generator=g)
    first = chain_rejection_sample_torch(draft, q, u, e)[:, 0]
    counts = torch.bincount(first, minlength=v).float()
    expected = q[0, 0] * trials
    assert chi2_pvalue(counts, expected) > 1e-3, (counts, expected)


@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
def test_triton_interpreted_equals_torch(tmp_path):
    script = textwrap.dedent(
        """
        import torch
        from serving.kernels.rejection import chain_rejection_sample, chain_rejection_sample_torch
        from tests.unit.serving.test_rejection_kernel import _inputs
        for seed, (b, k, v) in enumerate([(6, 4, 37), (3, 1, 1500), (5, 6, 9)]):
            args = _inputs(b, k, v, seed)
            a = chain_rejection_sample(*args, use_triton=True)
            t = chain_rejection_sample_torch(*args)
            assert torch.equal(a, t), (a, t)
        print("OK")
        """
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
