"""``specforge bench fidelity``: does training's estimate of acceptance predict what vLLM serves?

Contract: :func:`bench_fidelity` takes a finished training run, its vLLM export and held-out
conversations whose answers the target regenerated greedily, and measures on the same ``prompts``:

* **teacher-forced** (training's estimate): the TTT over the held-out answers, as alpha per anchor
  (``in_vocab_only``: a target token outside the draft vocabulary not counted, the estimate before
  2026-12-04; ``all_anchors``: counted as a miss) and the greedy chain walked closed loop over the
  answers (``walk``; ``walk_limited``: cut at ``max_new_tokens`` as the server cuts them);
* **served estimate**: the draft in the reference engine, closed loop, at each temperature;
* **vLLM**: the same export in the real vLLM, same prompts, same k, each temperature (and dtype).

It also measures each candidate cause of a gap (``causes``): target tokens outside the draft
vocabulary, anchor selection, answer length and EOS, prompt format, the data against the served
tokens, aux layer ids shifted by one (reference engine, and vLLM reading the shifted ids), and bf16.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import torch

from serving.acceptance import chain_tau
from serving.vllm_plugin.harness.runner import run_vllm
from specforge.bench.served import served_estimate, served_key
from specforge.capture import CaptureConfig
from specforge.data.formats import load_rows
from specforge.data.tokenize import served_prompt_ids, tokenize_conversation
from specforge.errors import SpecforgeError
from specforge.export import load_draft
from specforge.targets.loader import load_target
from specforge.train.estimates import online_batches, teacher_forced
from specforge.train.ttt import acceptance_stats, ttt_forward, walked_acceptance


def _vllm(target_dir, draft_dir, prompts, k, temperature, max_tokens, dtype, workdir) -> dict:
    request = {
        "target": str(target_dir),
        "prompts": prompts,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "seed_requests": False,
        "dtype": dtype,
        "max_model_len": 1024,
        "max_num_seqs": 8,
        "draft": str(draft_dir),
        "num_speculative_tokens": k,
    }
    res = run_vllm(request, workdir, env={"VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    spec = res["spec"]
    drafts = max(1, spec.get("drafts", 0))
    return {
        "tau": 1 + spec.get("accepted_tokens", 0) / drafts,
        "acceptance_per_position": [a / drafts for a in spec.get("accepted_per_pos", [])],
        "drafts": spec.get("drafts", 0),
        "outputs": res["outputs"],
    }


def _shifted_export(export_dir: Path, shift: int, out: Path) -> Path:
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(export_dir, out)
    cfg = json.loads((out / "config.json").read_text())
    ids = cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"]
    cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"] = [i + shift for i in ids]
    (out / "config.json").write_text(json.dumps(cfg))
    (out / "specforge_draft.json").unlink(missing_ok=True)
    return out


def bench_fidelity(
    target_dir: Path,
    run_dir: Path,
    export_dir: Path,
    data: Path,
    out_dir: Path,
    k: int = 4,
    prompts: int = 16,
    max_new_tokens: int = 96,
    temperatures: tuple[float, ...] = (0.0, 1.0),
    bf16: bool = True,
    aux_shift: bool = True,
    max_length: int = 1024,
    log=print,
) -> dict:
    target = load_target(target_dir)
    tok = target.tokenizer
    draft = load_draft(run_dir, target.model.get_input_embeddings().weight.detach())
    rows, _ = load_rows(data)
    rows = rows.select(range(min(prompts, len(rows))))
    if any(m is None or not any(t["role"] == "assistant" for t in m) for m in rows["messages"]):
        raise SpecforgeError(
            f"{data}: every row needs an assistant answer (use the regenerated held-out file)"
        )
    toks = served_prompt_ids(tok, rows, prompts, max_prompt_tokens=10**9)
    enc = [tokenize_conversation(tok, m, max_length) for m in rows["messages"]]
    tf = teacher_forced(
        lambda batch, lm: ttt_forward(draft, batch, lm, k, 0.8),
        online_batches(
            target,
            {"input_ids": [e[0] for e in enc], "loss_mask": [e[1] for e in enc]},
            CaptureConfig(aux_layers=list(draft.config.aux_layer_ids)),
            8,
        ),
        target.model.lm_head,
    )
    old = acceptance_stats(tf.correct.flatten(1)[:, None], tf.in_vocab.flatten(1)[:, None])
    new = acceptance_stats(tf.correct.flatten(1)[:, None], tf.valid.flatten(1)[:, None])
    walk = walked_acceptance(tf.correct, tf.valid, k)
    walk_lim = walked_acceptance(tf.correct, tf.valid, k, max_new_tokens)
    teacher = {
        "in_vocab_only": {"tau": chain_tau(old.alpha, k), "alpha": old.alpha},
        "all_anchors": {"tau": chain_tau(new.alpha, k), "alpha": new.alpha},
        "walk": {"tau": walk.tau, "acceptance_per_position": walk.acceptance_per_position},
        "walk_limited": {"tau": walk_lim.tau, "acceptance_per_position": walk_lim.acceptance_per_position},
    }
    log(f"teacher-forced: {json.dumps({n: round(v['tau'], 3) for n, v in teacher.items()})}")
    eos = tok.eos_token_id
    served = {}
    for t in temperatures:
        est = served_estimate(target.model, draft, toks, k, t, max_new_tokens, eos)
        served[served_key(t)] = est.to_json()
        log(f"served estimate T={t:g}: tau {est.tau:.3f}")
    vllm: dict[str, dict] = {}
    for t in temperatures:
        vllm[served_key(t)] = _vllm(
            target_dir, export_dir, toks, k, t, max_new_tokens, "float32", out_dir / f"vllm-{served_key(t)}"
        )
        log(f"vLLM T={t:g}: tau {vllm[served_key(t)]['tau']:.3f}")
    causes: dict[str, dict] = {}
    # out-of-vocabulary targets: the old estimate skipped them; how often served tokens fall outside
    t2d = draft.t2d.cpu()
    greedy = vllm.get("t0", {}).get("outputs") or []
    served_tokens = [x for o in greedy for x in o]
    causes["out_of_vocab"] = {
        "tau_in_vocab_only": teacher["in_vocab_only"]["tau"],
        "tau_counted_as_miss": teacher["all_anchors"]["tau"],
        "served_tokens_outside_draft_vocab": (
            sum(not bool(t2d[x]) for x in served_tokens) / max(1, len(served_tokens))
        ),
    }
    causes["anchor_selection"] = {"tau_all_anchors": teacher["all_anchors"]["tau"], "tau_walk": walk.tau}
    answers = [e[0][e[1].index(1) :] if 1 in e[1] else [] for e in enc]
    causes["length_and_eos"] = {
        "tau_walk_whole_answers": walk.tau,
        "tau_walk_cut_at_max_new_tokens": walk_lim.tau,
        "answer_tokens_mean": sum(map(len, answers)) / max(1, len(answers)),
        "served_tokens_mean": sum(map(len, greedy)) / max(1, len(greedy)),
        "served_hit_eos": sum(1 for o in greedy if o and o[-1] == eos) / max(1, len(greedy)),
    }
    causes["prompt_format"] = {
        "served_prompts_equal_training_prefix": sum(
            1 for p, e in zip(toks, enc) if 1 in e[1] and e[0][: e[1].index(1)] == p
        )
        / max(1, len(toks))
    }
    causes["data_vs_served_tokens"] = {
        "served_equal_to_training_answer_prefix": sum(
            1 for o, a in zip(greedy, answers) if a[: len(o)] == o or o[: len(a)] == a
        )
        / max(1, len(greedy)),
        "mean_common_prefix_tokens": sum(_common(o, a) for o, a in zip(greedy, answers))
        / max(1, len(greedy)),
    }
    causes["engine"] = {
        key: {"served_estimate_tau": served[key]["tau"], "vllm_tau": vllm[key]["tau"]} for key in vllm
    }
    if aux_shift:
        shifted = {}
        for shift in (-1, 1):
            d = copy.deepcopy(draft)
            d.config.aux_layer_ids = [i + shift for i in draft.config.aux_layer_ids]
            shifted[f"reference_shift_{shift:+d}"] = served_estimate(
                target.model, d, toks, k, 0.0, max_new_tokens, eos
            ).tau
        exp = _shifted_export(export_dir, 1, out_dir / "export-aux+1")
        shifted["vllm_shift_+1"] = _vllm(
            target_dir, exp, toks, k, 0.0, max_new_tokens, "float32", out_dir / "vllm-aux+1"
        )["tau"]
        causes["aux_layers"] = {
            "as_trained_reference": served["t0"]["tau"] if "t0" in served else None,
            "as_trained_vllm": vllm.get("t0", {}).get("tau"),
            **shifted,
        }
        log(f"aux layers: {causes['aux_layers']}")
    if bf16:
        b = _vllm(target_dir, export_dir, toks, k, 0.0, max_new_tokens, "bfloat16", out_dir / "vllm-bf16")
        causes["dtype"] = {
            "vllm_tau_float32": vllm.get("t0", {}).get("tau"),
            "vllm_tau_bfloat16": b["tau"],
            "bf16_outputs_differ_from_float32": sum(x != y for x, y in zip(b["outputs"], greedy))
            / max(1, len(greedy)),
        }
        log(f"dtype: {causes['dtype']}")
    for v in vllm.values():
        v.pop("outputs", None)
    result = {
        "target": str(target_dir),
        "run": str(run_dir),
        "draft": str(export_dir),
        "data": str(data),
        "k": k,
        "prompts": len(toks),
        "max_new_tokens": max_new_tokens,
        "teacher_forced": teacher,
        "served_estimate": served,
        "vllm": vllm,
        "served_estimate_vs_vllm": {
            key: served[key]["tau"] / vllm[key]["tau"] - 1 for key in vllm if key in served
        },
        "causes": causes,
        "torch_threads": torch.get_num_threads(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "fidelity.json").write_text(json.dumps(result, indent=1))
    return result


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
