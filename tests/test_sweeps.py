"""`eelight sweep`: Optuna studies in SQLite, nested MLflow runs, kill/resume, two workers,
reports, export and the model registry."""

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import mlflow
import optuna
import pytest
import torch

from eelight.sweeps.config import load_sweep
from eelight.training.config import ConfigError

pytestmark = pytest.mark.slow
SWEEP = "sweeps/weight_reuse.yaml"


def _small(probe_env, steps=6):
    return probe_env["overrides"] + [f"trainer.max_steps={steps}", "data.val_samples=16",
                                     "trainer.log_every_n_steps=2"]


def _cli(probe_env, out, *args, steps=6, own_store=False, **kw):
    """`eelight VERB --out-dir OUT ...`; own_store: an MLflow store of its own under OUT."""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    verb, *rest = args  # options first: the overrides are the trailing positionals
    store = [f"mlflow.tracking_uri=sqlite:///{out}/mlflow.db"] if own_store else []
    return subprocess.Popen([sys.executable, "-m", "eelight.cli", verb, "--out-dir", str(out), *rest,
                             *_small(probe_env, steps), *store], text=True, env=env,
                            **{"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **kw})


def _study(out):
    return optuna.load_study(study_name="weight_reuse", storage=f"sqlite:///{out}/weight_reuse/study.db")


def _complete_points(study):
    return Counter(t.user_attrs["grid_point"] for t in study.trials if t.state.name == "COMPLETE")


@pytest.fixture(scope="module")
def finished(probe_env, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    proc = _cli(probe_env, out, "sweep", SWEEP)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    return out, json.loads(stdout.strip().splitlines()[-1]), stderr


def test_sweep_runs_every_grid_point_with_nested_mlflow_runs_and_a_report(finished, probe_env):
    out, summary, stderr = finished
    progress = [line for line in stderr.splitlines() if line.startswith("[sweep weight_reuse] aligner=")]
    assert len(progress) == 3 and progress[-1].endswith("; 3/3 points done")  # one line per finished trial
    assert progress[0].startswith("[sweep weight_reuse] aligner=reuse seed=0 (#0): COMPLETE probe/accuracy=")
    for noise in ("litlogger", "Warning", "deprecated"):  # Lightning's tip, LeafSpec, Optuna, MLflow
        assert noise not in stderr, [line for line in stderr.splitlines() if noise in line][:3]
    assert summary["ran"] == 3
    study = _study(out)
    assert set(_complete_points(study).values()) == {1} and len(_complete_points(study)) == 3
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{probe_env['root']}/mlflow.db")
    exp = client.get_experiment_by_name("weight_reuse")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "study"]
    assert len(parents) == 1
    parent = parents[0]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(trials) == 3 and {r.data.params["model.aligner"] for r in trials} == {"reuse", "fresh", "none"}
    assert {r.info.run_name for r in trials} == {f"aligner={a} seed=0 (#{i})"  # named by what differs
                                                 for i, a in enumerate(["reuse", "fresh", "none"])}
    assert {r.data.params["model.vision.image_size"] for r in trials} == {"64"}  # as trained, not the default 32
    for r in trials:
        assert r.info.status == "FINISHED" and r.data.tags["optuna.state"] == "COMPLETE"
        assert os.path.exists(r.data.tags["checkpoint"])
        assert "objective" in r.data.metrics and "instruct-train/loss" in r.data.metrics
        assert len(client.get_metric_history(r.info.run_id, "align-train/loss")) >= 2  # per step
    assert parent.data.tags["best_trial"] in {"0", "1", "2"} and "best_value" in parent.data.metrics
    assert parent.info.run_name == "weight_reuse-study" and parent.info.status == "FINISHED"
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    for name in ("metric_vs_variant.png", "families.png", "metric_vs_compute.png", "summary.md"):
        assert f"report/{name}" in report
        assert (out / "weight_reuse" / "report" / name).stat().st_size > 1000 or name.endswith(".md")
    assert "report/metric_vs_data_size.png" not in report  # one data size: no curve to draw


def test_report_pools_an_earlier_run_and_a_bad_file_is_one_line(finished, probe_env, tmp_path):
    """`eelight report NAME --pool trials.csv`: the study with an earlier run of it (here its own
    report again, so every pooled mean equals the study's and both runs' differences agree)."""
    out, _, _ = finished
    earlier = tmp_path / "trials.csv"
    shutil.copy(out / "weight_reuse" / "report" / "trials.csv", earlier)
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [sys.executable, "-m", "eelight.cli", "report", "weight_reuse", "--out-dir", str(out), *_small(probe_env)]
    ran = subprocess.run([*cmd, "--pool", str(earlier)], capture_output=True, text=True, env=env, timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    text = (out / "weight_reuse" / "report_pooled" / "summary.md").read_text()
    single = (out / "weight_reuse" / "report" / "summary.md").read_text()
    table = single.split("\n## ")[1]  # the objective table (the Pareto section lists the variants too)
    rows = [line.split(" | ")[:4] for line in table.splitlines() if line.startswith("| model.aligner=")]
    assert len(rows) == 3 and all(seeds == "1" for _, _, seeds, _ in rows)
    for variant, size, _, mean in rows:  # one seed here: two (run, seed) units pooled, the same mean
        assert f"{variant} | {size} | 2 | {mean.split(' ')[0]} [" in text
    per_run = [[c.strip() for c in line.strip("|").split("|")]
               for line in text.split("## Per run")[1].split("\n## ")[0].splitlines() if line.startswith("| model.aligner=")]
    assert len(per_run) == 2 and all(cells[2] == cells[3] for cells in per_run)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{probe_env['root']}/mlflow.db")
    parent = client.get_run(_study(out).user_attrs["mlflow_parent_run_id"])
    assert "report_pooled/summary.md" in {a.path for a in client.list_artifacts(parent.info.run_id, "report_pooled")}
    bad = subprocess.run([*cmd, "--pool", str(tmp_path / "nope.csv")], capture_output=True, text=True, env=env,
                         timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].endswith("no such file; give the trials.csv of an earlier report of "
                                                       "this sweep")


def test_export_loads_with_identical_logits_and_registers(finished, probe_env, tmp_path):
    from omegaconf import OmegaConf

    import eelight
    from eelight.models.mllm import build_mllm
    from eelight.training.checkpoint import init_from_checkpoint
    from eelight.training.config import RunConfig

    out, _, _ = finished
    proc = _cli(probe_env, out, "export", "--study", "weight_reuse", "--out", str(tmp_path / "exp"),
                "--register", "eelight-weight-reuse")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    for noise in ("CloudPickle", "Warning", "Downloading artifacts"):  # logged as code, quietly
        assert noise not in stderr, stderr[-3000:]
    info = json.loads(stdout.strip().splitlines()[-1])
    folder = tmp_path / "exp"
    for name in ("model.safetensors", "config.yaml", "vision_config.json", "tokenizer.json",
                 "preprocessor_config.json", "README.md"):
        assert (folder / name).is_file(), name
    assert "probe/accuracy" in (folder / "README.md").read_text()
    best = _study(out).best_trial
    ckpt = best.user_attrs["checkpoint"]
    run_cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig),
                                                  OmegaConf.load(os.path.join(os.path.dirname(ckpt), "config.yaml"))))
    original = build_mllm(run_cfg.model).eval()
    init_from_checkpoint(original, ckpt)
    loaded = eelight.load(folder)
    ids, pixels = torch.randint(3, 30, (2, 9)), torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(loaded(ids, pixels).logits, original(ids, pixels).logits)
    assert str(info["registered"]["version"]) == "1"
    mlflow.set_tracking_uri(f"sqlite:///{probe_env['root']}/mlflow.db")
    pyfunc = mlflow.pyfunc.load_model("models:/eelight-weight-reuse/1")
    reloaded = pyfunc.unwrap_python_model().model
    with torch.no_grad():
        assert torch.equal(reloaded(ids, pixels).logits, original(ids, pixels).logits)
    assert json.loads((folder / "prompt.json").read_text()) == {"template": "probe", "image_placement": "marker",
                                                              "system_prompt": None}
    # predict: image file + question -> the greedy answer of the prompt written out here by hand
    # (probe template, the image where "<image>" opens the question: after "<s> USER:").
    import pandas as pd
    from PIL import Image
    from transformers import AutoImageProcessor, AutoTokenizer

    from eelight.data.image import FastImageTransform
    from eelight.data.probe import QUESTIONS, draw, probe_item

    draw(probe_item(0, 7), 64).save(tmp_path / "q.png")
    answer = pyfunc.predict(pd.DataFrame({"image": [str(tmp_path / "q.png")], "prompt": [QUESTIONS["colour"]]}))
    tok = AutoTokenizer.from_pretrained(folder)
    words = ["<s>", "USER:", *QUESTIONS["colour"].split(), "ASSISTANT:"]
    prompt_ids = torch.tensor([tok.convert_tokens_to_ids(words)])
    image = FastImageTransform(AutoImageProcessor.from_pretrained(folder)).to_uint8(Image.open(tmp_path / "q.png"))
    expected = original.generate(prompt_ids, image[None], max_new_tokens=16, eos_token_id=tok.eos_token_id,
                                 image_offset=2)
    assert answer == [tok.decode(expected[0], skip_special_tokens=True).strip()]
    shorter = pyfunc.predict(pd.DataFrame({"image": [str(tmp_path / "q.png")], "prompt": [QUESTIONS["colour"]]}),
                             params={"max_new_tokens": 1})
    assert shorter == [tok.decode(expected[0, :1], skip_special_tokens=True).strip()]
    # The guide's example as written (docs/guide/sweeps.md), from a project root whose mlruns/ is this test's store.
    readme = Path(__file__).parent.parent.joinpath("docs", "guide", "sweeps.md").read_text()
    block = readme.split("<!-- register-example -->\n```python\n", 1)[1].split("```", 1)[0]
    root = tmp_path / "project"
    root.mkdir()
    (root / "mlruns").symlink_to(probe_env["root"])
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    ran = subprocess.run([sys.executable, "-c", block], cwd=root, capture_output=True, text=True, env=env, timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert ran.stdout.strip() == repr(answer) and not (root / "mlflow.db").exists()  # no stray store


def _locked_states(out):
    """The study's trial states, read under the sweep's own setup lock: a reader that opens the
    database while the worker creates its schema races it (both run SQLAlchemy's create_all)."""
    with open(out / "weight_reuse" / ".setup.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return {t.number: t.state.name for t in _study(out).trials}


def test_sigkill_mid_trial_then_rerun_completes_each_point_once(probe_env, tmp_path):
    logs = tmp_path / "worker.out", tmp_path / "worker.err"  # files, not pipes nobody reads while we wait
    with open(logs[0], "w") as out, open(logs[1], "w") as err:
        proc = _cli(probe_env, tmp_path, "sweep", SWEEP, steps=40, own_store=True, start_new_session=True,
                    stdout=out, stderr=err)
    instruct = tmp_path / "weight_reuse" / "runs" / "trial_0001" / "instruct"
    deadline = time.time() + 600  # trial 1's instruct stage: two stages and a trial in, on a busy CI machine
    states = {}
    # The file system first: the study is read only once trial 1 is in its instruct stage, so
    # the test does not poll the worker's SQLite file while it writes.
    while time.time() < deadline and proc.poll() is None and not instruct.exists():
        time.sleep(0.5)
    if proc.poll() is None and instruct.exists():
        states = _locked_states(tmp_path)
    assert states.get(0) == "COMPLETE" and states.get(1) == "RUNNING", (  # after its align stage ended
        f"never saw trial 1's instruct stage running after trial 0 (states {states}, worker exit "
        f"{proc.poll()}): {logs[1].read_text()[-3000:]}")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    rerun = _cli(probe_env, tmp_path, "sweep", SWEEP, steps=40, own_store=True)
    _, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, stderr[-3000:]
    study = _study(tmp_path)
    by_number = {t.number: t for t in study.trials}
    assert by_number[0].state.name == "COMPLETE"  # finished before the kill: not rerun
    assert by_number[1].state.name == "FAIL"  # the killed one, failed once its heartbeat went stale
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == 1]
    assert len(retried) == 1 and retried[0].state.name == "COMPLETE"
    assert retried[0].user_attrs["grid_point"] == by_number[1].user_attrs["grid_point"]
    assert sorted(_complete_points(study).values()) == [1, 1, 1]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    dead = client.get_run(by_number[1].user_attrs["mlflow_run_id"])
    assert dead.info.status == "FAILED" and dead.data.tags["optuna.state"] == "FAIL"
    assert "stopped (no heartbeat" in dead.data.tags["error"]
    assert client.get_run(retried[0].user_attrs["mlflow_run_id"]).info.status == "FINISHED"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_a_worker_fails_its_trial_at_once_and_the_rerun_runs_its_point(probe_env, tmp_path, sig):
    logs = tmp_path / "worker.out", tmp_path / "worker.err"
    with open(logs[0], "w") as out, open(logs[1], "w") as err:
        proc = _cli(probe_env, tmp_path, "sweep", SWEEP, steps=400, own_store=True, stdout=out, stderr=err)
    align = tmp_path / "weight_reuse" / "runs" / "trial_0000" / "align" / "config.yaml"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not align.exists():
        time.sleep(0.2)
    time.sleep(2)  # inside trial 0's training
    proc.send_signal(sig)
    code = proc.wait(timeout=120)
    last = logs[1].read_text().strip().splitlines()[-1]
    assert code == 128 + sig and last.startswith(f"eelight: error: sweep weight_reuse stopped by {sig.name}"), last
    study = _study(tmp_path)
    first = study.trials[0]
    assert first.state.name == "FAIL" and sig.name in first.user_attrs["error"]  # at once, not after a heartbeat
    again = [t for t in study.trials if t.state.name == "WAITING"]
    assert first.user_attrs["grid_point"] in {t.user_attrs["grid_point"] for t in again}
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(first.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and sig.name in run.data.tags["error"]
    rerun = _cli(probe_env, tmp_path, "sweep", SWEEP, steps=6, own_store=True)
    _, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, stderr[-3000:]
    assert sorted(_complete_points(_study(tmp_path)).values()) == [1, 1, 1]


def test_a_study_is_not_resumed_on_other_training_data(finished, probe_env, tmp_path):
    """Rerunning a finished sweep after its data was regenerated must not report the old trials."""
    out, _, _ = finished
    before = _study(out)
    assert before.user_attrs["data_fingerprint"]
    copy = tmp_path / "probe"
    shutil.copytree(probe_env["root"] / "probe", copy)
    meta = json.loads((copy / "probe.json").read_text())
    (copy / "probe.json").write_text(json.dumps({**meta, "version": meta["version"] + 1}))
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    ran = subprocess.run([sys.executable, "-m", "eelight.cli", "sweep", "--out-dir", str(out), SWEEP,
                          *_small(probe_env), f"data.train_shards={copy}/train-{{000000..000003}}.tar"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert ran.returncode == 2 and "Traceback" not in ran.stderr, ran.stderr[-3000:]
    assert "ran on other training data" in ran.stderr.strip().splitlines()[-1]
    assert len(_study(out).trials) == len(before.trials)


def test_two_workers_split_the_grid_without_duplicates(probe_env, tmp_path):
    workers = [_cli(probe_env, tmp_path, "sweep", SWEEP, steps=10, own_store=True) for _ in range(2)]
    outs = [w.communicate(timeout=600) for w in workers]
    for w, (_, err) in zip(workers, outs, strict=True):
        assert w.returncode == 0, err[-3000:]
    ran = [json.loads(o.strip().splitlines()[-1])["ran"] for o, _ in outs]
    assert sum(ran) == 3
    assert sorted(_complete_points(_study(tmp_path)).values()) == [1, 1, 1]


def test_two_workers_on_a_journal_file_split_the_grid_without_duplicates(probe_env, tmp_path):
    """Optuna's JournalStorage on a file (no database server): every point runs exactly once."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    sweep = tmp_path / "journal.yaml"
    sweep.write_text((Path(SWEEP).read_text() + f"\nstorage: journal:{tmp_path}/study.journal\n")
                     .replace("name: weight_reuse", "name: journal_sweep"))
    workers = [_cli(probe_env, tmp_path, "sweep", str(sweep), steps=10, own_store=True) for _ in range(2)]
    outs = [w.communicate(timeout=600) for w in workers]
    for w, (_, err) in zip(workers, outs, strict=True):
        assert w.returncode == 0, err[-3000:]
    assert sum(json.loads(o.strip().splitlines()[-1])["ran"] for o, _ in outs) == 3
    study = optuna.load_study(study_name="journal_sweep",
                              storage=JournalStorage(JournalFileBackend(str(tmp_path / "study.journal"))))
    assert sorted(_complete_points(study).values()) == [1, 1, 1]
    assert not (tmp_path / "journal_sweep" / "study.db").exists()  # no SQLite file was used


def test_bad_sweep_files_fail_before_any_trial(tmp_path):
    bad_key = tmp_path / "bad.yaml"
    bad_key.write_text("name: bad\nspace:\n  model.alignr: {type: grid, values: [reuse]}\n")
    with pytest.raises(ConfigError, match=r"sweep space 'model.alignr'.*model.alignr"):
        load_sweep(str(bad_key))
    bad_value = tmp_path / "bad_value.yaml"
    bad_value.write_text("name: bad\nspace:\n  model.aligner: {type: grid, values: [reuse, maybe]}\n")
    with pytest.raises(ConfigError, match=r"'model.aligner' value 'maybe'.*allowed"):
        load_sweep(str(bad_value))
    empty = tmp_path / "empty.yaml"
    empty.write_text("name: empty\nspace: {}\n")
    with pytest.raises(ConfigError, match="search space .* is empty"):
        load_sweep(str(empty))
    top = tmp_path / "top.yaml"
    top.write_text("name: top\nseedz: [1]\nspace:\n  model.aligner: {type: grid, values: [reuse]}\n")
    with pytest.raises(ConfigError, match="seedz"):
        load_sweep(str(top))
    proc = subprocess.run([sys.executable, "-m", "eelight.cli", "sweep", "--out-dir", str(tmp_path), str(bad_key)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "model.alignr" in proc.stderr
    assert not (tmp_path / "bad").exists()  # no study was created


def test_every_shipped_sweep_and_experiment_loads():
    from pathlib import Path

    from eelight.training.config import load_run_config

    root = Path(__file__).parents[1]
    for path in sorted((root / "sweeps").glob("*.yaml")):
        assert load_sweep(str(path)).grid_points()
    for path in sorted((root / "experiments").glob("*.yaml")):
        load_run_config([str(path)])
        load_run_config([str(path), "experiments/stages/instruct.yaml"])


def test_mlflow_ui_in_a_real_browser_shows_study_trials_and_report(finished, probe_env, tmp_path):
    """`make mlflow-ui` serves the store; headless Chromium (Debian's, driven by Playwright) opens
    the address the sweep printed and lands on the runs table (not MLflow 3's GenAI overview) with
    the trials named by their variant, sorted by the objective, whose values it reads; the compare
    view's parallel coordinates default to the objective; the trial page and the report PNG.
    With EELIGHT_SCREENSHOTS=DIR it saves the README's screenshot there."""
    import shutil
    import socket
    import urllib.parse

    from playwright.sync_api import expect, sync_playwright

    if not shutil.which("chromium"):
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run installs Debian's chromium")
        pytest.skip("Debian chromium not installed (apt-get install chromium)")
    out, summary, stderr = finished
    assert f"[sweep weight_reuse] trials in MLflow (a local store: `make mlflow-ui` serves it): " \
           f"{summary['mlflow_ui']}" in stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    server = subprocess.Popen(["make", "-s", "mlflow-ui", f"MLFLOW_PORT={port}",
                               f"MLFLOW_DB={probe_env['root']}/mlflow.db"], cwd=root, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        import urllib.request

        deadline = time.time() + 60
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read() == b"OK":
                    break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)
        client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{probe_env['root']}/mlflow.db")
        exp = client.get_experiment_by_name("weight_reuse")
        assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
        runs = client.search_runs([exp.experiment_id])
        parent = next(r for r in runs if r.data.tags.get("sweep.role") == "study")
        trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        trial = next(r for r in trials if r.info.run_name == "aligner=reuse seed=0 (#0)")
        args = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=args)
            page = browser.new_context(viewport={"width": 1400, "height": 720}).new_page()
            page.goto(summary["mlflow_ui"].replace("127.0.0.1:5000", f"127.0.0.1:{port}"))
            expect(page.get_by_role("heading", name="Runs", exact=True)).to_be_visible(timeout=60000)
            expect(page.get_by_text("Sort: objective")).to_be_visible()
            for r in trials:  # sorted by the objective, the trials are listed flat
                expect(page.get_by_role("link", name=r.info.run_name, exact=True)).to_be_visible(timeout=30000)
            close = page.get_by_role("button", name="Close")  # MLflow's assistant panel, if it opened
            if close.count():
                close.last.click()
            page.get_by_role("button", name="Columns").click()  # as the README says: Columns -> objective
            menu = page.get_by_role("dialog")
            menu.get_by_text("objective", exact=True).first.click()  # under Metrics
            for name in ("Dataset", "Source", "Models"):  # room for it in a screenshot
                menu.get_by_text(name, exact=True).first.click()
            menu.get_by_text("model.aligner", exact=True).first.click()
            page.keyboard.press("Escape")
            for r in trials:
                cell = page.locator(f".ag-row[row-id='{r.info.run_id}'] [col-id='metrics.`objective`']").first
                expect(cell).to_have_text(re.compile(r"^\d"), timeout=30000)
                assert float(cell.inner_text()) == pytest.approx(r.data.metrics["objective"], abs=1e-3)
            if os.environ.get("EELIGHT_SCREENSHOTS"):
                page.screenshot(path=f"{os.environ['EELIGHT_SCREENSHOTS']}/mlflow-runs.png")
            ids, exps = [r.info.run_id for r in trials], [exp.experiment_id]
            page.goto(f"http://127.0.0.1:{port}/#/compare-runs?runs={urllib.parse.quote(json.dumps(ids))}"
                      f"&experiments={urllib.parse.quote(json.dumps(exps))}")
            expect(page.get_by_text("Parallel Coordinates Plot")).to_be_visible(timeout=30000)
            metrics_axis = page.get_by_text("Metrics:", exact=True).locator("xpath=following-sibling::div[1]")
            expect(metrics_axis).to_have_text("objective", timeout=30000)  # the default axis
            page.goto(f"http://127.0.0.1:{port}/#/experiments/{exp.experiment_id}/runs/{trial.info.run_id}")
            expect(page.get_by_role("heading", name="aligner=reuse seed=0 (#0)")).to_be_visible(timeout=30000)
            expect(page.get_by_role("link", name="weight_reuse-study", exact=True)).to_be_visible()  # parent run
            expect(page.get_by_text("model.aligner", exact=True).first).to_be_visible()
            expect(page.get_by_text("objective", exact=True).first).to_be_visible()
            page.goto(f"http://127.0.0.1:{port}/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}/artifacts")
            page.get_by_text("report", exact=True).first.click()
            page.get_by_text("metric_vs_variant.png", exact=True).click()
            preview = page.locator("img[alt='report/metric_vs_variant.png']").first
            expect(preview).to_be_visible(timeout=30000)
            assert preview.evaluate("img => img.naturalWidth") > 100  # the PNG was fetched and decoded
            browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_a_benchmark_metric_is_a_sweep_objective(probe_env, tmp_path):
    """objective: mmbench/accuracy, scored after each trial's instruct stage; the report lists
    every benchmark metric. Without mmbench in eval.benchmarks the file fails before any trial."""
    import csv

    from eval_helpers import probe_benchmark_files

    from eelight.sweeps.runner import run_worker

    files = probe_benchmark_files(tmp_path)
    spec = tmp_path / "bench.yaml"
    spec.write_text("name: bench_obj\nexperiment: [experiments/ee_mllm_tiny.yaml]\n"
                    "space: {model.aligner: {type: grid, values: [reuse]}}\n"
                    "objective: {metric: mmbench/accuracy, direction: maximize}\n")
    with pytest.raises(ConfigError, match="needs benchmark 'mmbench'.*eval.benchmarks=\\[probe,mmbench\\]"):
        load_sweep(str(spec), _small(probe_env))
    extra = ["eval.benchmarks=[probe,mmbench]", f"eval.data_root={files}", "eval.limit=2"]
    sweep = load_sweep(str(spec), _small(probe_env, steps=4) + extra)
    sweep.out_dir = str(tmp_path / "out")
    assert run_worker(sweep)["ran"] == 1
    trial = optuna.load_study(study_name="bench_obj", storage=f"sqlite:///{tmp_path}/out/bench_obj/study.db").trials[0]
    assert trial.value == trial.user_attrs["metrics"]["mmbench/accuracy"]
    from eelight.sweeps.report import write_report

    with open(write_report(sweep) / "trials.csv") as fh:
        row = next(csv.DictReader(fh))
    assert float(row["objective"]) == trial.value
    assert {"metric.mmbench/accuracy", "metric.probe/accuracy", "metric.mmbench/unparsed"} <= set(row)


def _run(*argv, timeout=300):
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run([sys.executable, "-m", "eelight.cli", *argv], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_check_lists_every_missing_input_and_such_a_sweep_starts_nothing(probe_env, tmp_path):
    good = _run("sweep", "--check", "--out-dir", str(tmp_path), SWEEP, *_small(probe_env))
    assert good.returncode == 0, good.stderr[-2000:]
    assert "sweep weight_reuse: 3 trials = 3 model.aligner x 1 seed x 1 data_size" in good.stdout
    assert "every input the trials read is there" in good.stdout
    root = probe_env["root"]
    bad = [*_small(probe_env), f"data.train_shards={root}/probe/train-{{000000..000005}}.tar",  # 4 of 6 exist
           "eval.benchmarks=[probe,textvqa]", f"eval.data_root={tmp_path}/nowhere", "data.subset=100000"]
    for flags in (["--check"], []):  # --check, and a real start: the same line, before any trial
        proc = _run("sweep", *flags, "--out-dir", str(tmp_path), SWEEP, *bad)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        line = proc.stderr.strip().splitlines()[-1]
        assert line.startswith("eelight: error: sweep weight_reuse: 3 input(s) that trials read are missing")
        assert f"shard {root}/probe/train-000004.tar does not exist" in line and "[align, instruct]" in line
        assert f"textvqa questions {tmp_path}/nowhere/textvqa/TextVQA_0.5.1_val.json" in line
        assert f"textvqa images {tmp_path}/nowhere/textvqa/train_images" in line
        assert "data.subset" not in line  # not checked against shards that are not there
    assert not (tmp_path / "weight_reuse").exists()  # no study, no run folder
    fewer = _run("sweep", "--check", "--out-dir", str(tmp_path), SWEEP, *_small(probe_env), "data.subset=100000")
    assert fewer.returncode == 2 and "data.subset=100000 but the shards hold 600 samples" in fewer.stderr


def test_the_real_scale_sweep_is_the_study_on_7b_backbones_and_check_names_its_inputs(tmp_path):
    sweep = load_sweep("sweeps/data_efficiency_7b.yaml")
    cpu = load_sweep("sweeps/data_efficiency.yaml")
    assert sweep.space == cpu.space and sweep.seeds == cpu.seeds and len(sweep.data_sizes) == 4
    assert sweep.controls == cpu.controls and sweep.reference == cpu.reference
    from eelight.sweeps.inputs import stage_configs

    by_stage = dict(stage_configs(sweep))
    align, instruct = by_stage["align"], by_stage["instruct"]
    assert align.data.subset == max(sweep.data_sizes) and instruct.data.subset is None  # sizes: align data only
    assert align.data.train_shards != instruct.data.train_shards
    assert (align.trainer.accelerator, align.trainer.strategy, align.trainer.precision) == ("gpu", "fsdp", "bf16-mixed")
    assert sweep.objective.metric.split("/")[0] in instruct.eval.benchmarks
    proc = _run("sweep", "--check", "--out-dir", str(tmp_path), "sweeps/data_efficiency_7b.yaml")
    assert proc.returncode == 2 and "72 trials" in proc.stdout and "8 devices (gpu, fsdp, bf16-mixed)" in proc.stdout
    assert "model.llm.path=/models/vicuna-7b-v1.5 (no config.json there)" in proc.stderr


def test_a_failed_trial_says_why_and_a_study_without_a_complete_trial_is_one_line(probe_env, tmp_path):
    bench = tmp_path / "bench" / "mmbench"
    bench.mkdir(parents=True)
    (bench / "MMBench_DEV_EN.tsv").write_text("index\tquestion\n0\twhat ?\n")  # no options, no answer, no image
    proc = _run("sweep", "--max-trials", "1", "--out-dir", str(tmp_path), SWEEP, *_small(probe_env, 2),
                "eval.benchmarks=[probe,mmbench]", f"eval.data_root={tmp_path}/bench",
                f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    fail = next(line for line in proc.stderr.splitlines() if ": FAIL in " in line)
    assert "MMBench_DEV_EN.tsv" in fail  # the reason, on the trial's own line
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("eelight: error: study 'weight_reuse' has no complete trial yet: nothing to report (1 failed")
    assert "MMBench_DEV_EN.tsv" in last


@pytest.mark.parametrize("child, differs, trials", [
    ("data_efficiency_3000", {"data_sizes": [3000]}, 18),
    ("data_efficiency_more_seeds", {"seeds": [3, 4, 5]}, 72),
    ("data_efficiency_backbones_1", {"overrides": ["model.llm.path=.cache/backbones_1/llm",
                                                   "model.vision.path=.cache/backbones_1/vision",
                                                   "data.tokenizer=.cache/backbones_1/llm"]}, 72),
    ("data_efficiency_gpu", {"overrides": ["trainer.accelerator=gpu", "data.num_workers=2"],
                             "stage_overrides": {"align": ["trainer.max_steps=300"],
                                                 "instruct": ["trainer.max_steps=700"]}}, 72),
])
def test_a_sweep_file_inherits_its_base_and_resolves_to_the_expected_grid(child, differs, trials):
    """`base: data_efficiency.yaml` + the keys that differ: every other key is the study's;
    `overrides` are added after the base's."""
    from dataclasses import fields

    full, sweep = load_sweep("sweeps/data_efficiency.yaml"), load_sweep(f"sweeps/{child}.yaml")
    assert sweep.name == child and len(sweep.grid_points()) == trials
    for f in fields(sweep):
        if f.name == "name":
            continue
        want = full.overrides + differs["overrides"] if f.name == "overrides" and "overrides" in differs \
            else differs.get(f.name, getattr(full, f.name))
        assert getattr(sweep, f.name) == want, f.name


def test_a_missing_or_looping_base_is_one_line(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\nname: a\n")
    with pytest.raises(ConfigError, match=r"a.yaml: its base .*b.yaml does not exist"):
        load_sweep(str(tmp_path / "a.yaml"))
    (tmp_path / "b.yaml").write_text("base: a.yaml\nname: b\n")
    with pytest.raises(ConfigError, match="in a loop"):
        load_sweep(str(tmp_path / "a.yaml"))


def test_training_free_variants_are_scored_on_each_llava_trial_and_reported_at_their_flops(probe_env, tmp_path):
    """`training_free:` scores FastV, ShortV (calibrated on the trial's own run) and EE-MLLM-F on
    every LLaVA trial's weights; each is a report row paired by seed, in the Pareto section."""
    import csv

    from eelight.evaluate.command import main as eval_main
    from eelight.sweeps.report import write_report
    from eelight.sweeps.runner import run_worker

    spec = tmp_path / "tf.yaml"
    spec.write_text("name: tf\nexperiment: [experiments/ee_mllm_tiny.yaml]\n"
                    "space: {model_preset: {type: grid, values: [llava, ee_mllm]}}\nseeds: [0, 1]\n"
                    "overrides: [eval.limit=8]\n"
                    "training_free:\n  apply_to: model_preset=llava\n"
                    "  variants: ['model_preset=fastv model.prune_after=1', model_preset=shortv, model_preset=ee_mllm_f]\n")
    sweep = load_sweep(str(spec), _small(probe_env, steps=3))
    sweep.out_dir = str(tmp_path / "out")
    assert run_worker(sweep)["ran"] == 4
    study = optuna.load_study(study_name="tf", storage=f"sqlite:///{tmp_path}/out/tf/study.db")
    llava = [t for t in study.trials if t.user_attrs["point"]["model_preset"] == "llava"]
    assert all("training_free" not in t.user_attrs for t in study.trials if t not in llava)
    fastv = "model_preset=fastv model.prune_after=1"
    for t in llava:
        scored = t.user_attrs["training_free"]
        assert set(scored) == {fastv, "model_preset=shortv", "model_preset=ee_mllm_f"}
        assert scored[fastv]["flops_per_sample"] < t.user_attrs["flops_per_sample"]  # half the visual tokens after layer 0
        assert scored["model_preset=ee_mllm_f"]["flops_per_sample"] < t.user_attrs["flops_per_sample"]
        run = Path(t.user_attrs["checkpoint"]).parent
        assert json.loads((run / "shortv.json").read_text())["samples"] == 40
        alone = eval_main(str(run), fastv.split(), out=str(tmp_path / f"alone{t.number}"), log=False)
        assert scored[fastv]["value"] == alone["metrics"]["probe/accuracy"]  # the same evaluator, the same answer
        logged = mlflow.MlflowClient(sweep.stage_config("instruct").mlflow.tracking_uri).get_run(
            t.user_attrs["mlflow_run_id"]).data.metrics
        assert logged["training_free/fastv-prune_after_1/probe/accuracy"] == scored[fastv]["value"]
    report = write_report(sweep)
    with open(report / "trials.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["variant"] == "model_preset=shortv"]
    assert sorted(r["seed"] for r in rows) == ["0", "1"] and all(r["training_free_on"] == "model_preset=llava" for r in rows)
    summary = (report / "summary.md").read_text()
    assert "## Accuracy against forward FLOPs" in summary and "| model_preset=shortv |" in summary
    assert (report / "pareto.png").stat().st_size > 0
