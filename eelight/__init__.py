"""eelight: a PyTorch Lightning experiment platform for EE-MLLM and its controlled variants."""

import os

__version__ = "0.1.0"

# Large CPU tensors on transparent huge pages (PyTorch's own switch, read when it first allocates
# one): a training step allocates its weight gradients afresh, and at Vicuna-7B shapes on this
# project's CPU the page faults of the embedding's dense 32000 x 4096 gradient alone took 0.6-0.8 s
# of EE-MLLM's 5 s step (BENCHMARKS.md, "Training step"). Set THP_MEM_ALLOC_ENABLE=0 to opt out.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def load(folder):
    """Rebuild a model exported with `eelight export` (see eelight/export.py)."""
    from eelight.export import load as _load

    return _load(folder)
