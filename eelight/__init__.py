"""eelight: a PyTorch Lightning experiment platform for EE-MLLM and its controlled variants."""

__version__ = "0.1.0"
