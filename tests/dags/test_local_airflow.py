"""`make airflow`'s script configures Airflow on this project's DAGs, plugins and demo warehouse."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.dags.conftest import ROOT

pytestmark = pytest.mark.slow


def test_local_airflow_script_serves_both_dags_without_import_errors(tmp_path):
    env = os.environ | {"AIRFLOW_HOME": str(tmp_path / "home"), "CLV_CONFIG_DIR": str(tmp_path / "demo" / "config")}
    script = str(ROOT / "scripts" / "airflow-local.sh")
    migrate = subprocess.run([script, "db", "migrate"], env=env, capture_output=True, text=True, timeout=600)
    assert migrate.returncode == 0, migrate.stderr[-2000:]
    assert "creating the sample project" in migrate.stdout  # the embedded default, made on first use
    assert (tmp_path / "demo" / "warehouse.duckdb").exists()
    parsed = subprocess.run([script, "dags", "reserialize"], env=env, capture_output=True, text=True, timeout=300)
    assert parsed.returncode == 0, parsed.stderr[-2000:]
    listed = subprocess.run([script, "dags", "list", "--output", "plain"], env=env, capture_output=True,
                            text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "clv_daily_eligibility" in listed.stdout and "clv_monthly_refit" in listed.stdout
    errors = subprocess.run([script, "dags", "list-import-errors"], env=env, capture_output=True, text=True,
                            timeout=300)
    assert "No data found" in errors.stdout + errors.stderr or errors.stdout.strip() in ("", "[]")
    config = subprocess.run([script, "config", "get-value", "core", "load_examples"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert config.stdout.strip() == "False"
