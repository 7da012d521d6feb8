"""`eelight backbones --seed`: another seed is another pair of pretrained backbones, and the seed
is part of what the cache is reused for."""

import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file


def _build(probe_env, out, *extra):
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run([sys.executable, "-m", "eelight.cli", "backbones", "--probe", str(probe_env["root"] / "probe"),
                           "--out", str(out), "--lm-steps", "2", "--clip-steps", "2", *extra],
                          capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_another_seed_is_other_weights_and_the_cache_keeps_the_seed(probe_env, tmp_path):
    for out, seed in ((tmp_path / "s0", []), (tmp_path / "s1", ["--seed", "1"])):
        ran = _build(probe_env, out, *seed)
        assert ran.returncode == 0, ran.stderr[-3000:]
    for part in ("llm", "vision"):
        a, b = (load_file(tmp_path / s / part / "model.safetensors") for s in ("s0", "s1"))
        assert a.keys() == b.keys() and any(not a[k].equal(b[k]) for k in a), part
    assert json.loads((tmp_path / "s1" / "backbones.json").read_text())["settings"]["config"]["seed"] == 1
    again = _build(probe_env, tmp_path / "s1", "--seed", "1")
    assert again.returncode == 0 and "[backbones] reusing" in again.stdout + again.stderr
    other = _build(probe_env, tmp_path / "s1", "--seed", "2")  # not the cached seed: trained again
    assert other.returncode == 0 and "reusing" not in other.stdout + other.stderr
    assert json.loads((tmp_path / "s1" / "backbones.json").read_text())["settings"]["config"]["seed"] == 2
