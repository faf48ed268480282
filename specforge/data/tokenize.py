"""Chat templates and loss masks.

Contract: :func:`tokenize_conversation` renders a conversation with the tokenizer's own chat
template and returns ``input_ids`` and a ``loss_mask`` of the same length, where
``loss_mask[j] == 1`` exactly when token ``j`` belongs to an assistant turn (its content and the
end-of-turn marker the template writes after it). Position ``j`` is *predicted from* position
``j - 1``; the trainer shifts. Both are cut to ``max_length``. Works for any template whose
rendering of a conversation prefix is a prefix of the full rendering (Llama, Qwen, Mistral,
the tiny target's); otherwise it falls back to locating each assistant message's text.
:func:`tokenize_dataset` maps a normalised dataset (see :mod:`formats`) to those two columns.
"""

from __future__ import annotations

import datasets
from transformers import PreTrainedTokenizerBase

from specforge.errors import SpecforgeError


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def chat_prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict]) -> list[int]:
    """The token ids of ``messages`` rendered with the chat template, the generation prompt added
    (a prompt for the target's next assistant turn)."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    return list(ids["input_ids"] if hasattr(ids, "input_ids") or isinstance(ids, dict) else ids)


def served_prompt_ids(
    tokenizer: PreTrainedTokenizerBase, rows, limit: int, max_prompt_tokens: int = 768
) -> list[list[int]]:
    """The prompts a server would see for normalised dataset ``rows`` (see :mod:`formats`): a
    conversation gives its turns before the first assistant turn, rendered with the chat template
    (generation prompt added); a plain-text row gives its text as a raw completion prompt (tokenised
    as in training, no template). Up to ``limit`` prompts of at most ``max_prompt_tokens`` tokens."""
    prompts: list[list[int]] = []
    for r in rows:
        msgs = r["messages"]
        if msgs:
            first_assistant = next((i for i, m in enumerate(msgs) if m["role"] == "assistant"), len(msgs))
            ids = chat_prompt_ids(tokenizer, msgs[:first_assistant])
        else:
            ids = tokenizer(r["text"], add_special_tokens=True)["input_ids"]
        if len(ids) <= max_prompt_tokens:
            prompts.append(list(ids))
        if len(prompts) == limit:
            break
    return prompts


def assistant_char_spans(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict]
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the [start, end) character span of every assistant turn in it."""
    full = _render(tokenizer, messages, add_generation_prompt=False)
    spans: list[tuple[int, int]] = []
    search_from = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        upto = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if full.startswith(upto) and upto.startswith(before) and len(upto) > len(before):
            spans.append((len(before), len(upto)))
        else:
            at = full.find(m["content"], search_from)
            if at < 0:
                raise SpecforgeError(
                    "the chat template drops an assistant message's text; cannot build a loss mask"
                )
            spans.append((at, at + len(m["content"])))
        search_from = spans[-1][1]
    return full, spans


def tokenize_conversation(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict], max_length: int
) -> tuple[list[int], list[int]]:
    """(input_ids, loss_mask) for one conversation; the mask covers assistant tokens only."""
    text, spans = assistant_char_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    mask = [0] * len(ids)
    k = 0
    for j, (start, end) in enumerate(offsets):
        while k < len(spans) and start >= spans[k][1]:
            k += 1
        if k < len(spans) and end > spans[k][0] and start < spans[k][1]:
            mask[j] = 1
    return ids[:max_length], mask[:max_length]


def tokenize_text(
    tokenizer: PreTrainedTokenizerBase, text: str, max_length: int
) -> tuple[list[int], list[int]]:
    ids = tokenizer(text, add_special_tokens=True)["input_ids"][:max_length]
    return ids, [1] * len(ids)


def tokenize_dataset(
    ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int, num_proc: int | None = None
) -> datasets.Dataset:
    """Map normalised rows to ``input_ids`` / ``loss_mask``; rows with no loss token are dropped."""
    if not tokenizer.chat_template and any(r is not None for r in ds["messages"]):
        raise SpecforgeError(
            "the target's tokenizer has no chat template, but the dataset holds conversations: add a chat "
            "template to the target (tokenizer_config.json 'chat_template' or chat_template.jinja), or train "
            'on plain text ({"text": ...} rows or a .txt file)'
        )

    def one(row: dict) -> dict:
        if row["messages"] is not None:
            ids, mask = tokenize_conversation(tokenizer, row["messages"], max_length)
        else:
            ids, mask = tokenize_text(tokenizer, row["text"], max_length)
        return {"input_ids": ids, "loss_mask": mask}

    out = ds.map(one, remove_columns=ds.column_names, num_proc=num_proc, desc="tokenizing")
    return out.filter(lambda r: sum(r["loss_mask"]) > 0, desc="dropping rows without assistant tokens")


def load_tokenized(
    path,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    skip_bad_rows: bool = False,
    limit: int | None = None,
):
    """Load a dataset file (first ``limit`` rows) and tokenize it; returns (dataset, LoadReport)."""
    from specforge.data.formats import load_rows

    rows, report = load_rows(path, skip_bad_rows=skip_bad_rows)
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    tokenized = tokenize_dataset(rows, tokenizer, max_length)
    if len(tokenized) == 0:
        raise SpecforgeError(
            f"{path}: none of its {len(rows)} rows has an assistant token within max_length={max_length} "
            "tokens: raise data.max_length, or shorten the prompts"
        )
    return tokenized, report
