"""`specforge bench serve --engine reference`: the same batch-size sweep on the reference engine, trees included.

Contract: the workload is :func:`specforge.bench.vllm_workload.long_answer_prompts` (answers of at least
``max_tokens`` tokens; the engine runs without an EOS token so every row decodes ``max_tokens``
tokens and the batch size stays fixed). A measurement at batch ``B`` runs ``max(1, 8 // B)`` batches
of distinct prompts back to back (as the vLLM sweep's ``MIN_REQUESTS``), so that batch 1 is not one
prompt's acceptance. Configurations: ``none``, each fixed shape in ``shapes``
(chains and EAGLE-2 trees), and ``policy`` — :class:`serving.controller.SpeculationController` choosing among
all of those shapes at every step, priced by whole engine steps timed per shape and batch size
before the sweep (:func:`serving.calibrate.calibrate_engine_steps`; forward-only profiles miss the
engine's per-sequence Python work), corrected online by one factor from the engine's own step
times, with acceptance per chain position seeded from the head's alpha_k and learnt from every
sequence's accepted count.
Everything runs in one process, interleaved: each round visits the batch sizes (alternating
order) and, at each, every configuration in a shuffled order. A round's policy is fresh (as after
a server restart) and learns across the round's batch sizes.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from serving.acceptance import AcceptanceTracker
from serving.calibrate import calibrate_engine_steps
from serving.controller import SpeculationController
from serving.drafters.parallel import make_drafter
from serving.engine import GenerationStats, SpeculativeEngine
from serving.policy import SpeculationPolicy
from serving.shape import NO_SPECULATION, TreeShape
from serving.step_cost import OnlineStepCost
from specforge.bench.sweep import serve_summary
from specforge.bench.vllm_workload import BATCH_SIZES, MIN_REQUESTS, draft_alpha, long_answer_prompts
from specforge.export import load_draft
from specforge.targets.loader import load_target

DEFAULT_SHAPES = tuple(
    TreeShape.parse(s) for s in ("chain:1", "chain:2", "chain:4", "tree:4:2:8", "tree:4:4:16", "tree:6:4:24")
)


def bench_serve_engine(
    target_dir: Path,
    run_dir: Path,
    regen_data: Path,
    batch_sizes: list[int] | None = None,
    shapes: Sequence[TreeShape] = DEFAULT_SHAPES,
    max_tokens: int = 48,
    rounds: int = 2,
    seed: int = 0,
    calibrate_tokens: int = 16,
    log: Callable[[str], None] = print,
) -> dict:
    sizes = batch_sizes or BATCH_SIZES
    fixed = list(shapes)
    target = load_target(target_dir)
    draft = load_draft(run_dir, target.model.get_input_embeddings().weight.detach())
    prompts = long_answer_prompts(target_dir, regen_data, max_tokens)
    prompts = [prompts[i % len(prompts)] for i in range(max(*sizes, MIN_REQUESTS))]
    alpha = draft_alpha(run_dir, max(s.depth for s in fixed))
    engine = SpeculativeEngine(
        target.model, make_drafter(draft, max(s.depth for s in fixed)), eos_token_id=None
    )
    log(f"timing the engine's steps for {len(fixed) + 1} shapes at batch sizes {sizes}")
    steps = calibrate_engine_steps(
        engine, prompts, fixed, sizes, max_new_tokens=calibrate_tokens, progress=log
    )
    configs: list[str] = ["none", *(s.name for s in fixed), "policy"]
    by_name: dict[str, TreeShape] = {"none": NO_SPECULATION, **{s.name: s for s in fixed}}
    rows: list[dict] = []
    chosen: list[dict] = []
    rng = random.Random(seed)
    torch.manual_seed(seed)
    engine.generate(prompts[:2], 4, fixed[-1])  # warm-up
    for rnd in range(rounds):
        # As the vLLM plugin: acceptance per chain position from every sequence's accepted count (so
        # running chain:2 teaches what chain:4 would accept at positions 1-2), and one online cost
        # factor for all shapes (a factor per shape absorbed where each shape ran: rounds that visited
        # batch 64 first ran mostly chain:1 at batch 1-2, where chain:4 was best).
        tracker = AcceptanceTracker.from_alpha(alpha, fixed, per_position=True, reference_batch=16)
        policy = SpeculationPolicy(OnlineStepCost(steps, min_count=10**9), tracker, fixed)
        controller = SpeculationController(policy, max_batch=max(sizes))
        for b in sizes if rnd % 2 == 0 else sizes[::-1]:
            order = list(configs)
            rng.shuffle(order)
            for name in order:
                picks: dict[str, int] = {}

                def count(s: TreeShape, *_step, picks=picks) -> None:
                    picks[s.name] = picks.get(s.name, 0) + 1

                shape = controller if name == "policy" else by_name[name]
                on_step = count if name == "policy" else None
                tokens_out: list[list[int]] = []
                st = GenerationStats()
                t0 = time.perf_counter()
                for g in range(max(1, MIN_REQUESTS // b)):  # distinct prompts per group
                    out = engine.generate(prompts[g * b : (g + 1) * b], max_tokens, shape, on_step=on_step)
                    tokens_out += out.tokens
                    st.merge(out.stats)
                elapsed = time.perf_counter() - t0
                tokens = sum(map(len, tokens_out))
                rows.append(
                    {
                        "config": name,
                        "round": rnd,
                        "batch_size": b,
                        "seconds": elapsed,
                        "output_tokens": tokens,
                        "tokens_per_s": tokens / elapsed,
                        # a batch finishes together: its latency is its share of the measurement
                        "latency_mean": elapsed * b / len(tokens_out),
                        "tau": st.tau,
                        "outputs_sha": hashlib.sha256(json.dumps(tokens_out).encode()).hexdigest()[:16],
                        # per sequence-step (tau = 1 + accepted / drafts, as vLLM counts)
                        "spec": {
                            "drafts": st.sequence_steps,
                            "accepted_tokens": st.emitted - st.sequence_steps,
                        },
                    }
                )
                if name == "policy":
                    chosen.append({"round": rnd, "batch_size": b, "steps_per_shape": picks})
            log(
                f"round {rnd + 1}/{rounds} batch {b}: "
                + ", ".join(
                    f"{r['config']} {r['tokens_per_s']:.0f}"
                    for r in rows
                    if r["round"] == rnd and r["batch_size"] == b
                )
            )
    return {
        "engine": "reference",
        "target": str(target_dir),
        "draft": str(run_dir),
        "max_tokens": max_tokens,
        "batch_sizes": sizes,
        "rounds": rounds,
        "shapes": [s.name for s in fixed],
        "step_table": steps.to_json(),
        "policy_choices": chosen,
        "rows": rows,
        "summary": serve_summary(rows, sizes, adaptive="policy", table=None),
    }
