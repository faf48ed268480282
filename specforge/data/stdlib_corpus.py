"""Text that every machine has: the Python standard library's own sources.

Contract: :func:`stdlib_files` lists the standard library's ``.py`` files (tests, codec tables and
generated data left out) in a stable order, each tagged ``"train"`` or ``"heldout"`` by a hash of
its path relative to the standard library root. The split is by *file*, so held-out text never
shares a file with training text; it is identical on every machine with the same Python version.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Split = Literal["train", "heldout"]

# Directories whose files are tests, generated tables or vendored data: repetitive text that would
# teach a small target to loop.
_SKIP_DIRS = frozenset(
    {
        "test",
        "tests",
        "idle_test",
        "site-packages",
        "dist-packages",
        "encodings",
        "pydoc_data",
        "__pycache__",
        "ensurepip",
        "turtledemo",
        # GUI toolkits and the 2to3 fixer tables: long runs of near-identical calls.
        "tkinter",
        "idlelib",
        "lib2to3",
    }
)
_SKIP_FILES = frozenset({"turtle.py", "this.py"})
_MAX_FILE_BYTES = 400_000


@dataclass(frozen=True)
class CorpusFile:
    path: Path
    relpath: str
    split: Split


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def split_of(relpath: str, heldout_fraction: float = 0.06) -> Split:
    """Deterministic split by path hash: about ``heldout_fraction`` of the files are held out."""
    h = int.from_bytes(hashlib.sha256(relpath.encode()).digest()[:4], "big")
    return "heldout" if h < heldout_fraction * 2**32 else "train"


def stdlib_files(root: Path | None = None, heldout_fraction: float = 0.06) -> list[CorpusFile]:
    root = Path(root) if root is not None else stdlib_root()
    if not root.is_dir():
        raise FileNotFoundError(f"standard library directory {root} does not exist")
    out: list[CorpusFile] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("config-"))
        for name in sorted(filenames):
            if not name.endswith(".py") or name.startswith("test_") or name in _SKIP_FILES:
                continue
            path = Path(dirpath) / name
            if path.stat().st_size > _MAX_FILE_BYTES:
                continue
            rel = path.relative_to(root).as_posix()
            out.append(CorpusFile(path, rel, split_of(rel, heldout_fraction)))
    if not out:
        raise FileNotFoundError(f"no Python sources found under {root}")
    return out


def read_source(f: CorpusFile) -> str:
    return f.path.read_text(encoding="utf-8", errors="replace")
