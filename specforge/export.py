"""Export trained draft heads: the checkpoint vLLM serves, or a directory the toolkit reloads.

Contract
--------
* :func:`export_vllm` writes ``config.json`` and ``model.safetensors`` in the layout the head's
  registry entry names (:class:`draft_models.registry.VllmLayout`). EAGLE-3
  (``LlamaForCausalLMEagle3``, vLLM's ``llama_eagle3.py``): ``fc``, ``midlayer.*``, ``norm``,
  ``lm_head`` over the draft vocabulary, and ``d2t`` offsets (``target_id = draft_id +
  d2t[draft_id]``). EAGLE-1 (``EagleLlamaForCausalLM``, ``llama_eagle.py``): ``fc [H, 2H]`` and
  ``layers.0.*`` without the input norm. The token embedding (and EAGLE-1's LM head) are left out,
  so vLLM shares the target's.
* :func:`check_vllm` checks every key, shape and dtype against the spec that the config
  implies, and that ``d2t`` maps to distinct in-range target ids. It runs before anything is
  written, and any mismatch raises :class:`SpecforgeError` listing every problem, so a wrong export
  fails instead of serving garbage.
* :func:`export_hf` / :func:`load_draft` write and reload the toolkit's own format:
  ``draft_config.json`` (with the draft ``type``) plus ``model.safetensors``.
* Both write ``specforge_draft.json`` (:class:`serving.draft_check.DraftMeta`): the method the head
  needs, its aux layer ids, a hash of ``d2t``, its target's fingerprint and the acceptance training
  estimated, which ``specforge check`` and the vLLM plugin compare with how the head is served.
* :func:`load_vllm_export` rebuilds a draft module from a vLLM EAGLE-3 checkpoint (ours or another
  tool's), so the reference engine can serve exactly what vLLM serves.
* Both publish through :func:`specforge.files.publish_dir`: a non-empty ``out_dir`` that is not a
  previous export of the same kind is refused unless ``force``, and nothing specforge did not write
  is ever deleted.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from draft_models.eagle3 import Eagle3Config, Eagle3Draft
from draft_models.mtp import MtpConfig
from draft_models.registry import VllmLayout, get_draft_type
from serving.draft_check import META_FILE, DraftMeta, Estimates, d2t_sha256, default_aux_layer_ids
from specforge.errors import SpecforgeError
from specforge.files import check_out_dir, publish_dir, staging_dir

VLLM_ARCH = "LlamaForCausalLMEagle3"


def vllm_layout(draft_type: str) -> VllmLayout:
    """How vLLM serves a head type; one clear error for a head it cannot serve."""
    layout = get_draft_type(draft_type).vllm
    if layout is None:
        raise SpecforgeError(f"vLLM cannot serve a {draft_type!r} draft; export it with --format hf")
    return layout


def check_vllm(tensors: dict[str, torch.Tensor], draft_type: str, cfg) -> None:
    """Raise SpecforgeError listing every key/shape/dtype/d2t problem of a ``draft_type`` export
    against the layout vLLM loads; return None when all is well."""
    try:
        spec = vllm_layout(draft_type).spec(cfg)
    except ValueError as e:  # a head this layout cannot hold, e.g. an MTP head with D > 1
        raise SpecforgeError(f"vLLM cannot serve this {draft_type} draft: {e}") from None
    problems = [f"missing tensor {k}" for k in spec if k not in tensors]
    problems += [f"unexpected tensor {k}" for k in tensors if k not in spec]
    for k, (shape, dtype) in spec.items():
        t = tensors.get(k)
        if t is None:
            continue
        if tuple(t.shape) != shape:
            problems.append(f"{k} has shape {tuple(t.shape)}, expected {shape}")
        if dtype is not None and t.dtype != dtype:
            problems.append(f"{k} has dtype {t.dtype}, expected {dtype}")
        if dtype is None and not t.is_floating_point():
            problems.append(f"{k} has dtype {t.dtype}, expected a float dtype")
        if t.is_floating_point() and not torch.isfinite(t).all():
            problems.append(f"{k} holds NaN or inf")
    d2t = tensors.get("d2t")
    if (
        "d2t" in spec
        and d2t is not None
        and d2t.shape == (cfg.draft_vocab_size,)
        and d2t.dtype == torch.int64
    ):
        target_ids = torch.arange(cfg.draft_vocab_size) + d2t
        if int(target_ids.min()) < 0 or int(target_ids.max()) >= cfg.vocab_size:
            problems.append(f"d2t maps draft ids outside the target vocabulary (0..{cfg.vocab_size - 1})")
        if target_ids.unique().numel() != cfg.draft_vocab_size:
            problems.append("d2t maps two draft ids to the same target id")
    if problems:
        raise SpecforgeError(
            f"the {draft_type} export does not match what vLLM loads:\n  " + "\n  ".join(problems)
        )


def check_vllm_eagle3(tensors: dict[str, torch.Tensor], cfg: Eagle3Config) -> None:
    """:func:`check_vllm` for an EAGLE-3 export."""
    check_vllm(tensors, "eagle3", cfg)


def _write_dir(
    out: Path,
    tensors: dict[str, torch.Tensor],
    files: dict[str, dict],
    kind: str,
    force: bool,
    copies: tuple[Path, ...] = (),
) -> Path:
    """Build the export in a private folder, then publish it (:func:`specforge.files.publish_dir`): a
    failed export leaves nothing half-written, and no file specforge did not write is deleted.
    ``copies``: files copied in as they are (a target's tokenizer files)."""
    check_out_dir(out, kind, force)
    staged = staging_dir(out)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(staged / "model.safetensors"))
        for src in copies:
            shutil.copyfile(src, staged / src.name)
        for name, payload in files.items():
            (staged / name).write_text(json.dumps(payload, indent=1))
        return publish_dir(staged, out, kind, force)
    finally:
        shutil.rmtree(staged, ignore_errors=True)  # gone already when published


def load_draft_weights(run_dir: str | Path) -> tuple[str, Eagle3Config, dict[str, torch.Tensor]]:
    """(type, config, state dict) from a training run (``draft_config.json`` + ``draft.safetensors``),
    an HF-format export (``draft_config.json`` + ``model.safetensors``) or one of a run's checkpoints
    (``checkpoints/step-N``: ``draft_config.json`` + what ``accelerator.save_state`` wrote, FSDP
    shards in ``pytorch_model_fsdp_0/`` or an unsharded ``model.safetensors``)."""
    from specforge.train.checkpoints import SHARDED_MODEL_DIR, checkpoint_draft_state, is_training_checkpoint

    d = Path(run_dir)
    cfg_path = d / "draft_config.json"
    weights = d / "draft.safetensors" if (d / "draft.safetensors").is_file() else d / "model.safetensors"
    checkpoint = not (d / "draft.safetensors").is_file() and is_training_checkpoint(d)
    if not cfg_path.is_file() or not (weights.is_file() or checkpoint):
        raise SpecforgeError(
            f"{d} is not a finished training run, draft export or training checkpoint: it needs "
            "draft_config.json and draft.safetensors (a run), model.safetensors (an export or an unsharded "
            f"checkpoint) or {SHARDED_MODEL_DIR}/ (an FSDP sharded checkpoint); train with "
            "`python -m specforge.train` first"
        )
    try:
        raw = json.loads(cfg_path.read_text())
        draft_type = raw.pop("type")
        cfg = get_draft_type(draft_type).config_cls(**raw)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise SpecforgeError(f"{cfg_path} is corrupt ({e}); re-export or retrain") from e
    if checkpoint:
        return draft_type, cfg, checkpoint_draft_state(d)
    try:
        state = load_file(str(weights))
    except Exception as e:
        raise SpecforgeError(f"{weights} is corrupt ({e}); re-export or retrain") from e
    return draft_type, cfg, state


def draft_meta(run_dir: str | Path, draft_type: str, cfg: Eagle3Config, d2t: torch.Tensor) -> dict | None:
    """The metadata of a training run's draft (None when the run predates fingerprints)."""
    summary_path = Path(run_dir) / "train_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    if "target" not in summary:
        return None
    final = summary.get("final", {})
    alpha = [final[f"eval/alpha_{i}"] for i in range(64) if f"eval/alpha_{i}" in final]
    walk_k = sum(1 for i in range(64) if f"eval/walk_acc_{i}" in final) or None
    meta = DraftMeta(
        draft_type=draft_type,
        method=layout.method if (layout := get_draft_type(draft_type).vllm) is not None else draft_type,
        aux_layer_ids=list(cfg.aux_layer_ids),
        draft_vocab_size=cfg.draft_vocab_size,
        d2t_sha256=d2t_sha256(d2t.tolist()),
        target=summary["target"],
        estimates=Estimates(
            teacher_forced_tau=final.get("eval/tau"),
            teacher_forced_alpha=alpha,
            walk_k=walk_k,
            walk_tau=final.get("eval/walk_tau"),
            served=summary.get("served", {}),
        ),
        steps=summary.get("steps"),
    )
    return meta.model_dump(mode="json")


def _with_meta(files: dict[str, dict], run_dir, draft_type: str, cfg: Eagle3Config, state: dict) -> dict:
    if "d2t" in state:
        meta = draft_meta(run_dir, draft_type, cfg, state["d2t"])
        if meta is not None:
            return {**files, META_FILE: meta}
    return files


def export_vllm(
    run_dir: str | Path,
    out_dir: str | Path,
    dtype: str = "float32",
    force: bool = False,
    target_dir: str | Path | None = None,
) -> Path:
    """The checkpoint vLLM serves the run's head from. For a head vLLM loads from the target's own
    checkpoint (``in_target``: MTP), that is a copy of ``target_dir`` (default: the run's target)
    with the head's tensors added; serve it as both model and draft."""
    draft_type, cfg, state = load_draft_weights(run_dir)
    layout = vllm_layout(draft_type)
    torch_dtype = getattr(torch, dtype)
    tensors = {
        k: (v.to(torch_dtype) if v.is_floating_point() else v) for k, v in layout.to_vllm(state).items()
    }
    check_vllm(tensors, draft_type, cfg)
    if not layout.in_target:
        files = _with_meta({"config.json": layout.config(cfg, dtype)}, run_dir, draft_type, cfg, state)
        return _write_dir(Path(out_dir), tensors, files, "vllm-export", force)
    target = Path(target_dir) if target_dir is not None else _run_target(run_dir)
    target_config, target_tensors, copies = _target_as_mimo(target, torch_dtype)
    config = {**target_config, **layout.config(cfg, dtype)}
    files = _with_meta({"config.json": config}, run_dir, draft_type, cfg, state)
    return _write_dir(Path(out_dir), {**target_tensors, **tensors}, files, "vllm-export", force, copies)


def load_target_mtp(target_dir: str | Path, draft: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of ``draft`` (an MTP head) holding the MTP layer a MiMo-layout target ships
    (``model.mtp_layers.0.*`` in its safetensors): FastMTP's starting point."""
    cfg = draft.config
    if not isinstance(cfg, MtpConfig):
        raise SpecforgeError(f"draft.init=target_mtp needs draft.type=mtp, not a {type(draft).__name__}")
    layout = get_draft_type("mtp").vllm
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(Path(target_dir).glob("*.safetensors")):
        tensors.update({k: v for k, v in load_file(str(f)).items() if k.startswith("model.mtp_layers.0.")})
    if not tensors:
        raise SpecforgeError(
            f"draft.init=target_mtp: {target_dir} ships no MTP layer (no model.mtp_layers.0.* tensors); "
            "use draft.init=random"
        )
    try:
        check_vllm(tensors, "mtp", cfg)
        return layout.from_vllm(tensors)
    except (SpecforgeError, ValueError) as e:
        raise SpecforgeError(
            f"draft.init=target_mtp: the MTP layer in {target_dir} does not fit this head: {e}"
        ) from None


def recorded_target(run_dir: str | Path) -> Path | None:
    """The target directory a training run was trained on, as its ``config.yaml`` names it; None
    where it names none (a run on the default target) or is not a run. A named directory that is
    gone is an error that says so."""
    import yaml

    try:
        target = (yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}).get("target")
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    if not target:
        return None
    if not Path(target).is_dir():
        raise SpecforgeError(
            f"the run {run_dir} was trained on the target {target}, which is gone: "
            "install it again (specforge target install) or pass --target DIR"
        )
    return Path(target)


def _run_target(run_dir: str | Path) -> Path:
    """The target directory a training run's ``config.yaml`` names (one is needed here)."""
    target = recorded_target(run_dir)
    if target is None:
        raise SpecforgeError(
            f"{run_dir} does not name a target directory (config.yaml target); "
            "pass the target (--target) the head was trained on"
        )
    return target


# Tokenizer and generation files a served copy of the target keeps.
_TARGET_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
)


def _target_as_mimo(
    target: Path, dtype: torch.dtype
) -> tuple[dict, dict[str, torch.Tensor], tuple[Path, ...]]:
    """(config, tensors, files to copy) of a Llama or Qwen2 target re-expressed as Qwen2, the
    layout vLLM's ``MiMoForCausalLM`` loads: the same tensor names, zero q/k/v biases where the
    target has none (so it computes exactly what it did), an explicit ``lm_head`` for a tied head."""
    try:
        config = json.loads((target / "config.json").read_text())
        tensors: dict[str, torch.Tensor] = {}
        for f in sorted(target.glob("*.safetensors")):
            tensors.update(load_file(str(f)))
    except (OSError, json.JSONDecodeError) as e:
        raise SpecforgeError(f"{target} is not a readable target directory ({e})") from None
    kind = config.get("model_type")
    if kind not in ("llama", "qwen2") or config.get("attention_bias") or config.get("mlp_bias"):
        raise SpecforgeError(
            f"vLLM serves MTP layers for a {kind!r} target only through an architecture that carries them; "
            "this export re-expresses Llama (no biases) and Qwen2 targets as MiMo, and this one is neither"
        )
    rope = config.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise SpecforgeError(
            f"{target}: rope type {rope.get('rope_type')!r} has no Qwen2 form; MTP serves default RoPE"
        )
    out = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    for name, w in list(out.items()):
        for p in ("q", "k", "v"):
            if name.endswith(f".self_attn.{p}_proj.weight") and name[: -len("weight")] + "bias" not in out:
                out[name[: -len("weight")] + "bias"] = torch.zeros(w.shape[0], dtype=w.dtype)
    if "lm_head.weight" not in out:
        out["lm_head.weight"] = out["model.embed_tokens.weight"].clone()
    keep = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
            "vocab_size", "bos_token_id", "eos_token_id", "pad_token_id", "rope_parameters")  # fmt: skip
    qwen2 = {k: config[k] for k in keep if k in config}
    qwen2.update(
        model_type="qwen2",
        rope_theta=float(rope.get("rope_theta", config.get("rope_theta", 10000.0))),
        tie_word_embeddings=False,
        use_sliding_window=False,
        sliding_window=None,
        max_window_layers=int(config["num_hidden_layers"]),
        attention_dropout=0.0,
    )
    copies = tuple(target / f for f in _TARGET_FILES if (target / f).is_file())
    return qwen2, out, copies


def export_hf(run_dir: str | Path, out_dir: str | Path, force: bool = False) -> Path:
    draft_type, cfg, state = load_draft_weights(run_dir)
    tensors = {k: v for k, v in state.items() if k != "embed_tokens.weight"}
    files = _with_meta(
        {"draft_config.json": {"type": draft_type, **cfg.to_dict()}}, run_dir, draft_type, cfg, state
    )
    return _write_dir(Path(out_dir), tensors, files, "hf-draft-export", force)


def load_draft(draft_dir: str | Path, target_embedding: torch.Tensor | None = None) -> torch.nn.Module:
    """Rebuild a draft module from a training run or an HF-format export (eval mode)."""
    draft_type, cfg, state = load_draft_weights(draft_dir)
    model = get_draft_type(draft_type).model_cls(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "embed_tokens.weight"]
    if missing or unexpected:
        raise SpecforgeError(
            f"{draft_dir}: weights do not fit a {draft_type} draft (missing {missing}, unexpected {unexpected})"
        )
    if target_embedding is not None:
        model.load_target_embedding(target_embedding)
    return model.eval()


def load_vllm_export(
    draft_dir: str | Path, target_embedding: torch.Tensor, num_target_layers: int
) -> Eagle3Draft:
    """An EAGLE-3 draft module from a vLLM checkpoint (``config.json`` + ``*.safetensors``), with the
    target's token embedding; the aux layer ids are the config's, else vLLM's defaults."""
    d = Path(draft_dir)
    try:
        raw = json.loads((d / "config.json").read_text())
        state: dict[str, torch.Tensor] = {}
        for f in sorted(d.glob("*.safetensors")):
            state.update(load_file(str(f)))
    except (OSError, json.JSONDecodeError) as e:
        raise SpecforgeError(f"{d} is not a readable vLLM draft checkpoint ({e})") from None
    if VLLM_ARCH not in raw.get("architectures", []):
        raise SpecforgeError(
            f"{d}/config.json is not an EAGLE-3 checkpoint (architectures {raw.get('architectures')})"
        )
    aux = (raw.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids") or default_aux_layer_ids(
        num_target_layers
    )
    heads = int(raw["num_attention_heads"])
    rope = raw.get("rope_parameters") or {}
    cfg = Eagle3Config(
        hidden_size=int(raw["hidden_size"]),
        intermediate_size=int(raw["intermediate_size"]),
        num_attention_heads=heads,
        num_key_value_heads=int(raw.get("num_key_value_heads") or heads),
        head_dim=int(raw.get("head_dim") or int(raw["hidden_size"]) // heads),
        vocab_size=int(target_embedding.shape[0]),
        draft_vocab_size=int(raw.get("draft_vocab_size") or raw["vocab_size"]),
        target_hidden_size=int(raw.get("target_hidden_size") or raw["hidden_size"]),
        num_target_layers=num_target_layers,
        aux_layer_ids=list(aux),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope_theta=float(rope.get("rope_theta", raw.get("rope_theta", 10000.0))),
        max_position_embeddings=int(raw.get("max_position_embeddings", 4096)),
    )
    check_vllm(state, "eagle3", cfg)
    model = Eagle3Draft(cfg)
    d2t = state.pop("d2t")
    t2d = torch.zeros(cfg.vocab_size, dtype=torch.bool)
    t2d[torch.arange(cfg.draft_vocab_size) + d2t] = True
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    missing = [k for k in missing if k not in ("embed_tokens.weight", "d2t", "t2d")]
    if missing or unexpected:
        raise SpecforgeError(
            f"{d}: weights do not fit an EAGLE-3 draft (missing {missing}, unexpected {unexpected})"
        )
    model.set_vocab(d2t, t2d)
    model.load_target_embedding(target_embedding)
    return model.eval()
