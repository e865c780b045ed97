"""End to end with the real Airflow processes on a real PostgreSQL (and Redis for Celery).

`airflow db migrate`, then scheduler, dag-processor and api-server started here; the monthly
DAG is triggered with a conf through the REST API, waited for, and its Datamodels checked.
With a Redis server on 127.0.0.1:6379, the same runs on the CeleryExecutor with two Celery
workers, and the task instances show that both workers ran tasks.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
import requests

from clv_jobs.datamodel import COLUMNS
from tests.dags.conftest import AIRFLOW, AS_OF, airflow, airflow_environment, write_project
from tests.moto_server import free_port

pytestmark = pytest.mark.slow

ACCOUNTS = ["north", "south"]
REDIS = ("127.0.0.1", 6379)


def _redis_available() -> str | None:
    try:
        with socket.create_connection(REDIS, timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            return None if sock.recv(16).startswith(b"+PONG") else "it did not answer PING"
    except OSError as exc:
        return str(exc)


class Deployment:
    """A throw-away Airflow deployment: its own metadata database, processes and logs."""

    def __init__(self, root: Path, config_dir: Path, dsn: str, executor: str, broker: str | None = None):
        self.root = root
        self.port = free_port()
        self.database = f"clv_e2e_{uuid.uuid4().hex[:8]}"
        self.dsn = dsn
        self.processes: list[subprocess.Popen] = []
        home = root / "airflow"
        home.mkdir(parents=True)
        password = secrets.token_urlsafe(12)
        (home / "passwords.json").write_text(json.dumps({"admin": password}))
        self.credentials = {"username": "admin", "password": password}
        base = f"http://127.0.0.1:{self.port}"
        self.base_url = base
        extra = {
            "AIRFLOW__CORE__EXECUTOR": executor,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://postgres@127.0.0.1:5432/{self.database}",
            "AIRFLOW__API__BASE_URL": base,
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__CORE__PARALLELISM": "8",
            "CLV_RETRY_DELAY_SECONDS": "1",
        }
        if broker:
            extra |= {
                "AIRFLOW__CELERY__BROKER_URL": broker,
                "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql://postgres@127.0.0.1:5432/{self.database}",
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "worker_hostname.name",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent),
                                                            os.environ.get("PYTHONPATH")])),
            }
        self.env = airflow_environment(home, config_dir, **extra)

    # -- lifecycle ----------------------------------------------------------------------
    def __enter__(self):
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {self.database}")
        airflow(self.env, "db", "migrate", timeout=600)
        self.start("scheduler")
        self.start("dag-processor")
        self.start("api-server", "--port", str(self.port))
        self.wait_for_api()
        return self

    def start(self, *command: str, name: str | None = None, env: dict | None = None) -> None:
        log = (self.root / f"{name or command[0]}.log").open("w")
        self.processes.append(subprocess.Popen([AIRFLOW, *command], env=env or self.env, stdout=log,
                                               stderr=subprocess.STDOUT, start_new_session=True))

    def __exit__(self, *exc_info):
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for process in self.processes:
            try:
                process.wait(max(1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)")

    def check_alive(self) -> None:
        """Fail at once, with the logs, when an Airflow process has died."""
        dead = [p.args[1] for p in self.processes if p.poll() is not None]
        if dead:
            pytest.fail(f"airflow {', '.join(dead)} exited early\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.root.glob("*.log")))

    # -- REST API -----------------------------------------------------------------------
    def wait_for_api(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if requests.get(f"{self.base_url}/api/v2/monitor/health", timeout=5).ok:
                    token = requests.post(f"{self.base_url}/auth/token", json=self.credentials, timeout=10)
                    token.raise_for_status()
                    self.session = requests.Session()
                    self.session.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
                    return
            except requests.ConnectionError:
                pass
            time.sleep(2)
        pytest.fail(f"the api-server did not come up in {timeout} s\n{self.logs()}")

    def api(self, method: str, path: str, **kwargs) -> dict:
        response = self.session.request(method, f"{self.base_url}/api/v2{path}", timeout=30, **kwargs)
        assert response.ok, f"{method} {path}: {response.status_code} {response.text[:500]}"
        return response.json()

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            response = self.session.get(f"{self.base_url}/api/v2/dags/{dag_id}", timeout=10)
            if response.ok:
                return
            time.sleep(2)
        pytest.fail(f"{dag_id} was not parsed in {timeout} s\n{self.logs()}")

    def trigger_and_wait(self, dag_id: str, conf: dict, timeout: float = 600) -> tuple[dict, list[dict]]:
        self.wait_for_dag(dag_id)
        self.api("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
        run = self.api("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            state = self.api("GET", f"/dags/{dag_id}/dagRuns/{run['dag_run_id']}")
            if state["state"] in ("success", "failed"):
                instances = self.api("GET", f"/dags/{dag_id}/dagRuns/{run['dag_run_id']}/taskInstances",
                                     params={"limit": 1000})["task_instances"]
                return state, instances
            time.sleep(3)
        pytest.fail(f"{dag_id} run did not finish in {timeout} s\n{self.logs()}")


@pytest.fixture
def project(tmp_path) -> Path:
    from clv_jobs.sample_data import SampleAccount, simulate_account

    samples = [simulate_account(SampleAccount(a, n_buyers=1_000, history_days=600, seed=40 + i), AS_OF)
               for i, a in enumerate(ACCOUNTS)]
    return write_project(tmp_path / "project", {a: {} for a in ACCOUNTS}, samples)


def _check_monthly_run(deployment: Deployment, project: Path) -> list[dict]:
    state, instances = deployment.trigger_and_wait(
        "clv_monthly_refit", {"accounts": ACCOUNTS, "as_of": AS_OF.isoformat(), "deliver": True, "force": True})
    assert state["state"] == "success", deployment.logs()
    by_task = {}
    for ti in instances:
        by_task.setdefault(ti["task_id"], []).append(ti)
    for stage in ("validate", "features", "fit", "score", "datamodel", "publish", "export"):
        mapped = by_task[f"refit_account.{stage}"]
        assert sorted(ti["rendered_map_index"] for ti in mapped) == ACCOUNTS
        assert {ti["state"] for ti in mapped} == {"success"}
    for account in ACCOUNTS:
        datamodel = project.parent / "outbox" / f"clv_datamodel_{account}_20250601.csv"
        frame = pd.read_csv(datamodel, dtype=str, keep_default_na=False)
        assert list(frame.columns) == list(COLUMNS) and len(frame) > 500
        manifest = json.loads(Path(f"{datamodel}.manifest.json").read_text())
        assert manifest["rows"] == len(frame)
    return instances


def test_local_executor_on_postgres(tmp_path, project, postgres_dsn):
    with Deployment(tmp_path / "local", project, postgres_dsn, "LocalExecutor") as deployment:
        _check_monthly_run(deployment, project)


def test_celery_executor_with_two_workers(tmp_path, project, postgres_dsn):
    reason = _redis_available()
    if reason:
        pytest.skip(f"no Redis server on {REDIS[0]}:{REDIS[1]} ({reason}); the Celery case needs one")
    broker = f"redis://{REDIS[0]}:{REDIS[1]}/{7 + os.getpid() % 8}"
    with Deployment(tmp_path / "celery", project, postgres_dsn, "CeleryExecutor", broker) as deployment:
        for worker in ("worker-1", "worker-2"):
            deployment.start("celery", "worker", "--celery-hostname", f"{worker}@%h", name=worker,
                             env=deployment.env | {"CLV_TEST_WORKER_NAME": worker})
        instances = _check_monthly_run(deployment, project)
    hosts = {ti["hostname"] for ti in instances if ti["state"] == "success"}
    assert hosts == {"worker-1", "worker-2"}, hosts
