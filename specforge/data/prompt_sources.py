"""Where the prompts of :mod:`specforge.data.prompts` come from, as candidates with their split unit.

Contract: :func:`candidates` returns every candidate prompt, by split, in a deterministic order for
a seed. A :class:`Cand` records its kind, its *unit* (where its material comes from: a
standard-library module, whose split is its file's in :mod:`stdlib_corpus`; or a
``pydoc_data.topics`` topic, a built-in or a docstring word, split by the same hash of the unit's
name), the *item* it asks about and the *payload* near-duplicate detection compares. Sources:
functions (signature, docstring and body), module docstrings, the language reference in
``pydoc_data.topics`` with pydoc's keyword and symbol tables, the built-ins' docstrings, and words
from module docstrings. Candidates are not yet filtered for length or duplicates.
"""

from __future__ import annotations

import ast
import builtins
import itertools
import pydoc
import random
import re
import textwrap
import tokenize
import types
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pydoc_data.topics import topics as TOPICS

from specforge.data import prompt_templates as T
from specforge.data.stdlib_corpus import CorpusFile, Split, read_source, split_of, stdlib_files

_SNIPPET_CHARS, _SNIPPET_LINES = 700, 20  # debug/refactor snippets are short
_HOWTO_NO_MODULE = tuple(t for t in T.HOWTO if "{module}" not in t)


@dataclass(frozen=True)
class Cand:
    kind: str
    unit: str  # the split unit: a module, topic, built-in or word
    item: str  # the thing asked about; at most a few prompts per item
    text: str
    payload: str  # what near-duplicate detection compares


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def tokens(text: str) -> list[str]:
    """Words and punctuation marks (so that `<` and `<=` differ), lower-cased."""
    return re.findall(r"\w+|[^\w\s]", text.lower())


def ngrams(words: list[str], n: int) -> set[str]:
    return (
        {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}
        if len(words) >= n
        else {" ".join(words)}
    )


def _clean(s: str) -> str:
    s = re.sub(r":[\w:]+:`~?!?([^`]+)`", r"`\1`", s).replace("``", "`")
    return " ".join(re.sub(r"(?<!\w)\*(\w[^*]*)\*(?!\w)", r"\1", s).split())


def _first_sentence(doc: str) -> str:
    for para in doc.strip().split("\n\n"):
        para = " ".join(para.split())
        if para and not re.match(r"^[\w.]+\(.*\)(\s*->.*)?$", para):
            m = re.match(r"(.+?(?<!e\.g)(?<!i\.e)[.!?])(\s|$)", para)
            return _clean(m.group(1) if m else para).rstrip(".!?: ")
    return ""


def _base_verb(w: str) -> str | None:
    if w in T.VERBS:
        return w
    for suffix, rep in (("ies", "y"), ("s", ""), ("es", "")):
        if w.endswith(suffix) and w[: -len(suffix)] + rep in T.VERBS:
            return w[: -len(suffix)] + rep
    return None


def _third(base: str) -> str:
    if base.endswith(("s", "sh", "ch", "x", "z", "o")):
        return base + "es"
    return base[:-1] + "ies" if base.endswith("y") and base[-2] not in "aeiou" else base + "s"


_BAD_TASK = re.compile(
    r"\b(self|XXX|TODO|deprecated|internal|helper|private|see|same as|like|alias|wrapper)\b|::"
)


def _tasks(doc: str) -> tuple[str, str] | None:
    """(base form, third person) of a docstring's first sentence, when it starts with a verb."""
    s = _first_sentence(doc)
    verb, _, rest = s.partition(" ")
    base = _base_verb(verb.lower())
    if base is None or not rest or not 12 <= len(s) <= 160 or _BAD_TASK.search(s):
        return None
    m = re.match(r"(?i)(true|1) (if|iff|when) (.+)", rest)
    if base == "return" and m:
        return f"check whether {m.group(3)}", f"returns True if {m.group(3)}"
    if base == "return":
        return ("check " if rest.lower().startswith("whether") else "get ") + rest, "returns " + rest
    return f"{base} {rest}", f"{_third(base)} {rest}"


@dataclass(frozen=True)
class _Func:
    module: str
    qualname: str
    signature: str
    header: str  # signature and docstring
    code: str  # signature and body, no docstring
    doc: str


def _functions(module: str, tree: ast.Module, lines: list[str]) -> Iterator[_Func]:
    def visit(body: list[ast.stmt], prefix: str) -> Iterator[_Func]:
        for node in body:
            if isinstance(node, ast.ClassDef):
                yield from visit(node.body, f"{prefix}{node.name}.")
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or node.end_lineno is None:
                continue
            first = (node.decorator_list[0] if node.decorator_list else node).lineno - 1
            if node.body[0].lineno <= node.lineno:
                continue  # a one-line def
            doc = ast.get_docstring(node) or ""
            rest = node.body[1:] if doc else node.body
            if not rest or rest[0].end_lineno is None:
                continue
            sig = lines[first : node.body[0].lineno - 1]
            head = lines[first : (node.body[0].end_lineno or 0)] if doc else sig
            code = sig + lines[rest[0].lineno - 1 : node.end_lineno]
            if len(code) - len(sig) < 2:
                continue
            dd = lambda ls: textwrap.dedent("\n".join(ls)).rstrip()  # noqa: E731
            yield _Func(module, prefix + node.name, dd(sig), dd(head), dd(code), doc.strip())

    yield from visit(tree.body, "")


_SWAPS = {"<": "<=", "<=": "<", ">": ">=", ">=": ">", "==": "!=", "!=": "==", "+": "-", "-": "+"}
_SWAPS.update({"and": "or", "or": "and", "True": "False", "False": "True"})


def _mutate(code: str, rng: random.Random) -> str | None:
    """``code`` with one operator, boolean or connective swapped (a real bug), or None."""
    lines = code.splitlines(keepends=True)
    try:
        spots = [
            t
            for t in tokenize.generate_tokens(iter(lines).__next__)
            if t.type in (tokenize.OP, tokenize.NAME) and t.string in _SWAPS
        ]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return None
    spots = [t for t in spots if t.start[0] > 1]  # not in the signature
    if not spots:
        return None
    t = rng.choice(spots)
    (row, col), end = t.start, t.end[1]
    lines[row - 1] = lines[row - 1][:col] + _SWAPS[t.string] + lines[row - 1][end:]
    return "".join(lines)


def _module_name(f: CorpusFile) -> str:
    return f.relpath.removesuffix(".py").replace("/", ".").removesuffix(".__init__")


def _cand(
    kind: str, unit: str, item: str, templates: tuple[str, ...], payload: str, seed: int, **fields: str
) -> Cand:
    """A prompt from one of ``templates`` picked by ``seed`` and ``item``; without a ``payload`` (a
    templated question), near-duplicates are judged on the template and the words filled in."""
    i = random.Random(f"{seed}:{kind}:{item}:{len(templates)}").randrange(len(templates))
    payload = payload or f"template {i} " + " ".join(fields.values())
    return Cand(kind, unit, item, templates[i].format(**fields), payload)


def _function_cands(fn: _Func, seed: int) -> Iterator[Cand]:
    m, name, item = fn.module, fn.qualname, f"{fn.module}:{fn.qualname}"
    code_fields = {"module": m, "name": name, "code": fn.code}
    if fn.doc:
        yield _cand("complete", m, item, T.COMPLETE, fn.code, seed, module=m, name=name, header=fn.header)
    yield _cand("explain_function", m, item, T.EXPLAIN_FUNCTION, fn.code, seed, **code_fields)
    public = not fn.qualname.split(".")[-1].startswith("_")
    tasks = _tasks(fn.doc) if fn.doc and public else None
    if tasks:
        sig = fn.signature.splitlines()[-1].strip().removesuffix(":") if fn.signature else name
        short = sig.removeprefix("async ").removeprefix("def ")
        yield _cand(
            "docstring_task",
            m,
            item,
            T.DOCSTRING_TASK,
            tasks[1],
            seed,
            task=tasks[1],
            name=name,
            signature=short,
        )
        yield _cand("howto", m, item, T.HOWTO, tasks[0], seed, task=tasks[0], module=m)
    if len(fn.code) <= _SNIPPET_CHARS and fn.code.count("\n") < _SNIPPET_LINES:
        yield _cand("refactor", m, item, T.REFACTOR, fn.code, seed, **code_fields)
        bug = _mutate(fn.code, random.Random(f"{seed}:bug:{item}"))
        if bug is not None:
            templates = T.DEBUG + (T.DEBUG_WITH_TASK if tasks else ())
            fields = {**code_fields, "code": bug, "task": tasks[0] if tasks else ""}
            yield _cand("debug", m, item, templates, bug, seed, **fields)


def _module_cands(module: str, doc: str, seed: int) -> Iterator[Cand]:
    para = _clean(doc.strip().split("\n\n")[0])
    if len(para) < 25:
        return
    if len(para) > 500:
        para = para[:500].rsplit(". ", 1)[0] + "."
    yield _cand("explain_module", module, module, T.EXPLAIN_MODULE_DOC, para, seed, module=module, doc=para)
    if not any(p.startswith("_") for p in module.split(".")):
        c = _cand("explain_module", module, module + "#q", T.EXPLAIN_MODULE, "", seed, module=module)
        yield replace(c, item=module)  # a second prompt on the module, in another wording
    tasks = _tasks(doc)
    if tasks:
        yield _cand("howto", module, module, T.HOWTO, tasks[0], seed, task=tasks[0], module=module)


def _topic_unit(name: str) -> str | None:
    """The ``pydoc_data.topics`` key behind a pydoc help keyword, symbol or topic name."""
    v: object = name
    for _ in range(5):
        if isinstance(v, tuple):
            return f"pydoc_data.topics/{v[0]}" if v[0] in TOPICS else None
        if not isinstance(v, str) or not v:
            return None
        v = (
            pydoc.Helper.topics.get(v)
            or pydoc.Helper.keywords.get(v)
            or (v if v in TOPICS and v != name else None)
        )
    return None


def _backticks(s: str) -> str:
    return re.sub(r'"([^"\s]{1,30})"', r"`\1`", s)


def _lower_first(s: str) -> str:
    return s[0].lower() + s[1:] if len(s) > 1 and s[1].islower() else s


def _concept_items() -> Iterator[tuple[str, str, tuple[str, ...], dict[str, str]]]:
    """(unit, item, templates, fields) for every language-reference question."""
    method_re = re.compile(r"^ {0,8}((object|str|pdb|slice|frame)\.\w+)\((.*)\)\s*$")
    for key, text in TOPICS.items():
        unit, lines = f"pydoc_data.topics/{key}", text.splitlines()
        heads = [
            lines[i - 1].strip()
            for i in range(1, len(lines))
            if lines[i - 1].strip()
            and lines[i]
            and set(lines[i]) <= set("=-*~^")
            and len(lines[i]) == len(lines[i - 1])
        ]
        for h in dict.fromkeys(heads):
            yield unit, f"{unit}#{h}", T.CONCEPT, {"x": _lower_first(_backticks(h))}
        for a, b in itertools.pairwise(heads[1:]):
            yield (
                unit,
                f"{unit}#{a}|{b}",
                T.DIFFERENCE,
                {"a": _lower_first(_backticks(a)), "b": _lower_first(_backticks(b))},
            )
        for mm in dict.fromkeys(m.group(1) for ln in lines if (m := method_re.match(ln))):
            yield unit, f"{unit}#{mm}", T.METHOD, {"m": mm + "()"}
    for kw in pydoc.Helper.keywords:
        yield _topic_unit(kw) or f"pydoc.keywords/{kw}", f"kw:{kw}", T.KEYWORD, {"k": kw}
    groups: dict[str, list[str]] = defaultdict(list)
    for sym, where in pydoc.Helper.symbols.items():
        if sym[-1] not in "'\"" and sym != "<>":
            unit = _topic_unit(where.split()[0]) or f"pydoc.symbols/{where.split()[0]}"
            groups[unit].append(sym)
            yield unit, f"sym:{sym}", T.SYMBOL, {"s": sym}
    for unit, syms in groups.items():
        for a, b in itertools.pairwise(syms):
            yield unit, f"sym:{a}|{b}", T.DIFFERENCE, {"a": f"`{a}`", "b": f"`{b}`"}
    for a, b in T.DIFFERENCE_PAIRS:
        yield f"concepts/{a} vs {b}", f"pair:{a}|{b}", T.DIFFERENCE, {"a": a, "b": b}


def _builtin_cands(seed: int) -> Iterator[Cand]:
    for name in sorted(dir(builtins)):
        obj = getattr(builtins, name)
        if name.startswith("_") or not isinstance(obj, type | types.BuiltinFunctionType):
            continue
        if isinstance(obj, type) and issubclass(obj, BaseException):
            continue
        unit = f"builtins/{name}"
        members = [(f"{name}.{a}", o) for a, o in sorted(vars(obj).items())] if isinstance(obj, type) else []
        for qual, o in [(name, obj), *members]:
            doc = getattr(o, "__doc__", None)
            if qual.split(".")[-1].startswith("_") or not isinstance(doc, str):
                continue
            if name != "str":  # str's methods are asked about from the string-methods topic
                yield _cand("concept", unit, qual, T.METHOD, qual, seed, m=f"{qual}()")
            tasks = _tasks(doc)
            if tasks and "." in qual:
                yield _cand("howto", unit, qual, _HOWTO_NO_MODULE, tasks[0], seed, task=tasks[0])
                sig = f"{qual.split('.')[-1]}(...)"
                yield _cand(
                    "docstring_task",
                    unit,
                    qual,
                    T.DOCSTRING_TASK,
                    tasks[1],
                    seed,
                    task=tasks[1],
                    name=qual.split(".")[-1],
                    signature=sig,
                )


def _general_cands(module_docs: dict[str, str], seed: int) -> Iterator[Cand]:
    vocab: dict[str, None] = {}
    for doc in [*module_docs.values(), *(t.split("\n", 1)[0] for t in TOPICS.values())]:
        for w in re.findall(r"(?<![\w.`'\"])[a-z]{5,14}(?![\w.(`'\"])", doc.strip().split("\n\n")[0]):
            if w not in T.GENERAL_STOPWORDS:
                vocab.setdefault(w)
    for w in vocab:
        for i in range(3):
            c = _cand("general", f"words/{w}", f"word:{w}:{i}", T.GENERAL, "", seed, w=w, W=w.capitalize())
            yield replace(c, item=f"word:{w}")


def candidates(seed: int = 0, files: list[CorpusFile] | None = None) -> dict[Split, list[Cand]]:
    """Every prompt candidate, by split, in a deterministic order (before length and dedup filters)."""
    out: dict[Split, list[Cand]] = {"train": [], "heldout": []}
    module_docs: dict[str, str] = {}
    for f in files if files is not None else stdlib_files():
        module, source = _module_name(f), read_source(f)
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            continue
        doc = ast.get_docstring(tree) or ""
        if doc:
            module_docs[module] = doc
            out[f.split].extend(_module_cands(module, doc, seed))
        for fn in _functions(module, tree, source.splitlines()):
            out[f.split].extend(_function_cands(fn, seed))
    extra = [
        *(_cand("concept", u, i, t, "", seed, **kw) for u, i, t, kw in _concept_items()),
        *_builtin_cands(seed),
    ]
    for c in [*extra, *_general_cands(module_docs, seed)]:
        out[split_of(c.unit)].append(c)
    return out
