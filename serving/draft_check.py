"""What a trained draft records about itself, and the checks that catch a draft served wrongly.

Contract
--------
* :class:`DraftMeta` is the schema of ``specforge_draft.json``, written beside every export: the
  head type and the speculative method it must be served with, the target aux layer ids it was
  trained on, a hash of its ``d2t``, a fingerprint of its target (:class:`TargetFingerprint`:
  vocabulary, width, depth, tokenizer hash and a probe of the token embedding), and the acceptance
  training estimated (teacher-forced, walked and served; see ``specforge.train.ttt`` and
  ``specforge.bench.served``).
* :class:`Deployment` is what a server is about to do: the method, k, the aux layer ids it will
  read, the ``d2t`` it loaded and its target's fingerprint.
* :func:`static_findings` compares the two and returns one :class:`Finding` per likely cause of
  collapsed acceptance (wrong method, aux layer ids, ``d2t``, another target). It never raises on
  a mismatch; callers decide: ``specforge check`` reports and exits non-zero, the vLLM plugin logs a
  warning at start-up and serves on.

No torch model code and no vllm import here: the plugin and ``specforge check`` share it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# The feature layer id of the target's last hidden state (draft_models.aux_hooks.LAST_HIDDEN), kept
# here so that checking a draft imports no torch (a test holds the two equal).
LAST_HIDDEN = -1


META_FILE = "specforge_draft.json"
PROBE_ROWS = 32  # token-embedding rows sampled (evenly over the vocabulary)
PROBE_DIMS = 16  # leading dimensions kept per row
SAME_TARGET_COSINE = 0.99  # probes this similar are the same embedding (bf16 rounding stays > 0.9999)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TargetFingerprint(_Strict):
    vocab_size: int
    hidden_size: int
    num_layers: int
    tokenizer_sha256: str | None = None
    embedding_probe: list[list[float]] = Field(default_factory=list)  # [PROBE_ROWS][PROBE_DIMS]


class ServedFigure(_Strict):
    k: int
    temperature: float
    prompts: int
    max_new_tokens: int
    tau: float
    acceptance_per_position: list[float]
    alpha: list[float]
    output_tokens: int
    seconds: float


class Estimates(_Strict):
    teacher_forced_tau: float | None = None  # all-anchor chain tau at the TTT depth
    teacher_forced_alpha: list[float] = Field(default_factory=list)
    walk_k: int | None = None
    walk_tau: float | None = None  # the greedy chain walked over the held-out answers
    served: dict[str, ServedFigure] = Field(default_factory=dict)  # by served_key(temperature), e.g. "t0"


class DraftMeta(_Strict):
    format_version: int = 1
    draft_type: str
    method: str  # the vLLM speculative method this head needs
    aux_layer_ids: list[int]
    draft_vocab_size: int
    d2t_sha256: str
    target: TargetFingerprint
    estimates: Estimates = Estimates()
    steps: int | None = None  # optimizer steps trained


@dataclass(frozen=True)
class Deployment:
    method: str
    num_speculative_tokens: int
    aux_layer_ids: list[int] | None  # what the server reads (None: unknown)
    d2t_sha256: str | None
    target: TargetFingerprint | None
    parallel_drafting: bool | None = None  # the speculative config's flag (None: unknown)


@dataclass(frozen=True)
class Finding:
    cause: str  # "method" | "parallel_drafting" | "aux_layers" | "d2t" | "target" | "metadata"
    message: str  # what is wrong and what to change


def d2t_sha256(values: list[int]) -> str:
    return hashlib.sha256(json.dumps([int(v) for v in values]).encode()).hexdigest()


def tokenizer_sha256(vocab: dict[str, int]) -> str:
    """A hash of a tokenizer's vocabulary (token -> id), independent of the file layout."""
    return hashlib.sha256(json.dumps(sorted(vocab.items())).encode()).hexdigest()


def probe_rows(vocab_size: int) -> list[int]:
    return sorted({round(i * (vocab_size - 1) / (PROBE_ROWS - 1)) for i in range(PROBE_ROWS)})


def embedding_probe(rows: list[list[float]]) -> list[list[float]]:
    """The probe from the sampled embedding rows (already picked with :func:`probe_rows`)."""
    return [[round(float(x), 6) for x in r[:PROBE_DIMS]] for r in rows]


def probe_cosine(a: list[list[float]], b: list[list[float]]) -> float:
    xa = [x for r in a for x in r]
    xb = [x for r in b for x in r]
    if len(xa) != len(xb) or not xa:
        return float("nan")
    dot = sum(x * y for x, y in zip(xa, xb))
    na, nb = math.sqrt(sum(x * x for x in xa)), math.sqrt(sum(y * y for y in xb))
    return dot / (na * nb) if na and nb else float("nan")


def default_aux_layer_ids(num_layers: int) -> list[int]:
    """The ids vLLM reads when a draft's config names none (EAGLE-3's low / mid / high)."""
    return [2, num_layers // 2, num_layers - 3]


def read_meta(draft_dir: str | Path) -> DraftMeta | None:
    """The draft's metadata, or None if it has none; a damaged file raises ValueError naming it."""
    path = Path(draft_dir) / META_FILE
    if not path.is_file():
        return None
    try:
        return DraftMeta.model_validate_json(path.read_text())
    except (ValidationError, ValueError) as e:
        raise ValueError(f"{path} is not valid draft metadata: {str(e).splitlines()[0]}") from None


def static_findings(meta: DraftMeta, deploy: Deployment) -> list[Finding]:
    """Every mismatch between what the draft was trained as and how it is about to be served."""
    out: list[Finding] = []
    if deploy.method != meta.method:
        out.append(
            Finding(
                "method",
                f"the draft is a {meta.draft_type} head and needs method {meta.method!r}, but it is served "
                f'with method {deploy.method!r}; set "method": "{meta.method}" in the speculative config',
            )
        )
    wants = _needs_parallel_drafting(meta.draft_type)
    if deploy.parallel_drafting is not None and wants is not None and deploy.parallel_drafting != wants:
        out.append(
            Finding(
                "parallel_drafting",
                f"the draft is a {meta.draft_type} head, trained to draft "
                + ("every position in one forward" if wants else "one token per forward")
                + f', but it is served with "parallel_drafting": {str(deploy.parallel_drafting).lower()}; '
                f'set "parallel_drafting": {str(wants).lower()} in the speculative config',
            )
        )
    if deploy.aux_layer_ids is not None and list(deploy.aux_layer_ids) != list(meta.aux_layer_ids):
        out.append(
            Finding(
                "aux_layers",
                f"the server reads target layers {list(deploy.aux_layer_ids)} but the draft was trained on "
                f"{list(meta.aux_layer_ids)}; set eagle_config.eagle_aux_hidden_state_layer_ids in the draft's "
                f"config.json to {list(meta.aux_layer_ids)}",
            )
        )
    if deploy.d2t_sha256 is not None and deploy.d2t_sha256 != meta.d2t_sha256:
        out.append(
            Finding(
                "d2t",
                "the draft's d2t (draft -> target token map) is not the one it was trained with, so its "
                "tokens are mapped to the wrong target ids; re-export the draft from its training run",
            )
        )
    t = deploy.target
    if t is not None:
        m = meta.target
        shape = (t.vocab_size, t.hidden_size, t.num_layers)
        if shape != (m.vocab_size, m.hidden_size, m.num_layers):
            out.append(
                Finding(
                    "target",
                    f"the draft was trained for a target with vocabulary {m.vocab_size}, width {m.hidden_size} "
                    f"and {m.num_layers} layers; this target has {t.vocab_size}, {t.hidden_size} and "
                    f"{t.num_layers}: serve it with its own target or train a draft for this one",
                )
            )
        elif t.tokenizer_sha256 and m.tokenizer_sha256 and t.tokenizer_sha256 != m.tokenizer_sha256:
            out.append(
                Finding(
                    "target",
                    "the target's tokenizer differs from the one the draft was trained with (same vocabulary "
                    "size, other tokens): train a draft for this target",
                )
            )
        elif t.embedding_probe and m.embedding_probe:
            cos = probe_cosine(t.embedding_probe, m.embedding_probe)
            if not cos >= SAME_TARGET_COSINE:
                out.append(
                    Finding(
                        "target",
                        f"the target's token embedding is not the one the draft was trained with (probe cosine "
                        f"{cos:.3f}): the draft was trained for another model of the same shape; train a draft "
                        "for this target",
                    )
                )
    return out


def make_fingerprint(
    vocab_size: int, hidden_size: int, num_layers: int, vocab: dict[str, int] | None, rows: list[list[float]]
) -> TargetFingerprint:
    """``rows``: the token-embedding rows at :func:`probe_rows` (``vocab``: the tokenizer's, if known)."""
    return TargetFingerprint(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        tokenizer_sha256=tokenizer_sha256(vocab) if vocab is not None else None,
        embedding_probe=embedding_probe(rows),
    )


def fingerprint_target_dir(model_dir: str | Path) -> TargetFingerprint:
    """The fingerprint of an HF model directory, read from its config, tokenizer and safetensors
    (only the probed embedding rows are read)."""
    from safetensors import safe_open

    d = Path(model_dir)
    cfg = json.loads((d / "config.json").read_text())
    cfg = cfg.get("text_config", cfg)
    vocab_size, hidden, layers = (
        int(cfg["vocab_size"]),
        int(cfg["hidden_size"]),
        int(cfg["num_hidden_layers"]),
    )
    rows: list[list[float]] = []
    for f in sorted(d.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            key = next((k for k in st.keys() if k.endswith("embed_tokens.weight")), None)
            if key is not None:
                emb = st.get_slice(key)
                rows = [emb[i : i + 1, :PROBE_DIMS].float()[0].tolist() for i in probe_rows(vocab_size)]
                break
    vocab = None
    tok_file = d / "tokenizer.json"
    if tok_file.is_file():
        model = json.loads(tok_file.read_text()).get("model", {})
        added = {t["content"]: t["id"] for t in json.loads(tok_file.read_text()).get("added_tokens", [])}
        if isinstance(model.get("vocab"), dict):
            vocab = {**model["vocab"], **added}
    return make_fingerprint(vocab_size, hidden, layers, vocab, rows)


def _needs_parallel_drafting(draft_type: str) -> bool | None:
    """Whether the registered head type is served with parallel drafting (None: unknown type)."""
    from draft_models.registry import get_draft_type

    try:
        layout = get_draft_type(draft_type).vllm
    except KeyError:
        return None
    return None if layout is None else bool(layout.speculative_options.get("parallel_drafting", False))


def deployment_from_dirs(
    target_dir: str | Path,
    draft_dir: str | Path,
    method: str,
    num_speculative_tokens: int,
    parallel_drafting: bool | None = None,
) -> Deployment:
    """What a server serving ``draft_dir`` (a vLLM EAGLE checkpoint) on ``target_dir`` reads: the aux
    layer ids in the draft's config (vLLM's defaults when it names none), its ``d2t``, the target."""
    from safetensors import safe_open

    target = fingerprint_target_dir(target_dir)
    raw = json.loads((Path(draft_dir) / "config.json").read_text())
    aux = (raw.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids") or raw.get(
        "eagle_aux_hidden_state_layer_ids"
    )
    if method == "eagle":  # EAGLE-1: vLLM hands the draft the target's last hidden state
        aux_ids = [LAST_HIDDEN]
    elif method == "mtp":  # MiMo's MTP layers: the last layer's output, before the final norm
        aux_ids = [target.num_layers]
    else:
        aux_ids = [int(x) for x in aux] if aux else default_aux_layer_ids(target.num_layers)
    d2t = None
    for f in sorted(Path(draft_dir).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            if "d2t" in st.keys():
                d2t = d2t_sha256(st.get_tensor("d2t").tolist())
                break
    return Deployment(method, num_speculative_tokens, aux_ids, d2t, target, parallel_drafting)
