"""The model family of docs/DESIGN.md §1: one file per component."""

from eelight.models.config import PRESETS, LLMConfig, ModelConfig, VisionConfig, model_config
from eelight.models.mllm import MLLM, MLLMOutput, build_mllm, load_llava

__all__ = [
    "PRESETS", "LLMConfig", "ModelConfig", "VisionConfig", "model_config",
    "MLLM", "MLLMOutput", "build_mllm", "load_llava",
]
