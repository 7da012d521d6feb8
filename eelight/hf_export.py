"""`eelight export --format hf`: a LLaVA-shaped model as a plain `transformers` folder.

A model whose every layer is LLaVA's (`visual_attn=self`, `aligner=reuse`, `aligner_ffn=true`,
the 2-layer GELU projector, a CLIP or SigLIP tower, no pooling, none of the successors' rules)
is exactly `LlavaForConditionalGeneration`; it is written as one, so lmms-eval's `llava_hf`,
VLMEvalKit or vLLM load it with no eelight code:

    config.json, model.safetensors     LlavaConfig and the weights (through hf_loading's key map)
    processor files                    the image processor, the tokenizer with an `<image>` token,
                                       and a chat template that renders eelight's training template
    generation_config.json             BOS / EOS / pad, the image token suppressed
    README.md                          model card: how to load it, the transformers version tested

Before anything is written, the export renders one question through the processor and checks
the token ids equal the prompt eelight builds; a tokenizer for which they differ is refused.
Every other variant (EE-MLLM, Flamingo, ...) needs code `transformers` does not have:
`export.export_model(fmt="hf")` writes it as a custom-code folder instead (`hf_remote`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from eelight.data.text import IMAGE_MARKER, TEMPLATES, prompt
from eelight.errors import UserError
from eelight.models import hf_loading
from eelight.models.config import LLMConfig, ModelConfig

LLAVA_SHAPE = {"arch": "decoder", "visual_attn": "self", "aligner": "reuse", "aligner_ffn": True, "projector_depth": 2,
               "visual_pool": 1, "blind": False, "text_visual_layers": "all", "kv_only_layers": "none",
               "prune_after": 0, "visual_reads_question": False}


def native_problem(cfg: ModelConfig, prompting: dict[str, Any]) -> str | None:
    """Why the model is not a plain `LlavaForConditionalGeneration` (None: it is one)."""
    for key, value in LLAVA_SHAPE.items():
        if getattr(cfg, key) != value:
            return f"model.{key}={getattr(cfg, key)} (LLaVA has {str(value).lower()})"
    if cfg.vision.kind not in ("clip", "siglip"):
        return f"model.vision.kind={cfg.vision.kind} (transformers' LLaVA takes a CLIP or SigLIP tower here)"
    if prompting.get("template") not in TEMPLATES:
        return f"data.template={prompting.get('template')} (a built-in template is needed to write the chat template)"
    if prompting.get("image_placement", "marker") != "marker":
        return "data.image_placement=start (the image stands before BOS, which LLaVA's processor cannot place)"
    return None


def hf_text_config(llm: LLMConfig):
    """The `transformers` config of our decoder: Qwen3 (q/k norm), Qwen2 (q/k/v biases) or Llama."""
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    rope: dict[str, Any] = {"rope_type": llm.rope_type, "rope_theta": llm.rope_theta}
    if llm.rope_type in ("linear", "llama3"):
        rope["factor"] = llm.rope_factor
    if llm.rope_type == "llama3":
        rope.update(low_freq_factor=llm.rope_low_freq_factor, high_freq_factor=llm.rope_high_freq_factor,
                    original_max_position_embeddings=llm.rope_original_max_positions)
    cls = Qwen3Config if llm.qk_norm else Qwen2Config if llm.qkv_bias else LlamaConfig
    return cls(vocab_size=llm.vocab_size, hidden_size=llm.hidden_size, intermediate_size=llm.intermediate_size,
               num_hidden_layers=llm.num_layers, num_attention_heads=llm.num_heads, num_key_value_heads=llm.num_kv_heads,
               head_dim=llm.dim_per_head, rms_norm_eps=llm.rms_norm_eps, max_position_embeddings=llm.max_positions,
               rope_parameters=rope, tie_word_embeddings=llm.tie_embeddings)


def chat_template(name: str, tokenizer) -> str:
    """A Jinja chat template (LLaVA-HF message format: content a string or a list of
    `{"type": "image"}` / `{"type": "text"}` items) that renders eelight's built-in template:
    the image where the marker stood, an answer closed by the template's end of turn or EOS."""
    tpl = TEMPLATES[name]
    user_before, _, user_after = tpl.user.partition("{text}") if tpl.user else ("", "", "")
    bos = "{{ bos_token }}" if tpl.bos and tokenizer.bos_token and not _adds_bos(tokenizer) else ""
    content = ("{% if message['content'] is string %}{{ message['content'] }}{% else %}"
               "{% for item in message['content'] %}{% if item['type'] == 'image' %}" + IMAGE_MARKER +
               "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}")
    end = json.dumps(tpl.end_of_turn) if tpl.end_of_turn else "eos_token"
    return (bos + _literal(tpl.system) + "{% for message in messages %}{% if message['role'] == 'user' %}"
            + _literal(user_before) + content + _literal(user_after) + "{% elif message['role'] == 'assistant' %}"
            + _literal(tpl.assistant) + content + "{{ " + end + " }}{% endif %}{% endfor %}"
            + "{% if add_generation_prompt %}" + _literal(tpl.assistant) + "{% endif %}")


def _literal(text: str) -> str:
    return "{{ " + json.dumps(text) + " }}" if text else ""


def _adds_bos(tokenizer) -> bool:
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def _feature_strategy(cfg: ModelConfig) -> tuple[str, int]:
    """(LLaVA's vision_feature_select_strategy, num_additional_image_tokens) for our tower."""
    if cfg.vision.kind == "siglip":
        return "full", 0
    return ("default" if cfg.vision.feature_select == "patch" else "full"), 1


def _tokenizer_with_image_token(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    if IMAGE_MARKER not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [IMAGE_MARKER]})
    return tok, tok.convert_tokens_to_ids(IMAGE_MARKER)


def _hf_state(model, hf_model, family: str) -> dict[str, torch.Tensor]:
    """Our tensors under the HF model's names, through the key map that loads LLaVA folders."""
    hf_keys = list(hf_model.state_dict())
    ours_for = hf_loading.map_keys({k: k for k in hf_keys}, hf_loading.llava_key_rules(family), [], "the HF LLaVA")
    own = model.state_dict()
    state = {hf_key: own[ours].detach().clone() for ours, hf_key in ours_for.items()}
    vocab = hf_model.config.text_config.vocab_size
    for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        if state[key].shape[0] < vocab:  # the image token's new row: never looked up, never predicted
            state[key] = torch.cat([state[key], state[key].new_zeros(vocab - state[key].shape[0], state[key].shape[1])])
    return state


def export_llava(model, out: str | Path, tokenizer, processor, prompting: dict[str, Any]) -> Path:
    """Write `model` (an MLLM of LLaVA's shape) as a `LlavaForConditionalGeneration` folder."""
    from transformers import GenerationConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    cfg = model.cfg
    problem = native_problem(cfg, prompting)
    if problem:
        raise UserError(f"--format hf: {problem}; only a LLaVA-shaped model exports as transformers' "
                        "LlavaForConditionalGeneration: export_model(fmt='hf') writes the others as custom code, "
                        "or use --format eelight")
    tok, image_id = _tokenizer_with_image_token(tokenizer)
    strategy, extra = _feature_strategy(cfg)
    text = hf_text_config(cfg.llm)
    text.vocab_size = max(cfg.llm.vocab_size, image_id + 1)
    config = LlavaConfig(vision_config=model.vision.model.config.to_dict(), text_config=text.to_dict(),
                         image_token_id=image_id, image_seq_length=model.num_visual_tokens,
                         vision_feature_layer=cfg.vision.feature_layer, vision_feature_select_strategy=strategy,
                         projector_hidden_act="gelu", multimodal_projector_bias=True,
                         tie_word_embeddings=cfg.llm.tie_embeddings)
    hf_model = LlavaForConditionalGeneration(config).eval()
    family = "qwen3" if cfg.llm.qk_norm else "qwen2" if cfg.llm.qkv_bias else "llama"
    hf_model.load_state_dict(_hf_state(model, hf_model, family), strict=True)
    hf_processor = LlavaProcessor(image_processor=processor, tokenizer=tok, patch_size=model.vision.model.config.patch_size,
                                  vision_feature_select_strategy=strategy, num_additional_image_tokens=extra,
                                  chat_template=chat_template(prompting["template"], tok))
    _check_prompt(hf_processor, tokenizer, prompting["template"], image_id, model.num_visual_tokens)
    out = Path(out)
    hf_model.save_pretrained(out)
    hf_processor.save_pretrained(out)
    GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                     suppress_tokens=[image_id]).save_pretrained(out)
    _card(out, cfg, prompting)
    return out


CHECK_QUESTION = "What colour is the large shape? A. red B. blue"


def _check_prompt(hf_processor, tokenizer, template_name: str, image_id: int, n_visual: int) -> None:
    """The processor's ids for one question equal eelight's prompt with the visual block."""
    from PIL import Image

    ours = prompt(CHECK_QUESTION, TEMPLATES[template_name], tokenizer)
    expected = ours.ids[:ours.image_offset] + [image_id] * n_visual + ours.ids[ours.image_offset:]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": CHECK_QUESTION}]}]
    text = hf_processor.apply_chat_template(messages, add_generation_prompt=True)
    size = hf_processor.image_processor.crop_size if getattr(hf_processor.image_processor, "do_center_crop", False) \
        else hf_processor.image_processor.size
    image = Image.new("RGB", (size.get("width", size.get("shortest_edge")), size.get("height", size.get("shortest_edge"))))
    got = hf_processor(text=text, images=image, return_tensors="pt")["input_ids"][0].tolist()
    if got != expected:
        raise UserError(f"--format hf: the exported processor tokenises the prompt differently from eelight "
                        f"({len(got)} vs {len(expected)} ids; first difference at {_first_difference(got, expected)}), "
                        "so transformers would not see what the model was trained on: use --format eelight")


def _first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def _card(out: Path, cfg: ModelConfig, prompting: dict[str, Any]) -> None:
    import transformers

    lines = [
        "# eelight model (transformers LLaVA)", "",
        "An eelight model exported as `LlavaForConditionalGeneration`: no eelight code is needed to load it.", "",
        "```python",
        "from transformers import AutoProcessor, LlavaForConditionalGeneration",
        "model = LlavaForConditionalGeneration.from_pretrained(FOLDER)",
        "processor = AutoProcessor.from_pretrained(FOLDER)",
        'messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]',
        "inputs = processor(text=processor.apply_chat_template(messages, add_generation_prompt=True), images=IMAGE,",
        '                   return_tensors="pt")',
        "answer = model.generate(**inputs, max_new_tokens=16)",
        "```", "",
        f"Trained with eelight's `{prompting['template']}` template, which the chat template renders; LLM "
        f"{cfg.llm.num_layers} layers x {cfg.llm.hidden_size}, vision tower {cfg.vision.kind}.", "",
        f"Tested with transformers {transformers.__version__} and torch {torch.__version__}: logits equal to "
        "eelight's (float32, max abs difference <= 1e-5) and the same greedy tokens (tests/test_hf_export.py).", "",
    ]
    (out / "README.md").write_text("\n".join(lines))
