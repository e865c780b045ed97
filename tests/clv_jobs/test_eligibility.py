"""Tests for clv_jobs.eligibility: the SPEC thresholds at their edges (pure ``evaluate``)
and ``history_stats`` on a small clean transactions table."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from clv_jobs.eligibility import HistoryStats, evaluate, history_stats
from clv_jobs.settings import EligibilitySettings
from clv_jobs.sources import connect

AS_OF = dt.date(2025, 6, 1)
SPEC = EligibilitySettings()


def _stats(
    first_purchase: dt.date | None = dt.date(2024, 1, 1), buyers: int = 500, max_purchases: int = 3
) -> HistoryStats:
    return HistoryStats(first_purchase=first_purchase, buyers=buyers, max_purchases=max_purchases)


def test_spec_defaults_are_the_thresholds():
    assert (SPEC.min_months, SPEC.min_buyers, SPEC.min_max_purchases) == (4, 500, 3)


def test_all_three_thresholds_met_exactly_is_eligible():
    result = evaluate(_stats(dt.date(2025, 2, 1), 500, 3), AS_OF, SPEC)
    assert result.eligible is True
    assert result.reasons == []


# --- first purchase: calendar months ------------------------------------------------------


@pytest.mark.parametrize(
    ("as_of", "first_purchase", "eligible"),
    [
        (dt.date(2025, 6, 1), dt.date(2025, 2, 1), True),  # exactly 4 months
        (dt.date(2025, 6, 1), dt.date(2025, 2, 2), False),  # 3 months and 30 days
        (dt.date(2025, 6, 1), dt.date(2025, 1, 31), True),
        (dt.date(2025, 7, 31), dt.date(2025, 3, 31), True),  # same day number, 4 months back
        (dt.date(2025, 7, 31), dt.date(2025, 4, 1), False),
        (dt.date(2025, 6, 30), dt.date(2025, 2, 28), True),  # no 30 Feb: the month's last day
        (dt.date(2025, 6, 30), dt.date(2025, 3, 1), False),
        (dt.date(2024, 6, 29), dt.date(2024, 2, 29), True),  # leap day
        (dt.date(2025, 1, 15), dt.date(2024, 9, 15), True),  # across the new year
        (dt.date(2025, 1, 15), dt.date(2024, 9, 16), False),
    ],
    ids=[
        "jun1-feb1",
        "jun1-feb2",
        "jun1-jan31",
        "jul31-mar31",
        "jul31-apr1",
        "jun30-feb28",
        "jun30-mar1",
        "leap-feb29",
        "new-year-sep15",
        "new-year-sep16",
    ],
)
def test_first_purchase_must_be_min_months_calendar_months_before_as_of(
    as_of, first_purchase, eligible
):
    result = evaluate(_stats(first_purchase), as_of, SPEC)
    assert result.eligible is eligible
    assert any(reason.startswith("history starts") for reason in result.reasons) is not eligible


def test_first_purchase_reason_names_dates_and_months():
    result = evaluate(_stats(dt.date(2025, 2, 2)), AS_OF, SPEC)
    assert result.reasons == [
        "history starts 2025-02-02: needs a first purchase on or before 2025-02-01 (4 months)"
    ]


def test_min_months_setting_moves_the_edge():
    settings = EligibilitySettings(min_months=6)
    assert evaluate(_stats(dt.date(2024, 12, 1)), AS_OF, settings).eligible is True
    assert evaluate(_stats(dt.date(2024, 12, 2)), AS_OF, settings).eligible is False


# --- buyers and max purchases -------------------------------------------------------------


@pytest.mark.parametrize(("buyers", "eligible"), [(499, False), (500, True), (501, True)])
def test_distinct_buyers_edge_at_500(buyers, eligible):
    result = evaluate(_stats(buyers=buyers), AS_OF, SPEC)
    assert result.eligible is eligible
    assert result.reasons == ([] if eligible else ["499 distinct buyers, needs 500"])


@pytest.mark.parametrize(("max_purchases", "eligible"), [(2, False), (3, True), (40, True)])
def test_max_purchases_edge_at_3(max_purchases, eligible):
    result = evaluate(_stats(max_purchases=max_purchases), AS_OF, SPEC)
    assert result.eligible is eligible
    assert result.reasons == ([] if eligible else ["no buyer with 3 purchases (most: 2)"])


def test_every_missing_threshold_is_reported_in_order():
    result = evaluate(_stats(dt.date(2025, 5, 1), 12, 1), AS_OF, SPEC)
    assert result.eligible is False
    assert result.reasons == [
        "history starts 2025-05-01: needs a first purchase on or before 2025-02-01 (4 months)",
        "12 distinct buyers, needs 500",
        "no buyer with 3 purchases (most: 1)",
    ]


def test_no_purchases_at_all_is_not_eligible_with_three_reasons():
    result = evaluate(HistoryStats(first_purchase=None, buyers=0, max_purchases=0), AS_OF, SPEC)
    assert result.eligible is False
    assert result.reasons == [
        "no purchases before the as-of date",
        "0 distinct buyers, needs 500",
        "no buyer with 3 purchases (most: 0)",
    ]
    assert result.as_dict()["first_purchase"] is None


def test_result_as_dict_is_json_safe():
    out = json.loads(json.dumps(evaluate(_stats(dt.date(2025, 2, 1)), AS_OF, SPEC).as_dict()))
    assert out == {
        "as_of": "2025-06-01",
        "eligible": True,
        "first_purchase": "2025-02-01",
        "buyers": 500,
        "max_purchases": 3,
        "reasons": [],
    }


# --- history_stats on data ----------------------------------------------------------------


def _transactions(rows: list[tuple[str, str, str, float]]):
    con = connect()
    con.execute(
        "CREATE TEMP TABLE transactions (customer_id VARCHAR, order_id VARCHAR, "
        "order_ts TIMESTAMP, amount DOUBLE)"
    )
    if rows:
        con.executemany("INSERT INTO transactions VALUES (?, ?, CAST(? AS TIMESTAMP), ?)", rows)
    return con


ROWS = [
    ("c1", "o1", "2025-01-31 23:30:00", 10.0),
    ("c1", "o2", "2025-03-01 10:00:00", 10.0),
    ("c1", "o3", "2025-04-01 10:00:00", 10.0),
    ("c2", "o4", "2025-02-15 10:00:00", 10.0),
    ("c2", "o5", "2025-02-16 10:00:00", 10.0),
    ("c3", "o6", "2025-05-01 10:00:00", 10.0),
]


def test_history_stats_counts_buyers_and_most_orders_of_one_buyer():
    stats = history_stats(_transactions(ROWS), "UTC")
    assert stats == HistoryStats(first_purchase=dt.date(2025, 1, 31), buyers=3, max_purchases=3)


def test_history_stats_first_purchase_is_a_local_day():
    # 2025-01-31 23:30 UTC is 2025-02-01 00:30 in Madrid (UTC+1 in winter).
    assert history_stats(_transactions(ROWS), "Europe/Madrid").first_purchase == dt.date(2025, 2, 1)
    assert history_stats(_transactions(ROWS), "America/New_York").first_purchase == dt.date(
        2025, 1, 31
    )


def test_time_zone_decides_the_four_month_edge():
    as_of = dt.date(2025, 5, 31)  # needs a first purchase on or before 2025-01-31
    utc = evaluate(history_stats(_transactions(ROWS), "UTC"), as_of, SPEC)
    assert not any(reason.startswith("history starts") for reason in utc.reasons)
    madrid = evaluate(history_stats(_transactions(ROWS), "Europe/Madrid"), as_of, SPEC)
    assert madrid.reasons[0] == (
        "history starts 2025-02-01: needs a first purchase on or before 2025-01-31 (4 months)"
    )


def test_history_stats_on_empty_table_gives_no_first_purchase():
    assert history_stats(_transactions([]), "UTC") == HistoryStats(None, 0, 0)
