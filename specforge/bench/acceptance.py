"""``specforge bench acceptance``: tau, acceptance per position and speed of draft trees in the
reference engine (and chains in the real vLLM), on the same prompts and the same draft.

Contract: :func:`bench_acceptance` runs the reference engine on held-out prompts (a file, or a
prompt-set name such as ``humaneval``; read by :func:`chat_prompts`), first with no speculation,
then with every requested shape, all at the same batch size, and reports per shape: tau (tokens
per target forward per sequence, bonus included), alpha per position (conditional acceptance),
acceptance per position, accepted/drafted, tokens/s, and the speed-up over plain decoding measured
in the same run (runs are interleaved over ``repeats``; the best time of each counts). It checks
that greedy outputs equal plain decoding's. Results go to ``result.json`` and ``acceptance.png`` in
``out_dir``, beside the resolved arguments.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from serving.drafters.parallel import make_drafter
from serving.engine import GenerationStats, SpeculativeEngine
from serving.shape import NO_SPECULATION, TreeShape
from specforge.bench.vllm_chain import chat_prompts
from specforge.errors import SpecforgeError
from specforge.export import load_draft
from specforge.metrics import distinct_ngram_ratio
from specforge.targets.loader import load_target


def bench_acceptance(
    target_dir: Path,
    draft_dir: Path,
    data: Path,
    out_dir: Path,
    shapes: list[TreeShape],
    batch_size: int = 1,
    prompts: int = 16,
    max_new_tokens: int = 96,
    temperature: float = 0.0,
    repeats: int = 1,
) -> dict:
    toks = chat_prompts(target_dir, data, prompts)  # first: checks the data, and the chat template it needs
    target = load_target(target_dir, need_chat_template=False)
    draft = load_draft(draft_dir, target.model.get_input_embeddings().weight.detach())
    hidden = getattr(
        draft.config, "target_hidden_size", draft.config.hidden_size
    )  # full-vocab heads: as wide as the target
    if draft.config.vocab_size != target.vocab_size or hidden != target.hidden_size:
        raise SpecforgeError(
            f"the draft in {draft_dir} was trained for a target with vocabulary {draft.config.vocab_size} and hidden "
            f"size {hidden}, but {target_dir} has {target.vocab_size} and {target.hidden_size}"
        )
    eos = target.tokenizer.eos_token_id
    engines = {"plain": SpeculativeEngine(target.model, None, eos)}
    if getattr(draft, "parallel_drafting", False) and any(s.top_k > 1 for s in shapes):
        raise SpecforgeError(
            f"{draft_dir} holds a parallel-drafting head, which drafts chains only; drop the tree shapes "
            f"({', '.join(s.name for s in shapes if s.top_k > 1)})"
        )
    drafted = SpeculativeEngine(target.model, make_drafter(draft, max(s.depth for s in shapes)), eos)
    all_shapes = [NO_SPECULATION, *shapes]
    best: dict[str, float] = {}
    results: dict[str, dict] = {}
    outputs: dict[str, list[list[int]]] = {}
    torch.manual_seed(0)
    for _ in range(repeats):
        for s in all_shapes:
            name = s.name
            engine = engines["plain"] if s.num_draft_tokens == 0 else drafted
            tokens, stats = [], GenerationStats()
            for lo in range(0, len(toks), batch_size):
                out = engine.generate(
                    toks[lo : lo + batch_size], max_new_tokens, s, temperature=temperature, seed=lo
                )
                tokens += out.tokens
                stats.merge(out.stats)
            if name not in best or stats.seconds < best[name]:
                best[name] = stats.seconds
            results[name] = {
                "shape": asdict(s),
                "tau": stats.tau,
                "alpha": stats.alpha,
                "acceptance_per_position": stats.acceptance_per_position,
                "accepted_over_drafted": stats.accepted / max(1, stats.drafted),
                "target_forwards": stats.target_forwards,
                "output_tokens": sum(len(t) for t in tokens),
            }
            outputs[name] = tokens
    for name, r in results.items():
        r["seconds"] = best[name]
        r["tokens_per_s"] = r["output_tokens"] / best[name]
        r["speedup"] = (
            best["plain"] / best[name] * r["output_tokens"] / max(1, results["plain"]["output_tokens"])
        )
        r["lossless"] = outputs[name] == outputs["plain"] if temperature == 0 else None
        r["distinct4"] = sum(distinct_ngram_ratio(t) for t in outputs[name]) / max(1, len(outputs[name]))
    drafted.close()
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        "args": {
            "target": str(target_dir),
            "draft": str(draft_dir),
            "data": str(data),
            "batch_size": batch_size,
            "prompts": len(toks),
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "repeats": repeats,
        },
        "results": results,
    }
    (out_dir / "result.json").write_text(json.dumps(summary, indent=1))
    _plot(results, out_dir / "acceptance.png")
    return summary


def _plot(results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in results if n != "plain"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.bar(names, [results[n]["tau"] for n in names], color="tab:blue", label="tau")
    a.plot(names, [results[n]["speedup"] for n in names], "o-", color="tab:red", label="speed-up vs plain")
    a.set_title("tau (bonus included) and speed-up")
    a.legend()
    a.tick_params(axis="x", rotation=30)
    for n in names:
        b.plot(
            range(1, len(results[n]["acceptance_per_position"]) + 1),
            results[n]["acceptance_per_position"],
            "o-",
            label=n,
        )
    b.set_xlabel("position (depth)")
    b.set_ylabel("P(accepted)")
    b.set_title("acceptance per position")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
