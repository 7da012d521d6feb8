"""Timing shared by the benchmark scripts: a function's wall-clock over repetitions after
warm-ups, synchronised on CUDA, with the peak memory it allocated above what was there."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, warmup: int, reps: int) -> tuple[list[float], int | None]:
    """(seconds of each of `reps` calls after `warmup` calls, peak bytes allocated above the
    memory in use before them: CUDA only, else None)."""
    for _ in range(warmup):
        fn()
    sync(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device) if cuda else 0
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times, (torch.cuda.max_memory_allocated(device) - base) if cuda else None


def add_run_args(parser: argparse.ArgumentParser, warmup: int) -> None:
    """The flags every timing script takes: repetitions, warm-ups, device, dtype, attention."""
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--attn-impl", default="auto", help="model.attn_impl: auto / sdpa / flash / flex")


def add_layer_args(parser: argparse.ArgumentParser) -> None:
    """Decoder-layer shapes (default: 2 layers at Vicuna-7B's) and the tokens of one pass."""
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--ffn", type=int, default=11008)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--nv", type=int, default=576, help="visual tokens (576: CLIP ViT-L/14 at 336 px)")
    parser.add_argument("--nt", type=int, default=64, help="text tokens")
    parser.add_argument("--batch", type=int, default=1)


def layer_llm(args: argparse.Namespace):
    """The LLM of `add_layer_args`' shapes (random weights; the vocabulary is not timed)."""
    from eelight.models import LLMConfig

    return LLMConfig(vocab_size=32, hidden_size=args.hidden, intermediate_size=args.ffn, num_layers=args.layers,
                     num_heads=args.heads, num_kv_heads=args.heads, max_positions=args.nv + args.nt)


def layer_bench(doc: str, presets: list[str], argv: list[str] | None):
    """A decoder-layer benchmark's command line: (args, device, dtype, llm, where it runs)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=presets)
    add_layer_args(parser)
    add_run_args(parser, warmup=2)
    args = parser.parse_args(argv)
    device, dtype = device_dtype(args)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    return args, device, dtype, layer_llm(args), where


def device_dtype(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    return torch.device(args.device), getattr(torch, args.dtype)
