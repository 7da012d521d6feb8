"""`eelight export --format hf` for every variant that is not LLaVA: a `transformers` custom-code
folder (`trust_remote_code=True`), loaded through the Auto classes with no eelight installed.

There is no second copy of the model: the export bundles eelight's own model modules
(the `eelight/models/` modules the model is built from, with `errors.py` and `config_rules.py`,
their only imports outside `models/`) with their package imports made relative, next to two small files written here:

    configuration_eelight.py   EelightConfig: the eelight model config and the tower's config
    modeling_eelight.py        EelightForConditionalGeneration: the bundled MLLM behind the
                               PreTrainedModel interface (forward -> logits and loss; generate ->
                               greedy decoding with eelight's KV cache)

and eelight's own export files (weights, tokenizer, image processor, prompt.json). The bundled
files need torch and transformers only (and what transformers installs: safetensors).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

BUNDLE_TOP = ("errors", "config_rules")  # eelight/*.py that the model modules import
_IMPORTS = [
    (re.compile(r"^(\s*)from eelight\.models\.(\w+) import", re.M), r"\1from .\2 import"),
    (re.compile(r"^(\s*)from eelight\.models import", re.M), r"\1from . import"),
    (re.compile(r"^(\s*)from eelight\.(errors|config_rules) import", re.M), r"\1from .\2 import"),
]

CONFIGURATION = '''"""The eelight model config for transformers (written by `eelight export --format hf`)."""

from transformers import PretrainedConfig


class EelightConfig(PretrainedConfig):
    model_type = "eelight"

    def __init__(self, eelight: dict | None = None, vision: dict | None = None, **kwargs):
        self.eelight = eelight or {}  # eelight.models.config.ModelConfig, as a dict
        self.vision = vision or {}  # the vision tower's transformers config, as a dict
        super().__init__(**kwargs)
'''

MODELING = '''"""eelight's MLLM behind transformers' PreTrainedModel (written by `eelight export --format hf`).

The model code is eelight's own, bundled beside this file."""

from pathlib import Path

import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .config import LLMConfig, ModelConfig, VisionConfig
from .configuration_eelight import EelightConfig
from .hf_loading import load_strict, read_safetensors, vision_config_from_hf
from .layout import attention_mask as _layout  # noqa: F401 (bundled: mllm.py imports it)
from .mllm import MLLM


def _model_config(d: dict) -> ModelConfig:
    return ModelConfig(**{**d, "llm": LLMConfig(**d["llm"]), "vision": VisionConfig(**d["vision"])})


class EelightForConditionalGeneration(PreTrainedModel):
    config_class = EelightConfig
    base_model_prefix = "mllm"
    main_input_name = "input_ids"

    def __init__(self, config: EelightConfig):
        super().__init__(config)
        cfg = _model_config(config.eelight)
        self.mllm = MLLM(cfg, cfg.llm, vision_config_from_hf(config.vision))
        self.post_init()

    def _init_weights(self, module):  # the weights come from the folder, strictly
        pass

    @classmethod
    def from_pretrained(cls, folder, *args, **kwargs):
        """A local export folder, built on the CPU and loaded strictly (every tensor, nothing else)."""
        model = cls(EelightConfig.from_pretrained(folder))
        load_strict(model.mllm, read_safetensors(folder), f"{folder}/model.safetensors")
        return model.eval()

    def forward(self, input_ids, pixel_values=None, attention_mask=None, labels=None, image_offset=None,
                question_end=None, **kwargs):
        """Logits of the text rows (B, Nt, vocab); image_offset (B,): text tokens before the image."""
        out = self.mllm(input_ids, pixel_values, labels=labels, attention_mask=attention_mask,
                        image_offset=image_offset, question_end=question_end)
        return CausalLMOutputWithPast(loss=out.loss, logits=out.logits)

    @torch.no_grad()
    def generate(self, input_ids, pixel_values=None, attention_mask=None, max_new_tokens=16, image_offset=None,
                 use_cache=True, **kwargs):
        """Greedy decoding with eelight's KV cache; returns the prompt and the new tokens."""
        new = self.mllm.generate(input_ids, pixel_values, attention_mask, max_new_tokens=max_new_tokens,
                                 eos_token_id=self.generation_config.eos_token_id, use_cache=use_cache,
                                 image_offset=image_offset)
        return torch.cat([input_ids, new], dim=1)
'''


_EELIGHT_IMPORT = re.compile(r"^\s*from eelight(?:\.models)?(?:\.(\w+))? import ([\w, ]+)$", re.M)
ROOTS = ("mllm", "config", "hf_loading", "layout")  # what modeling_eelight.py imports


def model_modules() -> list[Path]:
    """The files the model needs: eelight/models' modules reachable from `ROOTS` by their
    eelight imports (so neither LoRA's peft nor OmegaConf's overrides come along), and the
    top-level `errors.py` / `config_rules.py` they use."""
    src = Path(__file__).parent
    todo, seen = list(ROOTS), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = src / ("models" if name not in BUNDLE_TOP else "") / f"{name}.py"
        for module, names in _EELIGHT_IMPORT.findall(path.read_text()):
            todo += [module] if module else [n.strip() for n in names.split(",")]
    return sorted((src / ("models" if n not in BUNDLE_TOP else "") / f"{n}.py") for n in seen)


def bundle_model_code(out: Path) -> None:
    """Copy the model's modules into `out` with relative imports; any other eelight import, or
    a package `transformers` does not bring, would need more than torch and transformers."""
    for path in model_modules():
        text = path.read_text()
        for pattern, repl in _IMPORTS:
            text = pattern.sub(repl, text)
        left = re.search(r"^\s*(?:from|import) (eelight\b|omegaconf|peft).*$", text, re.M)
        if left:
            raise RuntimeError(f"{path.name} imports {left.group(0).strip()!r}: the model code an export bundles "
                               "must need only torch and transformers")
        (out / path.name).write_text(text)


def write_custom_code(out: Path, model, tokenizer) -> Path:
    """Make an eelight export folder (`export.save_export`) a transformers custom-code folder:
    the bundled model code, the configuration and modeling files, and `config.json`."""
    import transformers

    from eelight.models.config import portable_config

    bundle_model_code(out)
    (out / "configuration_eelight.py").write_text(CONFIGURATION)
    (out / "modeling_eelight.py").write_text(MODELING)
    config = {
        "model_type": "eelight", "architectures": ["EelightForConditionalGeneration"],
        "auto_map": {"AutoConfig": "configuration_eelight.EelightConfig",
                     "AutoModel": "modeling_eelight.EelightForConditionalGeneration",
                     "AutoModelForImageTextToText": "modeling_eelight.EelightForConditionalGeneration"},
        "eelight": dataclasses.asdict(portable_config(model.cfg)), "vision": model.vision.hf_config_dict(),
        "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id, "transformers_version": transformers.__version__,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out
