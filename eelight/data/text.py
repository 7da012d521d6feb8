"""Chat templates, tokenisation and label masking.

A conversation is LLaVA-style: `[{"from": "human", "value": "<image>\\n..."},
{"from": "gpt", "value": "..."}, ...]`. It is rendered segment by segment and
each segment is tokenised on its own, so every token is known to belong to the
system/user part (label -100) or to an assistant answer (label = token). The
answer's end-of-turn marker is supervised too, so the model learns to stop.

The `<image>` marker (one per conversation; a newline right after it goes with
it, as in LLaVA's data) is removed from the text, and the visual tokens go where
it stood: `encode` returns `image_offset`, the number of tokens before it, and
the text on both sides of it is tokenised apart (as LLaVA's
`tokenizer_image_token` does). With a template that drops the question's text
(`plain`) the marker stands at the start of its turn. With no marker, or with
`placement="start"`, the image comes first, before the text (docs/DESIGN.md §1).

`data.template=auto` (`chat_template.AutoTemplate`) renders with the tokenizer's own
`chat_template` instead of one of the built-in formats below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

IGNORE_INDEX = -100
IMAGE_MARKER = "<image>"
PLACEMENTS = ("marker", "start")  # data.image_placement


@dataclass(frozen=True)
class ChatTemplate:
    system: str  # rendered once, before the first turn
    user: str  # "{text}" is the question
    assistant: str  # unsupervised prefix before an answer
    end_of_turn: str  # supervised, after an answer ("" = the tokenizer's EOS token)
    bos: bool = True  # prepend the tokenizer's BOS token

    def pieces(self, turns: list[dict], placement: str = "marker", generation: bool = False
               ) -> tuple[list[tuple[str, bool]], int | None]:
        """(text, supervised) pieces and the piece index the image precedes; `generation`
        ends with the assistant's prefix (a prompt to answer)."""
        pieces, image_at = segments(turns, self, placement)
        if generation and self.assistant:
            pieces.append((self.assistant, False))
        return pieces, image_at


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


def template(name: str, tokenizer=None, system_prompt: str | None = None):
    """A built-in template by name, or `auto`: the tokenizer's own chat_template (with
    `system_prompt` as a system turn when given), or for a tokenizer without one the
    built-in `probe` format."""
    if name == "auto":
        from eelight.data.chat_template import AutoTemplate

        if system_prompt is None and not getattr(tokenizer, "chat_template", None):
            return TEMPLATES["probe"]
        return AutoTemplate(tokenizer, system_prompt)
    if name not in TEMPLATES:
        raise ValueError(f"data.template={name!r} is not a template; choose one of {['auto', *sorted(TEMPLATES)]}")
    if system_prompt is not None:
        raise ValueError(f"data.system_prompt is for data.template=auto; the built-in {name!r} has its own")
    return TEMPLATES[name]


class Encoded(NamedTuple):
    ids: list[int]
    labels: list[int]  # -100 where there is no loss
    image_offset: int  # tokens before the visual block (0: the image comes first)
    question_end: int  # tokens before the first assistant turn (its header, or its answer): AKI's image reads up to here


def _split_marker(value: str) -> tuple[str, int | None]:
    """The turn's text without its marker (stripped) and where the marker stood in it."""
    n = value.count(IMAGE_MARKER)
    if n == 0:
        return value.strip(), None
    if n > 1:
        raise ValueError(f"a turn has {n} {IMAGE_MARKER} markers; a sample has one image, so at most one marker")
    before, after = value.split(IMAGE_MARKER)
    joined = before + after.removeprefix("\n")
    text = joined.strip()
    lead = len(joined) - len(joined.lstrip())
    return text, min(max(len(before) - lead, 0), len(text))


def _user_pieces(value: str, tpl: ChatTemplate, placement: str) -> tuple[str, str | None]:
    """A question rendered by the template, split where its marker stood (None: no marker)."""
    text, at = _split_marker(value)
    if at is None or placement == "start":
        return tpl.user.format(text=text), None
    if "{text}" not in tpl.user:  # the template drops the question: the marker opens the turn
        return "", tpl.user
    prefix, suffix = tpl.user.split("{text}", 1)
    return prefix + text[:at], text[at:] + suffix


def segments(
    turns: list[dict], tpl: ChatTemplate, placement: str = "marker"
) -> tuple[list[tuple[str, bool]], int | None]:
    """(text, supervised) pieces of a conversation, in order, and the index of the piece
    the visual block precedes (None: no marker, or placement="start")."""
    if placement not in PLACEMENTS:
        raise ValueError(f"data.image_placement={placement!r}; choose one of {list(PLACEMENTS)}")
    out: list[tuple[str, bool]] = [(tpl.system, False)]
    image_at: int | None = None
    for turn in turns:
        role, value = turn.get("from"), turn.get("value")
        if not isinstance(value, str):
            raise ValueError(f"conversation turn {turn!r} has no string 'value'")
        if role in ("human", "user"):
            before, after = _user_pieces(value, tpl, placement)
            out.append((before, False))
            if after is not None:
                if image_at is not None:
                    raise ValueError(f"the conversation has more than one {IMAGE_MARKER}; a sample has one image")
                image_at = len(out)
                out.append((after, False))
        elif role in ("gpt", "assistant"):
            out += [(tpl.assistant, False), (value.strip(), True), (tpl.end_of_turn, True)]
        else:
            raise ValueError(f"conversation turn has role {role!r}; expected human/gpt (or user/assistant)")
    kept = [piece for piece in out if piece[0]]
    return kept, None if image_at is None else sum(1 for text, _ in out[:image_at] if text)


def _assemble(pieces: list[tuple[str, bool]], image_at: int | None, tpl: ChatTemplate, tokenizer) -> Encoded:
    """BOS + the pieces tokenised one by one; image_offset = the tokens before piece image_at."""
    ids: list[int] = [tokenizer.bos_token_id] if tpl.bos and tokenizer.bos_token_id is not None else []
    labels = [IGNORE_INDEX] * len(ids)
    offset, question_end = 0, None
    for i, ((text, supervised), toks) in enumerate(zip(pieces, _encode_pieces(tokenizer, pieces), strict=True)):
        if i == image_at:
            offset = len(ids)
        if question_end is None and (supervised or text == getattr(tpl, "assistant", None)):
            question_end = len(ids)
        ids += toks
        labels += toks if supervised else [IGNORE_INDEX] * len(toks)
        answer_ends = supervised and (i + 1 == len(pieces) or not pieces[i + 1][1])
        if answer_ends and not tpl.end_of_turn:  # the tokenizer's EOS closes the answer
            ids.append(tokenizer.eos_token_id)
            labels.append(tokenizer.eos_token_id)
    if image_at == len(pieces):  # the marker ends the conversation
        offset = len(ids)
    return Encoded(ids, labels, offset, len(ids) if question_end is None else question_end)


def encode(
    turns: list[dict], tpl: ChatTemplate, tokenizer, max_length: int, placement: str = "marker"
) -> Encoded:
    """Token ids, labels and the image's offset, truncated to max_length (an image whose
    marker was truncated away stands after the last token left)."""
    return encode_counted(turns, tpl, tokenizer, max_length, placement)[0]


def encode_counted(
    turns: list[dict], tpl: ChatTemplate, tokenizer, max_length: int, placement: str = "marker"
) -> tuple[Encoded, bool]:
    """`encode`, and whether max_length cut tokens off (the loader counts such samples)."""
    if placement not in PLACEMENTS:
        raise ValueError(f"data.image_placement={placement!r}; choose one of {list(PLACEMENTS)}")
    ids, labels, offset, question_end = _assemble(*tpl.pieces(turns, placement), tpl, tokenizer)
    cut = len(ids) > max_length
    ids, labels = ids[:max_length], labels[:max_length]
    if all(label == IGNORE_INDEX for label in labels[1:]):
        raise NoAnswerLeft(f"no answer token left within data.max_length={max_length}")
    return Encoded(ids, labels, min(offset, len(ids)), min(question_end, len(ids))), cut


def prompt(question: str, tpl: ChatTemplate, tokenizer, placement: str = "marker") -> Encoded:
    """A one-question prompt ending with the assistant's prefix, for generation. A
    question without a marker gets one in front of it, as the training data has."""
    if IMAGE_MARKER not in question:
        question = IMAGE_MARKER + "\n" + question
    return _assemble(*tpl.pieces([{"from": "human", "value": question}], placement, generation=True), tpl, tokenizer)


def render(turns: list[dict], tpl: ChatTemplate, bos: str = "") -> str:
    """The conversation as one string, exactly as `encode` tokenises it piece by piece."""
    return bos + "".join(text for text, _ in segments(turns, tpl)[0])


def check_template(tokenizer, name: str, system_prompt: str | None = None) -> None:
    """When the tokenizer has its own `chat_template`, our template must render a
    conversation exactly as it does; otherwise the labels would mask the wrong tokens.
    `auto` is checked for splitting into turns (an error says why it cannot)."""
    turns = [{"from": "human", "value": "Q1"}, {"from": "gpt", "value": "A1"},
             {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}]
    tpl = template(name, tokenizer, system_prompt)
    if name == "auto":
        tpl.pieces([{"from": "human", "value": "<image>\nQ1"}, *turns[1:]])
        return
    if not getattr(tokenizer, "chat_template", None) or name == "plain":
        return
    messages = [{"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]} for t in turns]
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
