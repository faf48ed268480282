"""Build the embedded default target: a small Llama trained from scratch on the standard library.

Contract: :func:`build_tiny_target` trains a byte-level BPE tokenizer (with ``tokenizers``) and a
deep, narrow ``LlamaForCausalLM`` on the standard library's sources plus chat-formatted demo
conversations, then runs a short phase of sequence-level unlikelihood on its own greedy
continuations (so that greedy decoding does not fall into loops), and saves an ordinary Hugging
Face model directory: config, safetensors weights, tokenizer with a chat template, and
``build_report.json`` (held-out loss and distinct-4-gram ratio of greedy continuations, both also
before the unlikelihood phase, sample continuations, wall time). The result is deterministic for a
seed and a Python version, and cached: :func:`tiny_target_dir` names the directory by a hash of the
build config, so a second build with the same config returns at once.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import random
import shutil
import time
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict
from tqdm.auto import tqdm

from specforge.data.demo import demo_conversations
from specforge.data.stdlib_corpus import read_source, stdlib_files
from specforge.files import check_out_dir, publish_dir, staging_dir
from specforge.metrics import distinct_ngram_ratio
from specforge.targets.loader import default_cache_root, generate_left_padded

BUILDER_VERSION = 3
TARGET_KIND = "tiny-target"  # the kind publish_dir records in the directory
SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


class TinyTargetConfig(BaseModel):
    """Shape and training budget of the embedded target (defaults: ~12 minutes on 2 CPU cores)."""

    model_config = ConfigDict(extra="forbid")

    vocab_size: int = 4096
    hidden_size: int = 96
    num_layers: int = 8
    num_heads: int = 3
    num_kv_heads: int = 3
    intermediate_size: int = 256
    seq_len: int = 256
    batch_size: int = 16
    steps: int = 1100
    lr: float = 4e-3
    warmup_steps: int = 60
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.1
    chat_fraction: float = 0.25
    max_chat_rows: int = 8000
    max_corpus_files: int | None = None  # None: every standard-library file (tests use a few)
    eval_windows: int = 48
    sample_prompts: int = 16
    sample_tokens: int = 256
    # Final phase: sequence-level unlikelihood on the model's own greedy continuations of training
    # code (see specforge.targets.unlikelihood), each step mixed with an ordinary next-token batch.
    unlikelihood_steps: int = 100
    unlikelihood_lr: float = 5e-4
    unlikelihood_batch: int = 16
    unlikelihood_prompt_tokens: int = 32
    unlikelihood_new_tokens: int = 128
    unlikelihood_weight: float = 2.0
    seed: int = 0

    def cache_key(self) -> str:
        payload = json.dumps(
            {"cfg": self.model_dump(), "builder": BUILDER_VERSION, "python": platform.python_version()},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def tiny_target_dir(cfg: TinyTargetConfig | None = None, root: Path | None = None) -> Path:
    cfg = cfg or TinyTargetConfig()
    return (root or default_cache_root()) / "targets" / f"tiny-llama-{cfg.cache_key()}"


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE with the chat special tokens, wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|end|>",
        pad_token="<|pad|>",
        unk_token=None,
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>", "<|endoftext|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _token_stream(tokenizer, texts: list[str], sep_id: int) -> torch.Tensor:
    ids: list[int] = []
    for enc in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(sep_id)
    return torch.tensor(ids, dtype=torch.long)


def _sample_windows(stream: torch.Tensor, n: int, seq_len: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(stream) - seq_len - 1, (n,), generator=gen)
    if n == 0:
        return stream.new_zeros((0, seq_len))
    return torch.stack([stream[s : s + seq_len] for s in starts.tolist()])


@torch.no_grad()
def heldout_loss(model, stream: torch.Tensor, seq_len: int, n_windows: int) -> float:
    """Mean next-token loss over ``n_windows`` evenly spaced windows of a held-out token stream."""
    model.eval()
    seq_len = min(seq_len, len(stream))
    step = max(1, (len(stream) - seq_len) // n_windows)
    windows = torch.stack(
        [stream[i : i + seq_len] for i in range(0, len(stream) - seq_len + 1, step)][:n_windows]
    )
    losses = [model(input_ids=w[None], labels=w[None]).loss.item() for w in windows]
    return float(sum(losses) / len(losses))


def greedy_continuations(model, tokenizer, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """Exactly ``new_tokens`` greedy tokens after each token prompt."""
    model.eval()
    return generate_left_padded(
        model,
        prompts,
        tokenizer.pad_token_id,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
    )


def _code_prompts(tokenizer, heldout_texts: list[str], n: int, prompt_tokens: int = 64) -> list[list[int]]:
    """Prompts: the first ``prompt_tokens`` tokens after a top-level ``def``/``class`` in held-out files."""
    prompts = []
    for text in heldout_texts:
        for marker in ("\ndef ", "\nclass "):
            at = text.find(marker)
            if at >= 0:
                ids = tokenizer(text[at + 1 :], add_special_tokens=False)["input_ids"][:prompt_tokens]
                if len(ids) == prompt_tokens:
                    prompts.append(ids)
                break
        if len(prompts) == n:
            break
    return prompts


def _evaluate(
    model, tokenizer, heldout_stream: torch.Tensor, prompts: list[list[int]], cfg: TinyTargetConfig
) -> dict:
    """Held-out loss and the distinct-4-gram ratios of greedy continuations of held-out code."""
    loss = heldout_loss(model, heldout_stream, cfg.seq_len, cfg.eval_windows)
    conts = greedy_continuations(model, tokenizer, prompts, cfg.sample_tokens) if prompts else []
    ratios = [distinct_ngram_ratio(c, 4) for c in conts] or [0.0]
    model.train()
    return {
        "heldout_loss": round(loss, 4),
        "distinct4_mean": round(sum(ratios) / len(ratios), 4),
        "distinct4_min": round(min(ratios), 4),
        "distinct4": [round(r, 4) for r in ratios],
        "continuations": conts,
    }


def _adamw(model, cfg: TinyTargetConfig) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )


def _optimizer_step(model, opt: torch.optim.Optimizer, loss: torch.Tensor, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def _mle_batch(
    cfg: TinyTargetConfig, code_stream: torch.Tensor, chat_stream: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    """[batch_size, seq_len] windows: code, with a ``chat_fraction`` of chat-formatted conversations."""
    n_chat = round(cfg.batch_size * cfg.chat_fraction)
    return torch.cat(
        [
            _sample_windows(code_stream, cfg.batch_size - n_chat, cfg.seq_len, gen),
            _sample_windows(chat_stream, n_chat, cfg.seq_len, gen),
        ]
    )


def unlikelihood_phase(
    model,
    tokenizer,
    cfg: TinyTargetConfig,
    code_stream: torch.Tensor,
    chat_stream: torch.Tensor,
    progress: bool,
) -> int:
    """``cfg.unlikelihood_steps`` steps of next-token loss + unlikelihood of the model's own greedy
    repeats on training code (fresh optimizer and generator, so the phase depends only on the
    pretrained weights and the config); returns the tokens it trained on."""
    from specforge.targets.unlikelihood import unlikelihood_loss

    opt = _adamw(model, cfg)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    bar = tqdm(range(cfg.unlikelihood_steps), desc="unlikelihood", disable=not progress, unit="step")
    tokens = 0
    for _ in bar:
        prompts = _sample_windows(code_stream, cfg.unlikelihood_batch, cfg.unlikelihood_prompt_tokens, gen)
        conts = torch.tensor(
            greedy_continuations(model, tokenizer, prompts.tolist(), cfg.unlikelihood_new_tokens)
        )  # [unlikelihood_batch, new_tokens]
        model.train()
        ul, repeated = unlikelihood_loss(model, prompts, conts)
        batch = _mle_batch(cfg, code_stream, chat_stream, gen)
        mle = model(input_ids=batch, labels=batch).loss
        _optimizer_step(model, opt, mle + cfg.unlikelihood_weight * ul, cfg.unlikelihood_lr)
        tokens += batch.numel() + conts.numel() + prompts.numel()
        bar.set_postfix(mle=f"{mle.item():.3f}", ul=f"{ul.item():.3f}", repeated=f"{repeated:.2f}")
    return tokens


def build_tiny_target(
    cfg: TinyTargetConfig | None = None,
    out_dir: Path | None = None,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Train and save the tiny target; return its directory (cached unless ``force``)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = cfg or TinyTargetConfig()
    out_dir = Path(out_dir) if out_dir is not None else tiny_target_dir(cfg)
    if (out_dir / "build_report.json").is_file() and not force:
        return out_dir
    check_out_dir(out_dir, TARGET_KIND, force)  # before 12 minutes of training, not after
    t0 = time.time()
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    files = stdlib_files()
    if cfg.max_corpus_files is not None:
        n = cfg.max_corpus_files
        files = [f for f in files if f.split == "train"][:n] + [f for f in files if f.split == "heldout"][
            : max(2, n // 10)
        ]
    train_texts = [read_source(f) for f in files if f.split == "train"]
    heldout_texts = [read_source(f) for f in files if f.split == "heldout"]
    chats = demo_conversations("train", cfg.max_chat_rows, seed=cfg.seed, files=files)

    tokenizer = train_tokenizer(train_texts, cfg.vocab_size)
    chat_texts = [tokenizer.apply_chat_template(c["messages"], tokenize=False) for c in chats]
    sep = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    code_stream = _token_stream(tokenizer, train_texts, sep)
    chat_stream = _token_stream(tokenizer, chat_texts, sep)
    heldout_stream = _token_stream(tokenizer, heldout_texts, sep)

    model_cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(model_cfg)
    opt = _adamw(model, cfg)

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))

    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    bar = tqdm(range(cfg.steps), desc="tiny target", disable=not progress, unit="step")
    tokens_seen = 0
    for step in bar:
        batch = _mle_batch(cfg, code_stream, chat_stream, gen)
        loss = model(input_ids=batch, labels=batch).loss
        _optimizer_step(model, opt, loss, lr_at(step))
        tokens_seen += batch.numel()
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tokens_seen / (time.time() - t0):.0f}")
    train_seconds = time.time() - t0

    prompts = _code_prompts(tokenizer, heldout_texts, cfg.sample_prompts)
    pretrained, unlikelihood_seconds = None, 0.0
    if cfg.unlikelihood_steps > 0:
        pretrained = _evaluate(model, tokenizer, heldout_stream, prompts, cfg)
        t_ul = time.time()
        tokens_seen += unlikelihood_phase(model, tokenizer, cfg, code_stream, chat_stream, progress)
        unlikelihood_seconds = time.time() - t_ul
    evaluation = _evaluate(model, tokenizer, heldout_stream, prompts, cfg)
    conts = evaluation.pop("continuations")
    report = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "shape": {
            k: getattr(cfg, k)
            for k in ("num_layers", "hidden_size", "intermediate_size", "num_heads", "num_kv_heads")
        },
        "vocab_size": len(tokenizer),
        "train_tokens": tokens_seen,
        "build_seconds": round(time.time() - t0, 1),
        "train_seconds": round(train_seconds, 1),
        "unlikelihood_seconds": round(unlikelihood_seconds, 1),
        **evaluation,
        "before_unlikelihood": (
            {k: v for k, v in pretrained.items() if k != "continuations"} if pretrained else None
        ),
        "samples": [
            {"prompt": tokenizer.decode(p), "continuation": tokenizer.decode(c)}
            for p, c in zip(prompts[:4], conts[:4])
        ],
        "config": cfg.model_dump(),
        "python": platform.python_version(),
    }
    staged = staging_dir(out_dir)
    try:
        model.save_pretrained(staged, safe_serialization=True)
        tokenizer.save_pretrained(staged)
        (staged / "build_report.json").write_text(json.dumps(report, indent=2))
        return publish_dir(staged, out_dir, TARGET_KIND, force)
    finally:
        shutil.rmtree(staged, ignore_errors=True)  # gone already when published
