"""DINOv2 and DINOv2+SigLIP (prismatic-vlms' DinoSigLIP) vision towers: features and
preprocessing equal to Hugging Face's own models and processors (tiny random towers saved
here), strict loading, FLOPs, and align -> instruct -> eval runs with each."""

import numpy as np
import pytest
import torch
from helpers import IMAGENET_MEAN, IMAGENET_STD, save_dinov2, save_siglip
from PIL import Image

from eelight.data.image import FusedImageTransform, image_transform
from eelight.errors import CheckpointError
from eelight.models import build_mllm, model_config
from eelight.models.config import VisionConfig
from eelight.models.vision import image_processor


def _images(n: int, sizes=((50, 37), (37, 50), (32, 32))):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (sizes[i % len(sizes)][1], sizes[i % len(sizes)][0], 3),
                                         dtype=np.uint8)) for i in range(n)]


def _hf(folder):
    from transformers import AutoImageProcessor, AutoModel

    return AutoModel.from_pretrained(folder).eval(), AutoImageProcessor.from_pretrained(folder)


def _hf_patches(model, pixels, prefix):
    with torch.no_grad():
        return model(pixels, output_hidden_states=True).hidden_states[-2][:, prefix:]


@pytest.mark.parametrize("registers", [0, 4])
def test_dinov2_features_equal_hf_and_drop_cls_and_registers(tmp_path, registers):
    folder = save_dinov2(tmp_path / "dino", registers=registers, crop=32)
    ref, proc = _hf(folder)
    model = build_mllm(model_config("ee_mllm", vision=VisionConfig(path=str(folder), kind="dinov2"))).eval()
    images = _images(3)
    floats = proc(images=images, return_tensors="pt")["pixel_values"]
    uint8 = torch.stack([image_transform(image_processor(model.cfg.vision, 32)).to_uint8(im) for im in images])
    expected = _hf_patches(ref, floats, 1 + registers)
    with torch.no_grad():
        assert torch.equal(model.vision(floats), expected)
        assert (model.vision(uint8) - expected).abs().max() < 1e-4
    assert model.vision.num_tokens == 16 and model.cfg.vision.registers == registers
    full = build_mllm(model_config("ee_mllm", vision=VisionConfig(path=str(folder), kind="dinov2",
                                                                  feature_select="full"))).vision.eval()
    with torch.no_grad():
        assert torch.equal(full(floats), _hf_patches(ref, floats, 0))


@pytest.mark.parametrize("crop", [224, 32])
def test_dinov2_preprocessing_equals_the_hf_processor(tmp_path, crop):
    from transformers import BitImageProcessorPil

    # facebook/dinov2-*'s preprocessor_config.json, scaled to the crop: the reference
    hf = BitImageProcessorPil(size={"shortest_edge": round(crop * 256 / 224)}, crop_size={"height": crop, "width": crop},
                              image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    hf.save_pretrained(tmp_path)
    for ours in (image_processor(VisionConfig(kind="dinov2"), crop),  # the defaults
                 image_processor(VisionConfig(kind="dinov2", path=str(tmp_path)), 999)):  # the folder's
        for image in _images(3, sizes=((500, 375), (375, 500), (crop, crop))):
            expected = hf(images=image, return_tensors="pt")["pixel_values"][0]
            got = image_transform(ours)(image)
            assert got.shape == expected.shape == (3, crop, crop)
            assert (got - expected).abs().max() < 1e-5


def _fused(tmp_path, registers=2):
    dino = save_dinov2(tmp_path / "dino", registers=registers, crop=32)
    siglip = save_siglip(tmp_path / "siglip")
    vision = VisionConfig(path=str(dino), siglip_path=str(siglip), kind="dinosiglip")
    return dino, siglip, model_config("ee_mllm", vision=vision)


def test_dinosiglip_concatenates_each_towers_patch_features_with_its_own_preprocessing(tmp_path):
    dino, siglip, cfg = _fused(tmp_path)
    (dino_ref, dino_proc), (siglip_ref, siglip_proc) = _hf(dino), _hf(siglip)
    model = build_mllm(cfg).eval()
    transform = image_transform(image_processor(model.cfg.vision, 32, None))
    assert isinstance(transform, FusedImageTransform)
    images = _images(4)
    dino_px = dino_proc(images=images, return_tensors="pt")["pixel_values"]
    siglip_px = siglip_proc(images=images, return_tensors="pt")["pixel_values"]
    assert not torch.allclose(dino_px, siglip_px)  # two preprocessings: the test would see a mix-up
    floats = torch.stack([transform(im) for im in images])
    assert (floats - torch.cat([dino_px, siglip_px], dim=1)).abs().max() < 1e-5
    expected = torch.cat([_hf_patches(dino_ref, dino_px, 3), _hf_patches(siglip_ref, siglip_px, 0)], dim=-1)
    uint8 = torch.stack([transform.to_uint8(im) for im in images])
    with torch.no_grad():
        assert (model.vision(uint8) - expected).abs().max() < 1e-4
    assert model.vision.hidden_size == 32 + 48 and model.num_visual_tokens == 16
    assert model.projector.net[0].in_features == 80


def test_dinosiglip_export_round_trip_keeps_both_processors(tmp_path):
    from eelight.export import save_export
    from eelight.models.folder import load_model
    from eelight.training.backbones import BackboneConfig  # noqa: F401  (import check only)

    _, _, cfg = _fused(tmp_path)
    model = build_mllm(cfg).eval()
    from eval_helpers import probe_tokenizer

    tok = probe_tokenizer(tmp_path / "tok")
    out = save_export(model, tmp_path / "export", tok, image_processor(model.cfg.vision, 32), {"template": "probe"})
    assert (out / "preprocessor_config.json").is_file() and (out / "siglip" / "preprocessor_config.json").is_file()
    again = load_model(out)
    pixels = torch.stack([image_transform(image_processor(again.cfg.vision, 32, out)).to_uint8(im)
                          for im in _images(2)])
    ids = torch.randint(0, 96, (2, 7))
    with torch.no_grad():
        assert torch.equal(again(ids, pixels).logits, model(ids, pixels).logits)


def test_strict_loading_and_one_line_errors(tmp_path):
    from safetensors.torch import load_file, save_file

    dino, siglip, cfg = _fused(tmp_path)
    with pytest.raises(CheckpointError, match="holds a 'siglip_vision_model' tower"):
        build_mllm(model_config("ee_mllm", vision=VisionConfig(path=str(siglip), kind="dinov2")))
    with pytest.raises(CheckpointError, match="not a SigLIP one"):
        build_mllm(model_config("ee_mllm", vision=VisionConfig(path=str(dino), siglip_path=str(dino),
                                                               kind="dinosiglip")))
    with pytest.raises(ValueError, match="both model.vision.path"):
        VisionConfig(kind="dinosiglip", path=str(dino))
    state = load_file(dino / "model.safetensors")
    state.pop("embeddings.register_tokens")
    save_file(state, dino / "model.safetensors")
    with pytest.raises(CheckpointError, match="'embeddings.register_tokens' is missing"):
        build_mllm(cfg)
    coarse = save_siglip(tmp_path / "coarse", patch=16)
    with pytest.raises(ValueError, match="needs one patch grid: DINOv2 gives 16 patches"):
        build_mllm(model_config("ee_mllm", vision=VisionConfig(path=str(save_dinov2(tmp_path / "d2", crop=32)),
                                                               siglip_path=str(coarse), kind="dinosiglip")))


def _vit_flops(d: int, m: int, layers: int, tokens: int, patches: int, patch: int) -> int:
    """A ViT's forward FLOPs (2 per multiply-add): patch embedding, then per layer q/k/v/o,
    the two MLP matrices and the two attention products."""
    return 2 * patches * 3 * patch * patch * d + layers * (2 * tokens * (4 * d * d + 2 * d * m) + 4 * tokens**2 * d)


def _meta_flops(module, channels=3) -> int:
    """Forward FLOPs of `module` on one 32 px image, on the meta device as `forward_cost` counts
    (FlopCounterMode does not see the CPU's fused attention kernel)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(torch.zeros(1, channels, 32, 32, device="meta"))
    return counter.get_total_flops()


def test_flops_count_both_towers(tmp_path):
    from transformers import SiglipVisionModel

    from eelight.eval.cost import forward_cost
    from eelight.models.hf_loading import resolve
    from eelight.models.vision import build_tower

    dino, siglip, cfg = _fused(tmp_path)
    dino_only = model_config("ee_mllm", vision=VisionConfig(path=str(dino), kind="dinov2"))
    resolved = resolve(dino_only)
    with torch.device("meta"):
        tower = build_tower(resolved.cfg.vision, resolved.vision_hf)
        siglip_ref = SiglipVisionModel(resolve(cfg).vision_hf.siglip)  # HF's own model, pooling head included
    assert _meta_flops(tower) == _vit_flops(32, 64, 2, 1 + 2 + 16, 16, 8)
    widened_projector = 2 * 16 * 48 * cfg.llm.hidden_size  # the projector's first layer reads 48 more channels
    fused, nv = forward_cost(cfg, 12)
    assert nv == 16
    assert fused - forward_cost(dino_only, 12)[0] == _meta_flops(siglip_ref) + widened_projector


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dinov2", "dinosiglip"])
def test_align_instruct_eval_with_each_tower(probe_env, tmp_path, kind):
    """`make demo`'s steps (align, instruct from its checkpoint, eelight eval on the probe's
    benchmark files, export and eval of the export) with a DINOv2 / DinoSigLIP tower at the
    probe's 64 px (random towers: this shows the pipeline, not what the tower is worth)."""
    from eval_helpers import probe_benchmark_files

    from eelight.evaluate.command import main as evaluate
    from eelight.export import export_model
    from eelight.training.config import load_run_config
    from eelight.training.run import train

    dino = save_dinov2(tmp_path / "dino", registers=4, size=64, crop=64)
    vision = [f"model.vision.path={dino}", f"model.vision.kind={kind}"]
    if kind == "dinosiglip":
        vision.append(f"model.vision.siglip_path={save_siglip(tmp_path / 'siglip', size=64)}")
    base = [o for o in probe_env["overrides"] if not o.startswith("model.vision.path")] + vision
    exp = "experiments/ee_mllm_tiny.yaml"
    align = train(load_run_config([exp], base + [f"name={kind}_tower", "trainer.max_steps=6"]))
    instruct_cfg = load_run_config([exp, "experiments/stages/instruct.yaml"],
                                   base + [f"name={kind}_tower", "trainer.max_steps=6",
                                           f"init_from={align['checkpoint']}", "eval.benchmarks=[]"])
    instruct = train(instruct_cfg)
    assert instruct["global_step"] == 6
    files = probe_benchmark_files(tmp_path)
    args = ["benchmarks=[probe,mmbench,textvqa]", f"eval.data_root={files}", "eval.limit=6", "data.val_samples=6"]
    scores = evaluate(str(instruct_cfg.run_dir), args, out=str(tmp_path / "eval_run"), log=False)["metrics"]
    assert {"mmbench/accuracy", "textvqa/accuracy"} <= set(scores)
    out = export_model(instruct_cfg.run_dir / "config.yaml", instruct["checkpoint"], tmp_path / "export")
    export_args = ["benchmarks=[mmbench,textvqa]", *args[1:3]]  # an export has no probe shards of its own
    again = evaluate(str(out), export_args, out=str(tmp_path / "eval_export"), log=False)["metrics"]
    assert again["mmbench/accuracy"] == scores["mmbench/accuracy"]
    assert again["textvqa/accuracy"] == scores["textvqa/accuracy"]
