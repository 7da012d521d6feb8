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
    parser.add_argument("--attn-impl", default="auto", help="model.attn_impl: auto / sdpa / flash")


def device_dtype(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    return torch.device(args.device), getattr(torch, args.dtype)
