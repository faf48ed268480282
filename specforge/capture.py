"""Capture a frozen target's hidden states for draft training, online or as offline shards.

Contract
--------
*Aux layer id* ``k`` (vLLM's ``eagle_aux_hidden_state_layer_ids``) names the hidden state after the
first ``k`` decoder layers, i.e. the input of decoder layer ``k`` — Hugging Face's
``hidden_states[k]`` with ``output_hidden_states=True``. The EAGLE-3 default is ``(2, L//2, L-3)``.
The *last hidden state* is the output of the final norm (``hidden_states[-1]``), from which the
target's logits are ``lm_head(last_hidden_state)``.

Captures are taken with forward hooks on the Hugging Face model (no copies of model code) and come
in one shape, :class:`CapturedBatch`, from either mode:

* online: :class:`OnlineCapture` runs the target under ``no_grad`` on a padded token batch;
* offline: :func:`write_shards` stores the same tensors as safetensors shards plus a
  ``manifest.json``; a killed run resumes and skips finished shards. :class:`ShardDataset` reads
  them back, and :func:`collate_captured` pads them into a :class:`CapturedBatch`.

For the same batch and dtype, both modes give identical tensors.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import datasets
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from draft_models.aux_hooks import LAST_HIDDEN, AuxHiddenHooks
from specforge.errors import SpecforgeError
from specforge.packing import block_causal_mask, next_is_answer, packed_positions, sequence_ids
from specforge.targets.loader import Target

MANIFEST = "manifest.json"
# what a shard stores per token (logits only with store_logits; target_argmax since it exists)
_STORED = ("input_ids", "loss_mask", "aux_hidden_states", "last_hidden_state", "logits", "target_argmax")
MANIFEST_VERSION = 1


def default_aux_layers(num_layers: int) -> list[int]:
    """EAGLE-3's low / mid / high layers, as vLLM numbers them."""
    return [2, num_layers // 2, num_layers - 3]


@dataclass
class CapturedBatch:
    """Target tensors for one padded batch (right padding)."""

    input_ids: torch.Tensor  # [batch, seq] int64
    attention_mask: torch.Tensor  # [batch, seq] 1 = real token
    loss_mask: torch.Tensor  # [batch, seq] 1 = assistant token (predicted from the previous position)
    aux_hidden_states: torch.Tensor  # [batch, seq, num_aux * hidden] concatenated in aux-layer order
    last_hidden_state: torch.Tensor  # [batch, seq, hidden] after the final norm
    logits: torch.Tensor | None = None  # [batch, seq, vocab] when stored
    # [batch, seq] int64: the target's argmax over its whole vocabulary at positions whose next
    # token is an assistant token, -1 elsewhere (lets training compute only the draft-vocabulary
    # columns of the target's head); None in captures made before it was stored
    target_argmax: torch.Tensor | None = None
    # [batch, seq] positions restarting at 0 with each packed sequence (specforge.packing);
    # None: one sequence per row, right-padded
    position_ids: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> CapturedBatch:
        return CapturedBatch(
            **{k: (v.to(device) if v is not None else None) for k, v in self.__dict__.items()}
        )


@dataclass
class CaptureConfig:
    aux_layers: list[int] | None = None  # None: default_aux_layers(L)
    store_logits: bool = False
    dtype: str = "float32"  # dtype the captured tensors are stored in

    def resolved_layers(self, num_layers: int) -> list[int]:
        layers = list(self.aux_layers) if self.aux_layers is not None else default_aux_layers(num_layers)
        bad = [k for k in layers if not (0 <= k <= num_layers or k == LAST_HIDDEN)]
        if bad:
            raise SpecforgeError(
                f"aux layer ids {bad} are out of range for a target with {num_layers} layers "
                f"(0..{num_layers - 1}; {num_layers} for the last layer's output before the final norm; "
                f"{LAST_HIDDEN} for the last hidden state, after it)"
            )
        return layers


class OnlineCapture:
    """Hooks on a frozen target; calling it on a token batch returns a :class:`CapturedBatch`."""

    def __init__(self, target: Target, cfg: CaptureConfig | None = None):
        self.target = target
        self.cfg = cfg or CaptureConfig()
        self.layers = self.cfg.resolved_layers(target.num_layers)
        self.dtype = getattr(torch, self.cfg.dtype)
        self._hooks = AuxHiddenHooks(target.model, self.layers)

    def close(self) -> None:
        self._hooks.close()

    @property
    def closed(self) -> bool:
        return not self._hooks._handles

    @torch.no_grad()
    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        loss_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
    ) -> CapturedBatch:
        """One padded batch (``position_ids`` given: packed rows, attended block-diagonally)."""
        model = self.target.model
        device = next(model.parameters()).device
        self._hooks.clear()
        if position_ids is None:
            model.model(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False
            )
        else:
            model.model(
                input_ids=input_ids.to(device),
                attention_mask=block_causal_mask(position_ids, attention_mask).to(device),
                position_ids=position_ids.to(device),
                use_cache=False,
            )
        aux, last = self._hooks.aux(), self._hooks.last
        logits = model.lm_head(last).to(self.dtype) if self.cfg.store_logits else None
        self._hooks.clear()
        return CapturedBatch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            loss_mask=loss_mask,
            aux_hidden_states=aux.to(self.dtype),
            last_hidden_state=last.to(self.dtype),
            logits=logits,
            target_argmax=target_argmax(model.lm_head, last, loss_mask, attention_mask, position_ids),
            position_ids=position_ids,
        )


def target_argmax(
    lm_head: torch.nn.Module,
    last_hidden_state: torch.Tensor,
    loss_mask: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """[batch, seq] the target's argmax where the next token is an assistant token of the same
    sequence, -1 elsewhere: the whole-vocabulary head runs on those positions only."""
    b, s = loss_mask.shape
    positions = position_ids if position_ids is not None else torch.arange(s).expand(b, s)
    need = next_is_answer(loss_mask, sequence_ids(positions, attention_mask).to(last_hidden_state.device))
    out = torch.full((b, s), -1, dtype=torch.long, device=last_hidden_state.device)
    rows = need.nonzero(as_tuple=True)
    for lo in range(0, rows[0].numel(), 1024):  # [1024, vocab] logits at a time
        at = (rows[0][lo : lo + 1024], rows[1][lo : lo + 1024])
        out[at] = lm_head(last_hidden_state[at]).argmax(-1)
    return out


def pad_batch(rows: Sequence, pad_id: int, packed: bool = False) -> dict[str, torch.Tensor]:
    """Right-pad tokenized rows (``input_ids``, ``loss_mask``) into tensors with an attention mask.
    ``packed``: each element of ``rows`` is a bin, a list of rows laid end to end into one row, and
    ``position_ids`` restart with each of them."""
    if packed:
        rows = [
            {
                "input_ids": [t for r in b for t in r["input_ids"]],
                "loss_mask": [m for r in b for m in r["loss_mask"]],
                "position_ids": packed_positions([len(r["input_ids"]) for r in b]),
            }
            for b in rows
        ]
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    loss = torch.zeros((len(rows), width), dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.as_tensor(r["input_ids"])
        attn[i, :n] = 1
        loss[i, :n] = torch.as_tensor(r["loss_mask"])
        if packed:
            pos[i, :n] = r["position_ids"]
    out = {"input_ids": ids, "attention_mask": attn, "loss_mask": loss}
    if packed:
        out["position_ids"] = pos
    return out


def _rows(ds: datasets.Dataset, start: int, n: int) -> list[dict]:
    chunk = ds[start : start + n]
    return [{"input_ids": a, "loss_mask": b} for a, b in zip(chunk["input_ids"], chunk["loss_mask"])]


# ----------------------------------------------------------------------------------------- offline


@dataclass
class ShardInfo:
    file: str
    num_sequences: int
    num_tokens: int
    bytes: int


@dataclass
class Manifest:
    fingerprint: str
    target: str
    aux_layers: list[int]
    hidden_size: int
    dtype: str
    store_logits: bool
    num_sequences: int
    sequences_per_shard: int
    shards: list[ShardInfo] = field(default_factory=list)
    complete: bool = False
    version: int = MANIFEST_VERSION
    engine: str = "hf"  # what ran the target: "hf" (forward hooks) or "vllm" (specforge.capture_vllm)
    engine_seconds: float = 0.0  # vLLM's own time over the runs that built it (vllm only)
    wall_seconds: float = 0.0  # the runs' wall time, from vLLM's start-up to the last shard (vllm only)

    @property
    def num_shards(self) -> int:
        return -(-self.num_sequences // self.sequences_per_shard)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    def save(self, out_dir: Path) -> None:
        payload = {**self.__dict__, "shards": [s.__dict__ for s in self.shards]}
        tmp = out_dir / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(payload, indent=1))
        os.replace(tmp, out_dir / MANIFEST)

    @classmethod
    def load(cls, out_dir: Path) -> Manifest:
        path = Path(out_dir) / MANIFEST
        if not path.is_file():
            raise SpecforgeError(
                f"{out_dir} has no {MANIFEST}: it is not a capture directory (run `specforge capture`)"
            )
        try:
            raw = json.loads(path.read_text())
            raw["shards"] = [ShardInfo(**s) for s in raw["shards"]]
            return cls(**raw)
        except (json.JSONDecodeError, TypeError, KeyError) as e:
            raise SpecforgeError(f"{path} is corrupt ({e}); delete the directory and capture again") from e


def capture_fingerprint(
    target: Target,
    layers: list[int],
    cfg: CaptureConfig,
    ds: datasets.Dataset,
    per_shard: int,
    engine: str = "hf",
) -> str:
    """What a capture directory is of: the target, layers, dtype, rows, shard size and engine."""
    h = hashlib.sha256()
    key = [str(target.path.resolve()), layers, cfg.dtype, cfg.store_logits, per_shard]
    h.update(json.dumps(key if engine == "hf" else [*key, engine]).encode())
    h.update(json.dumps(target.config.to_dict(), sort_keys=True, default=str).encode())
    h.update(ds._fingerprint.encode() if getattr(ds, "_fingerprint", None) else str(len(ds)).encode())
    return h.hexdigest()[:16]


def widened_config(target: Target, cfg: CaptureConfig, out: Path) -> CaptureConfig:
    """``cfg`` with the layers of the capture already in ``out`` when those include every layer
    ``cfg`` asks for: one capture of layers (2, 15, 27, 30) serves EAGLE-3, EAGLE-1 and MTP heads."""
    if not (out / MANIFEST).is_file():
        return cfg
    stored = Manifest.load(out).aux_layers
    wanted = cfg.resolved_layers(target.num_layers)
    if stored != wanted and all(k in stored or k == LAST_HIDDEN for k in wanted):
        return replace(cfg, aux_layers=list(stored))
    return cfg


def publish_shard(
    out: Path, name: str, tensors: dict[str, list[torch.Tensor]], lengths: list[int], manifest: Manifest
) -> None:
    """Write one shard (per-sequence tensors of :data:`_STORED`, laid end to end, with ``offsets``)
    to a temporary file renamed into place, then record it in the manifest."""
    flat = {k: torch.cat(v).contiguous() for k, v in tensors.items()}
    flat["offsets"] = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.long)
    tmp = out / (name + ".tmp")
    save_file(flat, str(tmp), metadata={"fingerprint": manifest.fingerprint})
    os.replace(tmp, out / name)
    manifest.shards.append(ShardInfo(name, len(lengths), int(sum(lengths)), (out / name).stat().st_size))
    manifest.shards.sort(key=lambda s: s.file)  # the dataset's row order, whatever order shards finish in
    manifest.save(out)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def open_capture(
    target: Target,
    ds: datasets.Dataset,
    out_dir: str | Path,
    cfg: CaptureConfig,
    sequences_per_shard: int,
    engine: str = "hf",
) -> tuple[Path, CaptureConfig, Manifest]:
    """Open ``out_dir`` for a capture of ``ds`` by ``engine``: the directory, the config widened to
    the layers already stored there (:func:`widened_config`), and its manifest: the one on disk,
    keeping the shards whose files exist, or a new one. A directory holding a capture of something
    else is refused rather than overwritten."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = widened_config(target, cfg, out)
    layers = cfg.resolved_layers(target.num_layers)
    fp = capture_fingerprint(target, layers, cfg, ds, sequences_per_shard, engine=engine)
    if (out / MANIFEST).is_file():
        manifest = Manifest.load(out)
        if manifest.fingerprint != fp:
            raise SpecforgeError(
                f"{out} holds a capture of another target, dataset, engine or capture config; "
                "choose a new output directory or delete this one"
            )
        manifest.shards = [s for s in manifest.shards if (out / s.file).is_file()]
    else:
        manifest = Manifest(
            fingerprint=fp,
            target=str(target.path),
            aux_layers=layers,
            hidden_size=target.hidden_size,
            dtype=cfg.dtype,
            store_logits=cfg.store_logits,
            num_sequences=len(ds),
            sequences_per_shard=sequences_per_shard,
            engine=engine,
        )
    return out, cfg, manifest


def write_shards(
    target: Target,
    ds: datasets.Dataset,
    out_dir: str | Path,
    cfg: CaptureConfig | None = None,
    batch_size: int = 8,
    sequences_per_shard: int = 256,
    progress: bool = True,
) -> Manifest:
    """Capture ``ds`` (``input_ids`` / ``loss_mask`` rows) into shards; resume where a run stopped.
    A capture of the same target and rows whose layers include ``cfg``'s is kept as it is (read it
    with ``ShardDataset(out_dir, layers=...)``)."""
    out, cfg, manifest = open_capture(target, ds, out_dir, cfg or CaptureConfig(), sequences_per_shard)
    done = {s.file for s in manifest.shards}
    if manifest.complete and len(done) == manifest.num_shards:
        return manifest  # nothing to capture: the target model need not be loaded
    capture = OnlineCapture(target, cfg)
    pad_id = target.tokenizer.pad_token_id
    bar = tqdm(total=len(ds), desc="capture", unit="seq", disable=not progress)
    try:
        for shard_idx in range(manifest.num_shards):
            name = shard_name(shard_idx)
            lo = shard_idx * sequences_per_shard
            hi = min(len(ds), lo + sequences_per_shard)
            if name in done:
                bar.update(hi - lo)
                continue
            tensors: dict[str, list[torch.Tensor]] = {}
            lengths: list[int] = []
            for start in range(lo, hi, batch_size):
                rows = _rows(ds, start, min(batch_size, hi - start))
                tb = pad_batch(rows, pad_id)
                cb = capture(**tb)
                for i, r in enumerate(rows):
                    n = len(r["input_ids"])
                    lengths.append(n)
                    for key in _STORED:
                        value = getattr(cb, key)
                        if value is not None:
                            tensors.setdefault(key, []).append(value[i, :n])
                bar.update(len(rows))
            publish_shard(out, name, tensors, lengths, manifest)
    finally:
        bar.close()
        capture.close()
    manifest.complete = True
    manifest.save(out)
    return manifest


class ShardDataset(torch.utils.data.Dataset):
    """Per-sequence access to a finished capture directory.

    The ``max_cached_shards`` most recently used shards stay in memory, so shuffled access over a
    capture that fits is read from disk once. ``layers`` (default: every stored layer) picks aux
    layers out of a wider capture, in the order given; :data:`LAST_HIDDEN` reads the last hidden
    state, which every capture stores."""

    def __init__(
        self, capture_dir: str | Path, max_cached_shards: int = 32, layers: Sequence[int] | None = None
    ):
        self.dir = Path(capture_dir)
        self.max_cached_shards = max_cached_shards
        self.manifest = Manifest.load(self.dir)
        if not self.manifest.complete:
            raise SpecforgeError(
                f"{self.dir}: the capture is unfinished; run `specforge capture` again to resume it"
            )
        stored = self.manifest.aux_layers
        self._pick: list[int | None] | None = None  # index into the stored layers; None: last hidden
        if layers is not None and list(layers) != stored:
            missing = [k for k in layers if k not in stored and k != LAST_HIDDEN]
            if missing:
                raise SpecforgeError(
                    f"{self.dir} holds aux layers {stored}, not {missing}: capture those layers "
                    "(`specforge capture --layers`) or point capture_dir at a new directory"
                )
            self._pick = [stored.index(k) if k in stored else None for k in layers]
        self._index: list[tuple[int, int]] = [
            (si, j) for si, s in enumerate(self.manifest.shards) for j in range(s.num_sequences)
        ]
        self._cache: OrderedDict[int, dict[str, torch.Tensor]] = OrderedDict()  # LRU of loaded shards

    def __len__(self) -> int:
        return len(self._index)

    def _shard(self, si: int) -> dict[str, torch.Tensor]:
        if si in self._cache:
            self._cache.move_to_end(si)
            return self._cache[si]
        path = self.dir / self.manifest.shards[si].file
        try:
            shard = load_file(str(path))
        except Exception as e:
            raise SpecforgeError(
                f"shard {path} is missing or corrupt ({e}); delete it and re-run `specforge capture`"
            ) from e
        self._cache[si] = shard
        while len(self._cache) > self.max_cached_shards:
            self._cache.popitem(last=False)
        return shard

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        si, j = self._index[idx]
        shard = self._shard(si)
        lo, hi = int(shard["offsets"][j]), int(shard["offsets"][j + 1])
        item = {k: v[lo:hi] for k, v in shard.items() if k != "offsets"}
        if self._pick is not None:
            per_layer = item["aux_hidden_states"].unflatten(-1, (len(self.manifest.aux_layers), -1))
            item["aux_hidden_states"] = torch.cat(
                [item["last_hidden_state"] if i is None else per_layer[:, i] for i in self._pick], dim=-1
            )
        return item


def collate_captured(items: Sequence, pad_id: int = 0, packed: bool = False) -> CapturedBatch:
    """Right-pad shard items into a :class:`CapturedBatch`. ``packed``: each element of ``items`` is
    a bin, a list of shard items laid end to end into one row, with ``position_ids``."""
    if packed:
        keys = [k for k in _STORED if all(k in it for b in items for it in b)]
        items = [
            {
                **{k: torch.cat([it[k] for it in b]) for k in keys},
                "position_ids": packed_positions([len(it["input_ids"]) for it in b]),
            }
            for b in items
        ]
    keys = [k for k in (*_STORED, "position_ids") if all(k in it for it in items)]
    width = max(len(it["input_ids"]) for it in items)
    fills = {"input_ids": pad_id, "target_argmax": -1}

    def stack(key: str) -> torch.Tensor:
        first = items[0][key]
        out = torch.full((len(items), width, *first.shape[1:]), fills.get(key, 0), dtype=first.dtype)
        for i, it in enumerate(items):
            out[i, : len(it[key])] = it[key]
        return out

    attn = torch.zeros((len(items), width), dtype=torch.long)
    for i, it in enumerate(items):
        attn[i, : len(it["input_ids"])] = 1
    return CapturedBatch(attention_mask=attn, **{k: stack(k) for k in keys})
