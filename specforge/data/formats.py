"""Read conversation datasets: ShareGPT JSONL, OpenAI-messages JSONL, and plain text.

Contract: :func:`load_rows` returns a ``datasets.Dataset`` whose rows are normalised to either
``{"messages": [{"role", "content"}, ...], "text": None}`` (roles ``system``/``user``/``assistant``)
or ``{"messages": None, "text": str}``. A malformed row raises :class:`SpecforgeError` naming the
file, the 1-based row number and the problem; with ``skip_bad_rows=True`` it is dropped instead and
counted in the returned :class:`LoadReport`.

Accepted row shapes (JSONL, one object per line):

* ShareGPT: ``{"conversations": [{"from": "human"|"gpt"|"system", "value": str}, ...]}``
* OpenAI:   ``{"messages": [{"role": "user"|"assistant"|"system", "content": str}, ...]}``
* text:     ``{"text": str}``; a ``.txt`` file is one text row per file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from specforge.errors import SpecforgeError

_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "model": "assistant",
    "system": "system",
}
_OPENAI_ROLES = {"user", "assistant", "system"}


@dataclass
class LoadReport:
    path: Path
    rows: int = 0
    skipped: int = 0
    problems: list[str] = field(default_factory=list)  # the first few skipped rows' problems


class RowError(ValueError):
    """A row-level validation problem (internal; surfaced as SpecforgeError with file and row)."""


def normalise_row(row: Any, allow_prompt_only: bool = False) -> dict:
    """Normalise one parsed JSON row, or raise RowError saying what is wrong with it; with
    ``allow_prompt_only``, a conversation without an assistant turn (a prompt to answer) is accepted."""
    if not isinstance(row, dict):
        raise RowError(f"expected a JSON object, got {type(row).__name__}")
    if row.get("conversations") is not None:
        turns, role_key, text_key, roles = row["conversations"], "from", "value", _SHAREGPT_ROLES
    elif row.get("messages") is not None:
        turns, role_key, text_key, roles = row["messages"], "role", "content", {r: r for r in _OPENAI_ROLES}
    elif row.get("text") is not None:
        if not isinstance(row["text"], str) or not row["text"].strip():
            raise RowError("'text' must be a non-empty string")
        return {"messages": None, "text": row["text"]}
    else:
        raise RowError("row has none of the keys 'conversations' (ShareGPT), 'messages' (OpenAI) or 'text'")
    if not isinstance(turns, list) or not turns:
        raise RowError(f"'{'conversations' if role_key == 'from' else 'messages'}' must be a non-empty list")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or role_key not in turn or text_key not in turn:
            raise RowError(f"turn {i} must be an object with '{role_key}' and '{text_key}'")
        role = roles.get(str(turn[role_key]).lower())
        if role is None:
            raise RowError(f"turn {i} has unknown role {turn[role_key]!r}; expected one of {sorted(roles)}")
        if not isinstance(turn[text_key], str):
            raise RowError(f"turn {i} '{text_key}' must be a string, got {type(turn[text_key]).__name__}")
        messages.append({"role": role, "content": turn[text_key]})
    if not allow_prompt_only and not any(m["role"] == "assistant" for m in messages):
        raise RowError("conversation has no assistant turn, so nothing to train on")
    return {"messages": messages, "text": None}


def _validated(
    items, path: Path, skip_bad_rows: bool, report: LoadReport, allow_prompt_only: bool = False
) -> list[dict]:
    """Normalise ``(label, parse)`` items (``parse()`` gives the row's JSON, or raises RowError); a bad
    row stops with its file and label, or is counted when skipping."""
    out = []
    for label, parse in items:
        try:
            out.append(normalise_row(parse(), allow_prompt_only))
        except RowError as e:
            if not skip_bad_rows:
                raise SpecforgeError(
                    f"{path}: {label}: {e}. Fix the row, or pass skip_bad_rows=true to skip bad rows"
                ) from None
            report.skipped += 1
            if len(report.problems) < 5:
                report.problems.append(f"{label}: {e}")
    return out


def _parse_line(line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise RowError(f"invalid JSON ({e.msg} at column {e.colno})") from e


def _scan_jsonl(path: Path, skip_bad_rows: bool, report: LoadReport, allow_prompt_only: bool) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        items = (
            (f"row {lineno}", lambda line=line: _parse_line(line))
            for lineno, line in enumerate(fh, start=1)
            if line.strip()
        )
        return _validated(items, path, skip_bad_rows, report, allow_prompt_only)


def _scan_json_array(
    path: Path, skip_bad_rows: bool, report: LoadReport, allow_prompt_only: bool
) -> list[dict]:
    """A ``.json`` file holding one array of rows (ShareGPT's usual layout)."""
    try:
        parsed = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SpecforgeError(f"{path}: invalid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(parsed, list):
        raise SpecforgeError(
            f"{path}: a .json dataset holds an array of rows, or one row per line (JSON lines)"
        )
    items = ((f"row {i} of the array", lambda item=item: item) for i, item in enumerate(parsed))
    return _validated(items, path, skip_bad_rows, report, allow_prompt_only)


def _is_json_array(path: Path) -> bool:
    with path.open(encoding="utf-8") as fh:
        head = fh.read(4096).lstrip()
    return head.startswith("[")


def load_rows(
    path: str | Path, skip_bad_rows: bool = False, allow_prompt_only: bool = False
) -> tuple[datasets.Dataset, LoadReport]:
    """Load and validate a dataset file; see the module docstring for the formats. ``allow_prompt_only``
    accepts conversations with no assistant turn (prompts for regeneration), refused by default."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise SpecforgeError(f"dataset file {p} does not exist")
    report = LoadReport(path=p)
    if p.suffix == ".txt":
        ds = datasets.load_dataset("text", data_files=str(p), sample_by="document", split="train")
        ds = ds.map(lambda r: {"messages": None, "text": r["text"]}, remove_columns=ds.column_names)
    elif p.suffix in (".jsonl", ".json"):
        # Validate line by line first: datasets' JSON reader reports neither the file's row numbers
        # nor what is wrong with a row, and it rejects rows whose shape differs from the first row's.
        array = p.suffix == ".json" and _is_json_array(p)
        rows = (_scan_json_array if array else _scan_jsonl)(p, skip_bad_rows, report, allow_prompt_only)
        if not rows:
            raise SpecforgeError(
                f"{p} has no usable rows ({report.skipped} skipped as malformed)"
                + (f"; first problems: {'; '.join(report.problems)}" if report.problems else "")
            )
        features = datasets.Features(
            {
                "messages": datasets.List(
                    {"role": datasets.Value("string"), "content": datasets.Value("string")}
                ),
                "text": datasets.Value("string"),
            }
        )
        ds = datasets.Dataset.from_list(rows, features=features)
    else:
        raise SpecforgeError(
            f"{p}: unsupported dataset extension {p.suffix!r}; use .jsonl, .json (an array, or JSON lines) or .txt"
        )
    report.rows = len(ds)
    if report.rows == 0:
        raise SpecforgeError(f"{p} has no usable rows ({report.skipped} skipped as malformed)")
    return ds, report
