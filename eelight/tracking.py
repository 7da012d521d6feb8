"""Every MLflow call eelight makes: where runs go, runs and their nesting, states, params,
metrics and artifacts (docs/DESIGN.md §5; the model registry: `mlflow_pyfunc.register_model`).

- `tracking_uri(cfg)`: the store of a run config (a SQLite file under ./mlruns by default);
- `Tracking`: one store's client: experiments, runs nested by the `mlflow.parentRunId` tag
  (so nesting never depends on one process), params in batches, a run's end state;
- `lightning_logger(cfg)`: Lightning's `MLFlowLogger` for a training stage (a sweep trial's
  stages log into the trial's run, which only the trial ends);

A sweep trial's run ends in the state Optuna gives the trial: COMPLETE -> FINISHED, PRUNED ->
KILLED, FAIL -> FAILED (with the reason), also when its worker died (`runner._StaleTrial`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from eelight.errors import ConfigError

RUN_STATE = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}  # Optuna trial -> MLflow run
EXPERIMENT_KIND = "mlflow.experimentKind"  # read by MLflow's UI to pick the experiment's default view
EXPERIMENT_TAGS = {EXPERIMENT_KIND: "custom_model_development"}


def tracking_uri(cfg) -> tuple[str, str | None]:
    """(tracking URI, artifact location) of a RunConfig: by default a SQLite store under
    ./mlruns/ with its artifacts in ./mlruns/artifacts/; for any SQLite store, artifacts sit
    beside it; a tracking server decides for itself."""
    uri = cfg.mlflow.tracking_uri
    if uri and uri.startswith("file:") or (uri and "://" not in uri):
        raise ConfigError(f"mlflow.tracking_uri={uri}: MLflow's file store is off in MLflow 3; use a SQLite "
                          "store (sqlite:////abs/path/mlflow.db) or a server (http://host:port)")
    if uri and uri.startswith("sqlite:///"):
        return uri, (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
    if uri:
        return uri, None
    root = Path("mlruns").resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root}/mlflow.db", (root / "artifacts").as_uri()


_ANSWERED: set[str] = set()
UI_PORT = 5000  # `make mlflow-ui`'s default port


def runs_url(uri: str, experiment_id: str, order_by: str | None = "objective", ascending: bool = False) -> str:
    """The experiment's runs table in MLflow's UI, in its model-training view (MLflow 3 opens the
    GenAI view otherwise), sorted by the metric `order_by`. The server is the
    tracking URI itself when it is one, else the address `make mlflow-ui` serves a local store on."""
    from urllib.parse import quote

    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else f"http://127.0.0.1:{UI_PORT}"
    query = "workflowType=machine_learning"
    if order_by:
        query += f"&orderByKey={quote(f'metrics.`{order_by}`')}&orderByAsc={str(ascending).lower()}"
    return f"{base}/#/experiments/{experiment_id}/runs?{query}"


def check_server(uri: str, timeout_s: float = 5.0) -> None:
    """An http(s) tracking URI must answer MLflow's /health within seconds (MLflow's own client
    retries for minutes before it gives up); checked once per process and URI."""
    if not uri.startswith(("http://", "https://")) or uri in _ANSWERED:
        return
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as reply:
            reply.read()
    except (urllib.error.URLError, OSError) as exn:
        reason = getattr(exn, "reason", exn)
        raise ConfigError(f"mlflow.tracking_uri={uri}: no MLflow server answers there ({reason}); start one "
                          "(make mlflow-ui starts the local store's) or fix the URI") from exn
    _ANSWERED.add(uri)


class Tracking:
    """One MLflow store."""

    def __init__(self, uri: str, artifacts: str | None = None) -> None:
        import mlflow

        check_server(uri)
        self.uri, self.artifacts = uri, artifacts
        self.client = mlflow.MlflowClient(tracking_uri=uri)

    @classmethod
    def of(cls, cfg) -> Tracking:
        """The store of a RunConfig."""
        return cls(*tracking_uri(cfg))

    def experiment(self, name: str) -> str:
        """The id of the experiment `name`, created (with this store's artifact location) if new,
        and marked a model-training experiment so that MLflow's UI opens it on the runs table
        (MLflow 3 opens an unmarked experiment in its GenAI view, an empty traces overview)."""
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            return self.client.create_experiment(name, artifact_location=self.artifacts, tags=EXPERIMENT_TAGS)
        if exp.tags.get(EXPERIMENT_KIND) is None:  # made by an older eelight or by hand
            self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND, EXPERIMENT_TAGS[EXPERIMENT_KIND])
        return exp.experiment_id

    def start_run(self, experiment: str, name: str, tags: dict[str, str] | None = None,
                  parent: str | None = None) -> str:
        """A new run in `experiment` (by name), nested under `parent` when given; its id."""
        tags = {**(tags or {}), **({"mlflow.parentRunId": parent} if parent else {})}
        return self.client.create_run(self.experiment(experiment), run_name=name, tags=tags).info.run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params a call
            self.client.log_batch(run_id, params=items[i:i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            self.client.log_metric(run_id, key, value, step=step or 0)

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        """Through log_batch, not set_tag: two sweep workers that finish at once tag the same
        parent run, and only MLflow's batch upsert retries the insert the other one raced
        (set_tag raised "UNIQUE constraint failed: tags.key, tags.run_uuid" on SQLite)."""
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 tags a call
            self.client.log_batch(run_id, tags=items[i:i + 100])

    def log_files(self, run_id: str, paths: Iterable[str | Path], artifact_path: str | None = None) -> None:
        """Files (or whole folders) as the run's artifacts under `artifact_path`."""
        for path in paths:
            if Path(path).is_dir():
                self.client.log_artifacts(run_id, str(path), artifact_path=artifact_path)
            else:
                self.client.log_artifact(run_id, str(path), artifact_path=artifact_path)

    def end_trial_run(self, run_id: str, optuna_state: str, **tags: Any) -> None:
        """End a sweep trial's run in the state Optuna gave the trial, with `optuna.state` and
        any other tags (the reason of a failure: `error=...`)."""
        self.set_tags(run_id, {"optuna.state": optuna_state, **tags})
        self.client.set_terminated(run_id, RUN_STATE[optuna_state])

    def finish(self, run_id: str) -> None:
        self.client.set_terminated(run_id, "FINISHED")


def lightning_logger(cfg):
    """Lightning's MLflow logger for one training stage. A resumed run continues its MLflow run
    (`run_dir/mlflow_run_id`); a sweep trial's stage (`mlflow.run_id`) logs into the trial's
    run and leaves ending it to the trial."""
    from lightning.pytorch.loggers import MLFlowLogger

    uri, artifacts = tracking_uri(cfg)
    Tracking(uri, artifacts).experiment(cfg.mlflow.experiment)  # created here, with its tags
    if cfg.mlflow.run_id:  # a sweep trial's run: its owner named, tagged and nested it
        run_id, run_name, tags = cfg.mlflow.run_id, None, None
    else:
        id_file = cfg.run_dir / "mlflow_run_id"
        run_id = id_file.read_text().strip() if id_file.exists() else None
        run_name = f"{cfg.name}/{cfg.stage}"
        tags = {"stage": cfg.stage, "model_preset": cfg.model_preset}
        if cfg.mlflow.parent_run_id:
            tags["mlflow.parentRunId"] = cfg.mlflow.parent_run_id
    cls = _owned_run_logger() if cfg.mlflow.run_id else MLFlowLogger
    return cls(experiment_name=cfg.mlflow.experiment, run_name=run_name, tracking_uri=uri,
               artifact_location=artifacts, tags=tags, run_id=run_id, prefix=cfg.mlflow.prefix)


def _owned_run_logger():
    from lightning.pytorch.loggers import MLFlowLogger

    class OwnedRunLogger(MLFlowLogger):
        """Logs into a run someone else owns (a sweep trial's): the end of one stage does not end
        the run; its owner sets the final state (FINISHED, FAILED, KILLED) once the trial is over."""

        def finalize(self, status: str = "success") -> None:
            if self._initialized and self._checkpoint_callback:
                self._scan_and_log_checkpoints(self._checkpoint_callback)

    return OwnedRunLogger


def log_stage_files(logger, files: list[Path], checkpoint: str, prefix: str) -> None:
    """A finished stage's config.yaml and result.json, and its checkpoint's path, on its run."""
    tracking = Tracking(logger._tracking_uri)
    tracking.log_files(logger.run_id, files, artifact_path=prefix or None)
    tracking.set_tags(logger.run_id, {"checkpoint": checkpoint})
