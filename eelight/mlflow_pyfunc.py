"""MLflow pyfunc flavour for an exported eelight folder (what `eelight export --register` logs).

`mlflow.pyfunc.load_model("models:/NAME/1")` loads it back; `.unwrap_python_model().model` is the
`MLLM`; `predict` takes a DataFrame with `image` (a file path) and `prompt` (the question) columns
and returns the greedy answers.
"""

from __future__ import annotations

import mlflow.pyfunc


class EelightModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from transformers import AutoTokenizer

        from eelight.data.image import FastImageTransform
        from eelight.export import load
        from eelight.models.vision import image_processor

        folder = context.artifacts["model_dir"]
        self.model = load(folder)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.transform = FastImageTransform(image_processor(self.model.cfg.vision, self.model.vision.image_size))

    def predict(self, context, model_input, params=None) -> list[str]:
        import torch
        from PIL import Image

        from eelight.data.text import template

        tpl = template((params or {}).get("template", "probe"))
        answers = []
        for image_path, prompt in zip(model_input["image"], model_input["prompt"], strict=True):
            text = tpl.system + tpl.user.format(text=prompt) + tpl.assistant
            ids = [self.tokenizer.bos_token_id] if tpl.bos else []
            ids = torch.tensor([ids + self.tokenizer.encode(text, add_special_tokens=False)])
            pixels = self.transform.to_uint8(Image.open(image_path))[None]
            out = self.model.generate(ids, pixels, max_new_tokens=int((params or {}).get("max_new_tokens", 16)),
                                      eos_token_id=self.tokenizer.eos_token_id)
            answers.append(self.tokenizer.decode(out[0], skip_special_tokens=True).strip())
        return answers
