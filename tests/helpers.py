"""Small builders shared by the unit tests."""

from __future__ import annotations

import torch

from draft_models.eagle3 import Eagle3Config, Eagle3Draft
from specforge.vocab import build_draft_vocab


def small_eagle3_config(hidden: int, vocab: int, draft_vocab: int, head_dim: int) -> Eagle3Config:
    return Eagle3Config(
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_attention_heads=hidden // head_dim,
        num_key_value_heads=1,
        head_dim=head_dim,
        vocab_size=vocab,
        draft_vocab_size=draft_vocab,
        target_hidden_size=hidden,
        num_target_layers=8,
        aux_layer_ids=[2, 4, 5],
    )


def small_eagle3(cfg: Eagle3Config, vocab_ids: list[int], seed: int = 0) -> Eagle3Draft:
    """A randomly initialised draft whose vocabulary is drawn from ``vocab_ids``."""
    torch.manual_seed(seed)
    draft = Eagle3Draft(cfg)
    vocab = build_draft_vocab([(vocab_ids, [1] * len(vocab_ids))], cfg.vocab_size, cfg.draft_vocab_size)
    draft.set_vocab(vocab.d2t, vocab.t2d)
    return draft


def write_draft_run(run_dir, draft):
    """Save a draft the way a finished training run does (draft_config.json + draft.safetensors)."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in draft.state_dict().items()}, str(run / "draft.safetensors"))
    kind = {"EagleDraft": "eagle", "MtpDraft": "mtp", "ParallelEagle3Draft": "peagle"}.get(
        type(draft).__name__, "eagle3"
    )
    (run / "draft_config.json").write_text(json.dumps({"type": kind, **draft.config.to_dict()}))
    return run


def chi2_pvalue(counts: torch.Tensor, expected: torch.Tensor, min_expected: float = 5.0) -> float:
    """Pearson's chi-squared goodness-of-fit p-value of observed ``counts`` against ``expected``
    counts (same total). Cells expecting fewer than ``min_expected`` are pooled into one cell."""
    counts, expected = counts.double(), expected.double()
    big = expected >= min_expected
    obs = torch.cat([counts[big], counts[~big].sum().view(1)])
    exp = torch.cat([expected[big], expected[~big].sum().view(1)])
    if exp[-1] <= 0:
        if obs[-1] > 0:
            return 0.0  # observed what has probability zero
        obs, exp = obs[:-1], exp[:-1]
    stat = float(((obs - exp) ** 2 / exp).sum())
    df = len(obs) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2), torch.tensor(stat / 2)))


def train_micro_vllm_draft(
    target_dir,
    workdir,
    *,
    ttt_steps: int,
    max_steps: int,
    overrides: tuple[str, ...] = (),
    out: str = "vllm_draft",
):
    """Train a small EAGLE-3 head on ``workdir/data/train.jsonl`` (256-token draft vocabulary, batch 8,
    one save and one eval at the end) and export it for vLLM to ``workdir/out``; return that path."""
    from pathlib import Path

    from specforge.config import load_train_config
    from specforge.export import export_vllm
    from specforge.train.loop import train

    workdir = Path(workdir)
    cfg = load_train_config(
        None,
        [
            f"target={target_dir}",
            f"output_dir={workdir / 'run'}",
            f"data.train={workdir / 'data' / 'train.jsonl'}",
            "data.max_length=256",
            "draft.draft_vocab_size=256",
            f"ttt.steps={ttt_steps}",
            "optim.batch_size=8",
            f"optim.max_steps={max_steps}",
            f"save_every={max_steps}",
            f"eval_every={max_steps}",
            "progress=false",
            *overrides,
        ],
    )
    train(cfg)
    return export_vllm(workdir / "run", workdir / out)


def micro_train_config(target, data, out, *extra: str):
    """The tests' small training run: 8 steps on the demo rows in ``data`` (override with ``extra``)."""
    from specforge.config import load_train_config

    return load_train_config(
        None,
        [
            f"target={target}",
            f"output_dir={out}",
            f"data.train={data / 'train.jsonl'}",
            f"data.eval={data / 'heldout.jsonl'}",
            "data.max_length=256",
            "draft.draft_vocab_size=200",
            "ttt.steps=3",
            "optim.batch_size=4",
            "optim.max_steps=8",
            "eval_every=4",
            "save_every=4",
            "log_with=[]",
            "progress=false",
            *extra,
        ],
    )
