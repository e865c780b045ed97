"""The project's CDNOW fits reproduce published numbers to 0.5 %.

The 2,357-customer CDNOW cohort goes through ``clv_jobs.features`` (39-week calibration,
1997-01-01 .. 1997-09-30, weeks), then ``fit_models`` with flat priors (maximum
likelihood). Every number is computed through the project's own path where one exists:
``score_customers`` for P(alive) and expected spend (neither depends on the horizon), and
the pymc-marketing model objects of ``FittedModels`` for conditional expectations over a
horizon in weeks that ``score_customers``' whole months cannot express (39 and 52 weeks),
at the published, hand-given ``(x, t_x, T)``.

Sources of the published numbers:

* MBG/NBD estimates r, alpha, a, b = 0.525, 6.183, 0.891, 1.614: BTYDplus (M. Platzer),
  as cited by lifetimes' ``test_params_out_is_close_to_BTYDplus``. The model is Batislam,
  Denizel & Filiztekin (2007); their paper estimates it on a grocery panel, not on CDNOW.
* BG/NBD E[Y(39) | x=2, t_x=30.43, T=38.86] = 1.226: Fader, Hardie & Lee (2005),
  "Implementing the BG/NBD Model for Customer Base Analysis in Excel" (lifetimes'
  ``test_conditional_expectation_returns_same_value_as_Hardie_excel_sheet``).
* Customer "1516" (x=26, t_x=30.857, T=31) over 52 weeks: the BTYD package's walkthrough
  vignette (``cal.cbs["1516", ]``; BTYD keys customers by the sample id, second column).
* Gamma-Gamma expected spend of the first ten customers of lifetimes'
  ``cdnow_customers_summary_with_transactions.csv``: lifetimes' documentation
  (``conditional_expected_average_profit(...).head(10)``). That summary is ordered by the
  sample id (the second column of CDNOW_sample.txt), not by the file's customer id.

Each model is fitted once per module; real fits are marked ``slow``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose

from clv_jobs.model import score_customers

PUBLISHED_RTOL = 0.005

# BTYDplus, maximum likelihood on the CDNOW calibration summary (weeks).
BTYDPLUS_MBG_NBD = {"r": 0.525, "alpha": 6.183, "a": 0.891, "b": 1.614}

# Fader, Hardie & Lee (2005), Excel note: the summary's first customer, 39 weeks ahead.
FHL_2005_CUSTOMER = {"frequency": 2, "recency": 30.43, "T": 38.86}
FHL_2005_HORIZON_WEEKS = 39
FHL_2005_EXPECTED_PURCHASES = 1.226

# BTYD walkthrough: customer "1516" (sample id), 52 weeks ahead.
BTYD_CUSTOMER_SAMPLE_ID = 1516
BTYD_CUSTOMER = {"frequency": 26, "recency": 30.857, "T": 31.0}
BTYD_HORIZON_WEEKS = 52
BTYD_WALKTHROUGH = [
    pytest.param("bg_nbd", 25.757, 0.9689, id="bg_nbd"),
    pytest.param("pareto_nbd", 25.456, 0.997874, id="pareto_nbd"),
]

# lifetimes docs: Gamma-Gamma expected average spend of summary customers 1..10 (sample ids).
LIFETIMES_EXPECTED_SPEND = {
    1: 24.65, 2: 18.91, 3: 35.17, 4: 35.17, 5: 35.17,
    6: 71.46, 7: 18.91, 8: 35.17, 9: 27.28, 10: 35.17,
}


@pytest.fixture(scope="module")
def customer_of_sample(cdnow_orders) -> pd.Series:
    """File customer id of each sample id (one customer per sample id)."""
    pairs = cdnow_orders[["sample_id", "customer_id"]].drop_duplicates()
    assert pairs["sample_id"].is_unique and pairs["customer_id"].is_unique
    return pairs.set_index("sample_id")["customer_id"]


@pytest.fixture(scope="module")
def cdnow_scores(cdnow_fit, cdnow_rfm):
    """``score_customers`` on CDNOW, once per model, indexed by the file's customer id."""
    cache = {}

    def score(name: str) -> pd.DataFrame:
        if name not in cache:
            scores = score_customers(cdnow_fit(name), cdnow_rfm, time_unit="W")
            cache[name] = scores.set_index("customer_id")
        return cache[name]

    return score


def _conditional(method, customer: dict, **kwargs) -> float:
    """A pymc-marketing prediction for one hand-given ``(x, t_x, T)``, as a float."""
    data = pd.DataFrame([{"customer_id": 0, **customer}])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        array = method(data=data, **kwargs)
    values = np.asarray(array.values, dtype=float).ravel()
    assert values.size == 1
    return float(values[0])


# --- The hand-given customers are the project's own feature rows ---------------------


@pytest.mark.parametrize(
    ("sample_id", "published", "decimals"),
    [
        pytest.param(1, FHL_2005_CUSTOMER, 2, id="fader_hardie_lee_2005-sample_1"),
        pytest.param(BTYD_CUSTOMER_SAMPLE_ID, BTYD_CUSTOMER, 3, id="btyd_walkthrough-sample_1516"),
    ],
)
def test_cdnow_features_give_published_rows_of_hand_given_customers(
    cdnow_rfm, customer_of_sample, sample_id, published, decimals
):
    row = cdnow_rfm.set_index("customer_id").loc[customer_of_sample[sample_id]]
    assert row["frequency"] == published["frequency"]
    # The published t_x and T are the project's, rounded to the published decimals.
    assert round(row["recency"], decimals) == pytest.approx(published["recency"])
    assert round(row["T"], decimals) == pytest.approx(published["T"])


# --- Published numbers -----------------------------------------------------------------


@pytest.mark.slow
def test_mbg_nbd_params_match_btydplus_cdnow_estimates(cdnow_fit):
    fitted = cdnow_fit("mbg_nbd").parameters["mbg_nbd"]
    assert fitted == pytest.approx(BTYDPLUS_MBG_NBD, rel=PUBLISHED_RTOL)


@pytest.mark.slow
def test_bg_nbd_conditional_expectation_matches_fader_hardie_lee_2005(cdnow_fit):
    model = cdnow_fit("bg_nbd").transaction
    expected = _conditional(model.expected_purchases, FHL_2005_CUSTOMER, future_t=FHL_2005_HORIZON_WEEKS)
    assert expected == pytest.approx(FHL_2005_EXPECTED_PURCHASES, rel=PUBLISHED_RTOL)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "purchases", "p_alive"), BTYD_WALKTHROUGH)
def test_customer_1516_expected_purchases_over_52_weeks_match_btyd_walkthrough(
    cdnow_fit, name, purchases, p_alive
):
    model = cdnow_fit(name).transaction
    expected = _conditional(model.expected_purchases, BTYD_CUSTOMER, future_t=BTYD_HORIZON_WEEKS)
    assert expected == pytest.approx(purchases, rel=PUBLISHED_RTOL)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "purchases", "p_alive"), BTYD_WALKTHROUGH)
def test_customer_1516_p_alive_matches_btyd_walkthrough(
    cdnow_fit, cdnow_scores, customer_of_sample, name, purchases, p_alive
):
    # Through score_customers, on the project's own row of the customer (t_x = 216/7 weeks) ...
    scored = cdnow_scores(name).loc[customer_of_sample[BTYD_CUSTOMER_SAMPLE_ID], "p_alive"]
    assert scored == pytest.approx(p_alive, rel=PUBLISHED_RTOL)
    # ... and at the published, rounded (x, t_x, T).
    model = cdnow_fit(name).transaction
    hand_given = _conditional(model.expected_probability_alive, BTYD_CUSTOMER)
    assert hand_given == pytest.approx(p_alive, rel=PUBLISHED_RTOL)


@pytest.mark.slow
def test_gamma_gamma_expected_spend_of_first_ten_summary_customers_matches_lifetimes_docs(
    cdnow_scores, customer_of_sample
):
    sample_ids = list(LIFETIMES_EXPECTED_SPEND)
    customers = customer_of_sample.loc[sample_ids]
    scored = cdnow_scores("bg_nbd").loc[customers, "expected_spend"].to_numpy()
    published = np.array([LIFETIMES_EXPECTED_SPEND[s] for s in sample_ids])
    assert_allclose(scored, published, rtol=PUBLISHED_RTOL, err_msg=f"sample ids {sample_ids}")
