"""``specforge check``: serve an exported draft as it will be deployed and catch collapsed acceptance.

Contract: :func:`check_draft` takes a target directory, a vLLM draft export and the speculative
config the user will deploy (method, k), and

1. compares the draft's metadata (``specforge_draft.json``) with that deployment
   (:func:`serving.draft_check.static_findings`: wrong method for the head type, aux layer ids,
   ``d2t``, a draft trained for another target);
2. serves a handful of held-out prompts through the real vLLM with exactly that config, at the
   given temperature and dtype, and measures tau and acceptance per position (vLLM's counters);
3. serves the same prompts with the same export in the reference engine, which tells a broken
   head (both low) from a server that serves a good head badly (only vLLM low);
4. compares vLLM's tau with the estimate recorded at training time: the served estimate at the
   same temperature (re-chained to the deployed k), else the walked or teacher-forced estimate.

Served acceptance counts as collapsed when vLLM's accepted tokens per step fall below
``min_ratio`` times the estimate's. The report names every finding with what to change; the
command exits non-zero on any finding or a collapse.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from serving.acceptance import chain_tau
from serving.draft_check import DraftMeta, Finding, deployment_from_dirs, read_meta, static_findings
from serving.vllm_plugin.harness.runner import run_vllm
from specforge.bench.served import served_estimate, served_key
from specforge.bench.vllm_chain import chat_prompts
from specforge.errors import SpecforgeError


@dataclass
class CheckReport:
    target: str
    draft: str
    method: str
    k: int
    temperature: float
    dtype: str
    prompts: int
    max_tokens: int
    expected_tau: float | None  # the training-time estimate at this k and temperature
    expected_from: str  # which estimate: "served t0", "walk", "teacher-forced", or "none"
    vllm_tau: float | None
    vllm_acceptance_per_position: list[float]
    reference_tau: float | None  # the same export served by the reference engine
    reference_acceptance_per_position: list[float]
    collapsed: bool
    findings: list[Finding] = field(default_factory=list)
    plugin_warnings: list[str] = field(default_factory=list)  # what the vLLM start-up check logged

    @property
    def ok(self) -> bool:
        return not self.findings and not self.collapsed

    def to_json(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def expected_tau(meta: DraftMeta | None, k: int, temperature: float) -> tuple[float | None, str]:
    """The training-time estimate of tau at ``k`` drafts and ``temperature`` and where it comes from."""
    if meta is None:
        return None, "none"
    est = meta.estimates
    served = est.served.get(served_key(temperature))
    if served is not None and served.alpha:
        return chain_tau(served.alpha, k), f"served {served_key(temperature)}"
    if temperature == 0 and est.walk_tau is not None and est.walk_k == k:
        return est.walk_tau, "walk"
    if est.teacher_forced_alpha:
        return chain_tau(est.teacher_forced_alpha, k), "teacher-forced"
    return None, "none"


def parse_speculative_config(
    text: str | None, draft_dir: Path, k: int | None
) -> tuple[str | None, int | None]:
    """(method, k) from a vLLM ``speculative_config`` JSON; other keys are refused by name."""
    if not text:
        return None, k
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecforgeError(f"--speculative-config is not JSON ({e})") from None
    if not isinstance(spec, dict):
        raise SpecforgeError('--speculative-config must be a JSON object, e.g. \'{"method": "eagle3"}\'')
    unknown = sorted(set(spec) - {"method", "model", "num_speculative_tokens"})
    if unknown:
        raise SpecforgeError(
            f"--speculative-config: the check serves method, model and num_speculative_tokens; it cannot "
            f"apply {', '.join(unknown)}"
        )
    if "model" in spec and Path(spec["model"]).resolve() != draft_dir.resolve():
        raise SpecforgeError(f"--speculative-config names model {spec['model']!r} but --draft is {draft_dir}")
    return spec.get("method"), int(spec.get("num_speculative_tokens", k or 4))


def check_draft(
    target_dir: Path,
    draft_dir: Path,
    data: Path,
    workdir: Path,
    method: str | None = None,
    k: int = 4,
    temperature: float = 0.0,
    prompts: int = 8,
    max_tokens: int = 64,
    dtype: str = "float32",
    min_ratio: float = 0.5,
    reference: bool = True,
    timeout: float = 1800,
) -> CheckReport:
    if not (draft_dir / "config.json").is_file():
        raise SpecforgeError(
            f"{draft_dir} is not a vLLM draft export (no config.json); export with --format vllm"
        )
    meta = read_meta(draft_dir)
    method = method or (meta.method if meta is not None else "eagle3")
    findings: list[Finding] = []
    if meta is None:
        findings.append(
            Finding(
                "metadata",
                f"{draft_dir} has no specforge_draft.json, so nothing can be compared with training; "
                "re-export it with `specforge export --format vllm` from its training run",
            )
        )
    else:
        findings += static_findings(meta, deployment_from_dirs(target_dir, draft_dir, method, k))
    toks = chat_prompts(target_dir, data, prompts)
    request = {
        "target": str(target_dir),
        "prompts": toks,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "seed_requests": False,
        "dtype": dtype,
        "max_model_len": 1024,
        "max_num_seqs": 8,
        "draft": str(draft_dir),
        "method": method,
        "num_speculative_tokens": k,
    }
    vllm_tau, vllm_pos, warnings = None, [], []
    try:
        res = run_vllm(request, workdir, timeout=timeout, env={"VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
        spec = res.get("spec", {})
        drafts = max(1, spec.get("drafts", 0))
        vllm_tau = 1 + spec.get("accepted_tokens", 0) / drafts
        vllm_pos = [a / drafts for a in spec.get("accepted_per_pos", [])]
        warnings = [
            ln.split("specforge draft check:", 1)[1].strip()
            for ln in res.get("log", "").splitlines()
            if "specforge draft check:" in ln
        ]
    except RuntimeError as e:
        findings.append(
            Finding(
                "serve",
                f"vLLM could not serve the draft with method {method!r}: {_vllm_error(str(e))}",
            )
        )
    ref_tau, ref_pos = None, []
    if reference:
        ref_tau, ref_pos = _reference(target_dir, draft_dir, toks, k, temperature, max_tokens)
    expected, source = expected_tau(meta, k, temperature)
    collapsed = vllm_tau is None or (expected is not None and (vllm_tau - 1) < min_ratio * (expected - 1))
    if collapsed and vllm_tau is not None and not findings:
        findings.append(_diagnose(vllm_tau, expected, ref_tau, min_ratio, dtype))
    report = CheckReport(
        target=str(target_dir),
        draft=str(draft_dir),
        method=method,
        k=k,
        temperature=temperature,
        dtype=dtype,
        prompts=len(toks),
        max_tokens=max_tokens,
        expected_tau=expected,
        expected_from=source,
        vllm_tau=vllm_tau,
        vllm_acceptance_per_position=vllm_pos,
        reference_tau=ref_tau,
        reference_acceptance_per_position=ref_pos,
        collapsed=collapsed,
        findings=findings,
        plugin_warnings=warnings,
    )
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "check.json").write_text(json.dumps(report.to_json(), indent=1))
    return report


def _reference(
    target_dir: Path, draft_dir: Path, toks: list[list[int]], k: int, temperature: float, max_tokens: int
) -> tuple[float | None, list[float]]:
    """tau and acceptance per position of the export in the reference engine (None if it cannot load)."""
    from specforge.export import load_vllm_export
    from specforge.targets.loader import load_target

    target = load_target(target_dir, need_chat_template=False)
    try:
        draft = load_vllm_export(
            draft_dir, target.model.get_input_embeddings().weight.detach().float(), target.num_layers
        )
    except SpecforgeError:
        return None, []
    if draft.config.target_hidden_size != target.hidden_size:
        return None, []
    est = served_estimate(
        target.model, draft, toks, k, temperature, max_tokens, target.tokenizer.eos_token_id
    )
    return est.tau, est.acceptance_per_position


def _diagnose(
    vllm_tau: float, expected: float | None, ref_tau: float | None, min_ratio: float, dtype: str
) -> Finding:
    exp = f"{expected:.2f}" if expected is not None else "?"
    if ref_tau is not None and expected is not None and (ref_tau - 1) < min_ratio * (expected - 1):
        return Finding(
            "draft",
            f"vLLM serves tau {vllm_tau:.2f} against {exp} estimated in training, and the reference engine "
            f"serves the same export at {ref_tau:.2f}: the exported head itself is not the head that was "
            "measured (weights or d2t changed after export, or an export of another run); re-export it",
        )
    return Finding(
        "server",
        f"vLLM serves tau {vllm_tau:.2f} against {exp} estimated in training, while the reference engine "
        f"serves the same export at {ref_tau if ref_tau is None else round(ref_tau, 2)}: the server serves a good head badly. "
        f"Check the dtype (served in {dtype}; training ran in float32), the vLLM version, and the "
        "speculative config's other settings",
    )


def _vllm_error(text: str) -> str:
    """The line of vLLM's output that says what failed (pydantic's and Python's, not their footers)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if (
            ("Error" in ln or "error" in ln)
            and "errors.pydantic.dev" not in ln
            and not ln.startswith("File ")
        ):
            return ln[:400]
    return lines[-1][:400] if lines else "no output"
