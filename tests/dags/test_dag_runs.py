"""Both DAGs run with ``dag.test()`` on sample data, in a fresh Airflow home (SQLite)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from clv_jobs.datamodel import COLUMNS
from tests.dags.conftest import airflow, airflow_environment, run_dag

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, sample_project):
    """A migrated Airflow home with the DAGs serialized, on a private copy of the sample project."""
    root = tmp_path_factory.mktemp("deployment")
    project = root / "project"
    shutil.copytree(sample_project.parent, project, ignore=shutil.ignore_patterns("store", "outbox"))
    home = root / "airflow"
    home.mkdir()
    env = airflow_environment(home, project / "config", CLV_RETRY_DELAY_SECONDS="1")
    airflow(env, "db", "migrate")
    airflow(env, "dags", "reserialize")
    return {"env": env, "home": home, "project": project}


def states(run: dict) -> dict[tuple[str, str | None], str]:
    """(task id, account) -> state; tasks that never ran carry no label, so the map index decides."""
    accounts = {}
    for t in run["tasks"]:
        if t["map_index"] >= 0 and t["label"] and not t["label"].isdigit():
            accounts[(t["task_id"].split(".")[0], t["map_index"])] = t["label"]
    return {(t["task_id"], accounts.get((t["task_id"].split(".")[0], t["map_index"])) if t["map_index"] >= 0
             else None): t["state"] for t in run["tasks"]}


@pytest.fixture(scope="module")
def daily_run(deployment):
    return run_dag(deployment["env"], "clv_daily_eligibility", "2025-06-01T00:00:00+00:00")


@pytest.fixture(scope="module")
def monthly_run(deployment, daily_run):
    return run_dag(deployment["env"], "clv_monthly_refit", "2025-06-01T03:00:00+00:00",
                   {"accounts": ["broken", "shop", "young"], "as_of": "2025-06-01"})


def test_daily_checks_every_account_and_the_broken_one_fails_alone(daily_run):
    got = states(daily_run)
    assert got[("list_accounts", None)] == "success"
    assert got[("check_eligibility", "shop")] == "success"
    assert got[("check_eligibility", "young")] == "success"
    assert got[("check_eligibility", "broken")] == "failed"
    assert got[("first_refit_conf", None)] == "success"
    assert got[("trigger_first_refit", None)] == "success"
    assert got[("report", None)] == "failed"  # reports every account, then fails for broken
    assert daily_run["state"] == "failed"
    assert "required column(s) amount missing" in daily_run["log"]


def test_daily_activates_shop_and_triggers_its_first_refit(deployment, daily_run):
    store = deployment["project"] / "store"
    assert json.loads((store / "shop" / "activation.json").read_text()) == {"activated_on": "2025-06-01"}
    assert not (store / "young" / "activation.json").exists()
    assert json.loads((store / "young" / "eligibility" / "2025-06-01.json").read_text())["eligible"] is False
    with sqlite3.connect(deployment["home"] / "airflow.db") as db:
        triggered = db.execute("SELECT conf FROM dag_run WHERE dag_id = 'clv_monthly_refit'").fetchall()
    assert [json.loads(conf) for (conf,) in triggered] == [
        {"accounts": ["shop"], "as_of": "2025-06-01", "deliver": True, "force": False}]


def test_monthly_refits_each_account_and_one_failure_blocks_no_other(monthly_run):
    got = states(monthly_run)
    for stage in ("validate", "features", "fit", "score", "datamodel", "publish", "export"):
        assert got[(f"refit_account.{stage}", "shop")] == "success", stage
        assert got[(f"refit_account.{stage}", "young")] == "skipped", stage  # not eligible: keeps nothing
    assert got[("refit_account.validate", "broken")] == "failed"
    assert got[("refit_account.features", "broken")] == "upstream_failed"
    assert got[("summary", None)] == "failed"
    assert monthly_run["state"] == "failed"
    for line in ("refit | shop", "delivered", "refit | young", "skipped", "refit | broken", "failed"):
        assert line in monthly_run["log"]


def test_monthly_delivers_the_datamodel(deployment, monthly_run):
    outbox = deployment["project"] / "outbox"
    datamodel = outbox / "clv_datamodel_shop_20250601.csv"
    frame = pd.read_csv(datamodel, dtype=str, keep_default_na=False)
    assert list(frame.columns) == list(COLUMNS) and len(frame) > 1000
    manifest = json.loads((outbox / "clv_datamodel_shop_20250601.csv.manifest.json").read_text())
    assert manifest["rows"] == len(frame) and manifest["as_of"] == "2025-06-01"
    assert sorted(p.name for p in outbox.iterdir()) == [datamodel.name, datamodel.name + ".manifest.json"]


def test_listener_records_each_account_task_outcome(deployment, monthly_run):
    store = Path(deployment["project"]) / "store"
    runs = list((store / "shop" / "airflow" / "clv_monthly_refit").iterdir())
    assert len(runs) == 1
    recorded = {p.stem: json.loads(p.read_text()) for p in runs[0].glob("*.json")}
    assert {k: v["state"] for k, v in recorded.items()} == {
        f"refit_account.{s}": "success"
        for s in ("validate", "features", "fit", "score", "datamodel", "publish", "export")}
    [broken] = (store / "broken" / "airflow" / "clv_monthly_refit").iterdir()
    failure = json.loads((broken / "refit_account.validate.json").read_text())
    assert failure["state"] == "failed" and "amount missing" in failure["error"]


def test_scheduled_monthly_run_refits_activated_accounts_with_evolution(deployment, monthly_run):
    run = run_dag(deployment["env"], "clv_monthly_refit", "2025-07-01T03:00:00+00:00")
    got = states(run)
    assert {label for (_, label) in got if label} == {"shop"}  # only the activated account
    assert run["state"] == "success" and got[("summary", None)] == "success"
    summaries = list((deployment["project"] / "store" / "shop" / "runs" / "2025-07-01").glob("*/summary.json"))
    summary = json.loads(summaries[0].read_text())
    assert summary["as_of"] == "2025-07-01" and summary["previous_run"].startswith("20250601-")
    assert {"up", "down", "equal"} <= set(summary["evolution"])
