"""More accounts than Airflow's default mapping limit (1,024) still map, one task per account."""

from __future__ import annotations

import pytest
import yaml

from tests.dags.conftest import airflow, airflow_environment, run_dag

pytestmark = pytest.mark.slow

N_ACCOUNTS = 1_100


@pytest.fixture(scope="module")
def many_accounts(tmp_path_factory):
    root = tmp_path_factory.mktemp("many")
    config = root / "config"
    (config / "accounts").mkdir(parents=True)
    (root / "orders.csv").write_text("order_id,customer_id,order_ts,amount\n")
    (config / "clv.yaml").write_text(yaml.safe_dump(
        {"store": "../store", "source": {"type": "files", "transactions": "../orders.csv"}}))
    for i in range(N_ACCOUNTS):
        (config / "accounts" / f"shop{i:04d}.yaml").write_text(f"account_id: shop{i:04d}\n")
    return root, config


def _deployment(root, config, name, **extra):
    home = root / name
    home.mkdir()
    env = airflow_environment(home, config, **({"CLV_RETRY_DELAY_SECONDS": "1"} | extra))
    airflow(env, "db", "migrate")
    airflow(env, "dags", "reserialize")
    return env


def test_eleven_hundred_accounts_map_to_eleven_hundred_checks(many_accounts):
    root, config = many_accounts
    env = _deployment(root, config, "ours")  # AIRFLOW__CORE__MAX_MAP_LENGTH as our deployments set it
    # The checks themselves are marked successful instead of run: this test is about the mapping.
    run = run_dag(env, "clv_daily_eligibility", "2025-06-01T00:00:00+00:00", mark_success="^check_eligibility$")
    checks = [t for t in run["tasks"] if t["task_id"] == "check_eligibility"]
    assert sorted(t["map_index"] for t in checks) == list(range(N_ACCOUNTS))
    assert {t["state"] for t in checks} == {"success"}


def test_airflow_default_limit_would_refuse_them(many_accounts):
    root, config = many_accounts
    env = _deployment(root, config, "default", AIRFLOW__CORE__MAX_MAP_LENGTH="1024")
    run = run_dag(env, "clv_daily_eligibility", "2025-06-01T00:00:00+00:00", mark_success="^check_eligibility$")
    states = {t["task_id"]: t["state"] for t in run["tasks"] if t["map_index"] == -1}
    assert states["list_accounts"] == "failed"
    assert not [t for t in run["tasks"] if t["task_id"] == "check_eligibility" and t["map_index"] >= 0]
