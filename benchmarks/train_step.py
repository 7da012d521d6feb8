"""Training-step wall-clock (forward + backward), EE-MLLM vs eelight's LLaVA preset vs the peer,
Hugging Face `LlavaForConditionalGeneration` with the same weights, side by side in one run,
eager and compiled (`torch.compile`; eelight: `model.compile=true`), each next to the FLOPs it
counts, so that the time ratio can be set against the FLOP ratio (docs/DESIGN.md §1).

A step is what the instruct stage does per batch with the vision tower frozen: projector ->
[visual; text] through the LLM -> next-token loss on the text -> backward into the projector
and the LLM. The vision tower is the same for every model and is not run: the step starts from
its features (random). The peer gets `inputs_embeds = [projector(features); embed(text)]`
and `logits_to_keep = Nt` (its logits for the text rows only, as eelight computes them); its
loss is computed like eelight's and must equal eelight's LLaVA loss (printed as a check).

    .venv/bin/python benchmarks/train_step.py                      # CPU: the demo's sizes
    .venv/bin/python benchmarks/train_step.py --vicuna --layers 2 --shapes 1x576x64   # CPU
    .venv/bin/python benchmarks/train_step.py --vicuna --layers 32 --device cuda --dtype bfloat16 \\
        --shapes 1x576x64 8x576x64 1x2880x64 4x2880x64        # the GPU goal (not run yet)

Weights are random (speed does not depend on their values). Peak memory is reported on CUDA
(allocated during the step, above the weights); a shape that does not fit prints OOM.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from dataclasses import dataclass

import eelight  # noqa: F401  (first: its THP_MEM_ALLOC_ENABLE default must be set before torch loads)

# isort: split
import torch
from timing import add_run_args, device_dtype, sync, timed
from torch.utils.flop_counter import FlopCounterMode

from eelight.models import hf_loading
from eelight.models.config import model_config
from eelight.models.mllm import MLLM, next_token_loss

DEMO = dict(hidden_size=128, intermediate_size=341, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=41, vision_hidden=128)
VICUNA = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
              num_key_value_heads=32, vocab_size=32000, vision_hidden=1024)


@dataclass
class Shape:
    batch: int
    nv: int
    nt: int

    @classmethod
    def parse(cls, text: str) -> Shape:
        b, nv, nt = (int(x) for x in text.lower().split("x"))
        return cls(b, nv, nt)

    def __str__(self) -> str:
        return f"B={self.batch} Nv={self.nv} Nt={self.nt}"


def hf_llava_config(sizes: dict, layers: int, max_positions: int):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    text = LlamaConfig(hidden_size=sizes["hidden_size"], intermediate_size=sizes["intermediate_size"],
                       num_hidden_layers=layers, num_attention_heads=sizes["num_attention_heads"],
                       num_key_value_heads=sizes["num_key_value_heads"], vocab_size=sizes["vocab_size"],
                       max_position_embeddings=max_positions)
    # The tower is never run (the step starts from its features); one small layer of the right width.
    vision = CLIPVisionConfig(hidden_size=sizes["vision_hidden"], intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=1, image_size=28, patch_size=14)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=sizes["vocab_size"] - 1)


def peer_state(cfg, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A randomly initialised HF LLaVA's weights (on the CPU)."""
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(0)
    return LlavaForConditionalGeneration(cfg).to(dtype).state_dict()


def build(kind: str, cfg, state: dict | None, device: torch.device, dtype: torch.dtype, attn_impl: str):
    """(model, step function: (features, ids) -> text logits) for `hf` (the peer) or an eelight
    preset, loaded with `state` (None: left random, for counting FLOPs on the meta device)."""
    if kind == "hf":
        from transformers import LlavaForConditionalGeneration

        with torch.device(device):
            model = LlavaForConditionalGeneration(cfg).to(dtype)
        if state is not None:
            model.load_state_dict(state)
        model.train()
        model.model.vision_tower.requires_grad_(False)
        embed, project = model.get_input_embeddings(), model.model.multi_modal_projector

        def step(features: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
            inputs = torch.cat([project(features), embed(ids)], dim=1)
            return model(inputs_embeds=inputs, logits_to_keep=ids.shape[1], use_cache=False).logits

        return model, step
    llm, _ = hf_loading.llm_config_from_hf(cfg.text_config.to_dict())
    vision = hf_loading.vision_config_from_hf(cfg.vision_config.to_dict())
    preset = model_config(kind, llm=llm, attn_impl=attn_impl)
    with torch.device(device):
        model = MLLM(preset, llm, vision).to(dtype)
    if state is not None:
        mapped = hf_loading.map_keys(state, hf_loading.llava_key_rules("llama"), hf_loading.LLM_SKIP, "peer")
        new = ["decoder." + n for n in model.decoder.new_parameter_names()]  # SAISA's MLPs: random
        hf_loading.load_strict(model, mapped, "the peer's weights", new)
    model.train()
    model.vision.requires_grad_(False)

    def step(features: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        saisa = {"visual_features": features} if preset.aligner == "mlp" else {}  # its layers read them
        return model(ids, visual_tokens=model.projector(features), **saisa).logits

    return model, step


def inputs(cfg, shape: Shape, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Vision features (B, Nv, d_vision) and text ids (B, Nt), random but fixed."""
    if device.type == "meta":
        return (torch.empty(shape.batch, shape.nv, cfg.vision_config.hidden_size, device=device, dtype=dtype),
                torch.zeros(shape.batch, shape.nt, device=device, dtype=torch.long))
    g = torch.Generator(device=device).manual_seed(0)
    features = torch.randn(shape.batch, shape.nv, cfg.vision_config.hidden_size, device=device, dtype=dtype,
                           generator=g)
    return features, torch.randint(0, cfg.text_config.vocab_size - 1, (shape.batch, shape.nt), device=device,
                                   generator=g)


def count_flops(kind: str, cfg, shape: Shape, dtype: torch.dtype) -> int | None:
    """FLOPs of one step (forward + backward), counted on the meta device, where SDPA runs its
    maths kernel, which FlopCounterMode counts (on the CPU it counts 0 for SDPA's kernels).
    None for the HF peer: its forward reads mask values, which the meta device does not have;
    it computes what eelight's `llava` does (equal losses), so the caller uses that count."""
    if kind == "hf":
        return None
    meta = torch.device("meta")
    model, step = build(kind, cfg, None, meta, dtype, "sdpa")
    features, ids = inputs(cfg, shape, meta, dtype)
    step(features, ids)  # warm-up outside the counter: builds the cached causal bias
    with FlopCounterMode(display=False) as counter:
        step(features, ids).float().mean().backward()
    return counter.get_total_flops()


def measure(kind: str, compiled: bool, shape: Shape, cfg, state, args, device, dtype) -> dict:
    row = {"model": kind, "compiled": compiled}
    model, step = build(kind, cfg, state, device, dtype, args.attn_impl)
    if compiled:
        (model.model.language_model if kind == "hf" else model.decoder).compile()
    features, ids = inputs(cfg, shape, device, dtype)

    def once() -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        loss = next_token_loss(step(features, ids), ids)
        loss.backward()
        return loss.detach()

    try:
        t0 = time.perf_counter()
        row["loss"] = float(once())  # also the compilation, when compiled
        sync(device)
        row["first_s"] = time.perf_counter() - t0
        times, peak = timed(once, device, args.warmup, args.reps)
        row["ms"] = 1e3 * statistics.median(times)
        row["peak_mib"] = None if peak is None else peak / 2**20
        if not compiled:
            row["flops"] = count_flops(kind, cfg, shape, dtype)
    except torch.OutOfMemoryError:
        row["ms"] = None
    return row


def measured(*args) -> dict:
    """`measure`, then its model freed before the next one is built."""
    row = measure(*args)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    torch._dynamo.reset()
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vicuna", action="store_true", help="Vicuna-7B layer shapes (default: the demo's)")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default: the model's)")
    parser.add_argument("--shapes", nargs="+", default=None, help="BxNvxNt (default: 32x64x64, or 1x576x64)")
    parser.add_argument("--models", nargs="+", default=["hf", "llava", "ee_mllm"])
    parser.add_argument("--no-compile", action="store_true", help="eager only")
    add_run_args(parser, warmup=1)
    args = parser.parse_args(argv)
    device, dtype = device_dtype(args)
    sizes = VICUNA if args.vicuna else DEMO
    layers = args.layers or sizes["num_hidden_layers"]
    shapes = [Shape.parse(s) for s in args.shapes or (["1x576x64"] if args.vicuna else ["32x64x64"])]
    cfg = hf_llava_config(sizes, layers, max(s.nv + s.nt for s in shapes))
    state = peer_state(cfg, dtype)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# training step (forward + backward): {layers} layers d={sizes['hidden_size']} "
          f"f={sizes['intermediate_size']} heads={sizes['num_attention_heads']}, {args.dtype}, {where}, "
          f"torch {torch.__version__}, median of {args.reps}")
    print("| shape | model | compiled | ms | time / llava eager | FLOPs / llava | TFLOP/s | first step s "
          "| peak MiB | loss |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for shape in shapes:
        rows = [measured(m, c, shape, cfg, state, args, device, dtype)
                for c in ([False] if args.no_compile else [False, True]) for m in args.models]
        flops = {r["model"]: r["flops"] for r in rows if r.get("flops")}
        if "llava" in flops:  # the peer's count (see count_flops)
            flops["hf"] = flops["llava"]
        ref = next((r for r in rows if r["model"] == "llava" and not r["compiled"]), rows[0])
        for r in rows:
            f = flops.get(r["model"])
            if r["ms"] is None:
                print(f"| {shape} | {r['model']} | {r['compiled']} | OOM | | | | | | |")
                continue
            ratio = "–" if not ref.get("ms") else f"{r['ms'] / ref['ms']:.3f}"
            fr = "–" if f is None or ref["model"] not in flops else f"{f / flops[ref['model']]:.3f}"
            tflops = "–" if f is None else f"{f / r['ms'] / 1e9:.2f}"
            peak = "–" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
            print(f"| {shape} | {r['model']} | {r['compiled']} | {r['ms']:.1f} | {ratio} | {fr} | {tflops} "
                  f"| {r['first_s']:.1f} | {peak} | {r['loss']:.5f} |", flush=True)


if __name__ == "__main__":
    main()
