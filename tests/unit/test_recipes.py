"""Every recipe loads through the schema, and its header dates its figure: the date, the commit and
the machine it was measured on, or NOT RUN."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from specforge.config import load_train_config

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))
MEASURED = re.compile(r"^# Measured (\d{4}-\d{2}-\d{2}), commit ([0-9a-f]{7,40}), ([^:]+):", re.M)


def _header(path: Path) -> str:
    lines = path.read_text().splitlines()
    return "\n".join(line for line in lines[: next(i for i, x in enumerate(lines) if not x.startswith("#"))])


def _not_shallow(git: str, cwd: Path) -> bool:
    out = subprocess.run(
        [git, "rev-parse", "--is-shallow-repository"], cwd=cwd, capture_output=True, text=True
    )
    return out.returncode == 0 and out.stdout.strip() == "false"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_loads_and_dates_its_figure(recipe):
    assert load_train_config(recipe).draft.type
    header = _header(recipe)
    assert "Hardware" in header and "Wall time" in header
    found = MEASURED.findall(header)
    assert found or "NOT RUN" in header, (
        f"{recipe.name}: state 'Measured DATE, commit HASH, MACHINE:' or NOT RUN"
    )
    git = shutil.which("git")
    full_history = bool(git) and (recipe.parents[1] / ".git").exists() and _not_shallow(git, recipe.parent)
    for _date, commit, machine in found:
        assert machine.strip()
        if full_history:
            known = subprocess.run([git, "cat-file", "-e", f"{commit}^{{commit}}"], cwd=recipe.parent)
            assert known.returncode == 0, f"{recipe.name}: commit {commit} is not in this repository"
