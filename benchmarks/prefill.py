"""Prefill wall-clock of the decoder layers, EE-MLLM vs LLaVA (and EE-MLLM + visual FFN,
Flamingo), side by side in one run, each next to the FLOPs its forward counts, so that the
measured speed-up can be set against the FLOP ratio (docs/DESIGN.md §1: 0.318 at these shapes).

Default: 2 decoder layers at Vicuna-7B shapes (d=4096, f=11008, 32 heads), Nv=576 visual
+ Nt=64 text tokens, batch 1, float32 on the CPU. The paper's figure (79 ms EE-MLLM vs
277 ms LLaVA, 32 layers, H800) is the GPU setting:

    .venv/bin/python benchmarks/prefill.py                       # CPU, 2 layers
    .venv/bin/python benchmarks/prefill.py --device cuda --dtype bfloat16 --layers 32

Only the layers are timed (no vision tower, embedding or LM head: all variants pay those
alike); weights are random (speed does not depend on their values). Peak memory is
reported on CUDA (allocated during the pass, above the weights).
"""

from __future__ import annotations

import gc
import statistics

import torch
from timing import layer_bench, timed
from torch.utils.flop_counter import FlopCounterMode

from eelight.models import LLMConfig, model_config
from eelight.models.decoder import Decoder

VISION_WIDTH = 1024  # CLIP ViT-L/14's features, what SAISA's per-layer MLPs read
# Rows that are a preset with overrides: ShortV with half the layers' visual rows frozen (its
# calibration froze 19 of 32 at 7B), the layers after the first half.
VARIANTS = {"shortv": ("llava", {"kv_only_layers": "second_half"})}


def variant_config(name: str, llm: LLMConfig, attn_impl: str):
    preset, kw = VARIANTS.get(name, (name, {}))
    if kw.get("kv_only_layers") == "second_half":
        kw = {**kw, "kv_only_layers": ",".join(str(i) for i in range(llm.num_layers // 2, llm.num_layers))}
    return model_config(preset, llm=llm, attn_impl=attn_impl, **kw)


def _pass(preset: str, llm: LLMConfig, args, device: torch.device, dtype: torch.dtype, attn_impl: str):
    """A decoder with random weights on `device` and a function running its layers once."""
    cfg = variant_config(preset, llm, attn_impl)
    with torch.device(device):
        decoder = Decoder(llm, cfg, VISION_WIDTH).to(dtype).eval()
        flamingo = cfg.arch == "flamingo"
        nv = 0 if flamingo else args.nv  # Flamingo's LLM rows are text only; it cross-attends to the image
        h = torch.randn(args.batch, nv + args.nt, llm.hidden_size, dtype=dtype)
        visual = torch.randn(args.batch, args.nv, llm.hidden_size, dtype=dtype) if flamingo else None
        positions = torch.arange(nv + args.nt).expand(args.batch, -1)
        features = torch.randn(args.batch, nv, VISION_WIDTH, dtype=dtype) if cfg.aligner == "mlp" else None

    def prefill() -> torch.Tensor:  # every layer's rule, FastV's pruning included
        return decoder.run_layers(h, nv, positions, visual=visual, features=features)[-1][0]

    prefill.decoder = decoder  # for a benchmark that switches the backend in place (flex_attention.py)
    return prefill


def count_flops(preset: str, llm: LLMConfig, args, dtype: torch.dtype) -> int:
    """FLOPs of one pass, counted on the meta device: there SDPA runs its maths kernel, which
    FlopCounterMode counts (the CPU flash kernel it uses for real tensors is not counted);
    flash-attn does the same maths, so the count holds for every attn_impl."""
    prefill = _pass(preset, llm, args, torch.device("meta"), dtype, "sdpa")
    prefill()  # warm-up outside the counter: builds the cached causal bias
    with FlopCounterMode(display=False) as counter:
        prefill()
    return counter.get_total_flops()


def measure(preset: str, llm: LLMConfig, args, device: torch.device, dtype: torch.dtype) -> dict:
    torch.manual_seed(0)
    prefill = _pass(preset, llm, args, device, dtype, args.attn_impl)
    with torch.inference_mode():
        times, peak = timed(prefill, device, args.warmup, args.reps)
    del prefill
    gc.collect()
    return {"preset": preset, "flops": count_flops(preset, llm, args, dtype), "ms": 1e3 * statistics.median(times),
            "spread": 1e3 * (max(times) - min(times)), "peak_mib": None if peak is None else peak / 2**20}


def main(argv: list[str] | None = None) -> None:
    args, device, dtype, llm, where = layer_bench(__doc__, ["llava", "ee_mllm", "ee_mllm_f", "flamingo"], argv)
    print(f"# prefill: {args.layers} layers d={args.hidden} f={args.ffn} heads={args.heads}, Nv={args.nv} "
          f"Nt={args.nt} batch={args.batch}, {args.dtype}, {where}, torch {torch.__version__}, "
          f"median of {args.reps}")
    rows = [measure(p, llm, args, device, dtype) for p in args.presets]
    ref = next((r for r in rows if r["preset"] == "llava"), rows[0])
    print(f"| preset | GFLOPs | ms | spread ms | time / {ref['preset']} | FLOPs / {ref['preset']} | GFLOP/s "
          "| peak MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        peak = "–" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        print(f"| {r['preset']} | {r['flops'] / 1e9:.1f} | {r['ms']:.1f} | {r['spread']:.1f} "
              f"| {r['ms'] / ref['ms']:.3f} | {r['flops'] / ref['flops']:.3f} "
              f"| {r['flops'] / 1e6 / r['ms']:.0f} | {peak} |")


if __name__ == "__main__":
    main()
