"""The draft-training loop, run by ``accelerate launch -m specforge.train`` or plain ``python -m``.

Contract: :func:`train` builds the draft vocabulary from the training data, creates the draft head
named by ``cfg.draft.type`` (from the registry), and trains it with the training-time-test loss
against a frozen target whose hidden states come online (captured per batch) or offline (shards).
Gradient accumulation, mixed precision, clipping, a cosine schedule with warm-up, DDP and FSDP 2
(the draft sharded, the frozen target whole on every process: :mod:`specforge.train.sharding`)
come from accelerate. ``train/loss`` is each optimizer step's loss averaged over its micro-batches
and processes. Every ``save_every`` optimizer steps, ``accelerator.save_state`` writes a
checkpoint to a temporary directory that is renamed into place, then ``latest.json`` is replaced
atomically; the resolved config sits beside every checkpoint. Resuming reloads model, optimizer,
scheduler, RNG and the loop's own position (:class:`LoopState`) and skips the batches already seen
in the current epoch, so a killed-and-resumed run follows the uninterrupted run's trajectory.
Each evaluation logs alpha_k and the simulated tau (bonus token included) on the held-out split.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from draft_models.registry import get_draft_type
from specforge.bench.served import ServedEstimate, served_estimate, served_key
from specforge.capture import (
    CaptureConfig,
    CapturedBatch,
    OnlineCapture,
    ShardDataset,
    collate_captured,
    pad_batch,
)
from specforge.capture_vllm import shard_writer
from specforge.config import TrainConfig
from specforge.data.formats import load_rows
from specforge.data.tokenize import load_tokenized, served_prompt_ids
from specforge.errors import SpecforgeError
from specforge.files import write_json_atomic
from specforge.targets.dtype import choose_dtype
from specforge.targets.fingerprint import target_fingerprint
from specforge.targets.loader import Target, load_target
from specforge.train.batching import make_loader
from specforge.train.checkpoints import flat_hparams, latest_checkpoint, resume, save_checkpoint
from specforge.train.draft_init import init_from_target
from specforge.train.estimates import estimate_logs, online_batches, teacher_forced
from specforge.train.sharding import full_draft_state, plain_draft, setup_fsdp, step_loss, use_cpu
from specforge.train.ttt import TargetHead, ttt_forward
from specforge.vocab import build_draft_vocab

WARMUP_STEPS = 5


def _steady_rates(warm: tuple[float, int, int] | None, tokens: int, loss_tokens: int, procs: int) -> dict:
    if warm is None:
        return {}
    dt = max(1e-9, time.time() - warm[0])
    return {
        "steady_tokens_per_s": round((tokens - warm[1]) * procs / dt, 1),
        "steady_loss_tokens_per_s": round((loss_tokens - warm[2]) * procs / dt, 1),
    }


def _mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    choice = choose_dtype("cuda" if torch.cuda.is_available() else "cpu")
    chosen = "bf16" if choice.dtype == "bfloat16" else "no"
    print(f"[train] mixed precision {chosen}: {choice.reason}")
    return chosen


def peak_rss_gb() -> float:
    """This process's peak resident memory so far, in GB (Linux reports KiB, macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e9 if sys.platform == "darwin" else peak * 1024 / 1e9


@dataclass
class LoopState:
    """The loop's own position, saved with every checkpoint."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches consumed in the current epoch

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, sd: dict) -> None:
        self.__dict__.update(sd)


class TTTModule(nn.Module):
    """Wraps a draft so DDP sees one forward: the training-time-test loss on a captured batch."""

    def __init__(self, draft: nn.Module, steps: int, decay: float):
        super().__init__()
        self.draft, self.steps, self.decay = draft, steps, decay

    def forward(self, batch: CapturedBatch, head: TargetHead | nn.Module | None):
        return ttt_forward(self.draft, batch, head, self.steps, self.decay)


def _tokenized(path: str, target: Target, cfg: TrainConfig, limit: int | None = None):
    return load_tokenized(path, target.tokenizer, cfg.data.max_length, cfg.data.skip_bad_rows, limit)


def train(cfg: TrainConfig) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    out = Path(cfg.output_dir)
    log_with = [x for x in cfg.log_with if x != "wandb" or cfg.wandb_mode != "disabled"]
    if "wandb" in log_with:
        os.environ.setdefault("WANDB_MODE", cfg.wandb_mode)
    accelerator = Accelerator(
        cpu=use_cpu(),
        gradient_accumulation_steps=cfg.optim.grad_accum,
        mixed_precision=_mixed_precision(cfg.mixed_precision),
        log_with=log_with or None,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    fsdp = setup_fsdp(accelerator)
    set_seed(cfg.seed)
    if cfg.target is None:
        from specforge.targets.tiny import build_tiny_target

        with accelerator.main_process_first():
            target_dir = build_tiny_target(progress=accelerator.is_main_process)
    else:
        target_dir = Path(cfg.target)
    offline = cfg.hidden_states == "offline"
    # offline, the model itself is loaded only to capture, evaluate online or serve the estimate
    target_dtype = cfg.target_dtype
    if target_dtype == "auto":
        choice = choose_dtype(accelerator.device.type)
        target_dtype = choice.dtype
        accelerator.print(f"[train] target dtype {choice.dtype}: {choice.reason}")
    target = load_target(
        target_dir,
        dtype="auto" if target_dtype == "checkpoint" else target_dtype,
        device=accelerator.device,
        need_chat_template=False,
        lazy=offline,
    )
    with accelerator.main_process_first():
        train_ds, train_report = _tokenized(cfg.data.train, target, cfg)
        eval_ds = _tokenized(cfg.data.eval, target, cfg, cfg.data.eval_limit)[0] if cfg.data.eval else None

    dtype = get_draft_type(cfg.draft.type)
    aux = cfg.draft.aux_layers
    capture_cfg = CaptureConfig(
        aux_layers=aux if aux is not None else dtype.config_cls.default_feature_layers(target.num_layers)
    )
    layers = capture_cfg.resolved_layers(target.num_layers)
    try:
        draft_cfg = dtype.config_cls.from_target(
            target.config, cfg.draft.draft_vocab_size, layers, **cfg.draft.options
        )
    except (TypeError, ValueError) as e:
        raise SpecforgeError(
            f"draft.options {cfg.draft.options} / draft.aux_layers {cfg.draft.aux_layers} do not fit a "
            f"{cfg.draft.type} head: {e}"
        ) from None
    vocab = build_draft_vocab(  # a head over the whole target vocabulary says so in its config
        zip(train_ds["input_ids"], train_ds["loss_mask"]), target.vocab_size, draft_cfg.draft_vocab_size
    )
    draft = dtype.model_cls(draft_cfg)
    draft.set_vocab(vocab.d2t, vocab.t2d)
    draft.load_target_embedding(target.tensor("model.embed_tokens.weight"))
    init = cfg.draft.init
    if getattr(draft, "frozen_target_head", False) and init != "target_mtp":
        init = "target_head"  # a head that shares the target's norm and LM head always loads them
    init_from_target(draft, target, init)
    module = TTTModule(draft, cfg.ttt.steps, cfg.ttt.decay)

    pad_id = target.tokenizer.pad_token_id
    pack = cfg.data.pack_length is not None
    eval_shards = None
    if offline:
        cap_dir = Path(cfg.capture_dir or out / "capture")
        if accelerator.is_main_process:
            write = shard_writer(cfg.capture_engine, target_dtype)
            stored = write(target, train_ds, cap_dir, capture_cfg, progress=cfg.progress).aux_layers
            if eval_ds is not None:  # held-out rows too (the same layers), so evaluation needs no model
                heldout_cfg = replace(capture_cfg, aux_layers=stored)
                write(target, eval_ds, cap_dir / "heldout", heldout_cfg, progress=cfg.progress)
        accelerator.wait_for_everyone()
        target.unload()  # the shards hold all training needs of it
        dataset = ShardDataset(cap_dir, layers=layers)
        if eval_ds is not None:
            eval_shards = ShardDataset(cap_dir / "heldout", layers=layers)
        collate = lambda items: collate_captured(items, pad_id, packed=pack)  # noqa: E731
        online = None
    else:
        dataset = train_ds.with_format(None)
        collate = lambda rows: pad_batch(rows, pad_id, packed=pack)  # noqa: E731
        online = OnlineCapture(target, capture_cfg)
    # online capture stores the target's argmax; a capture made before it did needs the whole head
    keep_full = online is None and "target_argmax" not in dataset[0]
    head = TargetHead.of(target.tensor("lm_head.weight"), vocab.t2d, keep_full=keep_full)
    lengths = [len(x) for x in train_ds["input_ids"]]
    loader, grouped = make_loader(dataset, lengths, collate, cfg)
    steps_per_epoch = max(1, math.ceil(len(loader) / accelerator.num_processes / cfg.optim.grad_accum))
    total_steps = cfg.optim.max_steps or max(1, int(cfg.optim.epochs * steps_per_epoch))
    trainable = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, betas=(0.9, 0.95)
    )
    scheduler = get_cosine_schedule_with_warmup(
        optimizer,
        int(cfg.optim.warmup_ratio * total_steps) * accelerator.num_processes,
        total_steps * accelerator.num_processes,
    )
    module, optimizer, loader, scheduler = accelerator.prepare(module, optimizer, loader, scheduler)
    trainable = [p for p in module.parameters() if p.requires_grad]  # FSDP replaced them with shards
    state = LoopState()
    accelerator.register_for_checkpointing(state)

    resume_from = latest_checkpoint(out)
    if resume_from is not None:
        resume_from = resume(accelerator, out, resume_from, cfg)
        accelerator.print(f"[train] resumed from {resume_from} at step {state.step}")
        if state.step >= total_steps:  # nothing to train: leave the run exactly as it is
            accelerator.print(
                f"[train] {out} is already complete ({state.step} of {total_steps} steps); nothing changed. "
                "Raise optim.max_steps or optim.epochs to train further, or choose a new output_dir"
            )
            summary = out / "train_summary.json"
            done = json.loads(summary.read_text()) if summary.is_file() else {}
            return {
                "final": done.get("final", {}),
                "history": [],
                "coverage": done.get("vocab_coverage", vocab.coverage),
                "steps": state.step,
                "already_complete": True,
            }
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "config.yaml")
        accelerator.init_trackers("specforge", config=flat_hparams(cfg.model_dump(mode="json")))
        accelerator.print(
            f"[train] {len(train_ds)} sequences ({train_report.skipped} bad rows skipped); draft vocab "
            f"{cfg.draft.draft_vocab_size} covers {vocab.coverage:.1%} of assistant tokens; {total_steps} steps"
        )

    def to_captured(batch) -> CapturedBatch:
        if online is not None:
            return online(**batch)
        return batch.to(accelerator.device)

    walk_k = min(cfg.served_eval.k, cfg.ttt.steps)

    def evaluate() -> dict:
        """Teacher-forced estimates on the held-out split (see specforge.train.estimates)."""
        if eval_ds is None:
            return {}
        module.eval()
        bs = cfg.optim.batch_size
        if eval_shards is not None:
            batches = (
                collate_captured([eval_shards[i] for i in range(lo, min(lo + bs, len(eval_shards)))], pad_id)
                for lo in range(0, len(eval_shards), bs)
            )
        else:
            batches = online_batches(target, eval_ds[:], online, bs)
        tf = teacher_forced(module if fsdp else accelerator.unwrap_model(module), batches, head)
        module.train()
        return estimate_logs(tf, walk_k, cfg.served_eval.max_new_tokens)

    served_prompts = (
        served_prompt_ids(target.tokenizer, load_rows(cfg.data.eval)[0], cfg.served_eval.prompts)
        if cfg.data.eval and cfg.served_eval.prompts and cfg.served_eval.temperatures
        else []
    )

    def served() -> dict[str, ServedEstimate]:
        """The head served closed loop by the reference engine on the held-out prompts (main process;
        under FSDP every process gathers the draft's shards first)."""
        if not served_prompts:
            return {}
        draft_now = plain_draft(accelerator, module, lambda: dtype.model_cls(draft_cfg), fsdp)
        if draft_now is None:
            return {}
        se = cfg.served_eval
        out = {
            served_key(t): served_estimate(
                target.model,
                draft_now,
                served_prompts,
                se.k,
                t,
                se.max_new_tokens,
                target.tokenizer.eos_token_id,
                seed=se.seed,
            )
            for t in se.temperatures
        }
        module.train()
        return out

    draft_json = {"type": cfg.draft.type, **draft_cfg.to_dict()}

    module.train()
    bar = tqdm(
        total=total_steps,
        initial=state.step,
        desc="train",
        disable=not (cfg.progress and accelerator.is_main_process),
    )
    history: list[dict] = []
    last_served: dict[str, ServedEstimate] = {}
    last_tau = float("nan")
    t0 = time.time()
    tokens_seen = 0  # real (non-padding) tokens this process has trained on since t0
    loss_tokens_seen = 0  # of which assistant tokens (where the loss falls)
    slots_seen = 0  # token slots of the batches, padding included
    first_step = state.step
    warm: tuple[float, int, int] | None = None  # (time, tokens, loss tokens) after WARMUP_STEPS steps
    loss_sums, micro_batches = torch.zeros(()), 0  # this optimizer step's losses so far: total, per TTT step
    while state.step < total_steps:
        if grouped is not None:  # this epoch's order, before any batches of it are skipped
            grouped.set_epoch(state.epoch)
        epoch_loader = (
            accelerator.skip_first_batches(loader, state.batches_in_epoch)
            if state.batches_in_epoch
            else loader
        )
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(state.epoch)
        for batch in epoch_loader:
            with accelerator.accumulate(module):
                captured = to_captured(batch)
                tokens_seen += int(captured.attention_mask.sum())
                loss_tokens_seen += int(captured.loss_mask.sum())
                slots_seen += captured.attention_mask.numel()
                res = module(captured, head)
                accelerator.backward(res.loss)
                loss_sums = loss_sums + torch.cat([res.loss.detach().view(1), res.step_losses.detach()]).cpu()
                micro_batches += 1
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(trainable, cfg.optim.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            state.batches_in_epoch += 1
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            losses = step_loss(accelerator, loss_sums, micro_batches)
            loss_sums, micro_batches = torch.zeros(()), 0
            if state.step - first_step == WARMUP_STEPS:
                warm = (time.time(), tokens_seen, loss_tokens_seen)
            elapsed = max(1e-9, time.time() - t0)
            logs = {
                "train/loss": losses[0],
                "lr": scheduler.get_last_lr()[0],
                "train/tokens_per_s": tokens_seen * accelerator.num_processes / elapsed,
                "train/loss_tokens_per_s": loss_tokens_seen * accelerator.num_processes / elapsed,
                "train/padding_fraction": 1 - tokens_seen / max(1, slots_seen),
                "train/peak_rss_gb": peak_rss_gb(),
                **{f"train/loss_{i}": v for i, v in enumerate(losses[1:])},
            }
            if state.step % cfg.eval_every == 0 or state.step == total_steps:
                logs.update(evaluate())
            every = cfg.served_eval.every
            if state.step == total_steps or (every and state.step % every == 0):
                last_served = served()
                for key, est in last_served.items():
                    logs.update(est.log_items(f"served/{key}/"))
            accelerator.log(logs, step=state.step)
            history.append({"step": state.step, **logs})
            bar.update(1)
            last_tau = logs.get("eval/tau", last_tau)
            bar.set_postfix(
                loss=f"{logs['train/loss']:.3f}",
                eval_tau=f"{last_tau:.2f}",
                tok_s=f"{logs['train/tokens_per_s']:.0f}",
                rss_gb=f"{logs['train/peak_rss_gb']:.2f}",
            )
            if state.step % cfg.save_every == 0 or state.step == total_steps:
                save_checkpoint(accelerator, out, state.step, cfg, draft_json)
            if state.step >= total_steps:
                break
        else:
            state.epoch += 1
            state.batches_in_epoch = 0
    bar.close()
    if online is not None:
        online.close()
    weights = full_draft_state(accelerator, module)  # under FSDP a collective: before end_training
    accelerator.end_training()
    final = {k: v for k, v in history[-1].items()} if history else {}
    if accelerator.is_main_process:
        from safetensors.torch import save_file

        save_file(weights, str(out / "draft.safetensors.tmp"))
        os.replace(out / "draft.safetensors.tmp", out / "draft.safetensors")
        write_json_atomic(out / "draft_config.json", draft_json)
        write_json_atomic(
            out / "train_summary.json",
            {
                "final": final,
                "steps": state.step,
                "seconds": round(time.time() - t0, 1),
                "train_tokens": tokens_seen * accelerator.num_processes,
                "train_tokens_per_s": round(
                    tokens_seen * accelerator.num_processes / max(1e-9, time.time() - t0), 1
                ),
                "train_loss_tokens": loss_tokens_seen * accelerator.num_processes,
                "train_loss_tokens_per_s": round(
                    loss_tokens_seen * accelerator.num_processes / max(1e-9, time.time() - t0), 1
                ),
                # the same rates after the first WARMUP_STEPS steps (allocator and caches warm)
                **_steady_rates(warm, tokens_seen, loss_tokens_seen, accelerator.num_processes),
                "padding_fraction": round(1 - tokens_seen / max(1, slots_seen), 4),
                "peak_rss_gb": round(peak_rss_gb(), 3),  # this process, whole run (capture included)
                "mixed_precision": accelerator.mixed_precision,
                "vocab_coverage": vocab.coverage,
                "target": target_fingerprint(target),
                "served": {key: est.to_json() for key, est in last_served.items()},
                # the held-out learning curve: every evaluation this process ran (after a resume,
                # those since the resume; tensorboard/wandb hold the whole run)
                "eval_history": [
                    {"step": h["step"], **{k: v for k, v in h.items() if k.startswith("eval/")}}
                    for h in history
                    if "eval/tau" in h
                ],
            },
        )
    return {"final": final, "history": history, "coverage": vocab.coverage, "steps": state.step}
