"""MLflow pyfunc flavour for an exported eelight folder (what `eelight export --register` logs).

`mlflow.pyfunc.load_model("models:/NAME/1")` loads it back; `.unwrap_python_model().model` is the
`MLLM`; `predict` takes a DataFrame with `image` (a file path) and `prompt` (the question; an
`<image>` marker in it places the image, which otherwise opens the question, as in the training
data) columns and returns the greedy answers. Params (in the logged signature): `template` and
`image_placement` ("" = as in training: the export's `prompt.json`), `max_new_tokens`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd


class EelightModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from transformers import AutoTokenizer

        from eelight.data.image import image_transform
        from eelight.export import load
        from eelight.models.vision import image_processor

        folder = context.artifacts["model_dir"]
        self.model = load(folder)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.transform = image_transform(image_processor(self.model.cfg.vision, self.model.vision.image_size,
                                                                     folder))
        prompting = Path(folder) / "prompt.json"
        self.prompting = json.loads(prompting.read_text()) if prompting.exists() else {}

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> list[str]:
        """The greedy answer to each row's prompt about its image (the signature, given when
        logging, checks the columns; a DataFrame hint tells MLflow not to infer one)."""
        import torch
        from PIL import Image

        from eelight.data.text import prompt, template

        given = {k: v for k, v in (params or {}).items() if v not in ("", None)}  # "": as trained
        params = {"template": "probe", "image_placement": "marker", **self.prompting, **given}
        tpl = template(params["template"], self.tokenizer, params.get("system_prompt"))
        answers = []
        for image_path, question in zip(model_input["image"], model_input["prompt"], strict=True):
            ask = prompt(question, tpl, self.tokenizer, params["image_placement"])
            pixels = self.transform.to_uint8(Image.open(image_path))[None]
            out = self.model.generate(torch.tensor([ask.ids]), pixels, eos_token_id=self.tokenizer.eos_token_id,
                                      max_new_tokens=int(params.get("max_new_tokens", 16)),
                                      image_offset=ask.image_offset, question_end=torch.tensor([ask.question_end]))
            answers.append(self.tokenizer.decode(out[0], skip_special_tokens=True).strip())
        return answers


def signature():
    """Input columns, output and params of `predict`, so MLflow passes the params through."""
    from mlflow.models import infer_signature

    example = pd.DataFrame({"image": ["image.png"], "prompt": ["what colour is it ?"]})
    return infer_signature(example, ["an answer"], params={"template": "", "image_placement": "", "max_new_tokens": 16})


def register_model(folder: str | Path, name: str, uri: str, run_id: str) -> Any:
    """Register an export folder in the model registry as a pyfunc model, logged under
    `run_id`; returns the model version. Load it back with
    `mlflow.set_tracking_uri(uri); mlflow.pyfunc.load_model("models:/NAME/VERSION")`."""
    import os
    import warnings
    from unittest import mock

    import mlflow

    # MLflow's "models from code": the file, never imported here (it imports this module).
    code = Path(__file__).with_name("mlflow_model_code.py")
    mlflow.set_tracking_uri(uri)
    quiet = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}  # else a bar per file copied
    with warnings.catch_warnings(), mock.patch.dict(os.environ, quiet), mlflow.start_run(run_id=run_id):
        # Harmless here: the signature is given, and an input example would need an image file.
        warnings.filterwarnings("ignore", message=".*An input example was not provided")
        info = mlflow.pyfunc.log_model(name="model", python_model=str(code),
                                       signature=signature(), artifacts={"model_dir": str(folder)},
                                       pip_requirements=["eelight"])
        return mlflow.register_model(info.model_uri, name)
