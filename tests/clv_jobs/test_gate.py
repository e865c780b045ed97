"""The quality gate (clv_jobs.gate) and what a refit does when it fails.

* Unit checks on rebuilt models (no fit): parameters at bounds or absurd, MCMC
  diagnostics, non-finite predictions; the convergence check on a MAP fit stopped early.
* Whole refits on simulated accounts, with faults injected where noted:
  - non-finite parameters (injected) keep the previous model: the run is flagged, every
    buyer is still rescored (with the previous parameters) and delivered, the rejected fit
    is stored, the CLI shows the flag, the DAG's report fails naming the account;
  - data that cannot be fitted (a real file) keeps the previous model too;
  - a fit that backtests much worse than the previous model (injected) is rejected;
  - a first model that fails the gate publishes nothing and says why.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from clv_jobs import backtest, cli, gate, pipeline
from clv_jobs.errors import ModelError
from clv_jobs.features import RFM_COLUMNS
from clv_jobs.model import fit_models, models_from_parameters, score_customers
from clv_jobs.reporting import AccountsFailed, record_outcome, refit_report
from clv_jobs.sample_data import SampleAccount, simulate_account, write_warehouse
from clv_jobs.settings import ModelSettings, load_project
from clv_jobs.store import Store

MAY, MAY_15, JUNE = dt.date(2025, 5, 1), dt.date(2025, 5, 15), dt.date(2025, 6, 1)
SHOP = SampleAccount("shop", n_buyers=2_000, history_days=800, seed=61)
FRESH = SampleAccount("fresh", n_buyers=1_500, history_days=700, seed=62)
FILES_SHOP = SampleAccount("files_shop", n_buyers=1_500, history_days=700, seed=63)

# BG/NBD + Gamma-Gamma parameters of the simulator's defaults (days): sane predictions.
SANE = {"bg_nbd": {"r": 0.25, "alpha": 28.0, "a": 0.8, "b": 2.4}, "gamma_gamma": {"p": 6.0, "q": 3.8, "v": 15.0}}


def _rfm(account: SampleAccount, as_of: dt.date = JUNE) -> pd.DataFrame:
    from clv_jobs import features, sources

    sample = simulate_account(account, as_of)
    orders = sample.transactions.assign(order_ts=pd.to_datetime(sample.transactions["order_ts"], errors="coerce"))
    con = sources.connect()
    try:
        con.register("orders_in", orders[["customer_id", "order_id", "order_ts", "amount"]])
        con.execute("CREATE TABLE transactions AS SELECT * FROM orders_in WHERE order_ts < $as_of",
                    {"as_of": dt.datetime.combine(as_of, dt.time())})
        return features.rfm_frame(features.build_features(con, as_of, "UTC", 24))
    finally:
        con.close()


@pytest.fixture(scope="module")
def small_rfm() -> pd.DataFrame:
    return _rfm(SampleAccount("unit", n_buyers=800, history_days=600, seed=64, bad_rows=False))


# --- unit checks on rebuilt models -------------------------------------------------------

def _settings(**model) -> ModelSettings:
    return ModelSettings(**({"transaction_model": "bg_nbd"} | model))


def test_sane_parameters_pass(small_rfm):
    models = models_from_parameters("bg_nbd", SANE)
    verdict = gate.evaluate(models, None, small_rfm, _settings(fit_method="mcmc"), {"skipped": "test"})
    assert verdict.passed and verdict.reasons == []
    assert verdict.checks["invalid_predictions"] == {"p_alive": 0, "expected purchases": 0, "expected spend": 0}


def test_absurd_and_non_finite_parameters_fail(small_rfm):
    absurd = {"bg_nbd": SANE["bg_nbd"] | {"b": 5e7}, "gamma_gamma": SANE["gamma_gamma"] | {"p": 1e-9}}
    verdict = gate.evaluate(models_from_parameters("bg_nbd", absurd), None, small_rfm,
                            _settings(fit_method="mcmc"), {"skipped": "test"})
    assert not verdict.passed
    assert "bg_nbd.b = 5e+07 is absurd (outside [1e-06, 1e+06])" in verdict.reasons
    assert "gamma_gamma.p = 1e-09 is absurd (outside [1e-06, 1e+06])" in verdict.reasons

    nan = {"bg_nbd": SANE["bg_nbd"] | {"r": float("nan")}, "gamma_gamma": SANE["gamma_gamma"]}
    verdict = gate.evaluate(models_from_parameters("bg_nbd", nan), None, small_rfm, _settings(), {"skipped": "test"})
    assert "bg_nbd.r is not finite (nan)" in verdict.reasons
    assert any(r.startswith(f"expected purchases non-finite or out of range for {len(small_rfm)} of")
               for r in verdict.reasons)


def test_parameter_at_a_bound_of_its_prior_fails(small_rfm):
    # Default priors put kappa_dropout = a + b on a Pareto(m=1) prior: its support starts at 1.
    at_bound = {"bg_nbd": SANE["bg_nbd"] | {"a": 0.25, "b": 0.75 + 1e-9}, "gamma_gamma": SANE["gamma_gamma"]}
    verdict = gate.evaluate(models_from_parameters("bg_nbd", at_bound), None, small_rfm, _settings(),
                            {"skipped": "test"})
    assert any(r.startswith("bg_nbd.kappa_dropout = 1 is at its lower bound 1") for r in verdict.reasons), \
        verdict.reasons


def test_mcmc_diagnostics_are_checked_when_present(small_rfm):
    models = models_from_parameters("bg_nbd", SANE)
    models = dataclasses.replace(models, diagnostics={"r_hat_max": 1.05, "ess_bulk_min": 120.0})
    verdict = gate.evaluate(models, None, small_rfm, _settings(fit_method="mcmc"), {"skipped": "test"})
    assert verdict.reasons == ["r_hat_max 1.05 > 1.01 (chains disagree)",
                               "ess_bulk_min 120 < 400 (too few effective draws)"]
    good = dataclasses.replace(models, diagnostics={"r_hat_max": 1.002, "ess_bulk_min": 900.0})
    assert gate.evaluate(good, None, small_rfm, _settings(fit_method="mcmc"), {"skipped": "test"}).passed


def test_degradation_against_the_previous_model_on_the_same_holdout(small_rfm):
    models = models_from_parameters("bg_nbd", SANE)
    record = {"model": {"purchases_mae": 0.33}}
    previous = {"run_id": "20250501-x", "transaction_model": "bg_nbd", "metrics": {"purchases_mae": 0.30}}
    settings = _settings(fit_method="mcmc")
    assert gate.evaluate(models, None, small_rfm, settings, record, previous).passed  # 10 % worse: the limit
    worse = gate.evaluate(models, None, small_rfm, settings, {"model": {"purchases_mae": 0.3301}}, previous)
    assert worse.reasons == ["backtest purchase MAE 0.3301 is 10.0% worse than the previous model's 0.3 "
                             "(bg_nbd of run 20250501-x) on this run's holdout (limit 10%)"]


@pytest.mark.slow
def test_map_fit_stopped_early_is_not_converged(small_rfm):
    from pymc_marketing.clv import BetaGeoModel

    models = fit_models(small_rfm, _settings())
    converged = gate.map_convergence("bg_nbd", models.parameters["bg_nbd"], small_rfm, "default")
    assert converged["converged"] and converged["concave"] and converged["distance_sd"] < 0.01
    assert gate.evaluate(models, None, small_rfm, _settings(), {"skipped": "test"}).passed

    early = BetaGeoModel()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        early.fit(small_rfm[["customer_id", "frequency", "recency", "T"]], method="map", progressbar=False,
                  map_kwargs={"maxeval": 6})  # the optimiser is stopped after 6 evaluations
    stopped = {"bg_nbd": {p: float(early.fit_result[p].values.mean()) for p in ("r", "alpha", "a", "b")},
               "gamma_gamma": models.parameters["gamma_gamma"]}
    result = gate.map_convergence("bg_nbd", stopped["bg_nbd"], small_rfm, "default")
    assert not result["converged"]
    assert result["distance_sd"] > gate.MAX_NEWTON_DISTANCE_SD and result["newton_step"] > gate.MAX_NEWTON_STEP
    verdict = gate.evaluate(dataclasses.replace(models, parameters=stopped), None, small_rfm, _settings(),
                            {"skipped": "test"})
    assert [r for r in verdict.reasons if "did not converge" in r] == [
        next(r for r in verdict.reasons if r.startswith("bg_nbd MAP fit did not converge: Newton step"))]


# --- whole refits --------------------------------------------------------------------------

def _write_account(config: Path, account_id: str, **settings) -> None:
    body = {"account_id": account_id, "model": {"transaction_model": "bg_nbd"},
            "datamodel": {"destinations": [{"type": "local", "path": "../outbox"}]}} | settings
    (config / "accounts" / f"{account_id}.yaml").write_text(yaml.safe_dump(body))


@pytest.fixture(scope="module")
def samples():
    return {account.account_id: simulate_account(account, JUNE) for account in (SHOP, FRESH, FILES_SHOP)}


@pytest.fixture(scope="module")
def project(tmp_path_factory, samples):
    root = tmp_path_factory.mktemp("gate")
    write_warehouse(root / "warehouse.duckdb", [samples["shop"], samples["fresh"]])
    samples["files_shop"].transactions.to_csv(root / "files_shop.csv", index=False)
    config = root / "config"
    (config / "accounts").mkdir(parents=True)
    (config / "clv.yaml").write_text(yaml.safe_dump(
        {"store": "../store", "source": {"type": "duckdb", "path": "../warehouse.duckdb"}}))
    _write_account(config, "shop")
    _write_account(config, "fresh")
    _write_account(config, "files_shop", source={"type": "files", "transactions": "../files_shop.csv"})
    return load_project(config)


@pytest.fixture(scope="module")
def first_run(project):
    """The previous month's run of ``shop``: a sane fit, published."""
    summary = pipeline.refit(project, "shop", MAY)
    assert summary["status"] == "published" and summary["gate"]["passed"] is True
    return summary


def _model_json(project, summary) -> dict:
    store = Store(project.store_uri)
    return store.read_json(store.run_path(summary["account"], dt.date.fromisoformat(summary["as_of"]),
                                          summary["run_id"], "model.json"))


def _nan_fit(rfm, settings):
    """Fault injection: the full-history fit comes back with a non-finite parameter."""
    name = settings.transaction_model
    parameters = {name: SANE[name] | {"r": float("nan")}, "gamma_gamma": SANE["gamma_gamma"]}
    return models_from_parameters(name, parameters)


@pytest.fixture(scope="module")
def kept_run(project, first_run):
    """June's refit of ``shop`` with a non-finite parameter injected, run through the CLI."""
    out = io.StringIO()
    handlers, level = logging.root.handlers[:], logging.getLogger("clv_jobs").level
    try:
        with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out):
            patch.setattr(pipeline, "fit_models", _nan_fit)
            code = cli.main(["--config-dir", str(project.config_dir), "refit", "--account", "shop",
                             "--as-of", JUNE.isoformat()])
    finally:
        logging.root.handlers[:] = handlers
        logging.getLogger("clv_jobs").setLevel(level)
    assert code == 0, out.getvalue()
    store = Store(project.store_uri)
    pointer = store.run_for("shop", JUNE)
    summary = store.read_json(store.run_path("shop", JUNE, pointer["run_id"], "summary.json"))
    return {"summary": summary, "stdout": out.getvalue()}


@pytest.mark.slow
def test_non_finite_fit_keeps_the_previous_model_and_flags_the_run(project, first_run, kept_run):
    summary = kept_run["summary"]
    previous = Store(project.store_uri).previous_run("shop", JUNE)
    assert summary["status"] == "published_with_previous_model"
    assert summary["gate"]["passed"] is False and summary["gate"]["model_used"] == previous["run_id"]
    assert "bg_nbd.r is not finite (nan)" in summary["gate"]["reasons"]
    # The scores come from the first run's fit, and say so.
    assert summary["model"] == "bg_nbd" and summary["model_version"] == f"bg_nbd@{first_run['run_id']}"
    stored = _model_json(project, summary)
    assert stored["parameters"] == _model_json(project, first_run)["parameters"]
    assert stored["model_origin"] == first_run["run_id"]
    # Nothing is lost: the rejected fit is kept beside the reasons.
    assert stored["rejected"]["model"] == "bg_nbd" and stored["rejected"]["parameters"]["bg_nbd"]["r"] == "nan"
    assert stored["rejected"]["reasons"] == summary["gate"]["reasons"]
    assert summary["backtest"]["model"]["purchases_mae"] > 0  # the backtest itself ran as usual


@pytest.mark.slow
def test_kept_model_still_scores_and_delivers_every_buyer(project, samples, first_run, kept_run):
    summary = kept_run["summary"]
    store = Store(project.store_uri)
    folder = Path(store.run_path("shop", JUNE, summary["run_id"]))
    datamodel = pd.read_csv(folder / summary["datamodel"]["file"], dtype=str, keep_default_na=False)
    orders = samples["shop"].transactions
    ts = pd.to_datetime(orders["order_ts"], errors="coerce")
    clean = (orders["customer_id"].notna() & (orders["status"] == "completed") & np.isfinite(orders["amount"])
             & (orders["amount"] >= 0) & (ts >= pd.Timestamp("2023-06-01")) & (ts < pd.Timestamp("2025-06-01")))
    assert sorted(datamodel["CustomerId"]) == sorted(orders.loc[clean, "customer_id"].unique())
    assert summary["buyers"] == len(datamodel) == summary["datamodel"]["rows"]
    # Every buyer is scored with the previous parameters.
    scores = store.read_parquet(str(folder / "scores.parquet"))
    expected = score_customers(models_from_parameters("bg_nbd", _model_json(project, first_run)["parameters"]),
                               scores[RFM_COLUMNS])
    np.testing.assert_allclose(scores["clv"], expected["clv"], rtol=1e-9)
    np.testing.assert_allclose(scores["p_alive"], expected["p_alive"], rtol=1e-9)
    assert set(scores["evolution"]) >= {"up", "down", "equal"}
    delivered = pipeline.export(project, "shop", JUNE)
    manifest = json.loads(Path(delivered["deliveries"][0]["manifest"]).read_text())
    assert manifest["model_version"] == f"bg_nbd@{first_run['run_id']}" and manifest["rows"] == len(datamodel)


@pytest.mark.slow
def test_cli_shows_the_flag(kept_run, first_run):
    table, _, after = kept_run["stdout"].partition("└")
    assert "FAILED:" in table and "published_with_previous_model" not in table  # the gate column
    text = " ".join(after.split())
    assert (f"WARNING shop: the refit failed the quality gate; every buyer was rescored with the previous model "
            f"bg_nbd@{first_run['run_id']} (run status published_with_previous_model)") in text
    assert "bg_nbd.r is not finite (nan)" in text


@pytest.mark.slow
def test_dag_report_fails_naming_the_account_after_every_account_completed(project, first_run, kept_run):
    store = Store(project.store_uri)
    stages = ("validate", "features", "fit", "score", "datamodel", "publish", "export")
    for stage in stages:
        record_outcome(store, "shop", "clv_monthly_refit", "manual__x", f"refit_account.{stage}",
                       {"state": "success", "error": None, "hostname": "h"})
    jobs = [{"account": "shop", "as_of": JUNE.isoformat()}]
    with pytest.raises(AccountsFailed) as failed:
        refit_report(project, jobs, "clv_monthly_refit", "manual__x")
    message = str(failed.value)
    assert message.startswith("refit: 1 of 1 account(s) published with the previous model because their refit "
                              "failed the quality gate")
    assert message.endswith(": shop")
    # A run whose gate passed reports as before.
    for stage in stages:
        record_outcome(store, "shop", "clv_monthly_refit", "manual__may", f"refit_account.{stage}",
                       {"state": "success", "error": None, "hostname": "h"})
    report = refit_report(project, [{"account": "shop", "as_of": MAY.isoformat()}], "clv_monthly_refit",
                          "manual__may")
    assert report["counts"] == {"delivered": 1}


@pytest.mark.slow
def test_data_that_cannot_be_fitted_keeps_the_previous_model(project, tmp_path):
    first = pipeline.refit(project, "files_shop", MAY)
    assert first["status"] == "published"
    # The account's file now holds 600 one-time buyers and one buyer with 3 orders:
    # eligible, but no Gamma-Gamma fit is possible (it needs 10 repeat buyers).
    rows = [{"order_id": f"x{i}", "customer_id": f"n{i:04d}", "order_ts": f"2025-0{1 + i % 5}-10 12:00:00",
             "amount": 10.0 + i % 7} for i in range(600)]
    rows += [{"order_id": f"l{i}", "customer_id": "loyal", "order_ts": f"2025-0{2 + i}-03 12:00:00", "amount": 20.0}
             for i in range(3)]
    pd.DataFrame(rows).to_csv(project.config_dir.parent / "files_shop.csv", index=False)
    summary = pipeline.refit(project, "files_shop", JUNE)
    assert summary["status"] == "published_with_previous_model"
    assert summary["gate"]["reasons"] == [
        "fit failed: only 1 repeat buyers with spend: the Gamma-Gamma spend model needs at least 10"]
    assert summary["backtest"] == {"skipped": "no repeat buyer before the split date 2025-03-03"}
    assert summary["buyers"] == summary["datamodel"]["rows"] == 601
    stored = _model_json(project, summary)
    assert stored["parameters"] == _model_json(project, first)["parameters"]
    assert stored["rejected"]["parameters"] is None


@pytest.mark.slow
def test_fit_that_backtests_much_worse_than_the_previous_model_is_rejected(project, first_run, monkeypatch):
    real_fit = backtest.fit_models

    def inflated(rfm, settings):
        """Fault injection: the calibration fit predicts ten times the purchases."""
        models = real_fit(rfm, settings)
        name = settings.transaction_model
        return models_from_parameters(name, models.parameters | {name: models.parameters[name]
                                                                  | {"r": models.parameters[name]["r"] * 10}})

    monkeypatch.setattr(backtest, "fit_models", inflated)
    summary = pipeline.refit(project, "shop", MAY_15)
    previous = summary["backtest"]["previous"]
    assert previous["run_id"] == first_run["run_id"] and previous["transaction_model"] == "bg_nbd"
    mae, previous_mae = summary["backtest"]["model"]["purchases_mae"], previous["metrics"]["purchases_mae"]
    assert mae > 2 * previous_mae
    assert summary["status"] == "published_with_previous_model"
    [reason] = summary["gate"]["reasons"]  # the full-history fit itself is fine
    assert reason.startswith(f"backtest purchase MAE {mae:.4g} is ") and "worse than the previous model's" in reason
    assert summary["model_version"] == f"bg_nbd@{first_run['run_id']}"


@pytest.mark.slow
def test_first_model_failing_the_gate_publishes_nothing(project, monkeypatch):
    monkeypatch.setattr(pipeline, "fit_models", _nan_fit)
    with pytest.raises(gate.QualityGateError) as failed:
        pipeline.refit(project, "fresh", JUNE)
    assert isinstance(failed.value, ModelError) and failed.value.exit_code == 4
    message = str(failed.value)
    assert message.startswith("account fresh: the bg_nbd model fails the quality gate and there is no previous "
                              "model to keep, so nothing was published: ")
    assert "bg_nbd.r is not finite (nan)" in message
    store = Store(project.store_uri)
    assert store.latest_run("fresh") is None and store.run_for("fresh", JUNE) is None
