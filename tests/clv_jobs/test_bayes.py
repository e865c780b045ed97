"""Tests for the Bayesian mode (``fit_method: mcmc``): clv_jobs.bayes and its use in clv_jobs.model.

(That the weighted-pattern models are pymc-marketing's is tests/clv_jobs/test_patterns.py.)

1. A full-posterior fit of simulated BG/NBD + Gamma-Gamma data converges (R-hat, ESS,
   no divergence), and its per-customer CLV intervals are calibrated: the simulated
   customers' true CLV falls in their P10-P90 interval as often as the model says.
2. Intervals are ordered and centred; a model rebuilt from ``model.json`` scores exactly
   as the fitting process; MAP mode is unchanged.
3. A Bayesian refit through the pipeline: intervals and posterior published, r-hat and
   ESS gated (a failing fit keeps the previous posterior, a failing first one publishes
   nothing).

Tests that sample or optimise are ``slow`` (about a minute in all on two cores).
"""

from __future__ import annotations

import datetime as dt
import json
import warnings

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose

from clv_jobs import bayes, features, patterns
from clv_jobs.model import (
    DAYS_PER_MONTH,
    INTERVAL_COLUMNS,
    SPEND_PARAMETERS,
    TRANSACTION_PARAMETERS,
    _draw_matrix,
    _flat_draws,
    _values,
    fit_models,
    models_from_parameters,
    score_customers,
)
from clv_jobs.sample_data import SampleAccount, simulate_account
from clv_jobs.settings import McmcSettings, ModelSettings
from tests.clv_jobs.helpers import orders_session, pymc_marketing_scores

# --- 1. a full-posterior fit of simulated data -----------------------------------------

SIM_AS_OF = dt.date(2025, 6, 1)
SIM_TRUTH = {"r": 0.25, "alpha": 28.0, "a": 0.8, "b": 2.4, "p": 6.0, "q": 3.8, "v": 15.0}
SIM_BUYERS = 10_000
SIM_SEED = 3
HORIZON_MONTHS = 12


@pytest.fixture(scope="module")
def simulated():
    """10,000 buyers of the BG/NBD + Gamma-Gamma simulator: (rfm, truth in rfm order)."""
    account = SampleAccount("bayes", n_buyers=SIM_BUYERS, history_days=900, seed=SIM_SEED, bad_rows=False,
                            **SIM_TRUTH)
    sample = simulate_account(account, SIM_AS_OF)
    orders = sample.transactions.assign(
        order_ts=pd.to_datetime(sample.transactions["order_ts"], format="%Y-%m-%d %H:%M:%S"))
    con = orders_session(orders[orders["order_ts"] < pd.Timestamp(SIM_AS_OF)])
    try:
        # 36 months cover the 900 days of history: every simulated purchase is in.
        rfm = features.rfm_frame(features.build_features(con, SIM_AS_OF, "UTC", 36, time_unit="D"))
    finally:
        con.close()
    truth = sample.truth.set_index("customer_id").loc[rfm["customer_id"]].reset_index()
    return rfm, truth


@pytest.fixture(scope="module")
def bayes_fit(simulated):
    rfm, _ = simulated
    settings = ModelSettings(transaction_model="bg_nbd", fit_method="mcmc", mcmc=McmcSettings(seed=11))
    return fit_models(rfm, settings)


@pytest.fixture(scope="module")
def bayes_scores(bayes_fit, simulated):
    return score_customers(bayes_fit, simulated[0], HORIZON_MONTHS, 0.0, "D")


@pytest.mark.slow
def test_mcmc_fit_converges(bayes_fit):
    diagnostics = bayes_fit.diagnostics
    # Over every sampled variable of both models (phi_dropout, kappa_dropout, a, b, r, alpha,
    # p, q, v): the quality gate's defaults are r_hat <= 1.01 and bulk ESS >= 400.
    assert diagnostics["r_hat_max"] < 1.01, diagnostics["r_hat_max_parameter"]
    assert diagnostics["ess_bulk_min"] > 1_000, diagnostics["ess_bulk_min_parameter"]  # 2,000 draws, low-rank NUTS
    assert diagnostics["divergences"] == 0
    assert (diagnostics["sampler"], diagnostics["chains"], diagnostics["draws"]) == ("nutpie", 2, 1000)
    assert diagnostics["predictive_draws"] == 400
    assert diagnostics["transaction_patterns"] < 0.7 * diagnostics["customers"]
    assert diagnostics["fit_seconds"] > 0


@pytest.mark.slow
def test_mcmc_posterior_means_recover_the_simulated_parameters(bayes_fit):
    # As test_model's MAP recovery: the calendar-day RFM convention biases alpha up ~5 %.
    fitted = bayes_fit.parameters["bg_nbd"] | bayes_fit.parameters["gamma_gamma"]
    tolerance = {"r": 0.10, "alpha": 0.15, "a": 0.25, "b": 0.30, "p": 0.30, "q": 0.15, "v": 0.35}
    for name, value in SIM_TRUTH.items():
        assert fitted[name] == pytest.approx(value, rel=tolerance[name]), name
    gg = bayes_fit.parameters["gamma_gamma"]
    truth_mean_spend = SIM_TRUTH["p"] * SIM_TRUTH["v"] / (SIM_TRUTH["q"] - 1)
    assert gg["p"] * gg["v"] / (gg["q"] - 1) == pytest.approx(truth_mean_spend, rel=0.04)


def _true_clv(truth: pd.DataFrame) -> np.ndarray:
    """Each simulated customer's true expected spend over the next 12 months.

    From the simulator's latent truth of that customer: alive at the as-of date, purchase
    rate lambda (per day), dropout probability p after each purchase, mean order amount:
    ``alive * (1 - exp(-lambda p t)) / p * mean_spend`` is BG/NBD's expected number of
    purchases in ``t`` days of a customer alive with these traits, times their mean spend.
    """
    t = HORIZON_MONTHS * DAYS_PER_MONTH
    lam, p = truth["lam"].to_numpy(), truth["p_dropout"].to_numpy()
    purchases = np.where(truth["alive_at_as_of"].to_numpy(), -np.expm1(-lam * p * t) / p, 0.0)
    return purchases * truth["mean_spend"].to_numpy()


@pytest.mark.slow
def test_clv_intervals_are_calibrated_against_the_simulated_truth(bayes_scores, simulated):
    """The true CLV of a customer lies in its P10-P90 interval for ~80 % of customers.

    The truth is each customer's own expected 12-month spend given their simulated traits
    (:func:`_true_clv`), the quantity a CRM user reads the interval as being about. The
    alternative truth, the model's conditional expectation at the true *population*
    parameters, cannot test an 80 % claim on one data set: it moves with the one
    posterior of 7 parameters, so all customers are covered or missed together (0.09 to
    0.86 over seeds 0-5 for intervals of the population parameters alone, which cover the
    customers' own truth for ~1 % of them).

    Expected coverage: 80 % where the posterior is continuous (one-time buyers: BG/NBD
    keeps them alive), up to 90 % for repeat buyers who may have dropped out (an atom at 0
    below P10 puts P10 at 0: the interval covers 0 plus 80 % of the rest).
    """
    rfm, truth = simulated
    true_clv = _true_clv(truth)
    inside = (bayes_scores["clv_p10"].to_numpy() <= true_clv) & (true_clv <= bayes_scores["clv_p90"].to_numpy())
    one_time = rfm["frequency"].to_numpy() == 0
    assert 0.75 <= inside[one_time].mean() <= 0.85
    assert 0.80 <= inside[~one_time].mean() <= 0.94
    assert 0.78 <= inside.mean() <= 0.90
    # The centre is right too: the published CLV adds up to the customers' true value.
    assert bayes_scores["clv"].sum() == pytest.approx(true_clv.sum(), rel=0.05)


@pytest.mark.slow
def test_intervals_are_ordered_and_contain_the_posterior_mean(bayes_scores):
    s = bayes_scores
    assert list(s.columns) == ["customer_id", "p_alive", "churn", "expected_purchases", "expected_spend", "clv",
                               *INTERVAL_COLUMNS]
    assert ((s["clv_p10"] <= s["clv_p50"]) & (s["clv_p50"] <= s["clv_p90"])).all()
    assert (s["clv_p10"] >= 0).all()
    assert ((s["p_alive_p10"] <= s["p_alive_p90"]) & (s["p_alive_p10"] >= 0) & (s["p_alive_p90"] <= 1)).all()
    # A mean lies within its central 80 % unless the distribution is very skewed (an atom
    # at 0 above 90 %: a customer almost surely gone, whose small mean is above P90 = 0).
    assert ((s["clv"] >= s["clv_p10"]) & (s["clv"] <= s["clv_p90"])).mean() > 0.9
    assert ((s["p_alive"] >= s["p_alive_p10"] - 1e-12) & (s["p_alive"] <= s["p_alive_p90"] + 1e-12)).mean() > 0.99


@pytest.mark.slow
def test_posterior_mean_scores_are_pymc_marketing_methods_averaged_over_draws(bayes_fit, bayes_scores, simulated):
    rfm = simulated[0].iloc[:3000]
    scores = bayes_scores.iloc[:3000]
    # pymc-marketing's methods (its GammaGammaModel.expected_customer_lifetime_value's
    # CLV), averaged over the posterior draws.
    data = rfm.assign(customer_id=np.arange(len(rfm)))
    reference = pymc_marketing_scores(bayes_fit.transaction, bayes_fit.spend, data)
    assert_allclose(scores["p_alive"], np.clip(reference["p_alive"], 0, 1), rtol=1e-9)
    for column in ("expected_purchases", "expected_spend", "clv"):
        assert_allclose(scores[column], reference[column], rtol=1e-9)


@pytest.mark.slow
def test_customer_clv_draws_average_to_the_published_clv(bayes_fit, simulated):
    """Law of total expectation: the latent draws behind the interval centre on ``clv``."""
    rfm = simulated[0].drop_duplicates(["frequency", "recency", "T", "monetary_value"]).iloc[:2000]
    data = rfm.assign(customer_id=np.arange(len(rfm)))
    n = len(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        p_alive = _draw_matrix(bayes_fit.transaction.expected_probability_alive(data=data), n)
    draws = bayes.individual_clv_draws(
        "bg_nbd", _flat_draws(bayes_fit.transaction, TRANSACTION_PARAMETERS["bg_nbd"]),
        _flat_draws(bayes_fit.spend, SPEND_PARAMETERS), data["frequency"].to_numpy(float),
        data["T"].to_numpy(float), data["monetary_value"].to_numpy(float), p_alive, HORIZON_MONTHS, 0.0, "D",
    )
    clv = score_customers(bayes_fit, rfm, HORIZON_MONTHS, 0.0, "D")["clv"].to_numpy()
    z = (draws.mean(axis=0) - clv) / (draws.std(axis=0) / np.sqrt(draws.shape[0]) + 1e-12)
    assert np.mean(np.abs(z) < 3) > 0.97
    assert draws.mean(axis=0).sum() == pytest.approx(clv.sum(), rel=0.02)


@pytest.mark.slow
def test_model_json_round_trip_scores_identically_with_intervals(bayes_fit, bayes_scores, simulated):
    stored = json.loads(json.dumps({"parameters": bayes_fit.parameters, "posterior": bayes_fit.posterior}))
    assert len(stored["posterior"]["bg_nbd"]["r"]) == 2  # chains
    assert {len(chain) for chain in stored["posterior"]["gamma_gamma"]["p"]} == {200}  # 400 predictive draws
    rebuilt = models_from_parameters("bg_nbd", stored["parameters"], stored["posterior"])
    pd.testing.assert_frame_equal(score_customers(rebuilt, simulated[0], HORIZON_MONTHS, 0.0, "D"), bayes_scores,
                                  check_exact=True)
    # Without the draws (a model.json of before): the posterior means, scored like a MAP fit.
    point = score_customers(models_from_parameters("bg_nbd", stored["parameters"]), simulated[0],
                            HORIZON_MONTHS, 0.0, "D")
    assert not set(INTERVAL_COLUMNS) & set(point.columns)
    assert_allclose(point["clv"].sum(), bayes_scores["clv"].sum(), rtol=0.02)


@pytest.mark.slow
def test_discounted_intervals_shrink_with_the_discount(bayes_fit, bayes_scores, simulated):
    discounted = score_customers(bayes_fit, simulated[0].iloc[:2000], HORIZON_MONTHS, 0.02, "D")
    undiscounted = bayes_scores.iloc[:2000]
    for column in ("clv", "clv_p50", "clv_p90"):
        assert (discounted[column].to_numpy() <= undiscounted[column].to_numpy() * (1 + 1e-9) + 1e-12).all()
    assert discounted["clv"].sum() < undiscounted["clv"].sum()


# --- 2. sampling is seeded; MAP mode is unchanged --------------------------------------


@pytest.mark.slow
def test_chain_in_a_subprocess_gives_the_same_draws_as_in_process(cdnow_rfm, tmp_path):
    spend = patterns.spend_patterns(cdnow_rfm)
    settings = McmcSettings(draws=100, tune=100, chains=1, seed=5)
    job = ("gamma_gamma", spend, "default", settings, 0)
    here, divergences, _ = bayes._sample_nutpie_chain(*job)
    there, divergences_there, _ = bayes._run_chain_in_subprocess(job, str(tmp_path), 0)
    for name in ("p", "q", "v"):
        assert_allclose(here[name].values, there[name].values, rtol=0, atol=0)
    assert divergences == divergences_there


@pytest.mark.slow
def test_pymc_sampler_is_available(cdnow_rfm):
    settings = McmcSettings(sampler="pymc", draws=200, tune=200, chains=2, seed=1)
    (posterior,) = bayes.sample_posteriors([("gamma_gamma", patterns.spend_patterns(cdnow_rfm))], "default", settings)
    assert dict(posterior.draws.sizes) == {"chain": 2, "draw": 200}
    means = {p: float(posterior.draws[p].mean()) for p in ("p", "q", "v")}
    # Gamma-Gamma on CDNOW with the default priors: MAP p, q, v = 4.29, 3.65, 22.5.
    assert means["q"] == pytest.approx(3.65, rel=0.1)
    assert means["p"] * means["v"] / (means["q"] - 1) == pytest.approx(4.29 * 22.46 / 2.65, rel=0.05)


@pytest.mark.slow
def test_map_mode_scores_are_unchanged(cdnow_fit, cdnow_rfm):
    """MAP fits score exactly as before the Bayesian mode: same columns, same numbers."""
    from pymc_marketing.clv.utils import customer_lifetime_value

    models = cdnow_fit("bg_nbd")
    assert models.posterior is None
    scores = score_customers(models, cdnow_rfm, 12, 0.01, "W")
    assert list(scores.columns) == ["customer_id", "p_alive", "churn", "expected_purchases", "expected_spend", "clv"]

    # The MAP path as it was written before the Bayesian mode existed.
    keys = ["frequency", "recency", "T", "monetary_value"]
    patterns = cdnow_rfm[keys].drop_duplicates().reset_index(drop=True)
    patterns["customer_id"] = np.arange(len(patterns))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        patterns["p_alive"] = _values(models.transaction.expected_probability_alive(data=patterns))
        patterns["expected_purchases"] = _values(
            models.transaction.expected_purchases(data=patterns, future_t=12 * DAYS_PER_MONTH / 7.0))
        patterns["expected_spend"] = _values(models.spend.expected_customer_spend(data=patterns))
        patterns["clv"] = _values(customer_lifetime_value(
            models.transaction, patterns.assign(future_spend=patterns["expected_spend"]), future_t=12,
            discount_rate=0.01, time_unit="W"))
    patterns["p_alive"] = patterns["p_alive"].clip(0.0, 1.0)
    patterns["churn"] = 1.0 - patterns["p_alive"]
    before = cdnow_rfm[["customer_id", *keys]].merge(patterns.drop(columns="customer_id"), on=keys, how="left")
    before = before[["customer_id", "p_alive", "churn", "expected_purchases", "expected_spend", "clv"]]
    pd.testing.assert_frame_equal(scores, before, check_exact=True)


# --- fast checks ----------------------------------------------------------------------


def test_thin_keeps_evenly_spaced_draws_of_every_chain():
    import xarray as xr

    draws = xr.Dataset({"r": (("chain", "draw"), np.arange(2000.0).reshape(2, 1000))})
    thinned = bayes.thin(draws, 400)
    assert dict(thinned.sizes) == {"chain": 2, "draw": 200}
    assert thinned["r"].values[0, [0, 1, -1]].tolist() == [0.0, 5.0, 999.0]
    assert dict(bayes.thin(draws, 5000).sizes) == {"chain": 2, "draw": 1000}


def test_stored_posterior_must_be_complete_and_rectangular():
    from clv_jobs.errors import ModelError

    parameters = {"bg_nbd": {"r": 0.25, "alpha": 4.0, "a": 0.8, "b": 2.4},
                  "gamma_gamma": {"p": 6.0, "q": 3.8, "v": 15.0}}
    posterior = {model: {p: [[v, v * 1.01], [v * 0.99, v]] for p, v in values.items()}
                 for model, values in parameters.items()}
    models = models_from_parameters("bg_nbd", parameters, posterior)
    assert dict(models.transaction.fit_result.sizes) == {"chain": 2, "draw": 2}
    with pytest.raises(ModelError, match=r"stored posterior lacks draws of gamma_gamma\.v"):
        models_from_parameters("bg_nbd", parameters, posterior | {"gamma_gamma": {"p": [[6.0]], "q": [[3.8]]}})
    ragged = posterior | {"bg_nbd": posterior["bg_nbd"] | {"r": [[0.25, 0.26], [0.24]]}}
    with pytest.raises(ModelError, match="one non-empty list per chain"):
        models_from_parameters("bg_nbd", parameters, ragged)


# --- 3. a Bayesian refit through the pipeline --------------------------------------------

REFIT_MAY, REFIT_JUNE = dt.date(2025, 5, 1), dt.date(2025, 6, 1)
# Short chains: the pipeline's handling is under test here, not the sampler's precision.
REFIT_MCMC = {"draws": 800, "tune": 400, "predictive_draws": 100, "seed": 4}
# More effective draws than 2 x 800 draws can give: the quality gate must reject the fit.
UNREACHABLE_ESS = {"min_ess": 1e9}


def _write_bayes_account(config, account_id: str, gate_settings: dict | None = None) -> None:
    import yaml

    body = {"account_id": account_id,
            "model": {"transaction_model": "bg_nbd", "fit_method": "mcmc", "mcmc": REFIT_MCMC,
                      "gate": gate_settings or {}},
            "datamodel": {"destinations": [{"type": "local", "path": "../outbox"}]}}
    (config / "accounts" / f"{account_id}.yaml").write_text(yaml.safe_dump(body))


@pytest.fixture(scope="module")
def bayes_project(tmp_path_factory):
    """A DuckDB warehouse of two simulated accounts, both fitted with ``fit_method: mcmc``."""
    import yaml

    from clv_jobs.sample_data import write_warehouse

    root = tmp_path_factory.mktemp("bayes_refit")
    samples = [simulate_account(SampleAccount(account_id, n_buyers=2_000, history_days=800, seed=seed), REFIT_JUNE)
               for account_id, seed in (("bshop", 71), ("bfresh", 72))]
    write_warehouse(root / "warehouse.duckdb", samples)
    config = root / "config"
    (config / "accounts").mkdir(parents=True)
    (config / "clv.yaml").write_text(yaml.safe_dump(
        {"store": "../store", "source": {"type": "duckdb", "path": "../warehouse.duckdb"}}))
    _write_bayes_account(config, "bshop")
    _write_bayes_account(config, "bfresh", UNREACHABLE_ESS)
    return config


def _run_file(config, summary: dict, name: str):
    from clv_jobs.settings import load_project
    from clv_jobs.store import Store

    store = Store(load_project(config).store_uri)
    return store, store.run_path(summary["account"], dt.date.fromisoformat(summary["as_of"]), summary["run_id"], name)


@pytest.fixture(scope="module")
def bayes_refit(bayes_project):
    from clv_jobs import pipeline
    from clv_jobs.settings import load_project

    return pipeline.refit(load_project(bayes_project), "bshop", REFIT_MAY)


@pytest.mark.slow
def test_bayesian_refit_publishes_intervals_and_its_posterior(bayes_project, bayes_refit):
    summary = bayes_refit
    assert summary["status"] == "published" and summary["gate"]["passed"] is True
    store, model_file = _run_file(bayes_project, summary, "model.json")
    stored = store.read_json(model_file)
    # r-hat and ESS are stored and were gated.
    assert stored["diagnostics"]["fit_method"] == "mcmc"
    assert stored["gate"]["checks"]["r_hat_max"] == stored["diagnostics"]["r_hat_max"] < 1.01
    assert stored["gate"]["checks"]["ess_bulk_min"] == stored["diagnostics"]["ess_bulk_min"] >= 400
    assert {len(chain) for chain in stored["posterior"]["bg_nbd"]["alpha"]} == {50}  # 100 draws over 2 chains
    assert stored["backtest"]["fit_method"] == "map"  # the backtest's calibration fit (see backtest.py)

    _, scores_file = _run_file(bayes_project, summary, "scores.parquet")
    scores = store.read_parquet(scores_file)
    assert set(INTERVAL_COLUMNS) <= set(scores.columns)
    assert ((scores["clv_p10"] <= scores["clv_p50"]) & (scores["clv_p50"] <= scores["clv_p90"])).all()
    # The scores are those of the posterior stored in model.json (a rescore rebuilds them).
    rebuilt = models_from_parameters("bg_nbd", stored["parameters"], stored["posterior"])
    expected = score_customers(rebuilt, scores[["customer_id", "frequency", "recency", "T", "monetary_value"]],
                               12, 0.0, "D")
    for column in ("clv", "p_alive", *INTERVAL_COLUMNS):
        assert_allclose(scores[column], expected[column], rtol=1e-12)
    _, datamodel_file = _run_file(bayes_project, summary, summary["datamodel"]["file"])
    datamodel = pd.read_csv(datamodel_file, dtype=str, keep_default_na=False)
    assert len(datamodel) == summary["buyers"] == len(scores)
    assert datamodel.columns[3] == "LTV_VALUE" and len(datamodel.columns) == 25
    assert_allclose(datamodel["LTV_VALUE"].astype(float).sort_values().to_numpy(),
                    scores["clv"].round(2).sort_values().to_numpy(), atol=0.006)


@pytest.mark.slow
def test_unconverged_bayesian_refit_keeps_the_previous_posterior(bayes_project, bayes_refit):
    from clv_jobs import pipeline
    from clv_jobs.settings import load_project

    _write_bayes_account(bayes_project, "bshop", UNREACHABLE_ESS)
    try:
        summary = pipeline.refit(load_project(bayes_project), "bshop", REFIT_JUNE)
    finally:
        _write_bayes_account(bayes_project, "bshop")
    assert summary["status"] == "published_with_previous_model"
    [reason] = summary["gate"]["reasons"]
    assert reason.startswith("ess_bulk_min ") and reason.endswith(" < 1e+09 (too few effective draws)")
    store, model_file = _run_file(bayes_project, summary, "model.json")
    stored = store.read_json(model_file)
    first = store.read_json(_run_file(bayes_project, bayes_refit, "model.json")[1])
    assert stored["posterior"] == first["posterior"] and stored["model_origin"] == bayes_refit["run_id"]
    assert stored["rejected"]["diagnostics"]["ess_bulk_min"] < 1e9
    # Every buyer is rescored, intervals included, with the previous run's posterior.
    scores = store.read_parquet(_run_file(bayes_project, summary, "scores.parquet")[1])
    assert summary["buyers"] == summary["datamodel"]["rows"] == len(scores)
    assert scores[list(INTERVAL_COLUMNS)].notna().all().all()


@pytest.mark.slow
def test_first_bayesian_model_failing_the_gate_publishes_nothing(bayes_project):
    from clv_jobs import gate, pipeline
    from clv_jobs.settings import load_project
    from clv_jobs.store import Store

    project = load_project(bayes_project)
    with pytest.raises(gate.QualityGateError, match=r"^account bfresh: the bg_nbd model fails the quality gate .*"
                                                    r"ess_bulk_min \S+ < 1e\+09"):
        pipeline.refit(project, "bfresh", REFIT_JUNE)
    store = Store(project.store_uri)
    assert store.latest_run("bfresh") is None
