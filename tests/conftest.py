import os
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import settings

# Property-based tests: 200 examples each in `make test`, the same ones every run (derandomized:
# CI never meets an example no one has seen); `pytest --hypothesis-profile=long`: 2,000 new ones.
settings.register_profile("default", max_examples=200, deadline=None, derandomize=True)
settings.register_profile("long", max_examples=2000, deadline=None)
settings.load_profile("default")

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).parent))

from helpers import save_llama, save_llava  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> Path:
    return save_llama(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="session")
def llava_dir(tmp_path_factory) -> Path:
    return save_llava(tmp_path_factory.mktemp("llava"))


@pytest.fixture(scope="session")
def probe_env(tmp_path_factory):
    """A small probe, tiny pretrained backbones, and the overrides that point a run at them."""
    from eelight.data.probe import build_probe
    from eelight.training.backbones import BackboneConfig, build_backbones

    root = tmp_path_factory.mktemp("probe_env")
    # The attribute family alone: short test runs learn it (the seven-family mixture needs the
    # study's budget; tests/test_probe_families.py covers every family's generator).
    build_probe(str(root / "probe"), n_train=600, n_eval=60, seed=0, shard_size=150, families=["attribute"])
    cfg = BackboneConfig(width=64, layers=2, heads=2, lm_steps=150, clip_steps=200, max_samples=600)
    paths = build_backbones(root / "probe", root / "backbones", cfg)
    overrides = [
        f"model.llm.path={paths['llm']}", f"model.vision.path={paths['vision']}",
        f"data.tokenizer={paths['tokenizer']}",
        f"data.train_shards={root}/probe/train-{{000000..000003}}.tar",
        f"data.val_shards={root}/probe/eval-attribute-000000.tar",
        f"out_dir={root}/runs", f"mlflow.tracking_uri=sqlite:///{root}/mlflow.db",
        "data.batch_size=32", "data.val_samples=40", "data.shuffle=200",
    ]
    return {"root": root, "overrides": overrides}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def servers():
    """`eelight services` on free ports in a temp folder: a real PostgreSQL (the study storage)
    and an MLflow server backed by it; one pair per test module, stopped after it."""
    import shutil
    import tempfile

    from eelight import services

    try:
        services._pg_bin("initdb")
    except Exception:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed: .ci/run installs Debian's postgresql")
        pytest.skip("PostgreSQL not installed (apt-get install postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="eelight-services-"))  # /tmp: the postgres user can reach it
    svc = services.start(folder, free_port(), free_port())
    yield svc
    services.stop(folder)
    shutil.rmtree(folder, ignore_errors=True)
