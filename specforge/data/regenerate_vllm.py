"""Regenerate assistant turns with the target served by the real vLLM, in large continuous batches.

Contract: :func:`regenerate_vllm` reads a dataset (any format :mod:`formats` accepts, prompt-only
conversations included) and writes an OpenAI-messages JSONL in which every assistant turn is the
target's response to the conversation so far, and a conversation that ends in a user turn gets the
target's answer appended. Turn ``t`` of every conversation is generated in one vLLM run (earlier
turns already regenerated), greedily (``temperature=0``) or sampled. vLLM streams each chunk of
answers to ``<out>.parts/turn-T.jsonl`` (token ids), so a killed run resumes with the prompts not
yet answered; the output is written atomically when every turn is done. ``<out>.meta.json`` records
the input's hash, the target and the settings (as :func:`specforge.data.regenerate.regenerate`
does); an output made from anything else is refused. A conversation whose prompt would leave less
than ``max_new_tokens`` of room in ``max_model_len`` keeps only the turns before it (counted in
``cut_conversations``); one left without an assistant turn, or whose answer came out empty, is
dropped (``dropped_conversations``). Plain-text rows are copied unchanged. ``data_parallel_size``
N runs N independent engines at once, each on every N-th prompt with its own devices (its
``tensor_parallel_size`` GPUs, or its share of the CPU cores) and its own stream file
(``turn-T.dpR.jsonl``); vLLM's offline engine has no in-process data parallelism. Loss masks come later,
from :mod:`specforge.data.tokenize`: the regenerated assistant turns are what a draft learns.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tqdm.auto import tqdm

from serving.vllm_plugin.harness.runner import device_env, run_vllm, stop_all_runs
from specforge.data.formats import load_rows
from specforge.data.regenerate import _count_complete_lines, check_reuse, regeneration_meta
from specforge.data.tokenize import chat_prompt_ids
from specforge.errors import SpecforgeError
from specforge.files import write_json_atomic
from specforge.targets.loader import load_tokenizer


def _read_stream(path: Path) -> dict[int, list[int]]:
    """``index -> token_ids`` of the answers streamed so far (a torn last line is cut off first)."""
    if _count_complete_lines(path) == 0:
        return {}
    done = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        done[int(row["index"])] = row["token_ids"]
    return done


def _read_streams(parts: Path, turn: int) -> dict[int, list[int]]:
    """The answers of turn ``turn`` streamed so far, by every replica."""
    done: dict[int, list[int]] = {}
    for path in sorted(parts.glob(f"turn-{turn}*.jsonl")):
        done.update(_read_stream(path))
    return done


def _run_replicas(
    request: dict,
    todo: list[int],
    prompts: list[list[int]],
    parts: Path,
    turn: int,
    seed: int,
    replicas: int,
    kv_cache_gib: int,
    poll,
) -> list[dict]:
    """Answer ``prompts`` (conversation ``todo[i]``'s is ``prompts[i]``) with ``replicas`` independent
    vLLM engines at once (data parallelism: every ``replicas``-th prompt to each), each streaming to
    its own file; return their results."""
    import threading

    gpus_needed = replicas * request["tensor_parallel_size"]
    if replicas > 1:
        import torch

        have = torch.cuda.device_count() or len(os.sched_getaffinity(0))
        if have < gpus_needed:
            raise SpecforgeError(
                f"data parallel size {replicas} x tensor parallel size {request['tensor_parallel_size']} "
                f"needs {gpus_needed} devices (GPUs, or CPU cores on a machine without one); {have} here"
            )
    results: list[dict | BaseException] = [RuntimeError("not run")] * replicas

    def run(rank: int) -> None:
        stream = parts / (f"turn-{turn}.jsonl" if replicas == 1 else f"turn-{turn}.dp{rank}.jsonl")
        mine = list(range(rank, len(todo), replicas))
        req = {
            **request,
            "prompts": [prompts[i] for i in mine],
            "stream_to": str(stream.resolve()),
            "stream_ids": [todo[i] for i in mine],
            "seed": seed + 7919 * rank,
        }
        env = {
            "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),
            **device_env(rank, replicas, request["tensor_parallel_size"]),
        }
        try:
            results[rank] = run_vllm(
                req,
                parts / f"vllm-turn-{turn}-dp{rank}",
                timeout=24 * 3600,
                env=env,
                poll=poll if rank == 0 else None,
            )
        except BaseException as e:  # reported below, once every replica has stopped
            results[rank] = e

    threads = [
        threading.Thread(target=run, args=(r,)) for r in range(replicas) if range(r, len(todo), replicas)
    ]
    for th in threads:
        th.start()
    try:
        for th in threads:
            th.join()
    except BaseException:  # interrupted: the replicas' vLLM processes stop with this one
        stop_all_runs()
        raise
    failed = [r for r in results[: len(threads)] if isinstance(r, BaseException)]
    if failed:
        raise failed[0]
    return [r for r in results[: len(threads)] if isinstance(r, dict)]


def regenerate_vllm(
    target_dir: str | Path,
    data_path: str | Path,
    out_path: str | Path,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    limit: int | None = None,
    skip_bad_rows: bool = False,
    dtype: str = "float32",
    max_num_seqs: int = 64,
    max_model_len: int = 2048,
    chunk: int = 256,
    kv_cache_gib: int = 4,
    tensor_parallel_size: int = 1,
    data_parallel_size: int = 1,
    progress: bool = True,
) -> dict:
    """Rewrite assistant turns through vLLM (``tensor_parallel_size`` / ``data_parallel_size``: vLLM's
    own settings, passed through); return counts (rows, answers generated, resumed, cut and
    dropped conversations, seconds and tokens per second of the vLLM runs, ``cached``)."""
    target_dir, out_path = Path(target_dir), Path(out_path)
    parts = out_path.with_name(out_path.name + ".parts")
    meta_path = out_path.with_name(out_path.name + ".meta.json")
    settings = {
        "engine": "vllm",
        "dtype": dtype,
        "max_new_tokens": max_new_tokens,
        "max_model_len": max_model_len,
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
        "limit": limit,
        "skip_bad_rows": skip_bad_rows,
    }
    meta = regeneration_meta(data_path, target_dir, settings)
    if check_reuse(meta_path, meta, out_path, parts):
        return {"rows": sum(1 for _ in out_path.open()), "cached": True}
    ds, report = load_rows(data_path, skip_bad_rows=skip_bad_rows, allow_prompt_only=True)
    n = len(ds) if limit is None else min(limit, len(ds))
    convs: list[list[dict] | None] = []
    for i in range(n):
        msgs = ds[i]["messages"]
        conv = [dict(m) for m in msgs] if msgs is not None else None
        if conv is not None and conv[-1]["role"] != "assistant":
            conv.append({"role": "assistant", "content": ""})  # the answer to write
        convs.append(conv)
    turns = [[j for j, m in enumerate(c) if m["role"] == "assistant"] if c else [] for c in convs]
    tok = load_tokenizer(target_dir)
    parts.mkdir(parents=True, exist_ok=True)
    write_json_atomic(meta_path, meta)
    stats = {"answers": 0, "resumed": 0, "cut_conversations": 0, "vllm_seconds": 0.0, "output_tokens": 0}
    for t in range(max((len(x) for x in turns), default=0)):
        done = _read_streams(parts, t)
        stats["resumed"] += len(done)
        todo, prompts = [], []
        for ci, conv in enumerate(convs):
            if conv is None or len(turns[ci]) <= t or ci in done:
                continue
            ids = chat_prompt_ids(tok, conv[: turns[ci][t]])
            if len(ids) + max_new_tokens > max_model_len:
                del conv[turns[ci][t] :]  # keep the turns before this one
                turns[ci] = turns[ci][:t]
                stats["cut_conversations"] += 1
                continue
            todo.append(ci)
            prompts.append(ids)
        total = len(todo) + len(done)
        if todo:
            bar = tqdm(
                total=total,
                initial=len(done),
                desc=f"regenerate turn {t + 1}",
                unit="answer",
                disable=not progress,
            )

            def advance(bar=bar, t=t) -> None:
                files = parts.glob(f"turn-{t}*.jsonl")
                bar.n = min(bar.total, sum(f.read_bytes().count(b"\n") for f in files))
                bar.refresh()

            request = {
                "target": str(target_dir),
                "max_tokens": max_new_tokens,
                "temperature": temperature,
                "top_p": top_p,
                "seed_requests": False,
                "dtype": dtype,
                "max_num_seqs": max_num_seqs,
                "max_model_len": max_model_len,
                "stream_chunk": chunk,
                "tensor_parallel_size": tensor_parallel_size,
            }
            results = _run_replicas(
                request, todo, prompts, parts, t, seed + t, data_parallel_size, kv_cache_gib, advance
            )
            bar.close()
            stats["vllm_seconds"] += max(r["seconds"] for r in results)
            stats["output_tokens"] += sum(r["output_tokens"] for r in results)
            stats["answers"] += len(todo)
            done = _read_streams(parts, t)
        missing = [ci for ci in range(n) if convs[ci] is not None and len(turns[ci]) > t and ci not in done]
        if missing:
            raise SpecforgeError(
                f"vLLM returned no answer for {len(missing)} prompts of turn {t + 1} (see {parts})"
            )
        for ci, ids in done.items():
            if convs[ci] is not None and len(turns[ci]) > t:
                convs[ci][turns[ci][t]]["content"] = tok.decode(ids, skip_special_tokens=True).strip()
    rows, dropped = [], 0
    for i, conv in enumerate(convs):
        if conv is None:
            rows.append({"text": ds[i]["text"]})
        elif not turns[i] or any(not conv[j]["content"] for j in turns[i]):
            dropped += 1
        else:
            rows.append({"messages": conv})
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, out_path)
    secs = stats["vllm_seconds"]
    return {
        "rows": len(rows),
        **stats,
        "vllm_seconds": round(secs, 1),
        "tokens_per_second": round(stats["output_tokens"] / secs, 1) if secs else None,
        "dropped_conversations": dropped,
        "skipped_bad_rows": report.skipped,
        "cached": False,
    }
