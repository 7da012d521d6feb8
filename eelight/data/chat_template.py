"""`data.template=auto`: the tokenizer's own `chat_template`, rendered by `apply_chat_template`.

Nothing of the template is re-implemented. The answer spans are found from renderings: the
conversation up to an assistant turn with the generation prompt (`before`) and through that
turn (`through`); `through` minus `before` is the answer with its end-of-turn text, which is
supervised, and everything between two answers is not. So a default system prompt, Llama-3
headers, ChatML, Vicuna-style text or `{% generation %}` markers all work as written.

The `<image>` marker (a newline right after it goes with it, as in LLaVA's data) is rendered
as text and cut out afterwards; the visual tokens stand where it was (`text.encode`).

A template that renders an earlier part of the conversation differently once a later turn is
added (e.g. one that drops past reasoning blocks) cannot be split into turns this way: it is
refused with the place where the renderings disagree.
"""

from __future__ import annotations

import os
from typing import Any

IMAGE_MARKER = "<image>"
PROBE_ANSWER = "eelight-answer-probe"


class AutoTemplate:
    """Duck-types `text.ChatTemplate` for `encode` / `prompt`: `pieces`, `bos`, `end_of_turn`."""

    bos = False  # a template that wants BOS writes it itself ({{ bos_token }})

    def __init__(self, tokenizer: Any, system_prompt: str | None = None) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("data.template=auto needs a tokenizer with a chat_template (tokenizer_config.json or "
                             "chat_template.jinja); this one has none: set data.template to a built-in template")
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise ValueError(f"data.system_prompt must be a string, got {type(system_prompt).__name__}")
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.end_of_turn = self._end_of_turn()

    def _render(self, messages: list[dict[str, str]], generation: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
        except Exception as exn:  # jinja2's TemplateError, raise_exception(), a missing variable...
            roles = [m["role"] for m in messages]
            raise ValueError(f"the tokenizer's chat_template cannot render roles {roles}: "
                             f"{type(exn).__name__}: {exn}") from exn

    def _messages(self, turns: list[dict], placement: str) -> list[dict[str, str]]:
        messages = [] if self.system_prompt is None else [{"role": "system", "content": self.system_prompt}]
        markers = 0
        for turn in turns:
            role, value = turn.get("from"), turn.get("value")
            if not isinstance(value, str):
                raise ValueError(f"conversation turn {turn!r} has no string 'value'")
            if role not in ("human", "user", "gpt", "assistant"):
                raise ValueError(f"conversation turn has role {role!r}; expected human/gpt (or user/assistant)")
            user = role in ("human", "user")
            markers += value.count(IMAGE_MARKER)
            if user:  # the marker is text until the rendering is cut; "start" puts the image first
                value = value.replace(IMAGE_MARKER + "\n", IMAGE_MARKER)
                if placement == "start":
                    value = value.replace(IMAGE_MARKER, "").strip()
            messages.append({"role": "user" if user else "assistant", "content": value})
        if markers > 1:
            raise ValueError(f"the conversation has {markers} {IMAGE_MARKER} markers; a sample has one image")
        return messages

    def _follows(self, earlier: str, later: str, what: str) -> None:
        if not later.startswith(earlier):
            at = len(os.path.commonprefix([earlier, later]))
            raise ValueError(
                f"the tokenizer's chat_template cannot be split into turns: rendering {what} changes the text "
                f"before it at character {at} ({earlier[max(0, at - 20):at + 20]!r} became "
                f"{later[max(0, at - 20):at + 20]!r}); use a built-in data.template or a template that renders "
                "earlier turns the same whatever follows")

    def pieces(self, turns: list[dict], placement: str = "marker", generation: bool = False
               ) -> tuple[list[tuple[str, bool]], int | None]:
        """(text, supervised) pieces whose concatenation is the template's rendering (the marker
        cut out), and the index of the piece the visual block precedes (None: image first)."""
        messages = self._messages(turns, placement)
        out: list[tuple[str, bool]] = []
        done = ""
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self._render(messages[:k], generation=True)
            through = self._render(messages[:k + 1], generation=False)
            self._follows(done, before, f"the generation prompt of assistant turn {k}")
            self._follows(before, through, f"assistant turn {k}")
            out += [(before[len(done):], False), (through[len(before):], True)]
            done = through
        final = self._render(messages, generation=generation)
        self._follows(done, final, "the whole conversation")
        out.append((final[len(done):], False))
        return _cut_marker([p for p in out if p[0]])

    def _end_of_turn(self) -> str:
        """The text the template puts after an answer ("" when none: then EOS is added)."""
        messages = [{"role": "user", "content": "Q"}]
        if self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        before = self._render(messages, generation=True)
        through = self._render([*messages, {"role": "assistant", "content": PROBE_ANSWER}], generation=False)
        self._follows(before, through, "an assistant turn")
        span = through[len(before):]
        if PROBE_ANSWER not in span:
            raise ValueError("the tokenizer's chat_template does not render an assistant message's content; "
                             "use a built-in data.template")
        return span[span.index(PROBE_ANSWER) + len(PROBE_ANSWER):]


def _cut_marker(pieces: list[tuple[str, bool]]) -> tuple[list[tuple[str, bool]], int | None]:
    at = [i for i, (text, _) in enumerate(pieces) if IMAGE_MARKER in text]
    if not at:
        return pieces, None
    i = at[0]
    text, supervised = pieces[i]
    if supervised:
        raise ValueError(f"{IMAGE_MARKER} stands in an answer; the marker belongs in a user turn")
    before, after = text.split(IMAGE_MARKER, 1)
    kept = pieces[:i] + [(before, False)] * bool(before)
    image_at = len(kept)
    kept += [(after, False)] * bool(after) + pieces[i + 1:]
    return kept, image_at
