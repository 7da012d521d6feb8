"""`eelight export --format hf`: a LLaVA-shaped model as transformers' `LlavaForConditionalGeneration`,
loaded and run in a subprocess where eelight cannot be imported; its processor builds the
prompt eelight trained with, its logits and greedy tokens equal eelight's."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from eval_helpers import tiny_export_parts
from PIL import Image

from eelight.data.image import image_transform
from eelight.data.text import TEMPLATES, prompt
from eelight.errors import UserError
from eelight.hf_export import export_llava

QUESTION = "How many shapes are there? A. one B. two C. three"

# Runs with eelight made unimportable: only torch, transformers and the folder.
HF_SIDE = r"""
import json, sys
sys.modules["eelight"] = None
try:
    import eelight  # noqa: F401
    raise SystemExit("eelight is importable in the subprocess")
except ImportError:
    pass
import numpy as np, torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

folder, question, image_path, out = sys.argv[1:5]
model, info = LlavaForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
model.eval()
processor = AutoProcessor.from_pretrained(folder)
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
text = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(text=text, images=Image.open(image_path), return_tensors="pt")
with torch.no_grad():
    logits = model(**inputs).logits[0]
    new = model.generate(**inputs, max_new_tokens=8, do_sample=False)[0, inputs["input_ids"].shape[1]:]
text_rows = inputs["input_ids"][0] != model.config.image_token_id
np.save(out + ".npy", logits[text_rows].numpy())
json.dump({"info": {k: [str(x) for x in v] for k, v in info.items()}, "ids": inputs["input_ids"][0].tolist(),
           "image_token_id": model.config.image_token_id, "new": new.tolist()},
          open(out + ".json", "w"))
"""


def _image(path):
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 255, (45, 60, 3), dtype=np.uint8)).save(path)
    return Image.open(path)


def _qwen3(folder, vocab: int):
    """A tiny random Qwen3 (tied embeddings, q/k norms made to matter) with the probe's vocabulary."""
    from helpers import TINY_LLM
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(**{**TINY_LLM, "vocab_size": vocab, "head_dim": 16, "rope_theta": 1e6,
                                            "tie_word_embeddings": True}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                p.uniform_(0.5, 1.5)
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind", ["clip", "siglip", "qwen3"])
def test_llava_exports_as_transformers_llava_and_runs_without_eelight(tmp_path, kind):
    from dataclasses import replace

    from eelight.models import LLMConfig, build_mllm

    model, tok, _ = tiny_export_parts(tmp_path, "llava")
    if kind == "siglip":
        model = build_mllm(replace(model.cfg, vision=replace(model.cfg.vision, kind="siglip"))).eval()
    if kind == "qwen3":
        llm = LLMConfig(path=str(_qwen3(tmp_path / "qwen3", len(tok))))
        model = build_mllm(replace(model.cfg, llm=llm)).eval()
        assert model.cfg.llm.qk_norm and model.cfg.llm.tie_embeddings
    from eelight.models.vision import image_processor

    processor = image_processor(model.cfg.vision, model.vision.image_size)
    out = export_llava(model, tmp_path / "hf", tok, processor, {"template": "probe", "image_placement": "marker"})
    image = _image(tmp_path / "image.png")
    enc = prompt(QUESTION, TEMPLATES["probe"], tok)
    ids = torch.tensor([enc.ids])
    pixels = image_transform(processor)(image)[None]
    with torch.no_grad():
        ours = model(ids, pixels, image_offset=enc.image_offset).logits[0]
        new = model.generate(ids, pixels, image_offset=enc.image_offset, max_new_tokens=8,
                             eos_token_id=tok.eos_token_id)[0].tolist()
    result = tmp_path / "hf_side"
    subprocess.run([sys.executable, "-c", HF_SIDE, str(out), QUESTION, str(tmp_path / "image.png"), str(result)],
                   check=True, timeout=300)
    hf = json.loads((tmp_path / "hf_side.json").read_text())
    assert all(not v for v in hf["info"].values()), hf["info"]  # strict: nothing missing, unexpected or mismatched
    nv = model.num_visual_tokens
    image_id = hf["image_token_id"]
    assert hf["ids"] == enc.ids[:enc.image_offset] + [image_id] * nv + enc.ids[enc.image_offset:]
    theirs = torch.from_numpy(np.load(tmp_path / "hf_side.npy"))[:, :ours.shape[-1]]
    assert (theirs - ours).abs().max() <= 1e-5
    if tok.eos_token_id in new:
        new = new[:new.index(tok.eos_token_id) + 1]
    assert hf["new"] == new
    card = (out / "README.md").read_text()
    import transformers

    assert f"transformers {transformers.__version__}" in card


@pytest.mark.parametrize("preset,named", [("ee_mllm", "model.visual_attn=none"), ("flamingo", "model.arch=flamingo"),
                                          ("aki", "model.visual_reads_question=True")])
def test_other_variants_are_refused_in_one_line(tmp_path, preset, named):
    model, tok, processor = tiny_export_parts(tmp_path, preset)
    with pytest.raises(UserError, match="use --format eelight") as exn:
        export_llava(model, tmp_path / "hf", tok, processor, {"template": "probe"})
    assert named in str(exn.value) and len(str(exn.value).splitlines()) == 1
    assert not (tmp_path / "hf").exists()


def test_a_start_placement_or_auto_template_is_refused(tmp_path):
    model, tok, processor = tiny_export_parts(tmp_path, "llava")
    for prompting, named in (({"template": "probe", "image_placement": "start"}, "image_placement=start"),
                             ({"template": "auto"}, "data.template=auto")):
        with pytest.raises(UserError, match=named):
            export_llava(model, tmp_path / "hf", tok, processor, prompting)


@pytest.mark.slow
def test_cli_exports_a_trained_llava_run(probe_env, tmp_path, capsys):
    """`eelight export --run RUN --format hf` on trained runs: transformers' LLaVA from the LLaVA
    run's folder, and AutoModel (custom code) from the EE-MLLM run's, give the logits of eelight's
    own export of the same run; --register with --format hf exits 2."""
    from helpers import one_line_exit_2
    from transformers import LlavaForConditionalGeneration

    from eelight.cli import main as cli
    from eelight.export import load
    from eelight.training.config import load_run_config
    from eelight.training.run import train

    runs = {}
    for preset in ("llava", "ee_mllm"):
        cfg = load_run_config(["experiments/ee_mllm_tiny.yaml", "experiments/stages/instruct.yaml"],
                              probe_env["overrides"] + [f"model_preset={preset}", f"name=hf_{preset}",
                                                        "trainer.max_steps=4", "eval.benchmarks=[]"])
        train(cfg)
        runs[preset] = cfg.run_dir
    cli(["export", "--run", str(runs["llava"]), "--out", str(tmp_path / "hf"), "--format", "hf"])
    cli(["export", "--run", str(runs["llava"]), "--out", str(tmp_path / "ours")])
    hf, ours = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf").eval(), load(tmp_path / "ours")
    ids = torch.randint(5, 60, (1, 9))
    pixels = torch.randn(1, 3, 64, 64)
    image = torch.full((1, ours.num_visual_tokens), hf.config.image_token_id)
    with torch.no_grad():
        theirs = hf(input_ids=torch.cat([ids[:, :2], image, ids[:, 2:]], 1), pixel_values=pixels).logits
        expected = ours(ids, pixels, image_offset=2).logits
    text_rows = torch.cat([theirs[:, :2], theirs[:, 2 + ours.num_visual_tokens:]], 1)[..., :expected.shape[-1]]
    assert (text_rows - expected).abs().max() <= 1e-5
    from transformers import AutoModel

    cli(["export", "--run", str(runs["ee_mllm"]), "--out", str(tmp_path / "ee_hf"), "--format", "hf"])
    cli(["export", "--run", str(runs["ee_mllm"]), "--out", str(tmp_path / "ee_ours")])
    remote, ours = AutoModel.from_pretrained(tmp_path / "ee_hf", trust_remote_code=True), load(tmp_path / "ee_ours")
    assert "trust_remote_code=True" in (tmp_path / "ee_hf" / "README.md").read_text()
    with torch.no_grad():
        assert torch.equal(remote(input_ids=ids, pixel_values=pixels, image_offset=2).logits,
                           ours(ids, pixels, image_offset=2).logits)
    line = one_line_exit_2(capsys, ["export", "--run", str(runs["ee_mllm"]), "--out", str(tmp_path / "no"),
                                    "--format", "hf", "--register", "x"])
    assert "--register" in line


# Custom code: AutoModel with trust_remote_code, eelight unimportable.
REMOTE_SIDE = r"""
import json, sys
for name in ("eelight", "omegaconf", "peft", "lightning"):  # the export needs torch and transformers only
    sys.modules[name] = None
try:
    import eelight  # noqa: F401
    raise SystemExit("eelight is importable in the subprocess")
except ImportError:
    pass
import numpy as np, torch
from transformers import AutoModel

folder, data, out = sys.argv[1:4]
d = torch.load(data, weights_only=True)
model = AutoModel.from_pretrained(folder, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
with torch.no_grad():
    logits = model(input_ids=d["ids"], pixel_values=d["pixels"], image_offset=d["offset"]).logits
    cached = model.generate(d["ids"], d["pixels"], image_offset=d["offset"], max_new_tokens=8)
    uncached = model.generate(d["ids"], d["pixels"], image_offset=d["offset"], max_new_tokens=8, use_cache=False)
np.save(out + ".npy", logits.numpy())
json.dump({"cached": cached[0, d["ids"].shape[1]:].tolist(), "uncached": uncached[0, d["ids"].shape[1]:].tolist()},
          open(out + ".json", "w"))
"""


@pytest.mark.parametrize("preset", ["ee_mllm", "ee_mllm_fresh", "flamingo", "saisa", "ee_mllm+dinosiglip"])
def test_other_variants_export_as_custom_code_and_run_without_eelight(tmp_path, preset):
    from dataclasses import replace

    from eelight.export import save_export
    from eelight.hf_remote import write_custom_code
    from eelight.models import VisionConfig, build_mllm
    from eelight.models.vision import image_processor

    model, tok, processor = tiny_export_parts(tmp_path, preset.split("+")[0])
    if preset.endswith("dinosiglip"):  # a fused tower, pooled 2x2, a 3-layer projector
        cfg = replace(model.cfg, vision=VisionConfig(kind="dinosiglip", registers=2), visual_pool=2, projector_depth=3)
        model = build_mllm(cfg).eval()
        processor = image_processor(cfg.vision, 32)
    out = save_export(model, tmp_path / "hf", tok, processor, {"template": "probe", "image_placement": "marker"})
    write_custom_code(out, model, tok)
    assert not any(re.match(r"\s*(from|import) eelight\b", line) for f in out.glob("*.py")
                   for line in f.read_text().splitlines())
    enc = prompt(QUESTION, TEMPLATES["probe"], tok)
    ids = torch.tensor([enc.ids])
    pixels = image_transform(processor)(_image(tmp_path / "image.png"))[None]
    offset = torch.tensor([enc.image_offset])
    with torch.no_grad():
        ours = model(ids, pixels, image_offset=offset).logits
        new = model.generate(ids, pixels, image_offset=offset, max_new_tokens=8, eos_token_id=tok.eos_token_id)
    torch.save({"ids": ids, "pixels": pixels, "offset": offset}, tmp_path / "inputs.pt")
    subprocess.run([sys.executable, "-c", REMOTE_SIDE, str(out), str(tmp_path / "inputs.pt"), str(tmp_path / "r")],
                   check=True, timeout=300)
    theirs = torch.from_numpy(np.load(tmp_path / "r.npy"))
    assert (theirs - ours).abs().max() <= 1e-5
    hf = json.loads((tmp_path / "r.json").read_text())
    assert hf["cached"] == hf["uncached"] == new[0].tolist()
