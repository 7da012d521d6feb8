"""FlexAttention (`model.attn_impl=flex`) against SDPA, side by side in one run: the attention
call alone at the shapes the variants produce, then the decoder prefill of each preset with the
same weights, the backend switched in place.

    .venv/bin/python benchmarks/flex_attention.py                     # CPU, Vicuna-7B shapes
    .venv/bin/python benchmarks/flex_attention.py --device cuda --dtype bfloat16

Inference only: on CPU torch's FlexAttention has no backward. The first flex call at each shape
compiles its kernel (reported as `compile s`); the timed passes come after the warm-ups.
"""

from __future__ import annotations

import statistics
import time

import torch
from prefill import _pass
from timing import layer_bench, timed

from eelight.models import LLMConfig
from eelight.models.attention import attend


def shapes(nv: int, nt: int) -> list[tuple[str, int, int, bool]]:
    """(name, query rows, key rows, dense mask?): EE-MLLM's text rows over [I; T]; LLaVA's
    causal rows; AKI's, where image rows read the question (a dense mask)."""
    n = nv + nt
    return [("EE-MLLM text over [I; T]", nt, n, False), ("LLaVA causal", n, n, False), ("AKI dense mask", n, n, True)]


def _aki_mask(nv: int, n: int, question: int, device) -> torch.Tensor:
    causal = torch.ones(n, n, dtype=torch.bool, device=device).tril()
    causal[:nv, nv:nv + question] = True  # image rows read the question
    return causal[None, None]


def _time_call(args, device, q, k, v, mask) -> dict:
    """One attention call with each backend: median ms, the first call's seconds, the max diff."""
    row = {}
    with torch.inference_mode():
        for impl in ("sdpa", "flex"):
            start = time.perf_counter()
            row[f"out_{impl}"] = attend(q, k, v, mask, impl)
            row[f"first_{impl}"] = time.perf_counter() - start
            times, _ = timed(lambda impl=impl: attend(q, k, v, mask, impl), device, args.warmup, args.reps)
            row[impl] = 1e3 * statistics.median(times)
    row["diff"] = float((row.pop("out_flex") - row.pop("out_sdpa")).abs().max())
    return row


def attention_rows(args, device, dtype) -> list[dict]:
    rows = []
    hd = args.hidden // args.heads
    for name, lq, lk, dense in shapes(args.nv, args.nt):
        q = torch.randn(args.batch, lq, args.heads, hd, device=device, dtype=dtype)
        k, v = (torch.randn(args.batch, lk, args.heads, hd, device=device, dtype=dtype) for _ in "kv")
        mask = _aki_mask(lk - args.nt, lk, args.nt // 2, device) if dense else None
        rows.append({"name": name, **_time_call(args, device, q, k, v, mask)})
    return rows


def _set_impl(decoder, impl: str) -> None:
    for module in decoder.modules():
        if hasattr(module, "attn_impl"):
            module.attn_impl = impl


def prefill_rows(args, llm: LLMConfig, device, dtype) -> list[dict]:
    rows = []
    for preset in args.presets:
        torch.manual_seed(0)
        prefill = _pass(preset, llm, args, device, dtype, "sdpa")
        row = {"name": preset}
        with torch.inference_mode():
            for impl in ("sdpa", "flex"):
                _set_impl(prefill.decoder, impl)
                times, _ = timed(prefill, device, args.warmup, args.reps)
                row[impl], row[f"out_{impl}"] = 1e3 * statistics.median(times), prefill()
        row["diff"] = float((row.pop("out_flex") - row.pop("out_sdpa")).abs().max())
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    args, device, dtype, llm, where = layer_bench(__doc__, ["llava", "ee_mllm", "vica", "aki"], argv)
    print(f"# flex vs sdpa: d={args.hidden} heads={args.heads} Nv={args.nv} Nt={args.nt} batch={args.batch}, "
          f"{args.dtype}, {where}, torch {torch.__version__}, median of {args.reps}")
    print("| attention call | SDPA ms | flex ms | flex / SDPA | flex compile s | max abs diff |")
    print("|---|---|---|---|---|---|")
    for r in attention_rows(args, device, dtype):
        print(f"| {r['name']} | {r['sdpa']:.1f} | {r['flex']:.1f} | {r['flex'] / r['sdpa']:.2f} "
              f"| {r['first_flex']:.1f} | {r['diff']:.1e} |")
    print(f"| prefill, {args.layers} layers | SDPA ms | flex ms | flex / SDPA | | max abs diff |")
    print("|---|---|---|---|---|---|")
    for r in prefill_rows(args, llm, device, dtype):
        print(f"| `{r['name']}` | {r['sdpa']:.0f} | {r['flex']:.0f} | {r['flex'] / r['sdpa']:.2f} | | {r['diff']:.1e} |")


if __name__ == "__main__":
    main()
