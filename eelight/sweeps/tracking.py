"""MLflow for sweeps: the tracking store of the base experiment, one experiment per sweep,
one parent run per study."""

from __future__ import annotations

from eelight.sweeps.config import SweepConfig


def sweep_client(sweep: SweepConfig):
    """The MLflow client of the sweep's tracking store and its experiment id (named after the sweep)."""
    import mlflow

    from eelight.training.config import load_run_config
    from eelight.training.run import mlflow_uri

    cfg = load_run_config(sweep.experiment, sweep.overrides)
    uri, artifacts = mlflow_uri(cfg)
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(sweep.name)
    exp_id = exp.experiment_id if exp else client.create_experiment(sweep.name, artifact_location=artifacts)
    return client, exp_id


def create_parent_run(sweep: SweepConfig) -> str:
    client, exp_id = sweep_client(sweep)
    run = client.create_run(exp_id, run_name=f"{sweep.name}-study",
                            tags={"sweep": sweep.name, "sweep.role": "study"})
    client.log_param(run.info.run_id, "objective", sweep.objective.metric)
    client.log_param(run.info.run_id, "grid_points", len(sweep.grid_points()))
    return run.info.run_id
