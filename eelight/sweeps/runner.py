"""Running a sweep: an Optuna study in an RDB (SQLite by default, PostgreSQL by URL).

- Every grid point is enqueued once (under a file lock for a local SQLite study), then any
  number of workers (processes or machines) pop WAITING trials: Optuna pops atomically, so
  no grid point runs twice; if two enqueues ever raced, only the lowest-numbered copy runs.
- Trials send heartbeats. A killed worker's RUNNING trial goes stale, is marked FAIL, and
  `RetryFailedTrialCallback` enqueues its grid point again; a rerun of the same command
  (`load_if_exists`) finishes the study. Finished trials are never rerun.
- MLflow: one parent run per study; one nested run per trial (resolved config as params,
  both stages' per-step metrics prefixed `align-` / `instruct-`, the checkpoint path, the
  trial's state); the study's best value and params on the parent.
"""

from __future__ import annotations

import fcntl
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from eelight.errors import ConfigError
from eelight.sweeps.config import SweepConfig, data_fingerprint, point_key
from eelight.sweeps.storage import (
    GRACE_S,
    HEARTBEAT_S,
    has_heartbeat,
    make_pruner,
    make_storage,
    sweep_tracking,
)
from eelight.tracking import runs_url


@contextmanager
def _setup_lock(sweep: SweepConfig):
    path = Path(sweep.out_dir, sweep.name, ".setup.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


class _StaleTrial:
    """A trial whose worker died (its heartbeat went stale): Optuna marks it FAIL and the retry
    callback queues its point again; its MLflow run, which nobody will end, is marked FAILED
    with the reason, so the UI does not show a killed trial as RUNNING or FINISHED."""

    def __init__(self, sweep: SweepConfig, retry) -> None:
        self.sweep, self.retry = sweep, retry

    def __call__(self, study, trial) -> None:
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            sweep_tracking(self.sweep).end_trial_run(
                run_id, "FAIL", error=f"the worker running trial {trial.number} stopped (no heartbeat for "
                                      f"{GRACE_S} s: killed, preempted or crashed); its point is run again")
        self.retry(study, trial)


def open_study(sweep: SweepConfig):
    """Create or load the study; enqueue the grid points it does not have yet."""
    import optuna
    from optuna.exceptions import ExperimentalWarning
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    sampler = optuna.samplers.TPESampler(seed=0) if sweep.sampler == "tpe" else optuna.samplers.RandomSampler(seed=0)
    pruner = make_pruner(sweep.pruner)
    with _setup_lock(sweep), warnings.catch_warnings():  # the schema (Optuna's, MLflow's) races between workers
        # Optuna 4.9+ names the retry of a stale trial RetryHeartbeatStaleTrialCallback (still "experimental")
        warnings.simplefilter("ignore", ExperimentalWarning)
        storage = make_storage(sweep, _StaleTrial(sweep, RetryHeartbeatStaleTrialCallback(max_retry=3)))
        study = optuna.create_study(study_name=sweep.name, storage=storage, sampler=sampler, pruner=pruner,
                                    direction=sweep.objective.direction, load_if_exists=True)
        _check_same_data(sweep, study)
        have = {t.user_attrs.get("grid_point") for t in study.get_trials(deepcopy=False)}
        for point in sweep.grid_points():
            if point_key(point) not in have:
                params = {k: v for k, v in point.items() if k != "repeat"}
                study.enqueue_trial(params, user_attrs={"grid_point": point_key(point), "point": point})
        if "mlflow_parent_run_id" not in study.user_attrs:
            study.set_user_attr("mlflow_parent_run_id", _create_parent_run(sweep))
    return study


def _check_same_data(sweep: SweepConfig, study) -> None:
    """A study resumed on other training data would mix (or, when finished, silently report)
    trials of the old data: refuse, in one line. A study without a fingerprint takes this one."""
    fingerprint = data_fingerprint(sweep)
    recorded = study.user_attrs.get("data_fingerprint")
    if recorded is not None and fingerprint is not None and recorded != fingerprint:
        raise ConfigError(f"sweep {sweep.name!r}: its study ran on other training data (the probe.json / "
                          "index.json beside the shards changed since); to start a new study move "
                          f"{sweep.out_dir}/{sweep.name} away or pass --out-dir (with `storage:`, a new sweep name)")
    if recorded is None and fingerprint is not None:
        study.set_user_attr("data_fingerprint", fingerprint)


def _create_parent_run(sweep: SweepConfig) -> str:
    """The study's MLflow run (in the experiment named after the sweep), created once per study:
    its id is kept in the study's user attributes, so every worker nests its trials under it."""
    tracking = sweep_tracking(sweep)
    run_id = tracking.start_run(sweep.name, f"{sweep.name}-study", tags={"sweep": sweep.name, "sweep.role": "study"})
    tracking.log_params(run_id, {"objective": sweep.objective.metric, "grid_points": len(sweep.grid_points())})
    return run_id


class _Heartbeat:
    """Records the trial's heartbeat while it trains, so a killed worker's trial goes stale."""

    def __init__(self, storage, trial_id: int) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, args=(storage, trial_id), daemon=True)

    def _beat(self, storage, trial_id: int) -> None:
        while not self.stop.is_set():
            storage.record_heartbeat(trial_id)
            self.stop.wait(HEARTBEAT_S)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


class WorkerStopped(BaseException):
    """SIGTERM / SIGINT reached a sweep worker mid-trial. A BaseException, so that the trial's own
    `except Exception` (a failed trial is recorded and the sweep goes on) does not swallow it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def _stop_on_signals():
    """While a trial runs: SIGTERM / SIGINT raise `WorkerStopped` (Lightning, which takes SIGTERM
    over during `fit`, calls the handler it found: this one)."""
    def handler(signum, frame):
        raise WorkerStopped(signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _fail_stopped_trial(study, trial, sweep: SweepConfig, stop: WorkerStopped) -> None:
    """The stopped worker's trial is FAIL at once (not when its heartbeat goes stale), its MLflow
    run FAILED with the signal named, and its grid point queued again for the next worker."""
    from optuna.trial import TrialState

    reason = f"the worker running trial {trial.number} was stopped by {stop}; its point is run again"
    trial.set_user_attr("error", reason)
    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id:
        sweep_tracking(sweep).end_trial_run(run_id, "FAIL", error=reason)
    point = trial.user_attrs.get("point")
    if point is not None:
        study.enqueue_trial({k: v for k, v in point.items() if k != "repeat"},
                            user_attrs={"grid_point": trial.user_attrs["grid_point"], "point": point})
    study.tell(trial, state=TrialState.FAIL)


def _duplicate(study, trial) -> bool:
    """Another trial of the same grid point with a lower number already ran or runs."""
    from optuna.trial import TrialState

    live = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED, TrialState.WAITING)
    key = trial.user_attrs.get("grid_point")
    return any(t.user_attrs.get("grid_point") == key and t.number < trial.number
               for t in study.get_trials(deepcopy=False, states=live))


def run_worker(sweep: SweepConfig, max_trials: int | None = None) -> dict[str, Any]:
    """Pop and run trials until the grid is done (or max_trials ran in this worker)."""
    import optuna
    from optuna.trial import TrialState

    from eelight.sweeps.inputs import check_inputs, stage_configs
    from eelight.sweeps.trial import run_trial
    from eelight.training.distributed import check_devices

    check_inputs(sweep, ", so no trial was started")  # before the study exists: nothing is left behind
    for _, cfg in stage_configs(sweep):  # here, not in --check: a login node has no GPU
        check_devices(cfg.trainer)
    study = open_study(sweep)
    parent = study.user_attrs["mlflow_parent_run_id"]
    heartbeat = has_heartbeat(study._storage)
    ran = 0
    while max_trials is None or ran < max_trials:
        if heartbeat:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if not waiting:
            # Without heartbeats a RUNNING trial may belong to a dead worker: never wait for it.
            if heartbeat and study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                time.sleep(HEARTBEAT_S)  # another worker's trial, or a stale one about to be retried
                continue
            break
        try:
            trial = study.ask()
        except KeyError:  # SQLite: the WAITING trial was taken by another worker mid-read; try again
            time.sleep(0.2)
            continue
        if heartbeat:  # the first heartbeat at once: a RUNNING trial without one can never go stale
            study._storage.record_heartbeat(trial._trial_id)
        if "grid_point" not in trial.user_attrs or _duplicate(study, trial):
            study.tell(trial, state=TrialState.FAIL)  # raced for the last point: nothing to run
            continue
        ran += 1
        start = time.perf_counter()
        try:
            with _Heartbeat(study._storage, trial._trial_id) if heartbeat else nullcontext(), _stop_on_signals():
                state, value = run_trial(study, trial, sweep, parent)
        except WorkerStopped as stop:
            _fail_stopped_trial(study, trial, sweep, stop)
            raise
        study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
        print(progress_line(study, sweep, trial.number, state.name, value, time.perf_counter() - start),
              file=sys.stderr, flush=True)
    tracking = sweep_tracking(sweep)
    _summarise(study, tracking, parent)
    # The runs table sorted best first:
    url = runs_url(tracking.uri, tracking.experiment(sweep.name), ascending=sweep.objective.direction == "minimize")
    served = "" if tracking.uri.startswith("http") else " (a local store: `make mlflow-ui` serves it)"
    print(f"[sweep {sweep.name}] trials in MLflow{served}: {url}", file=sys.stderr, flush=True)
    return {"study": sweep.name, "ran": ran, "trials": len(study.trials), "mlflow_ui": url}


def progress_line(study, sweep: SweepConfig, number: int, state: str, value: float | None, seconds: float) -> str:
    """One line per finished trial: what it was, its objective, the best so far, how far along."""
    from optuna.trial import TrialState

    from eelight.sweeps.trial import trial_label

    trials = study.get_trials(deepcopy=False)
    point = next((t.user_attrs.get("point", {}) for t in trials if t.number == number), {})
    done = [t for t in trials if t.state == TrialState.COMPLETE and "grid_point" in t.user_attrs]
    metric = sweep.objective.metric
    line = f"[sweep {sweep.name}] {trial_label(point, number)}: {state}"
    line += f" {metric}={value:.4f}" if value is not None else ""
    line += f" in {seconds:.0f} s"
    error = next((t.user_attrs.get("error") for t in trials if t.number == number), None)
    if state == "FAIL" and error:
        line += f" ({error.splitlines()[0][:300]})"
    if done:
        pick = max if sweep.objective.direction == "maximize" else min
        best = pick(done, key=lambda t: t.value)
        line += f"; best {best.value:.4f} ({trial_label(best.user_attrs.get('point', {}), best.number)})"
    return line + f"; {len({t.user_attrs['grid_point'] for t in done})}/{len(sweep.grid_points())} points done"


def _summarise(study, tracking, parent: str) -> None:
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if done:
        best = study.best_trial
        tracking.log_metrics(parent, {"best_value": best.value})
        tracking.set_tags(parent, {"best_trial": best.number, **{f"best.{k}": v for k, v in best.params.items()}})
    counts = {s.name: len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
    tracking.set_tags(parent, {f"trials.{state.lower()}": n for state, n in counts.items()})
    if not counts["WAITING"] and not counts["RUNNING"]:
        tracking.finish(parent)  # the grid is done
