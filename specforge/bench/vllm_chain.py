"""Acceptance of a draft served by the real vLLM (chains), against plain decoding in the same vLLM.

Contract: :func:`bench_vllm_chain` takes held-out prompts (a file, or a prompt-set name such as
``humaneval``: see :func:`chat_prompts`), renders a conversation's turns before its first answer with
the target's chat template and tokenises a plain-text row as it is (a raw completion prompt), and
runs vLLM twice on the same token prompts: plain, and with the EAGLE-3 draft at ``k`` speculative
tokens. It reports

* ``tau``: vLLM's mean acceptance length, ``1 + accepted / drafts`` (bonus token included);
* ``acceptance_per_position``: accepted_per_pos[i] / drafts (P(position i accepted));
* ``alpha``: conditional acceptance, P(position i accepted | positions < i accepted);
* ``speedup``: plain generate time / speculative generate time (best of ``repeats`` each);
* ``lossless``: whether greedy outputs are token-identical (only meaningful at temperature 0);
* ``distinct4``: distinct-4-gram ratio of the outputs tau was measured on (loops inflate tau).
"""

from __future__ import annotations

import json
from pathlib import Path

from serving.acceptance import conditional_acceptance
from serving.vllm_plugin.harness.runner import run_vllm
from specforge.data.formats import load_rows
from specforge.data.humaneval import resolve_prompt_source
from specforge.errors import SpecforgeError
from specforge.metrics import distinct_ngram_ratio
from specforge.targets.loader import load_tokenizer


def chat_prompts(target_dir: Path, data: Path, limit: int, max_prompt_tokens: int = 768) -> list[list[int]]:
    """Up to ``limit`` token prompts of at most ``max_prompt_tokens`` from ``data``: a dataset file, or
    the name of a built-in prompt set (see :func:`resolve_prompt_source`). A conversation gives its
    turns before the first assistant turn, rendered with the chat template (generation prompt added);
    a plain-text row gives its text as a raw completion prompt (tokenised as in training, no template)."""
    rows, _ = load_rows(resolve_prompt_source(data))
    tok = load_tokenizer(target_dir, need_chat_template=any(m is not None for m in rows["messages"]))
    prompts = []
    for r in rows:
        msgs = r["messages"]
        if msgs:
            first_assistant = next(i for i, m in enumerate(msgs) if m["role"] == "assistant")
            ids = tok.apply_chat_template(msgs[:first_assistant], add_generation_prompt=True)
            if hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
        else:
            ids = tok(r["text"], add_special_tokens=True)["input_ids"]
        if len(ids) <= max_prompt_tokens:
            prompts.append(list(ids))
        if len(prompts) == limit:
            break
    if not prompts:
        raise SpecforgeError(f"{data}: no prompt of at most {max_prompt_tokens} tokens to benchmark on")
    return prompts


def bench_vllm_chain(
    target_dir: Path,
    draft_dir: Path,
    data: Path,
    workdir: Path,
    k: int = 4,
    temperature: float = 0.0,
    max_tokens: int = 128,
    limit: int = 32,
    repeats: int = 2,
) -> dict:
    prompts = chat_prompts(target_dir, data, limit)
    base = {
        "target": str(target_dir),
        "prompts": prompts,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "repeats": repeats,
        "max_model_len": 1024,
    }
    plain = run_vllm(base, workdir / "plain")
    spec = run_vllm({**base, "draft": str(draft_dir), "num_speculative_tokens": k}, workdir / "spec")
    c = spec["spec"]
    drafts = max(1, c.get("drafts", 0))
    per_pos = [a / drafts for a in c.get("accepted_per_pos", [])]
    alpha = conditional_acceptance(per_pos, 1.0)
    outputs = spec["outputs"]
    result = {
        "k": k,
        "temperature": temperature,
        "prompts": len(prompts),
        "tau": 1 + c.get("accepted_tokens", 0) / drafts,
        "acceptance_per_position": per_pos,
        "alpha": alpha,
        "accepted_over_drafted": c.get("accepted_tokens", 0) / max(1, c.get("draft_tokens", 0)),
        "drafts": c.get("drafts", 0),
        "plain_tokens_per_s": plain["output_tokens"] / plain["seconds"],
        "spec_tokens_per_s": spec["output_tokens"] / spec["seconds"],
        "speedup": plain["seconds"]
        / spec["seconds"]
        * spec["output_tokens"]
        / max(1, plain["output_tokens"]),
        "lossless": outputs == plain["outputs"] if temperature == 0 else None,
        "distinct4": sum(distinct_ngram_ratio(o) for o in outputs) / max(1, len(outputs)),
    }
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "result.json").write_text(json.dumps(result, indent=1))
    return result
