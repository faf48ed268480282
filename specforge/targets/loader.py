"""Load a frozen target model from any local Hugging Face causal-LM directory.

Contract: :func:`load_target` returns the model (eval mode, no grad) and its tokenizer, or raises
:class:`SpecforgeError` naming the path and the fix when the directory, its config, its weights, its
tokenizer or its chat template is missing or invalid. Nothing is ever downloaded: loading is
``local_files_only``. Llama, Qwen2/Qwen3 and Mistral families are supported (anything whose
``AutoModelForCausalLM`` class exposes ``model.layers`` and ``lm_head``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from specforge.errors import SpecforgeError

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")


def default_cache_root() -> Path:
    """Where specforge caches what it builds (targets, cost models): ``$SPECFORGE_HOME`` or
    ``~/.cache/specforge``."""
    return Path(os.environ.get("SPECFORGE_HOME", Path.home() / ".cache" / "specforge"))


class Target:
    """A frozen target model with its tokenizer.

    The model is loaded on first use of :attr:`model`. Training from stored hidden states needs
    only a few of its tensors (:meth:`tensor`: the token embedding, the output head, the final
    norm), which are read straight from the safetensors files without building the model."""

    def __init__(
        self,
        path: Path,
        tokenizer: PreTrainedTokenizerBase,
        model: PreTrainedModel | None = None,
        dtype: torch.dtype | str = "auto",
        device: str | torch.device = "cpu",
    ):
        self.path, self.tokenizer = path, tokenizer
        self._model, self._dtype, self._device = model, dtype, device
        self._config = model.config if model is not None else None

    @property
    def model(self) -> PreTrainedModel:
        if self._model is None:
            self._model = _load_model(self.path, self._dtype, self._device)
            self._config = self._model.config
        return self._model

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def unload(self) -> None:
        """Drop the model (it loads again on next use); the tensors read by :meth:`tensor` stay valid."""
        self._model = None

    @property
    def config(self):
        if self._config is None:
            from transformers import AutoConfig

            self._config = AutoConfig.from_pretrained(self.path, local_files_only=True)
        return self._config

    @property
    def num_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.config.vocab_size)

    def tensor(self, name: str) -> torch.Tensor:
        """One weight by its Hugging Face name (``model.embed_tokens.weight``, ``lm_head.weight``,
        ``model.norm.weight``, ``model.layers.3.mlp.up_proj.weight``), detached, on the CPU: from the
        loaded model, else from the safetensors files (``lm_head.weight`` of a tied head is the
        embedding). Where the files cannot say, the model is loaded."""
        if name == "lm_head.weight" and getattr(self.config, "tie_word_embeddings", False):
            name = "model.embed_tokens.weight"
        if self._model is None:
            found = _read_safetensors(self.path, name)
            if found is not None:
                return found
        state = dict(self.model.named_parameters())
        if name not in state:
            raise SpecforgeError(f"{self.path}: the target has no weight named {name!r}")
        return state[name].detach().cpu()


def _read_safetensors(path: Path, name: str) -> torch.Tensor | None:
    from safetensors import safe_open

    index = path / "model.safetensors.index.json"
    if index.is_file():
        file = json.loads(index.read_text()).get("weight_map", {}).get(name)
        files = [path / file] if file else []
    else:
        files = sorted(path.glob("*.safetensors"))
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            if name in st.keys():
                return st.get_tensor(name)
    return None


def _load_model(p: Path, dtype: torch.dtype | str, device: str | torch.device) -> PreTrainedModel:
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(p, dtype=dtype, local_files_only=True)
    except Exception as e:
        raise SpecforgeError(f"could not load the target model weights in {p}: {e}") from e
    if not hasattr(model, "model") or not hasattr(model.model, "layers"):
        raise SpecforgeError(
            f"{p}: model class {type(model).__name__} has no model.layers; not a decoder-only LM"
        )
    return model.to(device).eval().requires_grad_(False)


def check_target_dir(path: str | os.PathLike, need_chat_template: bool = True) -> Path:
    """Validate a target directory without loading weights; return it as a Path."""
    p = Path(path).expanduser()
    if not p.exists():
        raise SpecforgeError(
            f"target model directory {p} does not exist: pass a local Hugging Face model directory "
            "(with config.json, weights and tokenizer), or build the default with `specforge target build-tiny`"
        )
    if not p.is_dir():
        raise SpecforgeError(f"target model path {p} is a file; pass the directory that holds config.json")
    cfg_path = p / "config.json"
    if not cfg_path.is_file():
        raise SpecforgeError(f"{p} has no config.json: it is not a Hugging Face model directory")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise SpecforgeError(
            f"{cfg_path} is not valid JSON ({e}); re-save the model with save_pretrained"
        ) from e
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise SpecforgeError(
            f"{cfg_path}: model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    if not any(any(p.glob(pat)) for pat in _WEIGHT_PATTERNS):
        raise SpecforgeError(f"{p} holds no weights (*.safetensors or pytorch_model*.bin); copy them there")
    if not any((p / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise SpecforgeError(
            f"{p} has no tokenizer (tokenizer.json, tokenizer.model or vocab.json): "
            "save the tokenizer into the model directory with tokenizer.save_pretrained(dir)"
        )
    if need_chat_template and not _has_chat_template(p):
        raise SpecforgeError(
            f"{p} has no chat template (tokenizer_config.json 'chat_template' or chat_template.jinja): "
            "add one, or use a plain-text dataset, which needs none"
        )
    return p


def _has_chat_template(p: Path) -> bool:
    if (p / "chat_template.jinja").is_file() or (p / "chat_template.json").is_file():
        return True
    tc = p / "tokenizer_config.json"
    if tc.is_file():
        try:
            return bool(json.loads(tc.read_text()).get("chat_template"))
        except json.JSONDecodeError:
            return False
    return False


def load_tokenizer(path: str | os.PathLike, need_chat_template: bool = True) -> PreTrainedTokenizerBase:
    p = check_target_dir(path, need_chat_template)
    try:
        tok = AutoTokenizer.from_pretrained(p, local_files_only=True)
    except Exception as e:
        raise SpecforgeError(f"could not load the tokenizer in {p}: {e}") from e
    if not tok.is_fast:
        raise SpecforgeError(
            f"the tokenizer in {p} is a slow tokenizer; specforge needs a fast (tokenizer.json) one"
        )
    check_tokenizer_fits(tok, json.loads((p / "config.json").read_text()), p)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


ROUND_TRIP_TEXT = "def mean(xs):\n    return sum(xs) / len(xs)  # the average, e.g. 2.5 for [2, 3]\n"


def check_tokenizer_fits(tok: PreTrainedTokenizerBase, config: dict, p: Path) -> None:
    """Raise SpecforgeError when the tokenizer in ``p`` cannot be the target's own: its size against
    the embedding (a padded vocabulary is at most 5 % larger), its end-of-sequence token against the
    config's, and a round trip of sample text."""
    vocab = config.get("vocab_size") or config.get("text_config", {}).get("vocab_size")
    if isinstance(vocab, int):
        if len(tok) > vocab:
            raise SpecforgeError(
                f"{p}: the tokenizer has {len(tok)} tokens but the model's vocab_size is {vocab}; "
                "the tokenizer does not belong to this model"
            )
        if len(tok) < 0.95 * vocab:
            raise SpecforgeError(
                f"{p}: the tokenizer has {len(tok)} tokens, far fewer than the model's vocab_size {vocab}; "
                "it is probably another model's tokenizer: copy the target's own tokenizer files there"
            )
    eos = config.get("eos_token_id")
    eos_ids = set(eos) if isinstance(eos, list) else ({eos} if isinstance(eos, int) else set())
    if eos_ids and tok.eos_token_id is not None and tok.eos_token_id not in eos_ids:
        raise SpecforgeError(
            f"{p}: the tokenizer's end-of-sequence token {tok.eos_token!r} (id {tok.eos_token_id}) is not the "
            f"model's eos_token_id {eos}: fix eos_token_id in config.json, or use the target's own tokenizer"
        )
    back = tok.decode(tok(ROUND_TRIP_TEXT, add_special_tokens=False)["input_ids"], skip_special_tokens=True)
    if back.strip() != ROUND_TRIP_TEXT.strip():
        raise SpecforgeError(
            f"{p}: the tokenizer does not reproduce text it encodes ({back[:60]!r}); is it complete?"
        )


def load_target(
    path: str | os.PathLike,
    dtype: torch.dtype | str = "auto",
    device: str | torch.device = "cpu",
    need_chat_template: bool = True,
    lazy: bool = False,
) -> Target:
    """Load a frozen target: eval mode, ``requires_grad=False`` on every parameter. ``lazy``: check
    the directory and load the tokenizer now, the model on first use of ``Target.model``."""
    p = check_target_dir(path, need_chat_template)
    tok = load_tokenizer(p, need_chat_template)
    target = Target(p, tok, dtype=dtype, device=device)
    if not lazy:
        target.model  # noqa: B018 -- load now, so a broken checkpoint fails here
    return target


@torch.no_grad()
def generate_left_padded(
    model: PreTrainedModel, prompts: list[list[int]], pad_id: int, **generate_kwargs
) -> list[list[int]]:
    """``model.generate`` on token prompts of different lengths (left padding, KV cache); returns
    only the new tokens of each prompt."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    device = next(model.parameters()).device
    out = model.generate(
        input_ids=ids.to(device), attention_mask=mask.to(device), pad_token_id=pad_id, **generate_kwargs
    )
    return [row[width:] for row in out.tolist()]
