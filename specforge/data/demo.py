"""The demo conversation set, made from the standard library's sources.

Contract: :func:`demo_conversations` turns functions found in standard-library files into two kinds
of chat conversation, each a ``{"messages": [{"role", "content"}, ...]}`` row:

* *complete* — the user shows a function's signature and docstring, the assistant writes its body;
* *explain*  — the user shows a function without its docstring, the assistant explains it (the
  docstring is the answer).

Rows for the ``"heldout"`` split come only from held-out files (see :mod:`stdlib_corpus`), so
evaluation prompts never share a file with training text. The output is deterministic for a seed.
"""

from __future__ import annotations

import ast
import json
import random
import textwrap
from collections.abc import Iterator
from pathlib import Path

from specforge.data.stdlib_corpus import CorpusFile, Split, read_source, stdlib_files

_MAX_FUNC_CHARS = 1400
_MIN_BODY_LINES = 2


def _functions(source: str) -> Iterator[tuple[str, str, str, str]]:
    """Yield (name, header_with_docstring, body_without_docstring, docstring) for documented functions."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return
    lines = source.splitlines()
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        doc = ast.get_docstring(node)
        if not doc or len(node.body) < 2 or node.end_lineno is None:
            continue
        first, doc_node = node.lineno - 1, node.body[0]
        if node.decorator_list:
            first = node.decorator_list[0].lineno - 1
        if doc_node.end_lineno is None:
            continue
        header = textwrap.dedent("\n".join(lines[first : doc_node.end_lineno]))
        body_lines = lines[doc_node.end_lineno : node.end_lineno]
        signature = textwrap.dedent("\n".join(lines[first : node.body[0].lineno - 1]))
        code = "\n".join(lines[first : node.end_lineno])
        if len(code) > _MAX_FUNC_CHARS or len(body_lines) < _MIN_BODY_LINES:
            continue
        indent = len(lines[first]) - len(lines[first].lstrip())
        body = "\n".join(ln[indent:] if ln[:indent].strip() == "" else ln for ln in body_lines).rstrip()
        yield node.name, header, signature + "\n" + body, doc.strip()


def _conversation(kind: str, module: str, name: str, header: str, code: str, doc: str) -> dict:
    if kind == "complete":
        user = f"Complete this function from `{module}`:\n```python\n{header}\n```"
        answer = f"```python\n{code.split(chr(10), 1)[1] if chr(10) in code else code}\n```"
    else:
        user = f"Explain what `{name}` in `{module}` does:\n```python\n{code}\n```"
        answer = doc
    return {
        "id": f"{module}:{name}:{kind}",
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
    }


def demo_conversations(
    split: Split,
    max_rows: int | None = None,
    seed: int = 0,
    files: list[CorpusFile] | None = None,
    max_prompt_chars: int | None = None,
) -> list[dict]:
    """Conversations from the ``split`` files, shuffled with ``seed`` and cut to ``max_rows``;
    with ``max_prompt_chars``, only those whose user turn is at most that long."""
    files = files if files is not None else stdlib_files()
    rows: list[dict] = []
    for f in files:
        if f.split != split:
            continue
        module = f.relpath.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
        for name, header, code, doc in _functions(read_source(f)):
            for kind in ("complete", "explain"):
                rows.append(_conversation(kind, module, name, header, code, doc))
    random.Random(seed).shuffle(rows)
    if max_prompt_chars is not None:
        rows = [r for r in rows if len(r["messages"][0]["content"]) <= max_prompt_chars]
    return rows[:max_rows] if max_rows is not None else rows


def write_demo_dataset(
    out_dir: Path,
    max_train: int = 4000,
    max_heldout: int = 200,
    seed: int = 0,
    max_prompt_chars: int | None = None,
) -> dict:
    """Write ``train.jsonl`` and ``heldout.jsonl`` (OpenAI messages format); return row counts."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = stdlib_files()
    counts = {}
    for split, n in (("train", max_train), ("heldout", max_heldout)):
        rows = demo_conversations(split, n, seed, files, max_prompt_chars)
        tmp = out_dir / f".{split}.jsonl.tmp"
        with tmp.open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        tmp.replace(out_dir / f"{split}.jsonl")
        counts[split] = len(rows)
    return counts
