"""Airflow test fixtures: a fresh Airflow home per test module, a sample CLV project, runners.

Airflow reads its configuration when first imported, so every run of the real Airflow
happens in a subprocess with its own environment (``airflow_env``); the in-process DagBag
checks get a throw-away home set below, before anything imports Airflow.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[2]
DAGS = ROOT / "dags"
PLUGINS = ROOT / "plugins"
AIRFLOW = str(Path(sys.executable).parent / "airflow")
AS_OF = dt.date(2025, 6, 1)

_HOME = tempfile.mkdtemp(prefix="clv-airflow-home-")
os.environ.update({
    "AIRFLOW_HOME": _HOME,
    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_HOME}/airflow.db",
})
if str(DAGS) not in sys.path:
    sys.path.append(str(DAGS))  # as Airflow's bundle DagBag does


def airflow_environment(home: Path, config_dir: Path, **extra: str) -> dict[str, str]:
    """Environment of an Airflow process on this project's DAGs, plugins and CLV config."""
    return os.environ | {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__MAX_MAP_LENGTH": "100000",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "CLV_CONFIG_DIR": str(config_dir),
        "NO_COLOR": "1",
    } | extra


def airflow(env: dict, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the ``airflow`` command; fail the test with its output if it fails."""
    result = subprocess.run([AIRFLOW, *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"airflow {' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def run_dag(env: dict, dag_id: str, run_after: str, conf: dict | None = None, mark_success: str | None = None) -> dict:
    """``dag.test()`` of one DAG in a subprocess; its run state and task instances.

    ``mark_success``: a regex of task ids that dag.test marks successful instead of running.
    """
    result = subprocess.run(
        [sys.executable, str(Path(__file__).parent / "dag_test_runner.py"), dag_id, run_after, json.dumps(conf or {}),
         *([mark_success] if mark_success else [])],
        env=env, capture_output=True, text=True, timeout=900,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("DAG_TEST_RESULT ")]
    assert lines, f"dag.test of {dag_id} printed no result:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    outcome = json.loads(lines[-1].removeprefix("DAG_TEST_RESULT "))
    outcome["log"] = result.stdout + result.stderr
    return outcome


def write_project(root: Path, accounts: dict[str, dict], samples) -> Path:
    """A CLV project: DuckDB warehouse of ``samples``, one YAML per account, local outbox."""
    from clv_jobs.sample_data import write_warehouse

    write_warehouse(root / "warehouse.duckdb", samples)
    config = root / "config"
    (config / "accounts").mkdir(parents=True, exist_ok=True)
    (config / "clv.yaml").write_text(yaml.safe_dump(
        {"store": "../store", "source": {"type": "duckdb", "path": "../warehouse.duckdb"}}))
    for account_id, settings in accounts.items():
        body = {"account_id": account_id,
                "datamodel": {"destinations": [{"type": "local", "path": "../outbox"}]}} | settings
        (config / "accounts" / f"{account_id}.yaml").write_text(yaml.safe_dump(body))
    return config


@pytest.fixture(scope="session")
def sample_project(tmp_path_factory) -> Path:
    """Three accounts: eligible ``shop``, not-yet-eligible ``young``, and ``broken`` (unreadable source)."""
    from clv_jobs.sample_data import SampleAccount, simulate_account

    root = tmp_path_factory.mktemp("clv-project")
    samples = [simulate_account(SampleAccount("shop", n_buyers=1_500, history_days=700, seed=31), AS_OF),
               simulate_account(SampleAccount("young", n_buyers=200, history_days=40, seed=32, bad_rows=False),
                                AS_OF)]
    # broken: its file lacks the amount column, so its validation fails (clearly) every time.
    broken = root / "broken.csv"
    broken.write_text("order_id,customer_id,order_ts\no1,c1,2025-01-01 10:00:00\n")
    return write_project(root, {
        "shop": {"timezone": "Europe/Madrid"},
        "young": {},
        "broken": {"source": {"type": "files", "transactions": str(broken)}},
    }, samples)
