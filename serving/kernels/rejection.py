"""Batched lossless verification of draft chains: one Triton program per sequence, or plain torch.

Contract: :func:`chain_rejection_sample` takes, for a batch of chains of ``K`` draft tokens,

* ``draft_tokens`` ``[batch, K]`` int64 — proposed deterministically (argmax / top-1), so the
  proposal distribution is a point mass on each token;
* ``target_probs`` ``[batch, K + 1, vocab]`` float32 — the target's distribution at the root and
  after each draft token (temperature / top-p already applied);
* ``uniforms`` ``[batch, K]`` and ``exponentials`` ``[batch, K + 1, vocab]`` — the randomness, drawn
  by the caller (so both implementations give identical outputs for identical noise).

It returns ``[batch, K + 1]`` int64: the accepted draft tokens, then one recovered or bonus token,
then -1 padding. Draft token ``x`` at position ``k`` is accepted when ``u_k < q_k(x)`` (the
rejection test ``u < q(x) / p(x)`` with ``p(x) = 1``). At the first rejection, the recovered token
is drawn from the residual ``norm(max(0, q_k - p_k))`` (``q_k`` with ``x`` removed); after a full
match, the bonus token is drawn from ``q_K``. Both draws use the exponential race:
``argmax_v r(v) / E_v`` with ``E_v ~ Exp(1)`` picks ``v`` with probability ``r(v) / sum(r)``.
Greedy verification is the limit of one-hot ``target_probs``.
"""

from __future__ import annotations

import os

import torch

try:  # Triton is optional: CPU machines without it use the torch path.
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - depends on the installation
    HAVE_TRITON = False


def chain_rejection_sample_torch(
    draft_tokens: torch.Tensor, target_probs: torch.Tensor, uniforms: torch.Tensor, exponentials: torch.Tensor
) -> torch.Tensor:
    b, k = draft_tokens.shape
    out = torch.full((b, k + 1), -1, dtype=torch.long, device=draft_tokens.device)
    alive = torch.ones(b, dtype=torch.bool, device=draft_tokens.device)  # no rejection yet
    rows = torch.arange(b, device=draft_tokens.device)
    for i in range(k):
        x = draft_tokens[:, i]
        q = target_probs[:, i]  # [b, vocab]  q: target prob
        accept = alive & (uniforms[:, i] < q[rows, x])  # p(x) = 1 for a point-mass proposal
        out[:, i] = torch.where(accept, x, out[:, i])
        reject = alive & ~accept
        residual = q.clone()
        residual[rows, x] = 0.0  # norm(max(0, q - p)) up to the normalisation argmax ignores
        recovered = (residual / exponentials[:, i]).argmax(-1)
        out[:, i] = torch.where(reject, recovered, out[:, i])
        alive = accept
    bonus = (target_probs[:, k] / exponentials[:, k]).argmax(-1)
    out[:, k] = torch.where(alive, bonus, out[:, k])
    return out


if HAVE_TRITON:

    @triton.jit
    def _race_argmax(q_row, e_row, exclude, V, BLOCK_V: tl.constexpr):
        best_val = -1.0
        best_idx = 0
        for v0 in range(0, V, BLOCK_V):
            offs = v0 + tl.arange(0, BLOCK_V)
            m = offs < V
            qv = tl.load(q_row + offs, mask=m, other=0.0)
            qv = tl.where(offs == exclude, 0.0, qv)
            ev = tl.load(e_row + offs, mask=m, other=1.0)
            score = tl.where(m, qv / ev, -1.0)
            blk_max = tl.max(score, axis=0)
            blk_idx = tl.argmax(score, axis=0) + v0
            better = blk_max > best_val
            best_idx = tl.where(better, blk_idx, best_idx)
            best_val = tl.where(better, blk_max, best_val)
        return best_idx

    @triton.jit
    def _chain_rejection_kernel(draft_ptr, q_ptr, u_ptr, e_ptr, out_ptr, K, V, BLOCK_V: tl.constexpr):
        b = tl.program_id(0)
        alive = 1
        for i in range(K):
            if alive == 1:
                x = tl.load(draft_ptr + b * K + i)
                row = (b * (K + 1) + i) * V
                qx = tl.load(q_ptr + row + x)
                u = tl.load(u_ptr + b * K + i)
                if u < qx:
                    tl.store(out_ptr + b * (K + 1) + i, x)
                else:
                    rec = _race_argmax(q_ptr + row, e_ptr + row, x, V, BLOCK_V)
                    tl.store(out_ptr + b * (K + 1) + i, rec.to(tl.int64))
                    alive = 0
        if alive == 1:
            row = (b * (K + 1) + K) * V
            bonus = _race_argmax(q_ptr + row, e_ptr + row, -1, V, BLOCK_V)
            tl.store(out_ptr + b * (K + 1) + K, bonus.to(tl.int64))


def triton_usable(device: torch.device) -> bool:
    return HAVE_TRITON and (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")


def chain_rejection_sample(
    draft_tokens: torch.Tensor,
    target_probs: torch.Tensor,
    uniforms: torch.Tensor,
    exponentials: torch.Tensor,
    use_triton: bool | None = None,
) -> torch.Tensor:
    """Triton where it can run (CUDA, or the interpreter), else torch; see the module docstring."""
    if use_triton is None:
        use_triton = triton_usable(draft_tokens.device)
    if not use_triton:
        return chain_rejection_sample_torch(draft_tokens, target_probs, uniforms, exponentials)
    b, k = draft_tokens.shape
    v = target_probs.shape[-1]
    out = torch.full((b, k + 1), -1, dtype=torch.long, device=draft_tokens.device)
    _chain_rejection_kernel[(b,)](
        draft_tokens.contiguous(),
        target_probs.float().contiguous(),
        uniforms.float().contiguous(),
        exponentials.float().contiguous(),
        out,
        k,
        v,
        BLOCK_V=min(1024, triton.next_power_of_2(v)),
    )
    return out
