"""eelight: a PyTorch Lightning experiment platform for EE-MLLM and its controlled variants."""

__version__ = "0.1.0"


def load(folder):
    """Rebuild a model exported with `eelight export` (see eelight/export.py)."""
    from eelight.export import load as _load

    return _load(folder)
