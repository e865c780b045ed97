"""Tests for clv_jobs.features: the Datamodel columns on a hand-built table (window edges,
history window, cutoff, time-zone days) and the model inputs against pymc-marketing's
``rfm_summary`` on the same orders."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from clv_jobs.asof import window_start_utc
from clv_jobs.features import RFM_COLUMNS, build_features, rfm_frame
from clv_jobs.sources import connect

AS_OF = dt.date(2025, 6, 1)
CUTOFF = dt.datetime(2025, 6, 1)  # the as-of instant in UTC
DAY = dt.timedelta(days=1)
SECOND = dt.timedelta(seconds=1)


def _session(rows: list[tuple[str, dt.datetime, float]]):
    """A connect() session holding ``transactions`` with one order per row (naive UTC)."""
    con = connect()
    con.execute(
        "CREATE TEMP TABLE transactions (customer_id VARCHAR, order_id VARCHAR, "
        "order_ts TIMESTAMP, amount DOUBLE)"
    )
    con.executemany(
        "INSERT INTO transactions VALUES (?, ?, ?, ?)",
        [(customer, f"o{i}", ts, amount) for i, (customer, ts, amount) in enumerate(rows)],
    )
    return con


def _features(
    rows, timezone: str = "UTC", months: int = 24, time_unit: str = "D", as_of: dt.date = AS_OF
) -> pd.DataFrame:
    return build_features(_session(rows), as_of, timezone, months, time_unit).set_index(
        "customer_id"
    )


# Windows measured back from the as-of instant: each amount a power of two, so every sum
# says exactly which orders it holds.
EDGE_ROWS = [
    ("edge", CUTOFF - 90 * DAY, 1.0),
    ("edge", CUTOFF - 90 * DAY - SECOND, 2.0),
    ("edge", CUTOFF - 180 * DAY, 4.0),
    ("edge", CUTOFF - 180 * DAY - SECOND, 8.0),
    ("edge", CUTOFF - 360 * DAY, 16.0),
    ("edge", CUTOFF - 360 * DAY - SECOND, 32.0),
]
MULTI_ROWS = [
    ("multi", dt.datetime(2025, 1, 1, 6), 10.0),
    ("multi", dt.datetime(2025, 1, 1, 20), 5.0),  # same day: one purchase day
    ("multi", dt.datetime(2025, 2, 10, 12), 30.0),
    ("multi", dt.datetime(2025, 4, 20, 0), 60.0),
    ("multi", CUTOFF, 1000.0),  # at the cutoff: a later run's
    ("multi", dt.datetime(2025, 6, 3, 9), 2000.0),
]
SINGLE_ROWS = [("single", dt.datetime(2025, 5, 31, 18), 12.5)]
HISTORY_ROWS = [
    ("old", dt.datetime(2023, 5, 1, 10), 99.0),  # 25 months old: outside the history
    ("old", dt.datetime(2025, 5, 1, 10), 7.0),
    ("gone", dt.datetime(2023, 4, 1, 10), 50.0),  # only orders older than the window
    ("gone", dt.datetime(2023, 5, 15, 10), 50.0),
    ("start", dt.datetime(2023, 6, 1, 0), 3.0),  # first instant of the window
    ("start", dt.datetime(2023, 5, 31, 23, 59, 59), 300.0),
]


@pytest.fixture(scope="module")
def features() -> pd.DataFrame:
    return _features(EDGE_ROWS + MULTI_ROWS + SINGLE_ROWS + HISTORY_ROWS)


def test_one_row_per_buyer_of_the_window_sorted_by_customer_id(features):
    assert list(features.index) == ["edge", "multi", "old", "single", "start"]


def test_columns_are_the_documented_ones(features):
    assert list(features.reset_index().columns) == [
        "customer_id",
        "freq_value",
        "mon_value",
        "first_ts",
        "last_ts",
        "rec_value",
        "days_btw_purchase",
        "tenure_days",
        "lst90_revenue",
        "lst90_freq",
        "lst180_revenue",
        "lst180_freq",
        "lst360_revenue",
        "lst360_freq",
        "frequency",
        "recency",
        "T",
        "monetary_value",
    ]
    assert rfm_frame(features.reset_index()).columns.tolist() == RFM_COLUMNS


def test_descriptive_columns_equal_hand_computed_values(features):
    multi = features.loc["multi"]
    assert multi["freq_value"] == 4  # orders, not days
    assert multi["mon_value"] == 105.0
    assert multi["first_ts"] == pd.Timestamp("2025-01-01 06:00")
    assert multi["last_ts"] == pd.Timestamp("2025-04-20 00:00")
    assert multi["rec_value"] == 42.0  # 20 Apr 00:00 -> 1 Jun 00:00
    assert multi["days_btw_purchase"] == pytest.approx((109 - 0.25) / 3, abs=1e-12)
    assert multi["tenure_days"] == 150.75  # 1 Jan 06:00 -> 1 Jun 00:00


def test_recency_is_fractional_days_from_the_as_of_instant(features):
    single = features.loc["single"]
    assert single["rec_value"] == 0.25  # 31 May 18:00 -> 1 Jun 00:00
    assert single["tenure_days"] == 0.25


def test_days_between_purchases_is_null_for_one_purchase(features):
    assert np.isnan(features.loc["single", "days_btw_purchase"])
    assert np.isnan(features.loc["old", "days_btw_purchase"])


def test_long_spans_are_exact_days_not_month_approximations(features):
    start = features.loc["start"]
    assert start["tenure_days"] == (CUTOFF - dt.datetime(2023, 6, 1)).days == 731
    assert start["rec_value"] == 731.0


@pytest.mark.parametrize(
    ("days", "revenue", "freq"),
    [(90, 1.0, 1), (180, 1.0 + 2.0 + 4.0, 3), (360, 1.0 + 2.0 + 4.0 + 8.0 + 16.0, 5)],
)
def test_window_includes_an_order_exactly_n_days_before_the_cutoff(features, days, revenue, freq):
    edge = features.loc["edge"]
    assert edge[f"lst{days}_revenue"] == revenue
    assert edge[f"lst{days}_freq"] == freq
    assert edge["freq_value"] == 6 and edge["mon_value"] == 63.0


def test_windows_are_zero_not_null_without_recent_orders(features):
    start = features.loc["start"]
    assert (
        start["lst90_revenue"],
        start["lst90_freq"],
        start["lst360_revenue"],
        start["lst360_freq"],
    ) == (0.0, 0, 0.0, 0)


def test_orders_on_or_after_the_cutoff_are_excluded(features):
    multi = features.loc["multi"]
    assert multi["last_ts"] < pd.Timestamp(CUTOFF)
    assert multi["lst90_revenue"] == 60.0 and multi["lst90_freq"] == 1


def test_history_window_excludes_orders_older_than_24_months(features):
    assert features.loc["old", "freq_value"] == 1
    assert features.loc["old", "mon_value"] == 7.0
    assert features.loc["old", "first_ts"] == pd.Timestamp("2025-05-01 10:00")
    assert "gone" not in features.index
    assert features.loc["start", "freq_value"] == 1 and features.loc["start", "mon_value"] == 3.0


def test_history_window_setting_is_in_calendar_months():
    rows = [("x", dt.datetime(2024, 11, 30, 23, 59, 59), 1.0), ("x", dt.datetime(2024, 12, 1), 2.0)]
    assert _features(rows, months=6).loc["x", "mon_value"] == 2.0


def test_model_inputs_equal_hand_computed_values(features):
    assert features.loc["multi", ["frequency", "recency", "T", "monetary_value"]].tolist() == [
        2,
        109.0,
        150.0,
        45.0,
    ]  # days 1 Jan, 10 Feb, 20 Apr; T to 31 May
    assert features.loc["single", ["frequency", "recency", "T", "monetary_value"]].tolist() == [
        0,
        0.0,
        0.0,
        0.0,
    ]


# --- time zone ----------------------------------------------------------------------------

TZ_ROWS = [
    ("tz", dt.datetime(2025, 4, 10, 22, 30), 10.0),  # 11 Apr 00:30 in Madrid (UTC+2)
    ("tz", dt.datetime(2025, 4, 11, 21, 0), 20.0),  # 11 Apr 23:00 in Madrid
    ("tz", dt.datetime(2025, 5, 31, 22, 30), 40.0),  # 1 Jun 00:30 in Madrid: a later run's
]


def test_orders_on_the_same_local_day_are_one_purchase_day():
    madrid = _features(TZ_ROWS, "Europe/Madrid").loc["tz"]
    assert (madrid["freq_value"], madrid["frequency"], madrid["recency"], madrid["T"]) == (
        2,
        0,
        0.0,
        50.0,
    )
    assert madrid["monetary_value"] == 0.0
    utc = _features(TZ_ROWS, "UTC").loc["tz"]
    assert (utc["freq_value"], utc["frequency"], utc["recency"], utc["T"]) == (3, 2, 51.0, 51.0)
    assert utc["monetary_value"] == 30.0


def test_time_zone_moves_cutoff_and_recency_to_local_midnight():
    madrid = _features(TZ_ROWS, "Europe/Madrid").loc["tz"]
    # the as-of instant is 31 May 22:00 UTC; the last order is 11 Apr 21:00 UTC
    assert madrid["last_ts"] == pd.Timestamp("2025-04-11 21:00")
    assert madrid["rec_value"] == pytest.approx(50 + 1 / 24, abs=1e-12)


# --- pymc-marketing rfm_summary as the reference ------------------------------------------


@pytest.fixture(scope="module")
def random_orders() -> pd.DataFrame:
    """Seeded orders over 27 months (some before the window, some after the cutoff),
    with same-local-day repeats and orders near local midnight."""
    rng = np.random.default_rng(20250601)
    start = pd.Timestamp("2023-03-01").value // 10**9
    end = pd.Timestamp("2025-06-10").value // 10**9
    rows = []
    for customer in range(80):
        seconds = rng.integers(start, end, size=int(rng.integers(1, 9)))
        stamps = list(pd.to_datetime(seconds, unit="s"))
        if rng.random() < 0.3:  # a second order later the same day
            stamps.append(stamps[0] + pd.Timedelta(minutes=int(rng.integers(1, 120))))
        if rng.random() < 0.2:  # around local midnight
            stamps.append(
                pd.Timestamp("2024-10-26 21:59:00") + pd.Timedelta(minutes=int(rng.integers(0, 3)))
            )
        for stamp in stamps:
            rows.append(
                (f"c{customer:03d}", stamp.to_pydatetime(), round(float(rng.gamma(2.0, 20.0)), 2))
            )
    return pd.DataFrame(rows, columns=["customer_id", "order_ts", "amount"])


def _reference(orders: pd.DataFrame, timezone: str, time_unit: str = "D", time_scaler: float = 1):
    from pymc_marketing.clv.utils import rfm_summary

    start = window_start_utc(AS_OF, 24, timezone)
    in_history = orders[orders["order_ts"] >= start]  # the history window is ours to apply
    frame = in_history.assign(
        date=in_history["order_ts"]
        .dt.tz_localize("UTC")
        .dt.tz_convert(timezone)
        .dt.tz_localize(None)
    )
    return (
        rfm_summary(
            frame,
            "customer_id",
            "date",
            monetary_value_col="amount",
            observation_period_end=pd.Timestamp(AS_OF - DAY),
            time_unit=time_unit,
            time_scaler=time_scaler,
        )
        .sort_values("customer_id")
        .reset_index(drop=True)
    )


@pytest.mark.parametrize("timezone", ["UTC", "Europe/Madrid", "America/Mexico_City"])
def test_model_inputs_equal_pymc_marketing_rfm_summary(random_orders, timezone):
    rows = list(random_orders.itertuples(index=False, name=None))
    ours = rfm_frame(build_features(_session(rows), AS_OF, timezone, 24, "D"))
    reference = _reference(random_orders, timezone)

    assert len(ours) > 50
    assert ours["customer_id"].tolist() == reference["customer_id"].tolist()
    for column in ("frequency", "recency", "T"):
        np.testing.assert_array_equal(
            ours[column].to_numpy(float), reference[column].to_numpy(), column
        )
    np.testing.assert_allclose(
        ours["monetary_value"], reference["monetary_value"], rtol=1e-12, atol=0
    )


def test_weeks_are_the_day_values_divided_by_seven(random_orders):
    rows = list(random_orders.itertuples(index=False, name=None))
    days = rfm_frame(build_features(_session(rows), AS_OF, "Europe/Madrid", 24, "D"))
    weeks = rfm_frame(build_features(_session(rows), AS_OF, "Europe/Madrid", 24, "W"))

    pd.testing.assert_series_equal(weeks["frequency"], days["frequency"])
    pd.testing.assert_series_equal(weeks["monetary_value"], days["monetary_value"])
    np.testing.assert_array_equal(weeks["recency"], days["recency"] / 7)
    np.testing.assert_array_equal(weeks["T"], days["T"] / 7)
    # pymc-marketing's spelling of the same thing: day periods, scaled by 7.
    reference = _reference(random_orders, "Europe/Madrid", time_unit="D", time_scaler=7)
    np.testing.assert_allclose(weeks["recency"], reference["recency"], rtol=1e-15)
    np.testing.assert_allclose(weeks["T"], reference["T"], rtol=1e-15)


def test_feature_columns_have_plain_numeric_types():
    """Counts are int64 and amounts float64 (a SQL sum of counts is a 128-bit integer unless cast)."""
    rows = [("a", "2025-01-05 10:00:00", 10.0), ("a", "2025-01-05 12:00:00", 5.0), ("a", "2025-02-01 10:00:00", 7.5)]
    frame = build_features(_session(rows), AS_OF, "UTC", 24, "D")
    for column in ("freq_value", "lst90_freq", "lst180_freq", "lst360_freq", "frequency"):
        assert frame[column].dtype == "int64", column
    for column in ("mon_value", "lst90_revenue", "rec_value", "recency", "T", "monetary_value"):
        assert frame[column].dtype == "float64", column


def test_recent_windows_are_local_calendar_days_across_a_daylight_saving_change():
    """Madrid, as of 2025-06-01 (summer time): the 90-day window starts on local 2025-03-03 00:00 (winter time)."""
    as_of = dt.date(2025, 6, 1)
    rows = [("m", dt.datetime(2025, 3, 2, 22, 30), 1.0),   # 23:30 local on 2 March: 91 days before
            ("m", dt.datetime(2025, 3, 2, 23, 30), 2.0),   # 00:30 local on 3 March: inside
            ("m", dt.datetime(2025, 5, 31, 21, 59), 4.0)]  # 23:59 local on 31 May: inside
    features = _features(rows, timezone="Europe/Madrid", as_of=as_of)
    assert features.loc["m", "lst90_revenue"] == 6.0 and features.loc["m", "lst90_freq"] == 2
    assert features.loc["m", "lst180_revenue"] == 7.0


def test_recent_windows_stay_inside_a_short_history_window():
    rows = [("s", dt.datetime(2024, 9, 1, 12), 1.0), ("s", dt.datetime(2025, 3, 1, 12), 2.0)]
    features = _features(rows, months=6)  # the window starts on 2024-12-01: 360 days reach before it
    assert features.loc["s", "lst360_revenue"] == 2.0 and features.loc["s", "mon_value"] == 2.0


def test_money_sums_are_exact_whatever_the_order_of_the_orders():
    """Sums of money do not depend on the order the orders are added in (reruns give the same bytes).

    In floating point (0.1 + 0.2) + 0.3 is 0.6000000000000001 and 0.1 + (0.2 + 0.3) is 0.6;
    DuckDB's threads add a customer's partial sums in no fixed order, so the sums are exact.
    """
    days = [dt.datetime(2025, 1, 5, 10), dt.datetime(2025, 2, 5, 10), dt.datetime(2025, 3, 5, 10),
            dt.datetime(2025, 4, 5, 10)]
    amounts = [50.0, 0.1, 0.2, 0.3]
    forward = _features([("a", day, amount) for day, amount in zip(days, amounts, strict=True)])
    backward = _features([("a", day, amount) for day, amount in reversed(list(zip(days, amounts, strict=True)))])
    pd.testing.assert_frame_equal(forward, backward, check_exact=True)
    assert forward.loc["a", "mon_value"] == 50.6
    assert forward.loc["a", "monetary_value"] == 0.6 / 3
    assert forward.loc["a", "lst360_revenue"] == 50.6


def test_amounts_of_a_trillion_or_more_are_summed_exactly_too():
    """Amounts from ``features.MONEY_LIMIT`` on are read as 128-bit decimals: still exact."""
    big = 3e12 + 0.25
    features = _features([("a", dt.datetime(2025, 1, 5, 10), big), ("a", dt.datetime(2025, 2, 5, 10), 0.5)])
    assert features.loc["a", "mon_value"] == 3e12 + 0.75
    assert features.loc["a", "monetary_value"] == 0.5


def test_a_days_total_of_a_trillion_or_more_is_summed_exactly():
    """Amounts each below ``features.MONEY_LIMIT`` whose day's total is not: the day's total is a 128-bit decimal."""
    half = 6e11 + 0.25
    features = _features([("a", dt.datetime(2025, 1, 5, 10), half), ("a", dt.datetime(2025, 1, 5, 11), half),
                          ("a", dt.datetime(2025, 2, 5, 10), 0.5)])
    assert features.loc["a", "mon_value"] == 1.2e12 + 1.0
    assert features.loc["a", "freq_value"] == 3
    assert features.loc["a", "frequency"] == 1
    assert features.loc["a", "monetary_value"] == 0.5


def test_64_and_128_bit_decimals_give_the_same_features(random_orders, monkeypatch):
    """The 64-bit reading of the amounts changes no feature (any amount, micro-units, over random orders)."""
    import clv_jobs.features as features_module

    rng = np.random.default_rng(7)
    orders = random_orders.assign(amount=rng.uniform(0, 1e6, len(random_orders)).round(int(rng.integers(0, 7))))
    rows = list(orders.itertuples(index=False, name=None))
    narrow = _features(rows)
    monkeypatch.setattr(features_module, "MONEY_LIMIT", 0.0)  # every amount read as WIDE_MONEY
    wide = _features(rows)
    pd.testing.assert_frame_equal(narrow, wide, check_exact=True)


@pytest.mark.parametrize("timezone", ["UTC", "Europe/Madrid"])
def test_the_pass_in_parts_gives_the_table_of_one_pass(random_orders, monkeypatch, timezone):
    """Customer-id ranges of a few orders each (``features.ORDERS_PER_PART``): the same rows, in the same order.

    Ids that sort apart as bytes do (quotes, capitals, accents, prefixes of one another), and
    the backtest's columns with them.
    """
    import clv_jobs.features as features_module

    names = ["O'Brien", "o'brien", "Zoë", "zoe", "A", "a", "ab", "a b", "Émile", "émile", "日本", "1", "10", "9"]
    orders = random_orders.assign(
        customer_id=[names[int(code[1:]) % len(names)] + code for code in random_orders["customer_id"]])
    rows = list(orders.itertuples(index=False, name=None))
    split_date = AS_OF - 90 * DAY
    whole = features_module.feature_table(_session(rows), AS_OF, timezone, 24, "D", split_date)
    monkeypatch.setattr(features_module, "ORDERS_PER_PART", 7)
    con = _session(rows)
    ranges = features_module.customer_ranges(con, len(rows))
    parts = features_module.feature_table(con, AS_OF, timezone, 24, "D", split_date)

    assert len(ranges) > 20
    assert parts.combine_chunks().equals(whole.combine_chunks())
    ids = whole["customer_id"].to_pylist()
    assert ids == sorted(ids, key=lambda text: text.encode()) and len(set(ids)) == len(ids) > 50
