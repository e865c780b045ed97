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

from clv_jobs.asof import cutoff_utc, local_day_sql, window_start_utc
from clv_jobs.sources import frame

#: Time units the models accept, in days.
TIME_UNIT_DAYS = {"D": 1.0, "W": 7.0}

#: Revenue/frequency windows of the Datamodel, in days before the as-of instant.
WINDOWS = (90, 180, 360)

RFM_COLUMNS = ["customer_id", "frequency", "recency", "T", "monetary_value"]


def _window_columns() -> str:
    parts = []
    for days in WINDOWS:
        recent = f"order_ts >= $cutoff - INTERVAL {days} DAY"
        parts.append(f"coalesce(sum(amount) FILTER (WHERE {recent}), 0) AS lst{days}_revenue")
        parts.append(f"count(*) FILTER (WHERE {recent}) AS lst{days}_freq")
    return ",\n            ".join(parts)


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
    params = {
        "cutoff": cutoff_utc(as_of, timezone),
        "window_start": window_start_utc(as_of, history_window_months, timezone),
        "period_end": as_of - dt.timedelta(days=1),
        "tz": timezone,
        "unit_days": TIME_UNIT_DAYS[time_unit],
    }
    return frame(
        con,
        f"""
        WITH in_window AS (
            SELECT customer_id, order_ts, amount,
                   {local_day_sql("order_ts")} AS day
            FROM transactions
            WHERE order_ts >= $window_start AND order_ts < $cutoff
        ),
        per_day AS (
            SELECT customer_id, day, sum(amount) AS day_amount
            FROM in_window GROUP BY customer_id, day
        ),
        model_inputs AS (
            SELECT customer_id,
                   count(*) - 1 AS frequency,
                   date_diff('day', min(day), max(day)) / $unit_days AS recency,
                   date_diff('day', min(day), CAST($period_end AS DATE)) / $unit_days AS T,
                   coalesce((sum(day_amount) - arg_min(day_amount, day)) / nullif(count(*) - 1, 0), 0)
                       AS monetary_value
            FROM per_day GROUP BY customer_id
        ),
        descriptive AS (
            SELECT customer_id,
                   count(*) AS freq_value,
                   sum(amount) AS mon_value,
                   min(order_ts) AS first_ts,
                   max(order_ts) AS last_ts,
                   {_window_columns()}
            FROM in_window GROUP BY customer_id
        )
        SELECT d.customer_id,
               d.freq_value, d.mon_value, d.first_ts, d.last_ts,
               epoch($cutoff - d.last_ts) / 86400.0 AS rec_value,
               CASE WHEN d.freq_value > 1
                    THEN epoch(d.last_ts - d.first_ts) / 86400.0 / (d.freq_value - 1) END
                   AS days_btw_purchase,
               epoch($cutoff - d.first_ts) / 86400.0 AS tenure_days,
               d.* EXCLUDE (customer_id, freq_value, mon_value, first_ts, last_ts),
               m.frequency, m.recency, m.T, m.monetary_value
        FROM descriptive d JOIN model_inputs m USING (customer_id)
        ORDER BY d.customer_id
        """,
        params,
    )


def rfm_frame(features: pd.DataFrame) -> pd.DataFrame:
    """The models' input columns, in pymc-marketing's canonical names."""
    return features[RFM_COLUMNS]
