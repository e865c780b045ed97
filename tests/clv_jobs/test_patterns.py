"""The models on weighted unique patterns (clv_jobs.patterns) are pymc-marketing's models.

1. On CDNOW their MAP equals pymc-marketing's own ``fit(method="map")`` of the
   per-customer model (default and flat priors); the factorised Pareto/NBD
   log-likelihood equals its ``ParetoNBD`` distribution's; the weighted log-likelihood
   is the per-customer sum.
2. Equivalence of the whole optimised path (pattern fits, scores per distinct pattern
   joined back) with a straightforward per-customer computation with pymc-marketing, on
   a few thousand simulated customers, to 1e-6.
3. The compiled objective is reused: a second fit in the same process compiles nothing
   and gives the same MAP as a fresh one.
"""

from __future__ import annotations

import datetime as dt
import warnings

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose

from clv_jobs import features, patterns
from clv_jobs.model import (
    SPEND_PARAMETERS,
    TRANSACTION_PARAMETERS,
    fit_models,
    score_customers,
)
from clv_jobs.sample_data import SampleAccount, simulate_account
from clv_jobs.settings import ModelSettings
from tests.clv_jobs.helpers import orders_session, pymc_marketing_scores

# Both fits run scipy's L-BFGS-B from the same start on the same objective, summed in
# another order: they agree to ~1e-9 (measured). 1e-6 is far below any statistical
# precision on CDNOW (posterior SDs are 5-15 %) and far above that rounding; a model that
# is not the same (counts ignored, one prior missing) moves the MAP by 1e-2 or more.
MAP_RTOL = 1e-6


def _pymc_marketing_fit(rfm: pd.DataFrame, name: str, priors: str):
    """pymc-marketing's own MAP fit of the per-customer model: one likelihood term per customer."""
    from pymc_extras.prior import Prior

    names = SPEND_PARAMETERS if name == "gamma_gamma" else TRANSACTION_PARAMETERS[name]
    config = None if priors == "default" else {p: Prior("HalfFlat") for p in names}
    model = patterns.model_class(name)(model_config=config)
    if name == "gamma_gamma":
        data = rfm.loc[(rfm["frequency"] > 0) & (rfm["monetary_value"] > 0),
                       ["customer_id", "frequency", "monetary_value"]]
    else:
        data = rfm[["customer_id", "frequency", "recency", "T"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model.fit(data, method="map", progressbar=False)
    return model


def _map_point(clv_model, names) -> dict[str, float]:
    return {p: float(np.asarray(clv_model.fit_result[p].values).squeeze()) for p in names}


# --- 1. CDNOW ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "priors"),
    [("bg_nbd", "default"), ("bg_nbd", "flat"), ("gamma_gamma", "default"), ("gamma_gamma", "flat"),
     ("pareto_nbd", "default"), ("pareto_nbd", "flat"), ("mbg_nbd", "default")],
)
def test_weighted_pattern_map_equals_pymc_marketing_map_on_cdnow(cdnow_rfm, name, priors):
    pattern_table = patterns.patterns_of(name, cdnow_rfm)
    # Fewer patterns than customers (far fewer for the transaction models: mean spends are
    # nearly unique), and the counts add up to the customers fitted.
    fitted_rows = (cdnow_rfm["frequency"] > 0).sum() if name == "gamma_gamma" else len(cdnow_rfm)
    assert pattern_table["count"].sum() == fitted_rows
    assert len(pattern_table) < (fitted_rows if name == "gamma_gamma" else 0.5 * fitted_rows)

    ours = patterns.find_map(name, pattern_table, priors).parameters
    names = SPEND_PARAMETERS if name == "gamma_gamma" else TRANSACTION_PARAMETERS[name]
    reference = _map_point(_pymc_marketing_fit(cdnow_rfm, name, priors), names)
    assert {p: ours[p] for p in reference} == pytest.approx(reference, rel=MAP_RTOL)


@pytest.mark.slow
def test_factorised_pareto_nbd_loglike_equals_pymc_marketing_distribution(cdnow_rfm):
    import pymc as pm
    import pytensor.tensor as pt
    from pymc_marketing.clv.distributions import ParetoNBD

    pattern_table = patterns.transaction_patterns(cdnow_rfm)
    data = patterns.model_data("pareto_nbd", pattern_table)
    rng = np.random.default_rng(7)
    # alpha > beta and alpha < beta take the two branches of the distribution's formula.
    for r, alpha, s, beta in [(0.55, 10.6, 0.61, 11.7), (0.3, 40.0, 1.5, 2.0), *rng.uniform(0.1, 50, (3, 4))]:
        ours = patterns.pareto_nbd_loglike(*map(pt.as_tensor, (r, alpha, s, beta)), data).eval()
        dist = ParetoNBD.dist(r=r, alpha=alpha, s=s, beta=beta, T=pattern_table["T"].to_numpy())
        reference = pm.logp(dist, pattern_table[["recency", "frequency"]].to_numpy()).eval()
        assert_allclose(ours, reference, rtol=1e-10, atol=1e-12)


def _per_customer_log_likelihood(name: str, rfm: pd.DataFrame, values: dict[str, float]) -> float:
    """pymc-marketing's distribution (or Gamma-Gamma's term), one customer at a time, summed."""
    import pymc as pm
    from pymc_marketing.clv.distributions import BetaGeoNBD, ParetoNBD

    if name == "gamma_gamma":
        repeat = rfm[(rfm["frequency"] > 0) & (rfm["monetary_value"] > 0)]
        x, z = repeat["frequency"].to_numpy(float), repeat["monetary_value"].to_numpy(float)
        p, q, v = (values[k] for k in ("p", "q", "v"))
        from scipy.special import gammaln

        return float(np.sum(gammaln(p * x + q) - gammaln(p * x) - gammaln(q) + q * np.log(v)
                            + (p * x - 1) * np.log(z) + p * x * np.log(x) - (p * x + q) * np.log(x * z + v)))
    T = rfm["T"].to_numpy(float)
    if name == "pareto_nbd":
        dist = ParetoNBD.dist(T=T, **{k: values[k] for k in ("r", "alpha", "s", "beta")})
    else:
        dist = BetaGeoNBD.dist(T=T, **{k: values[k] for k in ("r", "alpha", "a", "b")})
    return float(pm.logp(dist, rfm[["recency", "frequency"]].to_numpy(float)).eval().sum())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bg_nbd", "pareto_nbd"])
def test_weighted_log_likelihood_is_the_sum_over_customers(cdnow_fit, cdnow_rfm, name):
    fitted = cdnow_fit(name)  # flat priors, weeks
    assert fitted.diagnostics["transaction_log_likelihood"] == pytest.approx(
        _per_customer_log_likelihood(name, cdnow_rfm, fitted.parameters[name]), rel=1e-10)
    assert fitted.diagnostics["spend_log_likelihood"] == pytest.approx(
        _per_customer_log_likelihood("gamma_gamma", cdnow_rfm, fitted.parameters["gamma_gamma"]), rel=1e-10)
    for kind in (name, "gamma_gamma"):
        assert patterns.log_likelihood(kind, patterns.patterns_of(kind, cdnow_rfm), fitted.parameters[kind]) == (
            pytest.approx(fitted.diagnostics[f"{'spend' if kind == 'gamma_gamma' else 'transaction'}_log_likelihood"],
                          rel=1e-12))


# --- 2. the optimised path equals a per-customer pymc-marketing computation ---------------

AS_OF = dt.date(2025, 6, 1)


@pytest.fixture(scope="module")
def simulated_rfm() -> pd.DataFrame:
    """4,000 buyers of the BG/NBD + Gamma-Gamma simulator, through the project's features."""
    sample = simulate_account(SampleAccount("equivalence", n_buyers=4_000, history_days=700, seed=21,
                                            bad_rows=False), AS_OF)
    orders = sample.transactions.assign(order_ts=pd.to_datetime(sample.transactions["order_ts"]))
    con = orders_session(orders)
    try:
        return features.rfm_frame(features.build_features(con, AS_OF, "UTC", 24))
    finally:
        con.close()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bg_nbd", "pareto_nbd"])
def test_optimised_scores_equal_per_customer_pymc_marketing(simulated_rfm, name):
    """Fit on patterns + score once per pattern == pymc-marketing fit and predict per customer."""
    rfm = simulated_rfm
    # Many customers share a pattern (every one-time buyer of a day, for a start).
    assert len(patterns.transaction_patterns(rfm)) < 0.8 * len(rfm)
    ours = score_customers(fit_models(rfm, ModelSettings(transaction_model=name)), rfm, 12, 0.0, "D")

    transaction = _pymc_marketing_fit(rfm, name, "default")
    spend = _pymc_marketing_fit(rfm, "gamma_gamma", "default")
    reference = pymc_marketing_scores(transaction, spend, rfm[["customer_id", "frequency", "recency", "T",
                                                              "monetary_value"]])
    assert list(ours["customer_id"]) == list(rfm["customer_id"])
    assert_allclose(ours["p_alive"], np.clip(reference["p_alive"], 0, 1), rtol=1e-6)
    for column in ("expected_purchases", "expected_spend", "clv"):
        assert_allclose(ours[column], reference[column], rtol=1e-6)


# --- 3. one objective per fit: fits side by side ------------------------------------------------


@pytest.mark.slow
def test_fits_in_threads_side_by_side_give_each_account_its_own_map(simulated_rfm, cdnow_rfm):
    """Each fit has its own objective: two accounts fitted at once in two threads get what each gets alone."""
    from concurrent.futures import ThreadPoolExecutor

    assert patterns.objective("bg_nbd", "default") is not patterns.objective("bg_nbd", "default")
    data = {name: patterns.transaction_patterns(rfm) for name, rfm in (("simulated", simulated_rfm),
                                                                       ("cdnow", cdnow_rfm))}
    alone = {name: patterns.find_map("bg_nbd", frame).parameters for name, frame in data.items()}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: [pool.submit(patterns.find_map, "bg_nbd", frame) for _ in range(3)]
                   for name, frame in data.items()}
        together = {name: [future.result().parameters for future in runs] for name, runs in futures.items()}
    for name in data:
        assert together[name] == [alone[name]] * 3
    assert alone["cdnow"]["alpha"] != pytest.approx(alone["simulated"]["alpha"], rel=0.1)


def test_patterns_count_customers_and_reject_impossible_histories():
    rfm = pd.DataFrame({"customer_id": list("abcdef"), "frequency": [0, 0, 2, 2, 2, 1],
                        "recency": [0.0, 0.0, 5.0, 5.0, 5.0, 3.0], "T": [9.0, 9.0, 20.0, 20.0, 20.0, 4.0],
                        "monetary_value": [0.0, 0.0, 10.0, 10.0, 12.5, 0.0]})
    transaction = patterns.transaction_patterns(rfm)
    assert transaction.to_dict("list") == {"frequency": [0, 1, 2], "recency": [0.0, 3.0, 5.0],
                                           "T": [9.0, 4.0, 20.0], "count": [2, 1, 3]}
    spend = patterns.spend_patterns(rfm)  # repeat buyers with a positive spend only
    assert spend.to_dict("list") == {"frequency": [2, 2], "monetary_value": [10.0, 12.5], "count": [2, 1]}
    for column, value in (("T", np.nan), ("recency", 30.0), ("frequency", -1)):
        with pytest.raises(ValueError, match="must be"):
            patterns.transaction_patterns(rfm.assign(**{column: rfm[column].where(rfm.index != 2, value)}))


@pytest.mark.parametrize("wide", [False, True])
def test_distinct_rows_are_pandas_sorted_distinct_rows_and_index_every_row(wide):
    rng = np.random.default_rng(3)
    n = 5_000
    frame = pd.DataFrame({
        "count_like": rng.integers(-3, 40, n),  # integers, negative ones too
        "days": rng.integers(0, 300, n).astype(float),  # whole floats: their own codes
        "weeks": rng.integers(0, 300, n) / 7.0,  # fractions: factorised
        "spend": np.where(rng.random(n) < 0.05, np.nan, np.round(rng.gamma(2.0, 20.0, n), 2)),
    })
    if wide:  # code ranges whose product passes int64: the keys so far are renumbered on the way
        frame["count_like"] = rng.integers(-(2**29), 2**29, n)
        frame["days"] = rng.integers(0, 2**30, n).astype(float)
    keys = list(frame.columns)
    distinct, row_of = patterns.distinct_rows(frame, keys)
    expected = frame.drop_duplicates().sort_values(keys, ignore_index=True)
    pd.testing.assert_frame_equal(distinct, expected)
    pd.testing.assert_frame_equal(distinct.iloc[row_of].reset_index(drop=True), frame)
