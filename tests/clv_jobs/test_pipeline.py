"""The jobs end to end on a simulated account: eligibility, refit, evolution, export, safety."""

from __future__ import annotations

import datetime as dt
import json
import threading
from pathlib import Path

import pandas as pd
import pytest
import yaml

from clv_jobs import pipeline
from clv_jobs.datamodel import COLUMNS, file_digest
from clv_jobs.errors import NotEligibleError, QuarantineLimitError
from clv_jobs.sample_data import SampleAccount, simulate_account, write_warehouse
from clv_jobs.settings import load_project
from clv_jobs.store import Store

pytestmark = pytest.mark.slow

AS_OF = dt.date(2025, 6, 1)
PREVIOUS_MONTH = dt.date(2025, 5, 1)
SHOP = SampleAccount("shop", n_buyers=2_000, history_days=800, seed=11)
YOUNG = SampleAccount("young", n_buyers=400, history_days=50, seed=12, bad_rows=False)


def _write_account(config: Path, account_id: str, **settings) -> None:
    body = {"account_id": account_id,
            "datamodel": {"destinations": [{"type": "local", "path": "../outbox"}]}} | settings
    (config / "accounts" / f"{account_id}.yaml").write_text(yaml.safe_dump(body))


@pytest.fixture(scope="module")
def project_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("project")
    samples = [simulate_account(SHOP, AS_OF), simulate_account(YOUNG, AS_OF)]
    write_warehouse(root / "warehouse.duckdb", samples)
    # The same orders as a plain CSV without account_id, for a strict account.
    samples[0].transactions.drop(columns="account_id").to_csv(root / "shop.csv", index=False)
    config = root / "config"
    (config / "accounts").mkdir(parents=True)
    project_settings = {"store": "../store", "source": {"type": "duckdb", "path": "../warehouse.duckdb"}}
    (config / "clv.yaml").write_text(yaml.safe_dump(project_settings))
    _write_account(config, "shop", timezone="Europe/Madrid")
    _write_account(config, "young")
    _write_account(config, "strict", quarantine_limit=0.001,
                   source={"type": "files", "transactions": "../shop.csv"})
    return root


@pytest.fixture(scope="module")
def project(project_dir):
    return load_project(project_dir / "config")


@pytest.fixture(scope="module")
def two_runs(project):
    """The previous month's run, then this month's: the second reads evolution from the first."""
    first = pipeline.refit(project, "shop", PREVIOUS_MONTH)
    second = pipeline.refit(project, "shop", AS_OF)
    return first, second


def _datamodel(project, summary) -> Path:
    store = Store(project.store_uri)
    return Path(store.run_path(summary["account"], dt.date.fromisoformat(summary["as_of"]),
                               summary["run_id"], summary["datamodel"]["file"]))


def test_eligibility_activates_once_and_records_every_check(project):
    first = pipeline.check_eligibility(project, "shop", AS_OF)
    again = pipeline.check_eligibility(project, "shop", AS_OF + dt.timedelta(days=1))
    assert first["eligible"] and first["newly_activated"] and first["activated_on"] == AS_OF.isoformat()
    assert again["eligible"] and not again["newly_activated"]
    store = Store(project.store_uri)
    assert store.last_eligibility("shop", AS_OF)["eligible"] is True
    assert store.activation("shop") == {"activated_on": AS_OF.isoformat()}


def test_young_account_is_not_eligible_and_refit_refuses(project):
    check = pipeline.check_eligibility(project, "young", AS_OF)
    assert not check["eligible"] and not check["newly_activated"]
    assert any("months" in reason for reason in check["reasons"])
    assert any("400 distinct buyers, needs 500" in reason for reason in check["reasons"])
    with pytest.raises(NotEligibleError, match="account young is not eligible as of 2025-06-01"):
        pipeline.refit(project, "young", AS_OF)
    assert Store(project.store_uri).latest_run("young") is None


def test_refit_scores_every_buyer_of_the_window(project, two_runs):
    _, summary = two_runs
    path = _datamodel(project, summary)
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert list(frame.columns) == list(COLUMNS)
    assert len(frame) == summary["buyers"] == summary["datamodel"]["rows"]
    assert frame["CustomerId"].is_unique and frame["CustomerId"].is_monotonic_increasing
    assert set(frame["ID_CLV_SEGMENT"].astype(int)) <= set(range(1, 12))
    assert set(frame["ID_CLV_SCORE"]) == {"1", "2", "3", "4", "5"}
    assert set(frame["CG_SEGMENT"]) == {"CONTROL", "TARGET"}
    assert file_digest(path)["sha256"] == summary["datamodel"]["sha256"]
    # Every buyer with a clean order in the 24-month window is there, and nobody else.
    scores = Store(project.store_uri).read_parquet(str(path.parent / "scores.parquet"))
    assert len(scores) == len(frame)
    assert summary["validation"]["rows_quarantined"] > 0  # the sample's bad rows, kept and reported
    quarantine = pd.read_parquet(path.parent / "quarantine.parquet")
    assert len(quarantine) == summary["validation"]["rows_quarantined"]


def test_second_run_reads_evolution_from_the_previous_one(project, two_runs):
    first, second = two_runs
    assert first["evolution"] == {"new": first["buyers"]}
    assert second["previous_run"] == first["run_id"]
    assert {"up", "down", "equal", "new"} <= set(second["evolution"])
    store = Store(project.store_uri)
    before = store.read_parquet(str(_datamodel(project, first).parent / "scores.parquet")).set_index("customer_id")
    after = store.read_parquet(str(_datamodel(project, second).parent / "scores.parquet")).set_index("customer_id")
    both = after.join(before["segment_id"].rename("previous"), how="left")
    expected = pd.Series("equal", index=both.index)
    expected[both["previous"].isna()] = "new"
    expected[both["segment_id"] < both["previous"]] = "up"
    expected[both["segment_id"] > both["previous"]] = "down"
    assert (both["evolution"] == expected).all()


def test_rerun_of_the_same_as_of_is_byte_identical(project, two_runs):
    _, summary = two_runs
    again = pipeline.refit(project, "shop", AS_OF)
    assert again["run_id"] == summary["run_id"]
    assert again["datamodel"]["sha256"] == summary["datamodel"]["sha256"]
    assert Store(project.store_uri).latest_run("shop")["run_id"] == summary["run_id"]


def test_full_history_fit_beside_the_backtest_gives_the_same_bytes(project, two_runs, monkeypatch):
    """From ``SIDE_BY_SIDE_MIN_BUYERS`` on, the full-history fit runs in a thread beside the backtest."""
    _, summary = two_runs
    threads = []
    fit_full_history = pipeline._fit_full_history

    def recorded(*args):
        threads.append(threading.current_thread().name)
        return fit_full_history(*args)

    monkeypatch.setattr(pipeline, "_fit_full_history", recorded)
    monkeypatch.setattr(pipeline, "SIDE_BY_SIDE_MIN_BUYERS", 0)
    beside = pipeline.refit(project, "shop", AS_OF)
    monkeypatch.setattr(pipeline, "SIDE_BY_SIDE_MIN_BUYERS", 10**9)
    after = pipeline.refit(project, "shop", AS_OF)
    assert threads[0].startswith("clv-fit") and threads[1] == threading.main_thread().name
    for run in (beside, after):
        assert (run["run_id"], run["datamodel"]["sha256"]) == (summary["run_id"], summary["datamodel"]["sha256"])


def test_the_stages_as_separate_tasks_give_the_refits_bytes(project, two_runs):
    """Airflow's tasks hand over through ``work/`` and score from ``model.json``; a refit in memory, from its fit."""
    _, summary = two_runs
    run = pipeline.validate(project, "shop", AS_OF)
    for stage in (pipeline.features, pipeline.fit, pipeline.score, pipeline.datamodel):
        run = stage(project, run)
    tasks = pipeline.publish(project, run)
    assert (tasks["run_id"], tasks["datamodel"]["sha256"]) == (summary["run_id"], summary["datamodel"]["sha256"])


def test_export_delivers_file_then_manifest_idempotently(project, two_runs):
    _, summary = two_runs
    first = pipeline.export(project, "shop", AS_OF)
    second = pipeline.export(project, "shop", AS_OF)
    outbox = Path(first["deliveries"][0]["path"]).parent
    names = sorted(p.name for p in outbox.iterdir() if p.name.startswith("clv_datamodel_shop_"))
    assert names == ["clv_datamodel_shop_20250601.csv", "clv_datamodel_shop_20250601.csv.manifest.json"]
    assert not [p for p in outbox.iterdir() if p.name.startswith(".")]  # no temporary file left
    manifest = json.loads((outbox / names[1]).read_text())
    delivered = file_digest(outbox / names[0])
    assert manifest["sha256"] == delivered["sha256"] == summary["datamodel"]["sha256"]
    assert manifest["bytes"] == delivered["bytes"] and manifest["rows"] == summary["buyers"]
    assert manifest["as_of"] == "2025-06-01" and manifest["model_version"].startswith("pareto_nbd@")
    assert first == second


def test_quarantine_above_limit_fails_before_publishing(project):
    with pytest.raises(QuarantineLimitError) as error:
        pipeline.refit(project, "strict", AS_OF)
    message = str(error.value)
    assert "account strict" in message and "limit 0.10%" in message and "nothing was published" in message
    for reason in ("missing_customer_id", "unparseable_timestamp", "future_timestamp", "invalid_amount",
                   "cancelled"):
        assert reason in message
    assert "@" not in message  # no email (nor anything like one) in errors
    assert Store(project.store_uri).latest_run("strict") is None


def test_job_killed_while_publishing_leaves_previous_run_current(project, two_runs, monkeypatch):
    _, summary = two_runs
    store_cls = pipeline.Store
    original = store_cls.publish_run

    def killed(self, *args, **kwargs):
        raise KeyboardInterrupt("killed")  # the process dies before the pointer moves

    monkeypatch.setattr(store_cls, "publish_run", killed)
    with pytest.raises(KeyboardInterrupt):
        pipeline.refit(project, "shop", AS_OF + dt.timedelta(days=14))
    monkeypatch.setattr(store_cls, "publish_run", original)
    store = Store(project.store_uri)
    assert store.latest_run("shop")["run_id"] == summary["run_id"]
    assert store.run_for("shop", AS_OF + dt.timedelta(days=14)) is None
    exported = pipeline.export(project, "shop")
    assert exported["run_id"] == summary["run_id"]


def test_a_large_accounts_backtest_buyers_get_their_calibration_columns_from_a_second_pass(tmp_path, monkeypatch):
    """Above ``backtest_max_buyers`` the features stage's pass carries only ``cal_days``, and
    a second pass over the sampled buyers their calibration columns: the very rows of one
    pass with every column (same sample, same values), in memory and through ``work/``."""
    from clv_jobs import backtest

    sample = simulate_account(SampleAccount("big", n_buyers=14_000, history_days=700, seed=21, bad_rows=False),
                              AS_OF)
    monkeypatch.setattr(pipeline, "SECOND_PASS_SAMPLES", 2)  # 10,000 sampled of ~34,000 orders
    passes = []

    def feature_table(*args, **kwargs):
        passes.append(kwargs.get("calibration_days_only", False))
        return real_feature_table(*args, **kwargs)

    real_feature_table = pipeline.feature_table
    monkeypatch.setattr(pipeline, "feature_table", feature_table)
    write_warehouse(tmp_path / "warehouse.duckdb", [sample])
    config = tmp_path / "config"
    (config / "accounts").mkdir(parents=True)
    (config / "clv.yaml").write_text(yaml.safe_dump(
        {"store": "../store", "source": {"type": "duckdb", "path": "../warehouse.duckdb"}}))
    _write_account(config, "big", model={"transaction_model": "bg_nbd", "backtest_max_buyers": 10_000})
    project = load_project(config)

    def calibration(rows_clean=None, in_memory=True):
        memory = {} if in_memory else None
        run = pipeline.validate(project, "big", AS_OF, force=True, memory=memory)
        run = run | ({"rows_clean": rows_clean} if rows_clean is not None else {})
        run = pipeline.features(project, run, memory=memory)
        if in_memory:
            return memory["calibration"]
        store = Store(project.store_uri)
        return store.read_arrow(store.run_path("big", AS_OF, run["run_id"], "work/calibration.parquet"))

    two_passes = calibration()
    assert passes == [True, False]  # cal_days alone, then every column of the sampled buyers
    one_pass = calibration(rows_clean=0)  # as few clean orders as buyers sampled: one pass with every column
    assert passes[2:] == [False]
    buyers = int(two_passes.schema.metadata[b"calibration_buyers"])
    assert two_passes.num_rows == 10_000 < buyers
    assert two_passes.equals(one_pass, check_metadata=True)
    assert calibration(in_memory=False).equals(two_passes, check_metadata=True)

    summary = pipeline.refit(project, "big", AS_OF, force=True)
    assert summary["backtest"]["customers"] == 10_000 and summary["backtest"]["calibration_buyers"] == buyers
    split = backtest.holdout_split(two_passes, AS_OF - dt.timedelta(days=90), 90, "D")
    assert summary["backtest"]["holdout_buyers"] == int((split.holdout_purchases > 0).sum())
