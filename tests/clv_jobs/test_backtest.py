"""The backtest of every refit (clv_jobs.backtest): hand-computed metrics, a real account, ``auto``.

* A tiny order log whose split, holdout actuals, naive baseline and metrics are computed by
  hand below (no model fit).
* A simulated account: the fitted model beats the naive baseline on the holdout.
* ``auto`` picks the generating model on accounts simulated from BG/NBD and from
  Pareto/NBD (parameters where the two stories differ clearly, fixed seeds).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest

from clv_jobs import backtest, sources
from clv_jobs.asof import cutoff_utc
from clv_jobs.backtest import CandidateResult, choose_model, holdout_metrics, naive_metrics, split_history
from clv_jobs.sample_data import SampleAccount, simulate_account
from clv_jobs.settings import ModelSettings

AS_OF = dt.date(2025, 4, 1)
HOLDOUT_DAYS = 30  # split on 2025-03-02: the calibration's last day is 2025-03-01

# customer, order time (UTC), amount
ORDERS = [
    # a: two calibration days (20 + 40), two holdout days (10 + 30 on the same day, then 20)
    ("a", "2025-01-01 10:00:00", 20.0), ("a", "2025-02-01 10:00:00", 40.0),
    ("a", "2025-03-10 09:00:00", 10.0), ("a", "2025-03-10 18:00:00", 30.0), ("a", "2025-03-20 12:00:00", 20.0),
    # b: one calibration purchase, nothing in the holdout
    ("b", "2025-02-15 08:00:00", 15.0),
    # c: three calibration days (10, 20, 30); one holdout day at the split's first instant;
    # an order on the as-of date belongs to a later run
    ("c", "2025-01-11 10:00:00", 10.0), ("c", "2025-01-21 10:00:00", 20.0), ("c", "2025-02-10 10:00:00", 30.0),
    ("c", "2025-03-02 00:00:00", 50.0), ("c", "2025-04-01 00:00:00", 99.0),
    # d: first purchase in the holdout: not a calibration customer
    ("d", "2025-03-05 10:00:00", 12.0),
]


def _session(orders):
    con = sources.connect()
    frame = pd.DataFrame(orders, columns=["customer_id", "order_ts", "amount"])
    frame["order_ts"] = pd.to_datetime(frame["order_ts"])
    frame["order_id"] = [f"o{i}" for i in range(len(frame))]
    con.register("orders_in", frame)
    con.execute("CREATE TABLE transactions AS SELECT customer_id, order_id, order_ts, amount FROM orders_in")
    return con


@pytest.fixture(scope="module")
def tiny_split():
    con = _session(ORDERS)
    try:
        return split_history(con, AS_OF, "UTC", 24, HOLDOUT_DAYS)
    finally:
        con.close()


def test_split_gives_calibration_features_and_holdout_actuals(tiny_split):
    split = tiny_split
    assert split.split_date == dt.date(2025, 3, 2)
    assert split.holdout_length == 30.0
    calibration = split.calibration.set_index("customer_id")
    assert list(calibration.index) == ["a", "b", "c"]  # d bought first in the holdout
    assert calibration["frequency"].tolist() == [1, 0, 2]
    assert calibration["T"].tolist() == [59.0, 14.0, 49.0]  # to 2025-03-01, the last calibration day
    assert calibration["recency"].tolist() == [31.0, 0.0, 30.0]
    assert calibration["mon_value"].tolist() == [60.0, 15.0, 60.0]
    # purchase days in [2025-03-02, 2025-04-01): a's two orders of 03-10 are one day; c's
    # order at 03-02 00:00 is in, the one at 04-01 00:00 is not.
    assert split.holdout_purchases.tolist() == [2.0, 0.0, 1.0]
    assert split.holdout_spend.tolist() == [60.0, 0.0, 50.0]


def test_split_follows_the_account_time_zone():
    # 2025-03-01 23:30 UTC is 2025-03-02 00:30 in Madrid: calibration in UTC, holdout in Madrid.
    orders = [("e", "2025-01-10 10:00:00", 10.0), ("e", "2025-03-01 23:30:00", 10.0)]
    con = _session(orders)
    try:
        utc = split_history(con, AS_OF, "UTC", 24, HOLDOUT_DAYS)
        madrid = split_history(con, AS_OF, "Europe/Madrid", 24, HOLDOUT_DAYS)
    finally:
        con.close()
    assert utc.calibration["frequency"].tolist() == [1] and utc.holdout_purchases.tolist() == [0.0]
    assert madrid.calibration["frequency"].tolist() == [0] and madrid.holdout_purchases.tolist() == [1.0]


def test_naive_baseline_by_hand(tiny_split):
    predicted = np.array([30 / 59, 0.0, 60 / 49])  # frequency / T x 30 days
    actual = np.array([2.0, 0.0, 1.0])
    metrics = naive_metrics(tiny_split)
    assert metrics["customers"] == 3 and metrics["holdout_buyers"] == 2
    assert metrics["actual_purchases"] == 3.0
    assert metrics["predicted_purchases"] == pytest.approx(predicted.sum())
    assert metrics["purchases_mae"] == pytest.approx(np.abs(predicted - actual).mean())
    assert metrics["purchases_error_pct"] == pytest.approx(100 * (predicted.sum() - 3) / 3)
    # The past rate ranks both holdout buyers above b (rate 0): a perfect ranking.
    assert metrics["p_alive_auc"] == 1.0
    probability = 1 - np.exp(-predicted)
    assert metrics["p_alive_brier"] == pytest.approx(np.mean((probability - np.array([1, 0, 1])) ** 2))
    # Past mean spend per purchase day: a 60/2 = 30, c 60/3 = 20; holdout: a 60/2 = 30, c 50.
    assert metrics["spend_mae"] == pytest.approx((abs(30 - 30) + abs(20 - 50)) / 2)


def test_naive_baseline_does_not_depend_on_the_time_unit(tiny_split):
    weeks = tiny_split.in_unit("W")
    assert weeks.holdout_length == pytest.approx(30 / 7)
    assert weeks.calibration["T"].tolist() == pytest.approx([59 / 7, 2.0, 7.0])
    assert naive_metrics(weeks) == pytest.approx(naive_metrics(tiny_split))


def test_model_metrics_by_hand():
    actual, spend = np.array([2.0, 0.0, 1.0]), np.array([60.0, 0.0, 50.0])
    metrics = holdout_metrics(actual, spend, predicted_purchases=np.array([1.5, 0.5, 1.0]),
                              alive_score=np.array([0.9, 0.6, 0.3]), alive_probability=np.array([0.9, 0.6, 0.3]),
                              predicted_spend=np.array([25.0, 40.0, 45.0]))
    assert metrics["purchases_mae"] == pytest.approx(1 / 3)  # (0.5 + 0.5 + 0) / 3
    assert metrics["purchases_error_pct"] == pytest.approx(0.0)  # 3 predicted, 3 bought
    assert metrics["p_alive_auc"] == pytest.approx(0.5)  # a (0.9) above b (0.6), c (0.3) below
    assert metrics["p_alive_brier"] == pytest.approx((0.1**2 + 0.6**2 + 0.7**2) / 3)
    assert metrics["spend_mae"] == pytest.approx(5.0)  # buyers only: |25 - 30|, |45 - 50|


def test_metrics_that_cannot_be_computed_are_none():
    metrics = holdout_metrics(np.zeros(3), np.zeros(3), np.array([0.1, 0.2, 0.3]),
                              alive_score=np.array([0.5, 0.5, 0.5]), alive_probability=np.array([0.5, 0.5, 0.5]),
                              predicted_spend=np.array([1.0, 1.0, 1.0]))
    assert metrics["purchases_mae"] == pytest.approx(0.2)
    assert metrics["purchases_error_pct"] is None  # nobody bought: no aggregate error
    assert metrics["p_alive_auc"] is None  # one class only
    assert metrics["spend_mae"] is None
    assert metrics["p_alive_brier"] == pytest.approx(0.25)


def _candidate(name: str, mae: float | None, error: str | None = None) -> CandidateResult:
    return CandidateResult(name, metrics=None if error else {"purchases_mae": mae}, error=error)


def test_choice_takes_the_lowest_mae_and_ties_go_to_pareto_nbd():
    assert choose_model({"pareto_nbd": _candidate("pareto_nbd", 0.30), "bg_nbd": _candidate("bg_nbd", 0.29),
                         "mbg_nbd": _candidate("mbg_nbd", 0.31)}) == "bg_nbd"
    assert choose_model({"pareto_nbd": _candidate("pareto_nbd", 0.30), "bg_nbd": _candidate("bg_nbd", 0.30),
                         "mbg_nbd": _candidate("mbg_nbd", 0.30)}) == "pareto_nbd"
    assert choose_model({"pareto_nbd": _candidate("pareto_nbd", 0.31), "bg_nbd": _candidate("bg_nbd", 0.30),
                         "mbg_nbd": _candidate("mbg_nbd", 0.30)}) == "bg_nbd"
    assert choose_model({"pareto_nbd": _candidate("pareto_nbd", None, "fit failed"),
                         "mbg_nbd": _candidate("mbg_nbd", 0.5)}) == "mbg_nbd"
    assert choose_model({"pareto_nbd": _candidate("pareto_nbd", None, "fit failed")}) is None


def test_too_little_calibration_data_skips_the_backtest_without_fitting(tiny_split, monkeypatch):
    def no_fit(*args, **kwargs):
        raise AssertionError("no fit should be attempted")

    monkeypatch.setattr(backtest, "fit_models", no_fit)
    con = _session([("x", "2025-03-20 10:00:00", 10.0), ("y", "2025-03-25 10:00:00", 10.0)])
    try:
        empty = split_history(con, AS_OF, "UTC", 24, HOLDOUT_DAYS)
    finally:
        con.close()
    name, record, choice = backtest.run_backtest(empty, ModelSettings())
    assert name == "pareto_nbd" and choice == {"chosen": "pareto_nbd", "by": "account setting"}
    assert record == {"skipped": "no buyer before the split date 2025-03-02 (the history is shorter than the "
                                 "holdout)"}
    one_timers = dataclasses.replace(tiny_split, calibration=tiny_split.calibration.assign(frequency=0))
    name, record, choice = backtest.run_backtest(one_timers, ModelSettings(transaction_model="auto"))
    assert name == "pareto_nbd" and record == {"skipped": "no repeat buyer before the split date 2025-03-02"}
    assert choice["chosen"] == "pareto_nbd" and choice["by"].startswith("default (no candidate could be backtested")


def test_a_calibration_fit_that_fails_skips_the_backtest(tiny_split):
    # Two repeat buyers: the Gamma-Gamma fit refuses (it needs 10), the refit goes on.
    name, record, _ = backtest.run_backtest(tiny_split, ModelSettings(transaction_model="bg_nbd"))
    assert name == "bg_nbd"
    assert record == {"skipped": "only 2 repeat buyers with spend: the Gamma-Gamma spend model needs at least 10"}


# --- real fits ------------------------------------------------------------------------------

SIM_AS_OF = dt.date(2025, 6, 1)


def _simulated_split(account: SampleAccount) -> backtest.HoldoutSplit:
    sample = simulate_account(account, SIM_AS_OF)
    orders = sample.transactions
    con = _session(list(orders[["customer_id", "order_ts", "amount"]].itertuples(index=False, name=None)))
    try:
        con.execute("DELETE FROM transactions WHERE order_ts >= TIMESTAMP '2025-06-01'")
        return split_history(con, SIM_AS_OF, "UTC", 24, 90)
    finally:
        con.close()


@pytest.mark.parametrize("model", ["bg_nbd", "pareto_nbd"])
def test_predictions_for_the_fitted_rows_reuse_the_fits_patterns_and_equal_a_fresh_pass(model):
    """``model_predictions`` on the very frame a fit saw takes its patterns from the fit (the
    backtest and the gate do); any other frame, even an equal copy, is grouped again: same numbers."""
    from clv_jobs.model import fit_models, score_customers

    split = _simulated_split(SampleAccount("reuse", n_buyers=1_500, history_days=700, seed=3, bad_rows=False))
    models = fit_models(split.rfm, ModelSettings(transaction_model=model))
    assert models.fitted_rfm is split.rfm and len(models.rows_pattern) == len(split.rfm)
    reused = backtest.model_predictions(models, split.rfm, split.holdout_length)
    fresh = backtest.model_predictions(models, split.rfm.copy(), split.holdout_length)
    for name in ("purchases", "p_alive", "spend"):
        np.testing.assert_array_equal(reused[name], fresh[name])
    # The score stage of a refit is handed the same patterns: the same scores.
    rows = (models.patterns[model], models.rows_pattern)
    pd.testing.assert_frame_equal(score_customers(models, split.rfm, rows=rows), score_customers(models, split.rfm),
                                  check_exact=True)
    # The reuse is taken: a wrong pattern index shows in the predictions.
    models.rows_pattern = models.rows_pattern[::-1].copy()
    shuffled = backtest.model_predictions(models, split.rfm, split.holdout_length)
    assert not np.array_equal(shuffled["purchases"], fresh["purchases"])


@pytest.mark.slow
def test_backtest_of_a_simulated_account_beats_the_naive_baseline():
    split = _simulated_split(SampleAccount("shop", n_buyers=3_000, history_days=800, seed=4, bad_rows=False))
    name, record, choice = backtest.run_backtest(split, ModelSettings())
    assert name == "pareto_nbd" and choice == {"chosen": "pareto_nbd", "by": "account setting"}
    model, naive = record["model"], record["naive"]
    assert record["split_date"] == "2025-03-03" and record["holdout_days"] == 90
    assert record["customers"] == len(split.calibration) and record["holdout_buyers"] > 200
    assert model["actual_purchases"] == naive["actual_purchases"] == split.holdout_purchases.sum()
    assert model["purchases_mae"] < 0.9 * naive["purchases_mae"] and record["beats_naive"]
    assert abs(model["purchases_error_pct"]) < abs(naive["purchases_error_pct"])
    assert 0.65 < model["p_alive_auc"] <= 1 and 0 <= model["p_alive_brier"] <= 1
    assert math.isfinite(model["spend_mae"]) and model["spend_mae"] > 0
    assert set(record["calibration_parameters"]) == {"pareto_nbd", "gamma_gamma"}


# Where the stories differ: BG/NBD customers drop out only right after a repeat purchase
# (one-time buyers never do), Pareto/NBD customers at any time. Many quick buyers with a
# high dropout make the difference visible within a 90-day holdout.
AUTO_CASES = [
    pytest.param(SampleAccount("bg", n_buyers=10_000, history_days=1000, seed=1, bad_rows=False,
                               r=0.5, alpha=10.0, a=3.0, b=2.0), "bg_nbd", id="bg_nbd-data"),
    pytest.param(SampleAccount("pareto", n_buyers=10_000, history_days=1000, seed=1, bad_rows=False,
                               process="pareto_nbd", r=2.0, alpha=20.0, s=2.0, beta=200.0), "pareto_nbd",
                 id="pareto_nbd-data"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("account", "generating"), AUTO_CASES)
def test_auto_chooses_the_generating_model(account, generating):
    split = _simulated_split(account)
    name, record, choice = backtest.run_backtest(split, ModelSettings(transaction_model="auto"))
    maes = {model: result["metrics"]["purchases_mae"] for model, result in choice["candidates"].items()}
    assert set(maes) == {"pareto_nbd", "bg_nbd", "mbg_nbd"}
    assert name == choice["chosen"] == generating, maes
    assert choice["by"] == "holdout purchase MAE"
    assert maes[generating] == min(maes.values())
    # The record is the chosen candidate's backtest, beside the naive baseline.
    assert record["transaction_model"] == generating
    assert record["model"] == choice["candidates"][generating]["metrics"]
    assert record["model"]["purchases_mae"] < record["naive"]["purchases_mae"]


def test_pareto_nbd_simulator_draws_exponential_lifetimes():
    account = SampleAccount("p", n_buyers=20_000, history_days=900, seed=9, bad_rows=False, process="pareto_nbd",
                            s=1.0, beta=200.0)
    truth = simulate_account(account, SIM_AS_OF).truth
    assert "mu" in truth and "p_dropout" not in truth
    assert truth["mu"].mean() == pytest.approx(account.s / account.beta, rel=0.05)  # Gamma(s, beta) rates
    # Alive at the as-of date with probability exp(-mu x age), whatever the purchases.
    age = (pd.Timestamp(SIM_AS_OF) - truth["first_purchase_ts"]).dt.total_seconds() / 86_400
    assert truth["alive_at_as_of"].mean() == pytest.approx(np.exp(-truth["mu"] * age).mean(), abs=0.01)
    # Unlike BG/NBD (no dropout before the first repeat purchase), one-time buyers die too.
    orders = simulate_account(account, SIM_AS_OF).transactions
    before = orders[pd.to_datetime(orders["order_ts"]) < pd.Timestamp(SIM_AS_OF)]
    one_time = before.groupby("customer_id").size().loc[lambda n: n == 1].index
    assert not truth.set_index("customer_id").loc[one_time, "alive_at_as_of"].all()
    with pytest.raises(ValueError, match="process must be one of bg_nbd, pareto_nbd"):
        SampleAccount("p", n_buyers=1, history_days=1, process="weibull")


# 500 days of orders: inside a 24-month window (the pass derives the calibration from the
# window's columns), and reaching before a 6-month one (the pass filters every column).
@pytest.mark.parametrize(("timezone", "months", "time_unit"), [("UTC", 24, "D"), ("Europe/Madrid", 6, "W")])
def test_the_one_pass_split_equals_features_as_of_the_split_date(timezone, months, time_unit):
    """The features pass computes the calibration columns too: they are build_features' as of the split."""
    from clv_jobs.features import build_features, feature_table, features_frame

    sample = simulate_account(SampleAccount("shop", n_buyers=2_000, history_days=500, seed=9, bad_rows=False),
                              SIM_AS_OF)
    orders = list(sample.transactions[["customer_id", "order_ts", "amount"]].itertuples(index=False, name=None))
    con = _session(orders)
    try:
        split = split_history(con, SIM_AS_OF, timezone, months, 90, time_unit)
        expected = build_features(con, split.split_date, timezone, months, time_unit)
        # ... and its history-window columns are build_features' as of the as-of date.
        pd.testing.assert_frame_equal(
            features_frame(feature_table(con, SIM_AS_OF, timezone, months, time_unit, split.split_date)),
            build_features(con, SIM_AS_OF, timezone, months, time_unit))
        holdout = con.execute(
            """SELECT customer_id, count(DISTINCT CAST(timezone($tz, order_ts AT TIME ZONE 'UTC') AS DATE)),
                      sum(amount)
               FROM transactions WHERE order_ts >= $start AND order_ts < $end GROUP BY ALL""",
            {"tz": timezone, "start": cutoff_utc(split.split_date, timezone),
             "end": cutoff_utc(SIM_AS_OF, timezone)}).fetchall()
    finally:
        con.close()
    columns = ["customer_id", "frequency", "recency", "T", "monetary_value", "mon_value"]
    pd.testing.assert_frame_equal(split.calibration[columns], expected[columns], check_dtype=False)
    actual = {customer: (purchases, spend) for customer, purchases, spend in holdout}
    purchases = [actual.get(c, (0, 0.0))[0] for c in expected["customer_id"]]
    spend = [actual.get(c, (0, 0.0))[1] for c in expected["customer_id"]]
    assert split.holdout_purchases.tolist() == purchases
    np.testing.assert_allclose(split.holdout_spend, spend, rtol=1e-12)
    assert (split.holdout_purchases > 0).sum() > 100  # the holdout is not empty


@pytest.mark.parametrize("seed", [0, 1])
def test_roc_auc_is_scikit_learns_with_ties(seed):
    from sklearn.metrics import roc_auc_score

    from clv_jobs.backtest import roc_auc

    rng = np.random.default_rng(seed)
    score = np.round(rng.random(20_000), 2)  # a hundred distinct values: many ties
    score[:50] = -0.0
    positive = rng.random(score.size) < score
    assert roc_auc(positive, score) == pytest.approx(roc_auc_score(positive, score), rel=1e-12)


def _simulated_table(account: SampleAccount):
    """The feature pass with the backtest's columns on a simulated account, and its full split."""
    from clv_jobs.features import feature_table

    sample = simulate_account(account, SIM_AS_OF)
    orders = sample.transactions
    con = _session(list(orders[["customer_id", "order_ts", "amount"]].itertuples(index=False, name=None)))
    try:
        con.execute("DELETE FROM transactions WHERE order_ts >= TIMESTAMP '2025-06-01'")
        return feature_table(con, SIM_AS_OF, "UTC", 24, "D", SIM_AS_OF - dt.timedelta(days=90))
    finally:
        con.close()


def test_a_large_account_is_backtested_on_a_seeded_sample_of_its_calibration_buyers(tmp_path):
    """Above ``max_buyers`` the split is a uniform sample: the same rows as the full split,
    in customer-id order, the same sample on every run, and the record says of how many."""
    table = _simulated_table(SampleAccount("sampled", n_buyers=6_000, history_days=700, seed=5, bad_rows=False))
    split_date = SIM_AS_OF - dt.timedelta(days=90)
    full = backtest.holdout_split(backtest.calibration_rows(table), split_date, 90, "D")
    assert full.calibration_buyers is None and len(full.calibration) > 4_000
    assert backtest.holdout_split(backtest.calibration_rows(table, len(full.calibration)), split_date, 90,
                                  "D").calibration_buyers is None  # not more than the cap: every buyer

    sampled = backtest.holdout_split(backtest.calibration_rows(table, 2_000), split_date, 90, "D")
    again = backtest.holdout_split(backtest.calibration_rows(table, 2_000), split_date, 90, "D")
    assert len(sampled.calibration) == 2_000 and sampled.calibration_buyers == len(full.calibration)
    pd.testing.assert_frame_equal(sampled.calibration, again.calibration)
    ids = sampled.calibration["customer_id"]
    assert ids.is_unique and ids.is_monotonic_increasing
    # Each sampled buyer's row is its row of the full split, holdout actuals included.
    position = full.calibration.reset_index(drop=True).reset_index().set_index("customer_id")["index"]
    rows = position.loc[ids].to_numpy()
    pd.testing.assert_frame_equal(sampled.calibration.reset_index(drop=True),
                                  full.calibration.iloc[rows].reset_index(drop=True))
    np.testing.assert_array_equal(sampled.holdout_purchases, full.holdout_purchases[rows])
    np.testing.assert_array_equal(sampled.holdout_spend, full.holdout_spend[rows])
    # Spread over the whole id range, not its first rows.
    assert rows.min() < 0.05 * len(full.calibration) and rows.max() > 0.95 * len(full.calibration)

    # Through a stage's hand-over file (Airflow runs the stages as tasks): the count survives.
    from clv_jobs.store import Store

    store = Store(str(tmp_path / "store"))
    hand_over = str(tmp_path / "store" / "run" / "work" / "calibration.parquet")
    store.write_parquet(hand_over, backtest.calibration_rows(table, 2_000))
    handed_over = backtest.holdout_split(store.read_arrow(hand_over), split_date, 90, "D")
    assert handed_over.calibration_buyers == len(full.calibration)
    pd.testing.assert_frame_equal(handed_over.calibration, sampled.calibration)

    # The sample's metrics estimate the full split's; the record names both counts.
    settings = ModelSettings(transaction_model="bg_nbd")
    _, record, _ = backtest.run_backtest(sampled, settings)
    _, full_record, _ = backtest.run_backtest(full, settings)
    assert record["customers"] == 2_000 and record["calibration_buyers"] == len(full.calibration)
    assert full_record["customers"] == full_record["calibration_buyers"] == len(full.calibration)
    assert record["model"]["purchases_mae"] == pytest.approx(full_record["model"]["purchases_mae"], rel=0.15)
    assert record["model"]["p_alive_auc"] == pytest.approx(full_record["model"]["p_alive_auc"], abs=0.05)
