"""Label masking per chat template: the supervised tokens are exactly the assistant answers
(+ end of turn), multi-turn and truncated; rendering matches the tokenizers' own Jinja templates."""

import pytest

from eelight.data.text import IGNORE_INDEX, TEMPLATES, NoAnswerLeft, check_template, encode, render, template

SPECIALS = ["<s>", "</s>", "<pad>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
            "<|im_start|>", "<|im_end|>"]
LLAMA3_JINJA = ("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
                "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}")
CHATML_JINJA = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
                "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
                "{% endfor %}")
CONV = [
    {"from": "human", "value": "<image>\nWhat colour is the circle?"},
    {"from": "gpt", "value": "The circle is red."},
    {"from": "human", "value": "And how many squares are there?"},
    {"from": "gpt", "value": "There are three squares."},
]
END = {"vicuna_v1": "</s>", "probe": "</s>", "plain": "</s>", "llama3": "<|eot_id|>", "chatml": "<|im_end|>\n"}


def _bpe(chat_template=None, bos="<s>"):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    corpus = [t["value"] for t in CONV] + ["A chat between a curious user and an artificial intelligence "
                                           "assistant. USER: ASSISTANT: system user assistant helpful"]
    core.train_from_iterator(corpus * 20, trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=bos, eos_token="</s>", pad_token="<pad>",
                                   chat_template=chat_template)


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
    ids, labels = encode(CONV, template(name), tok, max_length=512)
    answers = [tok.decode(run) for run in _runs(ids, labels)]
    assert answers == ["The circle is red." + END[name], "There are three squares." + END[name]]
    assert "What colour" in tok.decode(ids) and "<image>" not in tok.decode(ids)


def test_plain_caption_supervises_caption_and_eos():
    tok = _bpe()
    ids, labels = encode([{"from": "gpt", "value": "The circle is red."}], template("plain"), tok, 64)
    assert ids[0] == tok.bos_token_id and labels[0] == IGNORE_INDEX
    assert [tok.decode(r) for r in _runs(ids, labels)] == ["The circle is red.</s>"]


@pytest.mark.parametrize("name", ["vicuna_v1", "llama3", "chatml"])
def test_truncation_keeps_a_prefix_and_never_yields_an_empty_loss(name):
    tok = _bpe()
    full_ids, full_labels = encode(CONV, template(name), tok, max_length=512)
    second = [i for i, lab in enumerate(full_labels) if lab != IGNORE_INDEX][-3]  # inside the 2nd answer
    ids, labels = encode(CONV, template(name), tok, max_length=second)
    assert ids == full_ids[:second] and labels == full_labels[:second]
    first_answer = next(i for i, lab in enumerate(full_labels) if lab != IGNORE_INDEX)
    with pytest.raises(NoAnswerLeft, match=f"data.max_length={first_answer}"):
        encode(CONV, template(name), tok, max_length=first_answer)


@pytest.mark.parametrize("name,jinja", [("llama3", LLAMA3_JINJA), ("chatml", CHATML_JINJA)])
def test_rendering_matches_the_tokenizers_chat_template(name, jinja):
    tok = _bpe(jinja, bos="<s>")
    msgs = [{"role": "user" if t["from"] == "human" else "assistant", "content": t["value"].replace("<image>\n", "")}
            for t in CONV]
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
