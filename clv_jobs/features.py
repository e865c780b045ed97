"""Per-customer features in one columnar pass over the clean orders.

Two families of columns, both over the account's history window:

- the Datamodel's descriptive columns (orders, revenue, recency in days, windows);
- the models' inputs in the canonical pymc-marketing / lifetimes shape
  (``frequency, recency, T, monetary_value``), with ``rfm_summary``'s conventions: orders
  are grouped by calendar day in the account's time zone, ``frequency`` counts repeat
  purchase days, ``recency`` and ``T`` run from the first purchase day to the last
  purchase day and to the last observed day (as-of − 1 day), and ``monetary_value`` is the
  mean spend of the repeat days (0 for one-time buyers).
"""

from __future__ import annotations

import datetime as dt

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from clv_jobs.asof import cutoff_utc, local_day_sql, months_before, window_start_utc
from clv_jobs.patterns import UNIQUE_CUSTOMERS

#: Time units the models accept, in days.
TIME_UNIT_DAYS = {"D": 1.0, "W": 7.0}

#: Revenue/frequency windows of the Datamodel, in days before the as-of instant.
WINDOWS = (90, 180, 360)

RFM_COLUMNS = ["customer_id", "frequency", "recency", "T", "monetary_value"]


def _window_columns() -> str:
    """Per purchase day: revenue and orders of the Datamodel's recent windows (exact instants)."""
    parts = []
    for days in WINDOWS:
        recent = f"order_ts >= $cutoff - INTERVAL {days} DAY"
        parts.append(f"sum(amount) FILTER (WHERE {recent}) AS lst{days}_revenue")
        parts.append(f"count(*) FILTER (WHERE {recent}) AS lst{days}_freq")
    return ",\n                   ".join(parts)


def _window_totals(in_window: str) -> str:
    parts = []
    for days in WINDOWS:
        parts.append(f"coalesce(sum(lst{days}_revenue) FILTER (WHERE {in_window}), 0) AS lst{days}_revenue")
        parts.append(f"CAST(coalesce(sum(lst{days}_freq) FILTER (WHERE {in_window}), 0) AS BIGINT) AS lst{days}_freq")
    return ",\n               ".join(parts)


def _model_inputs(days: str, period_end: str, prefix: str = "") -> str:
    """``frequency, recency, T, monetary_value`` of the purchase days matching ``days``."""
    return f"""count(*) FILTER (WHERE {days}) - 1 AS {prefix}frequency,
               date_diff('day', min(day) FILTER (WHERE {days}), max(day) FILTER (WHERE {days})) / $unit_days
                   AS {prefix}recency,
               date_diff('day', min(day) FILTER (WHERE {days}), CAST({period_end} AS DATE)) / $unit_days AS {prefix}T,
               coalesce((sum(day_amount) FILTER (WHERE {days}) - arg_min(day_amount, day) FILTER (WHERE {days}))
                        / nullif(count(*) FILTER (WHERE {days}) - 1, 0), 0) AS {prefix}monetary_value"""


#: The backtest's columns of a :func:`feature_table` with a split date.
SPLIT_COLUMNS = ["cal_days", "cal_mon_value", "cal_frequency", "cal_recency", "cal_T", "cal_monetary_value",
                 "holdout_purchases", "holdout_spend"]


def _feature_sql(split: bool) -> str:
    """One pass over the orders: per purchase day, then per customer, every window at once.

    Purchase days are local days and every window starts and ends at a local midnight, so
    a day lies wholly inside or outside each window and the per-customer step selects
    days with ``FILTER``. With ``split``, the same pass adds the backtest's calibration
    columns (``cal_*``: the model inputs as of the split date, over its own history
    window) and holdout actuals (purchase days and spend from the split date on).
    """
    in_window = "day >= $window_day"
    calibration = "day >= $cal_window_day AND day < $split_day"
    split_columns = f""",
               count(*) FILTER (WHERE {calibration}) AS cal_days,
               coalesce(sum(day_amount) FILTER (WHERE {calibration}), 0) AS cal_mon_value,
               {_model_inputs(calibration, "$cal_period_end", "cal_")},
               count(*) FILTER (WHERE day >= $split_day) AS holdout_purchases,
               coalesce(sum(day_amount) FILTER (WHERE day >= $split_day), 0) AS holdout_spend""" if split else ""
    split_select = "".join(f", c.{column}" for column in SPLIT_COLUMNS) if split else ""
    return f"""
        WITH per_day AS (
            SELECT customer_id, {local_day_sql("order_ts")} AS day,
                   sum(amount) AS day_amount, count(*) AS orders,
                   min(order_ts) AS first_ts, max(order_ts) AS last_ts,
                   {_window_columns()}
            FROM transactions
            WHERE order_ts >= $range_start AND order_ts < $cutoff
            GROUP BY ALL
        ),
        per_customer AS (
            SELECT customer_id,
                   count(*) FILTER (WHERE {in_window}) AS days_in_window,
                   CAST(sum(orders) FILTER (WHERE {in_window}) AS BIGINT) AS freq_value,
                   sum(day_amount) FILTER (WHERE {in_window}) AS mon_value,
                   min(first_ts) FILTER (WHERE {in_window}) AS first_ts,
                   max(last_ts) FILTER (WHERE {in_window}) AS last_ts,
                   {_window_totals(in_window)},
                   {_model_inputs(in_window, "$period_end")}{split_columns}
            FROM per_day GROUP BY customer_id
        )
        SELECT c.customer_id, c.days_in_window,
               c.freq_value, c.mon_value, c.first_ts, c.last_ts,
               epoch($cutoff - c.last_ts) / 86400.0 AS rec_value,
               CASE WHEN c.freq_value > 1
                    THEN epoch(c.last_ts - c.first_ts) / 86400.0 / (c.freq_value - 1) END
                   AS days_btw_purchase,
               epoch($cutoff - c.first_ts) / 86400.0 AS tenure_days,
               {", ".join(f"c.lst{d}_revenue, c.lst{d}_freq" for d in WINDOWS)},
               c.frequency, c.recency, c.T, c.monetary_value{split_select}
        FROM per_customer c
        ORDER BY c.customer_id
        """


#: Columns of :func:`build_features`, in order.
FEATURE_COLUMNS = ["customer_id", "freq_value", "mon_value", "first_ts", "last_ts", "rec_value",
                   "days_btw_purchase", "tenure_days",
                   *(f"lst{d}_{kind}" for d in WINDOWS for kind in ("revenue", "freq")),
                   "frequency", "recency", "T", "monetary_value"]


def feature_table(
    con: duckdb.DuckDBPyConnection,
    as_of: dt.date,
    timezone: str,
    history_window_months: int,
    time_unit: str = "D",
    split_date: dt.date | None = None,
) -> pa.Table:
    """The per-customer pass of :func:`build_features`, with the backtest's columns if ``split_date``.

    One row per customer with a purchase day in the history window (``days_in_window >
    0``) or, with ``split_date``, in the calibration window (``cal_days > 0``), sorted by
    customer id. See :func:`build_features` and :func:`clv_jobs.backtest.split_history`.
    """
    range_start = window_start_utc(as_of, history_window_months, timezone)
    params = {
        "cutoff": cutoff_utc(as_of, timezone),
        "window_day": months_before(as_of, history_window_months),
        "period_end": as_of - dt.timedelta(days=1),
        "tz": timezone,
        "unit_days": TIME_UNIT_DAYS[time_unit],
    }
    if split_date is not None:
        range_start = min(range_start, window_start_utc(split_date, history_window_months, timezone))
        params |= {"split_day": split_date, "cal_window_day": months_before(split_date, history_window_months),
                   "cal_period_end": split_date - dt.timedelta(days=1)}
    params["range_start"] = range_start
    return con.sql(_feature_sql(split_date is not None), params=params).to_arrow_table()


def features_frame(table: pa.Table) -> pd.DataFrame:
    """The :func:`build_features` frame of a :func:`feature_table` (buyers of the history window)."""
    rows = table.filter(pc.greater(table["days_in_window"], 0)).select(FEATURE_COLUMNS)
    result = rows.to_pandas()
    result.attrs[UNIQUE_CUSTOMERS] = True  # a GROUP BY customer_id: the fits need not check again
    return result


def build_features(
    con: duckdb.DuckDBPyConnection,
    as_of: dt.date,
    timezone: str,
    history_window_months: int,
    time_unit: str = "D",
) -> pd.DataFrame:
    """Compute one row per buyer of the history window from the ``transactions`` table.

    Parameters
    ----------
    con : duckdb.DuckDBPyConnection
        Session holding the clean ``transactions`` table (customer_id, order_ts UTC, amount).
    as_of : date
        The run's as-of date.
    timezone : str
        The account's time zone: purchase days are local days.
    history_window_months : int
        Orders before this many months are outside the model and the file.
    time_unit : {"D", "W"}
        Unit of ``recency`` and ``T``.

    Returns
    -------
    pandas.DataFrame
        Sorted by ``customer_id``; columns ``customer_id, freq_value, mon_value, first_ts,
        last_ts`` (naive UTC), ``rec_value, days_btw_purchase, tenure_days,
        lst{90,180,360}_{revenue,freq}`` and ``frequency, recency, T, monetary_value``.
    """
    return features_frame(feature_table(con, as_of, timezone, history_window_months, time_unit))


def rfm_frame(features: pd.DataFrame) -> pd.DataFrame:
    """The models' input columns, in pymc-marketing's canonical names (``attrs`` kept)."""
    return features[RFM_COLUMNS]
