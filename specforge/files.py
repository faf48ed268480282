"""Writing without losing work: atomic files, and directories published without deleting foreign files.

Contract
--------
* :func:`write_json_atomic` writes JSON to a temporary sibling and renames it into place, so a
  reader never sees half a file and a crash leaves the old one.
* :func:`publish_dir` moves a directory built in a private temporary folder (:func:`staging_dir`)
  to ``out``. It writes a marker, ``specforge.json``, naming the kind of directory and the files
  it wrote. An existing ``out`` is replaced only when it is empty, or when its marker says it is a
  previous directory of the same kind: then only the files that marker lists are replaced or
  removed. A non-empty ``out`` of any other kind is refused with one clear error, unless
  ``force``: then the new files are written into it and nothing else there is touched. No file
  the tool did not write is ever deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from specforge.errors import SpecforgeError

MARKER = "specforge.json"


def write_json_atomic(path: str | Path, payload: object, indent: int | None = 1) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=indent, ensure_ascii=False)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def staging_dir(out: str | Path) -> Path:
    """A new, private folder beside ``out`` to build into (never an existing folder)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))


def marker_kind(out: Path) -> str | None:
    """The kind a previous :func:`publish_dir` recorded in ``out`` (None: no readable marker)."""
    try:
        return json.loads((out / MARKER).read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


def check_out_dir(out: str | Path, kind: str, force: bool, flag: str = "--out") -> None:
    """Raise the error :func:`publish_dir` would raise, before any work is done."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SpecforgeError(f"{flag} {out} is a file, not a directory: choose a directory")
    if out.is_dir() and any(out.iterdir()) and marker_kind(out) != kind and not force:
        found = marker_kind(out)
        what = f"a {found} directory" if found else "not something specforge wrote"
        raise SpecforgeError(
            f"{flag} {out} is not empty and is {what}, not a previous {kind}: choose a new or empty "
            f"directory, or pass --force to write the {kind} files into it (files of the same names are replaced, nothing "
            "else there is touched)"
        )


def publish_dir(staged: Path, out: str | Path, kind: str, force: bool = False) -> Path:
    """Move the files of ``staged`` (a folder from :func:`staging_dir`) into ``out``; see the module
    contract for what an existing ``out`` may hold."""
    out = Path(out)
    check_out_dir(out, kind, force)
    names = sorted(p.name for p in staged.iterdir())
    (staged / MARKER).write_text(json.dumps({"kind": kind, "files": names}, indent=1))
    if not out.exists() or not any(out.iterdir()):
        if out.exists():
            out.rmdir()
        os.replace(staged, out)
        return out
    previous: list[str] = []
    if marker_kind(out) == kind:
        try:
            previous = list(json.loads((out / MARKER).read_text()).get("files", []))
        except (OSError, ValueError):
            previous = []
    for name in names:
        target = out / name
        if target.is_dir() and not target.is_symlink():
            if name not in previous:
                raise SpecforgeError(f"{target} is a directory specforge did not write: move it away first")
            shutil.rmtree(target)
        os.replace(staged / name, target)
    for name in set(previous) - set(names):  # ours before, not part of this export
        stale = out / name
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale)
        else:
            stale.unlink(missing_ok=True)
    os.replace(staged / MARKER, out / MARKER)
    staged.rmdir()
    return out
