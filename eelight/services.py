"""`eelight services start|stop|status`: a PostgreSQL server (the sweeps' study storage) and an
MLflow tracking server backed by it, on one machine, for users who want several sweep workers
without a cluster's database (`make services`, `make services-stop`).

Everything lives under one folder (default `services/`): the database cluster `pg/`, MLflow's
artifacts `artifacts/`, logs, and `services.json` (ports, pids, URLs). PostgreSQL listens on
127.0.0.1 only and trusts local connections: a throw-away, single-user setup, not a shared one.
PostgreSQL refuses to run as root; as root the database runs as the `postgres` system user.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from eelight.errors import UserError

DATABASES = ("optuna", "mlflow")


@dataclass
class Services:
    folder: str
    pg_port: int
    mlflow_port: int
    mlflow_pid: int | None = None

    @property
    def storage(self) -> str:
        """The sweep storage URL (Optuna's study database)."""
        return f"postgresql+psycopg://eelight@127.0.0.1:{self.pg_port}/optuna"

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def mlflow_store(self) -> str:
        return f"postgresql+psycopg://eelight@127.0.0.1:{self.pg_port}/mlflow"


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))[-1:]), None)
    if not found:
        raise UserError(f"PostgreSQL's {name} is not installed: apt-get install postgresql "
                        "(or your system's PostgreSQL server package)")
    return found


def _as_db_user(cmd: list[str]) -> list[str]:
    """PostgreSQL's server programs refuse root: run them as the `postgres` system user then."""
    if os.geteuid() != 0:
        return cmd
    if not shutil.which("runuser"):
        raise UserError("PostgreSQL cannot run as root and runuser is missing: run `eelight services` as a normal user")
    return ["runuser", "-u", "postgres", "--", *cmd]


def _run(cmd: list[str], what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"{what} failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")


def _state(folder: Path) -> Services | None:
    f = folder / "services.json"
    return Services(**json.loads(f.read_text())) if f.exists() else None


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _wait_health(url: str, timeout_s: float, log: Path, proc: subprocess.Popen) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise UserError(f"the MLflow server for {url} exited at start (status {proc.returncode}; "
                            f"is the port taken? --mlflow-port picks another); see {log}")
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).read() == b"OK":
                return
        except OSError:
            time.sleep(0.5)
    raise UserError(f"the MLflow server did not answer {url}/health in {timeout_s:.0f} s; see {log}")


def _start_postgres(folder: Path, port: int) -> None:
    data, log = folder / "pg", folder / "postgres.log"
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    if not (data / "PG_VERSION").exists():
        _run(_as_db_user([_pg_bin("initdb"), "-D", str(data), "-U", "eelight", "--auth=trust", "-E", "UTF8"]),
             "initdb (creating the database cluster)")
    opts = f"-h 127.0.0.1 -p {port} -k {folder}"  # no system socket dir needed
    _run(_as_db_user([_pg_bin("pg_ctl"), "-D", str(data), "-l", str(log), "-o", opts, "-w", "-t", "60", "start"]),
         f"starting PostgreSQL on 127.0.0.1:{port} (log: {log})")
    try:
        import psycopg
    except ImportError as exn:
        raise UserError("the PostgreSQL driver is not installed: pip install 'eelight[postgres]'") from exn
    with psycopg.connect(host="127.0.0.1", port=port, user="eelight", dbname="postgres", autocommit=True) as conn:
        have = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
        for db in DATABASES:
            if db not in have:
                conn.execute(f'CREATE DATABASE "{db}"')


def start(folder: str | Path = "services", pg_port: int = 5433, mlflow_port: int = 5001) -> Services:
    """Start both servers (or find them running); returns their addresses."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    running = _state(folder)
    if running and _alive(running.mlflow_pid):
        return running
    svc = Services(str(folder), pg_port, mlflow_port)
    _start_postgres(folder, pg_port)
    (folder / "artifacts").mkdir(exist_ok=True)
    log = folder / "mlflow.log"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", svc.mlflow_store,
                                 "--default-artifact-root", str(folder / "artifacts"), "--host", "127.0.0.1",
                                 "--port", str(mlflow_port), "--workers", "1"],
                                stdout=out, stderr=out, env=env, start_new_session=True)
    svc.mlflow_pid = proc.pid
    (folder / "services.json").write_text(json.dumps(asdict(svc)))
    try:
        _wait_health(svc.tracking_uri, 120, log, proc)
    except UserError:
        stop(folder)
        raise
    return svc


def stop(folder: str | Path = "services") -> None:
    """Stop both servers; the data (studies, runs, artifacts) stays in the folder."""
    folder = Path(folder).resolve()
    svc = _state(folder)
    if svc and _alive(svc.mlflow_pid):
        os.killpg(svc.mlflow_pid, signal.SIGTERM)
        for _ in range(100):
            if not _alive(svc.mlflow_pid):
                break
            time.sleep(0.1)
    if (folder / "pg" / "postmaster.pid").exists():
        _run(_as_db_user([_pg_bin("pg_ctl"), "-D", str(folder / "pg"), "-m", "fast", "-w", "stop"]), "stopping PostgreSQL")
    if svc:
        (folder / "services.json").unlink()


def describe(svc: Services) -> str:
    return "\n".join([
        f"study storage:  {svc.storage}",
        f"MLflow server:  {svc.tracking_uri}   (UI and tracking; artifacts in {svc.folder}/artifacts)",
        f"use them:       eelight sweep sweeps/NAME.yaml --storage {svc.storage} mlflow.tracking_uri={svc.tracking_uri}",
        f"stop them:      eelight services stop --dir {svc.folder}",
    ])
