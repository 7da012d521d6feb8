"""`data.template=auto`: the tokenizer's own chat_template through `apply_chat_template`, in the
styles of real model families, written here. The reference is `transformers` itself: the
rendered training text equals `apply_chat_template`'s output, and the supervised tokens are
exactly the answers with the template's end of turn."""

import pytest
from test_templates import CONV, _bpe, _runs

from eelight.data.text import IGNORE_INDEX, encode, prompt, template

DEFAULT_SYSTEM = (  # a default system prompt when the conversation brings none (SmolLM-style)
    "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named Tiny."
    "<|im_end|>\n' }}{% endif %}{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
CHATML = (  # Qwen2
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
VICUNA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + ' ' }}{% else %}"
    "{{ 'A chat between a curious user and an artificial intelligence assistant. ' }}{% endif %}"
    "{% for message in messages if message['role'] != 'system' %}{% if message['role'] == 'user' %}"
    "{{ 'USER: ' + message['content'] + ' ' }}{% else %}{{ 'ASSISTANT: ' + message['content'] + eos_token }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
GENERATION = (  # assistant spans marked for return_assistant_tokens_mask (SmolLM3 / Qwen style)
    "{% for message in messages %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
STYLES = {"default_system": (DEFAULT_SYSTEM, "<|im_end|>\n"), "llama3": (LLAMA3, "<|eot_id|>"),
          "chatml": (CHATML, "<|im_end|>\n"), "vicuna": (VICUNA, "</s>"), "generation": (GENERATION, "<|im_end|>\n")}


def _messages(turns, system=None):
    msgs = [{"role": "user" if t["from"] == "human" else "assistant", "content": t["value"].replace("<image>\n", "")}
            for t in turns]
    return ([{"role": "system", "content": system}] if system else []) + msgs


@pytest.mark.parametrize("style", sorted(STYLES))
def test_auto_renders_as_the_tokenizer_and_supervises_exactly_the_answers(style):
    jinja, end = STYLES[style]
    tok = _bpe(jinja)
    tpl = template("auto", tok)
    pieces, image_at = tpl.pieces(CONV)
    assert "".join(text for text, _ in pieces) == tok.apply_chat_template(_messages(CONV), tokenize=False)
    ids, labels, offset, _ = encode(CONV, tpl, tok, max_length=512)
    lead = " " if style == "vicuna" else ""  # Vicuna's generation prompt stops before the space
    assert [tok.decode(r) for r in _runs(ids, labels)] == [
        lead + "The circle is red." + end, lead + "There are three squares." + end]
    assert tpl.end_of_turn == end
    assert tok.decode(ids[offset:]).startswith("What colour is the circle?")  # the image stood there
    # A generation prompt is the conversation's own prefix, with the same offset.
    p = prompt("What colour is the circle?", tpl, tok)
    assert p.image_offset == offset and ids[: len(p.ids)] == p.ids
    assert tok.decode(ids[len(p.ids):]).startswith(lead + "The circle is red.")
    assert all(label == IGNORE_INDEX for label in p.labels)


def test_auto_with_a_configured_system_prompt_replaces_the_default():
    tok = _bpe(DEFAULT_SYSTEM)
    tpl = template("auto", tok, system_prompt="You are terse.")
    pieces, _ = tpl.pieces(CONV)
    rendered = "".join(text for text, _ in pieces)
    assert rendered == tok.apply_chat_template(_messages(CONV, "You are terse."), tokenize=False)
    assert "named Tiny" not in rendered and rendered.startswith("<|im_start|>system\nYou are terse.")


def test_the_built_in_templates_refuse_the_default_system_prompt_template():
    """The issue's failure first: no built-in template renders a default-system-prompt template."""
    from eelight.data.text import TEMPLATES, check_template

    tok = _bpe(DEFAULT_SYSTEM)
    for name in sorted(set(TEMPLATES) - {"plain"}):
        with pytest.raises(ValueError, match="pick the template that matches the tokenizer"):
            check_template(tok, name)
    check_template(tok, "auto")


def test_a_template_that_rewrites_earlier_turns_is_refused_with_the_reason():
    rewrites = ("{% for message in messages %}{% if message['role'] == 'assistant' and not loop.last %}"
                "{{ '<|im_start|>assistant\n(earlier answer)<|im_end|>\n' }}{% else %}{{ '<|im_start|>' + "
                "message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
                "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    tpl = template("auto", _bpe(rewrites))
    with pytest.raises(ValueError, match=r"cannot be split into turns: rendering the generation prompt of "
                                         r"assistant turn 3 changes the text before it at character \d+"):
        tpl.pieces(CONV)


def test_auto_without_a_chat_template_is_the_probe_format_and_a_system_prompt_needs_one():
    tok = _bpe()
    assert template("auto", tok) is template("probe")
    with pytest.raises(ValueError, match="data.template=auto needs a tokenizer with a chat_template"):
        template("auto", tok, system_prompt="You are terse.")
    with pytest.raises(ValueError, match="data.system_prompt is for data.template=auto"):
        template("chatml", tok, system_prompt="You are terse.")


def test_a_template_that_cannot_render_roles_is_named():
    strict = ("{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
              "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
              "{% endif %}{{ message['content'] }}{% endfor %}")
    tpl_tok = _bpe(strict)
    with pytest.raises(ValueError, match=r"cannot render roles \['user', 'user'\].*roles must alternate"):
        encode([{"from": "human", "value": "a"}, {"from": "human", "value": "b"}, {"from": "gpt", "value": "c"}],
               template("auto", tpl_tok), tpl_tok, 64)


PROBE_CHAT = (  # a default system prompt, in words the probe's word-level tokenizer partly knows
    "{{ bos_token }}{% if messages[0]['role'] != 'system' %}{{ 'You are a helpful assistant named Tiny . ' }}"
    "{% endif %}{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] + ' ' }}"
    "{% elif message['role'] == 'user' %}{{ 'USER: ' + message['content'] + ' ' }}{% else %}"
    "{{ 'ASSISTANT: ' + message['content'] + eos_token + ' ' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT: ' }}{% endif %}"
)


def test_instruct_stage_trains_and_scores_with_the_tokenizers_own_template(probe_env, tmp_path):
    from eelight.data.loader import make_pipeline
    from eelight.data.tokenizer import load_tokenizer
    from eelight.models.config import VisionConfig
    from eelight.models.vision import image_processor
    from eelight.training.config import load_run_config
    from eelight.training.run import train

    base = next(o.split("=", 1)[1] for o in probe_env["overrides"] if o.startswith("data.tokenizer="))
    tok = load_tokenizer(base)
    tok.chat_template = PROBE_CHAT
    tok.save_pretrained(tmp_path / "chat_tok")
    tok = load_tokenizer(tmp_path / "chat_tok")
    overrides = [o for o in probe_env["overrides"] if not o.startswith("data.tokenizer=")]
    shards = next(o.split("=", 1)[1] for o in overrides if o.startswith("data.train_shards="))
    batch = next(iter(make_pipeline(shards, stage="instruct", tokenizer=tok, processor=image_processor(
        VisionConfig(), 64), template_name="auto", batch_size=2, max_length=200)))
    sample = next(iter(__import__("webdataset").WebDataset(shards.replace("{000000..000003}", "000000"),
                                                           shardshuffle=False).decode()))
    turns = sample["json"]["conversations"]
    rendered = tok.apply_chat_template(_messages(turns), tokenize=False)
    ids = [t for t in batch["input_ids"][0].tolist() if t != tok.pad_token_id]
    assert ids == tok(rendered, add_special_tokens=False)["input_ids"]  # the text as transformers renders it
    labels = batch["labels"][0].tolist()
    answers = [t["value"] for t in turns if t["from"] == "gpt"]
    assert _runs(ids, labels[:len(ids)]) == [tok(a + "</s>", add_special_tokens=False)["input_ids"] for a in answers]
    result = train(load_run_config(["experiments/ee_mllm_tiny.yaml", "experiments/stages/instruct.yaml"], overrides + [
        f"data.tokenizer={tmp_path / 'chat_tok'}", "data.template=auto", "stage=instruct", "name=auto_template",
        "trainer.max_steps=3", "data.val_samples=8"]))
    assert result["global_step"] == 3 and 0.0 <= result["metrics"]["probe/accuracy"] <= 1.0
