"""Dataset formats, chat templates and loss masks."""

from __future__ import annotations

import json

import pytest

from specforge.data.formats import load_rows
from specforge.data.tokenize import tokenize_conversation, tokenize_dataset
from specforge.errors import SpecforgeError


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _masked_text(tok, ids, mask):
    return tok.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=False)


def test_loss_mask_single_turn_hand_checked(micro_target):
    tok = micro_target.tokenizer
    msgs = [{"role": "user", "content": "def f(x):"}, {"role": "assistant", "content": "return x"}]
    ids, mask = tokenize_conversation(tok, msgs, max_length=512)
    text = tok.decode(ids)
    assert text == "<|user|>\ndef f(x):<|end|>\n<|assistant|>\nreturn x<|end|>\n"
    # Exactly the assistant's content and its end-of-turn marker are trained on.
    assert _masked_text(tok, ids, mask) == "return x<|end|>\n"
    assert len(ids) == len(mask)


def test_loss_mask_multi_turn_with_system(micro_target):
    tok = micro_target.tokenizer
    msgs = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": "second answer"},
    ]
    ids, mask = tokenize_conversation(tok, msgs, max_length=512)
    assert _masked_text(tok, ids, mask) == "first answer<|end|>\nsecond answer<|end|>\n"
    # Nothing of the system or user turns is masked in.
    first_masked = mask.index(1)
    assert tok.decode(ids[:first_masked]).endswith("<|assistant|>\n")


def test_sharegpt_and_openai_give_identical_tokens(micro_target, tmp_path):
    tok = micro_target.tokenizer
    share = _write(
        tmp_path / "s.jsonl",
        [{"conversations": [{"from": "human", "value": "hello"}, {"from": "gpt", "value": "hi there"}]}],
    )
    openai = _write(
        tmp_path / "o.jsonl",
        [{"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi there"}]}],
    )
    a = tokenize_dataset(load_rows(share)[0], tok, 128)[0]
    b = tokenize_dataset(load_rows(openai)[0], tok, 128)[0]
    assert a == b
    assert _masked_text(tok, a["input_ids"], a["loss_mask"]) == "hi there<|end|>\n"


def test_truncation(micro_target):
    msgs = [{"role": "user", "content": "x " * 200}, {"role": "assistant", "content": "y " * 200}]
    ids, mask = tokenize_conversation(micro_target.tokenizer, msgs, max_length=50)
    assert len(ids) == len(mask) == 50


def test_plain_text_file_is_all_loss(micro_target, tmp_path):
    p = tmp_path / "doc.txt"
    p.write_text("def f():\n    return 1\n")
    ds, rep = load_rows(p)
    out = tokenize_dataset(ds, micro_target.tokenizer, 64)
    assert rep.rows == 1 and all(m == 1 for m in out[0]["loss_mask"])


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ('{"messages": [', "invalid JSON"),
        ({"conversations": [{"from": "alien", "value": "x"}]}, "unknown role 'alien'"),
        ({"messages": [{"role": "user", "content": "only a question"}]}, "no assistant turn"),
        ({"messages": [{"role": "user"}]}, "must be an object with 'role' and 'content'"),
        ({"messages": [{"role": "assistant", "content": 3}]}, "must be a string"),
        ({"prompt": "x"}, "none of the keys"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_malformed_row_names_file_row_and_problem(tmp_path, row, problem):
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    path = _write(tmp_path / "bad.jsonl", [good, good, row])
    with pytest.raises(SpecforgeError) as e:
        load_rows(path)
    msg = str(e.value)
    assert str(path) in msg and "row 3" in msg and problem in msg


def test_skip_bad_rows_counts(tmp_path):
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    path = _write(tmp_path / "mixed.jsonl", [good, "{oops", {"text": ""}, good])
    ds, rep = load_rows(path, skip_bad_rows=True)
    assert len(ds) == 2 and rep.rows == 2 and rep.skipped == 2
    assert rep.problems[0].startswith("row 2:")


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(SpecforgeError, match="does not exist"):
        load_rows(tmp_path / "nope.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(SpecforgeError, match="unsupported dataset extension"):
        load_rows(tmp_path / "x.csv")


def test_an_empty_file_or_one_with_every_row_skipped_is_one_clear_error(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(SpecforgeError, match=r"empty.jsonl has no usable rows \(0 skipped"):
        load_rows(tmp_path / "empty.jsonl")
    bad = _write(tmp_path / "bad.jsonl", ["{oops", {"text": ""}])
    with pytest.raises(
        SpecforgeError, match=r"no usable rows \(2 skipped as malformed\); first problems: row 1"
    ):
        load_rows(bad, skip_bad_rows=True)


def test_a_json_array_is_read_as_rows(tmp_path):
    """ShareGPT's usual layout: one .json array of conversations."""
    rows = [
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
        {"text": "plain"},
    ]
    (tmp_path / "sharegpt.json").write_text(json.dumps(rows, indent=2))
    ds, rep = load_rows(tmp_path / "sharegpt.json")
    assert rep.rows == 2 and ds[0]["messages"][1] == {"role": "assistant", "content": "a"}
    (tmp_path / "bad.json").write_text(json.dumps([rows[0], {"nothing": 1}]))
    with pytest.raises(SpecforgeError, match=r"bad.json: row 1 of the array: row has none of the keys"):
        load_rows(tmp_path / "bad.json")
    (tmp_path / "object.json").write_text('{"a": 1}\n{"b": 2}')  # JSON lines in a .json file still load
    with pytest.raises(SpecforgeError, match="row 1: row has none of the keys"):
        load_rows(tmp_path / "object.json")
