"""Where a sweep keeps things: its Optuna study's storage (SQLite under `out_dir/<name>/` by
default, an RDB URL, or `journal:PATH`), the pruner it names, and the MLflow store its runs go to.
Below `runner` and `trial` (both use it), so the sweep modules import in one direction."""

from __future__ import annotations

import warnings
from pathlib import Path

from eelight.errors import ConfigError
from eelight.sweeps.config import SweepConfig
from eelight.tracking import Tracking

HEARTBEAT_S, GRACE_S = 2, 8
# Every process that opens a study's storage (worker, report, export) builds it with heartbeats,
# which Optuna calls experimental; the runner sends them itself around ask/tell, which Optuna warns about.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
warnings.filterwarnings("ignore", message=".*failed_trial_callback.*")
warnings.filterwarnings("ignore", message=".*heartbeat_interval.*")
_TRACKING: dict[tuple, tuple[str, str | None]] = {}


def sweep_tracking(sweep: SweepConfig) -> Tracking:
    """The MLflow store of the sweep's base experiment; its URI is resolved once per process
    (it was rebuilt from the run config on every call)."""
    from eelight.tracking import tracking_uri
    from eelight.training.config import load_run_config

    key = (tuple(sweep.experiment), tuple(sweep.overrides))
    if key not in _TRACKING:
        _TRACKING[key] = tracking_uri(load_run_config(sweep.experiment, sweep.overrides))
    return Tracking(*_TRACKING[key])


def storage_url(sweep: SweepConfig) -> str:
    """The study's storage: `sweep.storage` (an RDB URL, or `journal:PATH` for Optuna's
    JournalStorage on a file), else a SQLite file under out_dir/<name>/."""
    if sweep.storage:
        return sweep.storage
    folder = Path(sweep.out_dir, sweep.name).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder}/study.db"


JOURNAL = "journal:"


def make_storage(sweep: SweepConfig, failed_trial_callback=None):
    """An Optuna storage object for the sweep (`open_storage` of its `storage_url`)."""
    return open_storage(storage_url(sweep), failed_trial_callback)


def open_storage(url: str, failed_trial_callback=None):
    """An Optuna storage object. `journal:PATH`: JournalStorage on a file (no database server;
    file locks, so it works on a shared filesystem where SQLite does not). Optuna gives
    JournalStorage no heartbeats: a killed worker's trial stays RUNNING and is not retried (use
    an RDB storage where workers get preempted)."""
    from optuna.storages import RDBStorage

    if url.startswith(JOURNAL):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = Path(url.removeprefix(JOURNAL)).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    # A server that does not answer must fail in seconds, not after the TCP timeout.
    engine = {"connect_args": {"connect_timeout": 5}} if url.startswith(("postgresql", "mysql")) else {}
    try:
        return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                          failed_trial_callback=failed_trial_callback)
    except ImportError as exn:
        raise ConfigError(f"storage {url}: its database driver is not installed ({exn}); for PostgreSQL: "
                          "pip install 'eelight[postgres]'") from exn
    except Exception as exn:  # SQLAlchemy's OperationalError / ArgumentError: the URL or the server
        if type(exn).__module__.split(".")[0] != "sqlalchemy":
            raise
        reason = str(getattr(exn, "orig", None) or exn).strip().splitlines()[0]
        raise ConfigError(f"storage {url}: cannot open the study's database ({reason}); start its "
                          "database server or fix the sweep file's `storage:` URL") from exn


def has_heartbeat(storage) -> bool:
    from optuna.storages._heartbeat import BaseHeartbeat

    return isinstance(storage, BaseHeartbeat)


def make_pruner(kind: str):
    """The Optuna pruner a sweep file's `pruner:` names (the pruner is not stored with the study:
    every process that prunes builds its own)."""
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=2) if kind == "median" else optuna.pruners.NopPruner()
