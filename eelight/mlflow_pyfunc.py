"""MLflow pyfunc flavour for an exported eelight folder (what `eelight export --register` logs).

`mlflow.pyfunc.load_model("models:/NAME/1")` loads it back; `.unwrap_python_model().model` is the
`MLLM`; `predict` takes a DataFrame with `image` (a file path) and `prompt` (the question; an
`<image>` marker in it places the image, which otherwise opens the question, as in the training
data) columns and returns the greedy answers. Params: `template`, `image_placement`,
`max_new_tokens`.
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

        from eelight.data.text import prompt, template

        params = params or {}
        tpl = template(params.get("template", "probe"))
        answers = []
        for image_path, question in zip(model_input["image"], model_input["prompt"], strict=True):
            ask = prompt(question, tpl, self.tokenizer, params.get("image_placement", "marker"))
            pixels = self.transform.to_uint8(Image.open(image_path))[None]
            out = self.model.generate(torch.tensor([ask.ids]), pixels, eos_token_id=self.tokenizer.eos_token_id,
                                      max_new_tokens=int(params.get("max_new_tokens", 16)),
                                      image_offset=ask.image_offset)
            answers.append(self.tokenizer.decode(out[0], skip_special_tokens=True).strip())
        return answers
