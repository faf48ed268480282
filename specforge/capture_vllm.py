"""Capture a target's hidden states through the real vLLM, into the same shards as :mod:`specforge.capture`.

Contract: :func:`write_shards_vllm` takes the rows :func:`specforge.capture.write_shards` takes
(``input_ids`` / ``loss_mask``) and writes the same directory: safetensors shards of
``sequences_per_shard`` rows holding ``input_ids``, ``loss_mask``, ``aux_hidden_states``,
``last_hidden_state`` and ``target_argmax``, plus ``manifest.json``. :class:`~specforge.capture.ShardDataset`
reads either, and a trainer cannot tell them apart but by the manifest's ``engine``.

How: vLLM serves the target with its ``extract_hidden_states`` speculative method, which keeps the
hidden states of the requested layers in a cache beside the KV cache, and a KV-transfer connector
(:mod:`serving.vllm_plugin.hidden_states_connector`) writes each finished prompt's states to a host
file. vLLM numbers aux layers as this toolkit does (layer ``k``: the input of decoder layer ``k``;
``L``: the last layer's output before the final norm), so the aux layers come straight from it. The
last hidden state is layer ``L`` through the target's final RMSNorm, and ``target_argmax`` is the
target's LM head on it, computed here from those two weights (read from the safetensors files; the
model is never built in this process). Each shard is one chunk of vLLM requests (continuous
batching within it; ``max_num_seqs`` at a time): vLLM stages per-prompt files under
``<out>/.vllm-staging/<shard>/``, and a chunk vLLM has finished becomes a shard while later ones run.
A killed run resumes shard by shard: finished shards are kept, a finished chunk is assembled
without running vLLM again, the rest is captured again. Targets whose final norm is not a
Llama-style RMSNorm are refused (capture them with the HF engine).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import datasets
import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from draft_models.aux_hooks import LAST_HIDDEN
from serving.vllm_plugin.harness.capture import DONE
from serving.vllm_plugin.harness.runner import device_env, run_vllm
from specforge.capture import (
    CaptureConfig,
    Manifest,
    open_capture,
    publish_shard,
    shard_name,
    target_argmax,
    write_shards,
)
from specforge.errors import SpecforgeError
from specforge.targets.loader import Target

STAGING = ".vllm-staging"
# model types whose final norm is weight * x / rms(x) (Hugging Face's LlamaRMSNorm and its copies)
RMSNORM_TARGETS = frozenset({"llama", "mistral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "mixtral"})


class _Assembler:
    """Turns a staged chunk (per-prompt files vLLM wrote) into one shard of the capture."""

    def __init__(
        self, target: Target, ds: datasets.Dataset, out: Path, manifest: Manifest, layers: list[int]
    ):
        cfg = target.config
        if cfg.model_type not in RMSNORM_TARGETS:
            raise SpecforgeError(
                f"capture --engine vllm derives the last hidden state through a Llama-style RMSNorm; a "
                f"{cfg.model_type!r} target is not one of {sorted(RMSNORM_TARGETS)}: use --engine hf"
            )
        self.ds, self.out, self.manifest, self.layers = ds, out, manifest, layers
        self.num_layers = target.num_layers
        # what vLLM is asked for: the stored aux layers and the last layer, each once, ascending
        # (the order its model collects them in)
        self.requested = sorted({k for k in layers if k != LAST_HIDDEN} | {self.num_layers})
        self.norm_weight = target.tensor("model.norm.weight").float()
        self.eps = float(cfg.rms_norm_eps)
        self.lm_head = partial(torch.nn.functional.linear, weight=target.tensor("lm_head.weight").float())
        self.dtype = getattr(torch, manifest.dtype)

    def staged(self, shard_index: int) -> Path:
        return self.out / STAGING / shard_name(shard_index).removesuffix(".safetensors")

    def rows(self, shard_index: int) -> range:
        lo = shard_index * self.manifest.sequences_per_shard
        return range(lo, min(lo + self.manifest.sequences_per_shard, self.manifest.num_sequences))

    def assemble(self, shard_index: int) -> int:
        """Write shard ``shard_index`` from its staged chunk, delete the staged files; return its rows."""
        chunk = self.staged(shard_index)
        tensors: dict[str, list[torch.Tensor]] = {}
        lengths = []
        for i in self.rows(shard_index):
            row = self.ds[i]
            staged = load_file(str(chunk / f"{i}.safetensors"))
            ids = torch.as_tensor(row["input_ids"], dtype=torch.long)
            if not torch.equal(staged["token_ids"].long(), ids):
                raise SpecforgeError(f"{chunk}: vLLM's file for row {i} holds other tokens; delete {chunk}")
            hidden = staged["hidden_states"].float()  # [seq, len(requested), hidden]
            last_layer = hidden[:, self.requested.index(self.num_layers)]
            last = (
                torch.nn.functional.rms_norm(last_layer, (last_layer.shape[-1],), eps=self.eps)
                * self.norm_weight
            )
            aux = torch.cat(
                [last if k == LAST_HIDDEN else hidden[:, self.requested.index(k)] for k in self.layers],
                dim=-1,
            )
            loss = torch.as_tensor(row["loss_mask"], dtype=torch.long)
            argmax = target_argmax(self.lm_head, last[None], loss[None], torch.ones_like(loss)[None])[0]
            for key, value in (
                ("input_ids", ids),
                ("loss_mask", loss),
                ("aux_hidden_states", aux.to(self.dtype)),
                ("last_hidden_state", last.to(self.dtype)),
                ("target_argmax", argmax),
            ):
                tensors.setdefault(key, []).append(value)
            lengths.append(len(ids))
        publish_shard(self.out, shard_name(shard_index), tensors, lengths, self.manifest)
        shutil.rmtree(chunk)  # only files this capture staged
        return len(lengths)


def write_shards_vllm(
    target: Target,
    ds: datasets.Dataset,
    out_dir: str | Path,
    cfg: CaptureConfig | None = None,
    sequences_per_shard: int = 256,
    engine_dtype: str = "float32",
    max_num_seqs: int = 64,
    kv_cache_gib: int = 4,
    tensor_parallel_size: int = 1,
    pipeline_parallel_size: int = 1,
    progress: bool = True,
) -> Manifest:
    """Capture ``ds`` through vLLM (``engine_dtype``: the dtype vLLM computes in; ``cfg.dtype``: the
    one stored) into ``out_dir``, resuming where a run stopped; return the finished manifest. The
    manifest's ``engine_seconds`` accumulates vLLM's time over the runs that built it."""
    cfg = cfg or CaptureConfig()
    if cfg.store_logits:
        raise SpecforgeError(
            "capture --engine vllm does not store logits (the shards hold target_argmax): use --engine hf"
        )
    out, cfg, manifest = open_capture(target, ds, out_dir, cfg, sequences_per_shard, engine="vllm")
    layers = manifest.aux_layers
    done = {s.file for s in manifest.shards}
    todo = [i for i in range(manifest.num_shards) if shard_name(i) not in done]
    if manifest.complete and not todo:
        return manifest
    asm = _Assembler(target, ds, out, manifest, layers)
    bar = tqdm(total=len(ds), desc="capture (vLLM)", unit="seq", disable=not progress)
    bar.update(sum(s.num_sequences for s in manifest.shards))
    pending = []
    for i in todo:
        if (asm.staged(i) / DONE).is_file():  # vLLM finished it before the last run stopped
            bar.update(asm.assemble(i))
        else:
            shutil.rmtree(asm.staged(i), ignore_errors=True)  # a chunk cut short: capture it again
            pending.append(i)

    def assemble_finished() -> None:
        while pending and (asm.staged(pending[0]) / DONE).is_file():
            bar.update(asm.assemble(pending.pop(0)))

    if pending:
        index = [r for i in pending for r in asm.rows(i)]  # request prompt j is dataset row index[j]
        position = {r: j for j, r in enumerate(index)}
        longest = max(len(ds[r]["input_ids"]) for r in index)
        request = {
            "target": str(target.path),
            "prompts": [ds[r]["input_ids"] for r in index],
            "max_tokens": 1,
            "dtype": engine_dtype,
            "max_num_seqs": max_num_seqs,
            "max_model_len": longest + 16,
            "tensor_parallel_size": tensor_parallel_size,
            "pipeline_parallel_size": pipeline_parallel_size,
            "capture": {
                "layers": asm.requested,
                "out_dir": str((out / STAGING).resolve()),
                "chunks": [
                    {
                        "name": asm.staged(i).name,
                        "prompts": [position[r] for r in asm.rows(i)],
                        "ids": list(asm.rows(i)),  # files named by dataset row: a later run reads them
                    }
                    for i in pending
                ],
            },
        }
        t0 = time.perf_counter()
        try:
            result = run_vllm(
                request,
                out / STAGING / "vllm",
                timeout=7 * 24 * 3600,
                env={
                    "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),
                    **device_env(0, 1, tensor_parallel_size * pipeline_parallel_size),
                },
                poll=assemble_finished,
            )
        except RuntimeError as e:
            raise SpecforgeError(f"vLLM stopped while capturing into {out} (run again to resume): {e}") from e
        finally:
            bar.close()
        manifest.engine_seconds = round(manifest.engine_seconds + result["seconds"], 2)
        manifest.wall_seconds = round(manifest.wall_seconds + time.perf_counter() - t0, 2)
        assemble_finished()
        if pending:
            raise SpecforgeError(f"vLLM finished without capturing shards {pending} into {out}; run again")
    bar.close()
    shutil.rmtree(out / STAGING, ignore_errors=True)
    manifest.complete = True
    manifest.save(out)
    return manifest


def shard_writer(engine: str, target_dtype: str) -> Callable[..., Manifest]:
    """``write_shards`` (``engine`` "hf") or :func:`write_shards_vllm` with vLLM computing in the
    dtype the target runs in (``target_dtype``: a dtype name, or "checkpoint" for its config's)."""
    if engine == "hf":
        return write_shards

    def write(
        target: Target, ds: datasets.Dataset, out_dir, cfg: CaptureConfig, progress: bool = True
    ) -> Manifest:
        dtype = target_dtype
        if dtype == "checkpoint":
            dtype = str(getattr(target.config, "dtype", None) or target.config.torch_dtype or "float32")
            dtype = dtype.removeprefix("torch.")
        if dtype not in ("float32", "bfloat16"):
            raise SpecforgeError(
                f"capture_engine vllm computes in float32 or bfloat16, not {dtype}: set target_dtype"
            )
        return write_shards_vllm(target, ds, out_dir, cfg, engine_dtype=dtype, progress=progress)

    return write
