"""Chat templates, tokenisation and label masking.

A conversation is LLaVA-style: `[{"from": "human", "value": "<image>\\n..."},
{"from": "gpt", "value": "..."}, ...]`. It is rendered segment by segment and
each segment is tokenised on its own, so every token is known to belong to the
system/user part (label -100) or to an assistant answer (label = token). The
answer's end-of-turn marker is supervised too, so the model learns to stop.
The `<image>` marker is removed from the text: the visual tokens go before the
text (DESIGN.md §1).
"""

from __future__ import annotations

from dataclasses import dataclass

IGNORE_INDEX = -100
IMAGE_MARKER = "<image>"


@dataclass(frozen=True)
class ChatTemplate:
    system: str  # rendered once, before the first turn
    user: str  # "{text}" is the question
    assistant: str  # unsupervised prefix before an answer
    end_of_turn: str  # supervised, after an answer ("" = the tokenizer's EOS token)
    bos: bool = True  # prepend the tokenizer's BOS token


TEMPLATES: dict[str, ChatTemplate] = {
    # Align stage: image, then the caption; loss on the caption and EOS (LLaVA "plain").
    "plain": ChatTemplate(system="", user="", assistant="", end_of_turn=""),
    "vicuna_v1": ChatTemplate(
        system="A chat between a curious user and an artificial intelligence assistant. The assistant "
        "gives helpful, detailed, and polite answers to the user's questions. ",
        user="USER: {text} ",
        assistant="ASSISTANT: ",
        end_of_turn="",
    ),
    # The probe's tiny runs: Vicuna's turn format without the long system prompt.
    "probe": ChatTemplate(system="", user="USER: {text} ", assistant="ASSISTANT: ", end_of_turn=""),
    "llama3": ChatTemplate(
        system="",
        user="<|start_header_id|>user<|end_header_id|>\n\n{text}<|eot_id|>",
        assistant="<|start_header_id|>assistant<|end_header_id|>\n\n",
        end_of_turn="<|eot_id|>",
    ),
    "chatml": ChatTemplate(  # Qwen2
        system="<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
        user="<|im_start|>user\n{text}<|im_end|>\n",
        assistant="<|im_start|>assistant\n",
        end_of_turn="<|im_end|>\n",
        bos=False,
    ),
}


class NoAnswerLeft(ValueError):
    """Every supervised token was truncated away: the sample would train on nothing."""


def template(name: str) -> ChatTemplate:
    if name not in TEMPLATES:
        raise ValueError(f"data.template={name!r} is not a template; choose one of {sorted(TEMPLATES)}")
    return TEMPLATES[name]


def _strip_marker(text: str) -> str:
    return text.replace(IMAGE_MARKER + "\n", "").replace(IMAGE_MARKER, "").strip()


def segments(turns: list[dict], tpl: ChatTemplate) -> list[tuple[str, bool]]:
    """(text, supervised) pieces of a conversation, in order."""
    out: list[tuple[str, bool]] = [(tpl.system, False)] if tpl.system else []
    for turn in turns:
        role, value = turn.get("from"), turn.get("value")
        if not isinstance(value, str):
            raise ValueError(f"conversation turn {turn!r} has no string 'value'")
        if role in ("human", "user"):
            out.append((tpl.user.format(text=_strip_marker(value)), False))
        elif role in ("gpt", "assistant"):
            out += [(tpl.assistant, False), (value.strip(), True), (tpl.end_of_turn, True)]
        else:
            raise ValueError(f"conversation turn has role {role!r}; expected human/gpt (or user/assistant)")
    return [(text, sup) for text, sup in out if text]


def encode(
    turns: list[dict], tpl: ChatTemplate, tokenizer, max_length: int
) -> tuple[list[int], list[int]]:
    """Token ids and labels (-100 where there is no loss), truncated to max_length."""
    ids: list[int] = [tokenizer.bos_token_id] if tpl.bos and tokenizer.bos_token_id is not None else []
    labels = [IGNORE_INDEX] * len(ids)
    pieces = segments(turns, tpl)
    for i, ((_, supervised), toks) in enumerate(zip(pieces, _encode_pieces(tokenizer, pieces), strict=True)):
        ids += toks
        labels += toks if supervised else [IGNORE_INDEX] * len(toks)
        answer_ends = supervised and (i + 1 == len(pieces) or not pieces[i + 1][1])
        if answer_ends and not tpl.end_of_turn:  # the tokenizer's EOS closes the answer
            ids.append(tokenizer.eos_token_id)
            labels.append(tokenizer.eos_token_id)
    ids, labels = ids[:max_length], labels[:max_length]
    if all(label == IGNORE_INDEX for label in labels[1:]):
        raise NoAnswerLeft(f"no answer token left within data.max_length={max_length}")
    return ids, labels


def render(turns: list[dict], tpl: ChatTemplate, bos: str = "") -> str:
    """The conversation as one string, exactly as `encode` tokenises it piece by piece."""
    return bos + "".join(text for text, _ in segments(turns, tpl))


def check_template(tokenizer, name: str) -> None:
    """When the tokenizer has its own `chat_template`, our template must render a
    conversation exactly as it does; otherwise the labels would mask the wrong tokens."""
    if not getattr(tokenizer, "chat_template", None) or name == "plain":
        return
    turns = [{"from": "human", "value": "Q1"}, {"from": "gpt", "value": "A1"},
             {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}]
    messages = [{"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]} for t in turns]
    tpl = template(name)
    ours = render(turns, tpl, tokenizer.bos_token if tpl.bos and tokenizer.bos_token else "")
    theirs = tokenizer.apply_chat_template(messages, tokenize=False)
    if ours != theirs:
        raise ValueError(
            f"data.template={name!r} renders {ours!r} but the tokenizer's chat_template renders {theirs!r}; "
            f"pick the template that matches the tokenizer (one of {sorted(TEMPLATES)})"
        )


def _encode_pieces(tokenizer, pieces: list[tuple[str, bool]]) -> list[list[int]]:
    """Each piece tokenised on its own; one call into a fast tokenizer's Rust backend."""
    texts = [text for text, _ in pieces]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return [tokenizer.encode(text, add_special_tokens=False) for text in texts]
    return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]


def caption_turns(caption: str) -> list[dict]:
    """An align-stage caption as a one-answer conversation (rendered with `plain`)."""
    return [{"from": "gpt", "value": caption}]
