"""Two sweep workers that finish together tag the same parent run at once (`_summarise`): each
inserts the same new keys, and neither may fail. MLflow's set_tag lost that race on SQLite
("UNIQUE constraint failed: tags.key, tags.run_uuid"): CI saw it in the two-worker test."""

import multiprocessing as mp

import mlflow
import pytest

WORKERS, ROUNDS = 3, 30


def _tag(uri: str, run_id: str, barrier, worker: int) -> None:
    from eelight.tracking import Tracking

    tracking = Tracking(uri)
    for round_ in range(ROUNDS):
        barrier.wait(timeout=60)  # every worker inserts the round's new keys at the same moment
        tracking.set_tags(run_id, {f"best.r{round_}.{i}": f"w{worker}" for i in range(3)})


@pytest.mark.slow
def test_workers_tagging_one_run_at_once_all_succeed(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("race")).info.run_id
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    workers = [ctx.Process(target=_tag, args=(uri, run_id, barrier, w)) for w in range(WORKERS)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
    assert [w.exitcode for w in workers] == [0] * WORKERS
    tags = client.get_run(run_id).data.tags
    assert len([k for k in tags if k.startswith("best.r")]) == ROUNDS * 3
    assert {tags[f"best.r{r}.0"] for r in range(ROUNDS)} <= {f"w{w}" for w in range(WORKERS)}
