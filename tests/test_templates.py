"""Label masking per chat template: the supervised tokens are exactly the assistant answers
(+ end of turn), multi-turn and truncated; rendering matches the tokenizers' own Jinja templates."""

import pytest

from eelight.data.text import (
    IGNORE_INDEX,
    TEMPLATES,
    NoAnswerLeft,
    check_template,
    encode,
    prompt,
    render,
    template,
)

SPECIALS = [
    "<s>",
    "</s>",
    "<pad>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|im_start|>",
    "<|im_end|>",
]
LLAMA3_JINJA = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
)
CHATML_JINJA = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
)
CONV = [
    {"from": "human", "value": "<image>\nWhat colour is the circle?"},
    {"from": "gpt", "value": "The circle is red."},
    {"from": "human", "value": "And how many squares are there?"},
    {"from": "gpt", "value": "There are three squares."},
]
END = {
    "vicuna_v1": "</s>",
    "probe": "</s>",
    "plain": "</s>",
    "llama3": "<|eot_id|>",
    "chatml": "<|im_end|>\n",
}


def _bpe(chat_template=None, bos="<s>"):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    corpus = [t["value"] for t in CONV] + [
        "A chat between a curious user and an artificial intelligence "
        "assistant. USER: ASSISTANT: system user assistant helpful"
    ]
    core.train_from_iterator(
        corpus * 20,
        trainers.BpeTrainer(
            vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=bos, eos_token="</s>", pad_token="<pad>", chat_template=chat_template
    )


def _runs(ids, labels):
    """Contiguous supervised runs of tokens."""
    runs, current = [], []
    for tok, lab in zip(ids, labels, strict=True):
        if lab != IGNORE_INDEX:
            assert lab == tok
            current.append(tok)
        elif current:
            runs, current = runs + [current], []
    return runs + ([current] if current else [])


@pytest.mark.parametrize("name", ["vicuna_v1", "probe", "llama3", "chatml"])
def test_supervised_tokens_are_exactly_the_answers(name):
    tok = _bpe()
    ids, labels, *_ = encode(CONV, template(name), tok, max_length=512)
    answers = [tok.decode(run) for run in _runs(ids, labels)]
    assert answers == ["The circle is red." + END[name], "There are three squares." + END[name]]
    assert "What colour" in tok.decode(ids) and "<image>" not in tok.decode(ids)


@pytest.mark.parametrize("name", ["vicuna_v1", "probe", "llama3", "chatml"])
def test_question_end_is_where_the_first_assistant_turn_starts(name):
    """AKI's image reads the question up to, not including, the first assistant turn."""
    tok = _bpe()
    ids, _, offset, question_end = encode(CONV, template(name), tok, max_length=512)
    header = TEMPLATES[name].assistant.strip()
    assert offset < question_end
    assert tok.decode(ids[question_end:]).lstrip().startswith(header)
    assert header not in tok.decode(ids[:question_end]) and "What colour" in tok.decode(ids[offset:question_end])


def test_plain_caption_supervises_caption_and_eos():
    tok = _bpe()
    ids, labels, offset, question_end = encode([{"from": "gpt", "value": "The circle is red."}], template("plain"),
                                               tok, 64)
    assert offset == 0  # no marker: the image comes first
    assert question_end == 1  # no question: the caption (after BOS) is the first answer, AKI stays causal
    assert ids[0] == tok.bos_token_id and labels[0] == IGNORE_INDEX
    assert [tok.decode(r) for r in _runs(ids, labels)] == ["The circle is red.</s>"]


@pytest.mark.parametrize("name", ["vicuna_v1", "llama3", "chatml"])
def test_truncation_keeps_a_prefix_and_never_yields_an_empty_loss(name):
    tok = _bpe()
    full_ids, full_labels, *_ = encode(CONV, template(name), tok, max_length=512)
    second = [i for i, lab in enumerate(full_labels) if lab != IGNORE_INDEX][-3]  # inside the 2nd answer
    ids, labels, *_ = encode(CONV, template(name), tok, max_length=second)
    assert ids == full_ids[:second] and labels == full_labels[:second]
    first_answer = next(i for i, lab in enumerate(full_labels) if lab != IGNORE_INDEX)
    with pytest.raises(NoAnswerLeft, match=f"data.max_length={first_answer}"):
        encode(CONV, template(name), tok, max_length=first_answer)


@pytest.mark.parametrize("name,jinja", [("llama3", LLAMA3_JINJA), ("chatml", CHATML_JINJA)])
def test_rendering_matches_the_tokenizers_chat_template(name, jinja):
    tok = _bpe(jinja, bos="<s>")
    msgs = [
        {
            "role": "user" if t["from"] == "human" else "assistant",
            "content": t["value"].replace("<image>\n", ""),
        }
        for t in CONV
    ]
    bos = tok.bos_token if template(name).bos else ""
    assert render(CONV, template(name), bos) == tok.apply_chat_template(msgs, tokenize=False)
    check_template(tok, name)
    other = "chatml" if name == "llama3" else "llama3"
    with pytest.raises(ValueError, match=f"data.template='{other}' renders"):
        check_template(tok, other)


def test_unknown_template_and_bad_turns():
    with pytest.raises(ValueError, match=r"data.template='vicuna' is not a template; choose one of"):
        template("vicuna")
    with pytest.raises(ValueError, match="role 'robot'"):
        encode([{"from": "robot", "value": "hi"}], TEMPLATES["probe"], _bpe(), 64)


# The text before the marker, piece by piece as each template renders it (LLaVA's
# tokenizer_image_token convention: the prompt is cut at <image>, each side tokenised apart).
BEFORE_IMAGE = {
    "vicuna_v1": [TEMPLATES["vicuna_v1"].system, "USER: "],
    "probe": ["USER: "],
    "llama3": ["<|start_header_id|>user<|end_header_id|>\n\n"],
    "chatml": ["<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n", "<|im_start|>user\n"],
}


@pytest.mark.parametrize("name", sorted(BEFORE_IMAGE))
def test_image_offset_is_where_the_marker_stood(name):
    tok, tpl = _bpe(), template(name)
    ids, labels, offset, _ = encode(CONV, tpl, tok, max_length=512)
    bos = [tok.bos_token_id] if tpl.bos else []
    assert ids[:offset] == bos + [
        t for piece in BEFORE_IMAGE[name] for t in tok.encode(piece, add_special_tokens=False)
    ]
    assert tok.decode(ids[:offset]) == ("<s>" if tpl.bos else "") + "".join(BEFORE_IMAGE[name])
    assert tok.decode(ids[offset:]).startswith("What colour is the circle?")
    # The same conversation with the image first: the text is unchanged, only the offset moves.
    start_ids, start_labels, start_offset, _ = encode(CONV, tpl, tok, max_length=512, placement="start")
    assert start_offset == 0 and tok.decode(start_ids) == tok.decode(ids)
    # A generation prompt is the conversation's own prefix, with the same offset.
    p = prompt("What colour is the circle?", tpl, tok)
    assert p.image_offset == offset and ids[: len(p.ids)] == p.ids
    assert tok.decode(ids[len(p.ids) :]).startswith("The circle is red.")


def test_marker_mid_question_at_its_end_and_in_a_later_turn():
    tok, tpl = _bpe(), template("probe")
    mid = [{"from": "human", "value": "What colour is <image> the circle?"}, {"from": "gpt", "value": "red"}]
    ids, _, offset, _ = encode(mid, tpl, tok, 64)
    assert tok.decode(ids[:offset]) == "<s>USER: What colour is "
    end = [{"from": "human", "value": "What colour is the circle?\n<image>"}, {"from": "gpt", "value": "red"}]
    ids, _, offset, _ = encode(end, tpl, tok, 64)
    assert tok.decode(ids[:offset]) == "<s>USER: What colour is the circle?"
    assert tok.decode(ids[offset:]).startswith(" ASSISTANT:")
    later = [
        CONV[0] | {"value": "What colour is the circle?"},
        CONV[1],
        CONV[2] | {"value": "<image>\n" + CONV[2]["value"]},
        CONV[3],
    ]
    ids, labels, offset, _ = encode(later, tpl, tok, 512)
    assert tok.decode(ids[offset:]).startswith("And how many squares")
    assert tok.decode(
        [t for t, lab in zip(ids[:offset], labels[:offset], strict=True) if lab != IGNORE_INDEX]
    ) == ("The circle is red.</s>")  # the first answer is learnt before the image is seen
    # Truncated inside the second question, before its marker: the image stands after the last token.
    cut = offset - 2
    ids, _, offset, _ = encode(later, tpl, tok, cut)
    assert len(ids) == cut and offset == cut


def test_plain_marker_turn_puts_the_image_after_bos():
    tok = _bpe()
    turns = [
        {"from": "human", "value": "Describe the photo.\n<image>"},
        {"from": "gpt", "value": "The circle is red."},
    ]
    ids, labels, offset, _ = encode(turns, template("plain"), tok, 64)
    assert offset == 1 and ids[0] == tok.bos_token_id  # LLaVA's plain layout: BOS, image, caption
    assert tok.decode(ids[1:]) == "The circle is red.</s>"


def test_no_marker_means_image_first_and_two_markers_are_an_error():
    tok = _bpe()
    ids, _, offset, _ = encode(
        [{"from": "human", "value": "What?"}, {"from": "gpt", "value": "red"}], template("probe"), tok, 64
    )
    assert offset == 0
    with pytest.raises(ValueError, match="more than one <image>"):
        encode(
            [
                {"from": "human", "value": "<image> a"},
                {"from": "gpt", "value": "b"},
                {"from": "human", "value": "<image> c"},
                {"from": "gpt", "value": "d"},
            ],
            template("probe"),
            tok,
            64,
        )
    with pytest.raises(ValueError, match="2 <image> markers"):
        encode(
            [{"from": "human", "value": "<image><image>"}, {"from": "gpt", "value": "b"}],
            template("probe"),
            tok,
            64,
        )
    with pytest.raises(ValueError, match=r"data.image_placement='middle'; choose one of"):
        encode(CONV, template("probe"), tok, 64, placement="middle")
