"""Per-customer features in one columnar pass over the clean orders (customer range by range).

Two families of columns, both over the account's history window:

- the Datamodel's descriptive columns (orders, revenue, recency in days, and the revenue
  and orders of the last 90/180/360 local calendar days before the as-of date — local
  days, so that a daylight-saving change between then and now moves no order in or out);
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

#: Revenue/frequency windows of the Datamodel: the last N local days before the as-of date.
WINDOWS = (90, 180, 360)

RFM_COLUMNS = ["customer_id", "frequency", "recency", "T", "monetary_value"]

#: Money is summed exactly, as a decimal of micro-units: DuckDB adds a customer's partial
#: sums from its threads in whatever order they finish, and floating-point sums in a
#: varying order made two runs on the same orders differ in the last bits (and so, now and
#: then, in a rounded cent of the file). Each result is rounded once, to a double. The sums
#: are DECIMAL(38, 6) either way; each order's amount is read as :data:`MONEY` (64-bit:
#: the pass took about 1.3 s less CPU at five million buyers, medians of four single-threaded
#: runs) while every amount read is below :data:`MONEY_LIMIT`, else as :data:`WIDE_MONEY`.
#: Each purchase day's total is kept as :data:`MONEY` too while the amounts read add up to
#: less than :data:`MONEY_LIMIT` (no day's total can then overflow it): the per-customer
#: step, the pass's dearest, sums 64-bit decimals (0.3 s less at five million buyers).
MONEY = "DECIMAL(18, 6)"
WIDE_MONEY = "DECIMAL(38, 6)"
MONEY_LIMIT = 1e12


def _day_totals(prefix: str, days: str | None) -> str:
    """Per customer: purchase days, revenue, first and last day, first day's revenue, of ``days``.

    Each aggregate appears once: DuckDB evaluates a repeated one again, and the per-customer
    step's cost grows with their number.
    """
    where = f" FILTER (WHERE {days})" if days else ""
    return f"""count(*){where} AS {prefix}days,
                   sum(day_amount){where} AS {prefix}amount,
                   min(day){where} AS {prefix}first_day,
                   max(day){where} AS {prefix}last_day,
                   arg_min(day_amount, day){where} AS {prefix}first_day_amount"""


def _model_inputs(prefix: str, period_end: str, out: str = "") -> str:
    """``frequency, recency, T, monetary_value`` from :func:`_day_totals`' columns."""
    return f"""c.{prefix}days - 1 AS {out}frequency,
               date_diff('day', c.{prefix}first_day, c.{prefix}last_day) / $unit_days AS {out}recency,
               date_diff('day', c.{prefix}first_day, CAST({period_end} AS DATE)) / $unit_days AS {out}T,
               coalesce(CAST(c.{prefix}amount - c.{prefix}first_day_amount AS DOUBLE)
                        / nullif(c.{prefix}days - 1, 0), 0) AS {out}monetary_value"""


#: The backtest's columns of a :func:`feature_table` with a split date.
SPLIT_COLUMNS = ["cal_days", "cal_mon_value", "cal_frequency", "cal_recency", "cal_T", "cal_monetary_value",
                 "holdout_purchases", "holdout_spend"]


def _feature_sql(split: bool, whole_window: bool = False, money: str = MONEY, first: bool = False,
                 last: bool = False, calibration_days_only: bool = False, day_money: str = WIDE_MONEY) -> str:
    """One pass over the orders (of a range of customers): per purchase day, then per customer, every window at once.

    Purchase days are local days and every window starts and ends at a local midnight, so
    a day lies wholly inside or outside each window and the per-customer step selects
    days with ``FILTER``. With ``split``, the orders read start at the calibration's own
    (earlier) history window and the same pass adds the backtest's calibration columns
    (``cal_*``: the model inputs as of the split date) and holdout actuals (purchase days
    and spend from the split date on).

    ``whole_window``: no order read lies before the history window (the usual case), so
    the history window's columns need no filter and the calibration's come from them
    less the holdout's, exactly (money is a decimal): its first day and first day's spend
    are the customer's own when it has a calibration day at all. Four aggregates and
    eleven filters fewer in the per-customer step, the pass's dearest.

    ``money``, ``day_money``: the decimal types each order's amount and each purchase day's
    total are kept as (:data:`MONEY`).

    ``first``, ``last``: the pass covers the customer ids from ``$first_id`` on, before
    ``$last_id`` (a part of :func:`feature_table`).

    ``calibration_days_only``: of the backtest's columns, ``cal_days`` alone (which buyers
    the backtest may take).
    """
    customers = (" AND customer_id >= $first_id" if first else "") + (" AND customer_id < $last_id" if last else "")
    in_window = "day >= $window_day" if split and not whole_window else None
    windows = ",\n                   ".join(
        f"CAST(coalesce(sum(day_amount) FILTER (WHERE day >= $lst{d}_day), 0) AS DOUBLE) "
        f"AS lst{d}_revenue,\n                   "
        f"CAST(coalesce(sum(orders) FILTER (WHERE day >= $lst{d}_day), 0) AS BIGINT) AS lst{d}_freq" for d in WINDOWS)
    where = f" FILTER (WHERE {in_window})" if in_window else ""
    derived_calibration = ""
    if split and calibration_days_only:
        split_aggregates = """,
                   count(*) FILTER (WHERE day < $split_day) AS cal_days"""
    elif split and whole_window:
        split_aggregates = """,
                   max(day) FILTER (WHERE day < $split_day) AS cal_last_day,
                   count(*) FILTER (WHERE day >= $split_day) AS holdout_purchases,
                   sum(day_amount) FILTER (WHERE day >= $split_day) AS holdout_amount"""
        derived_calibration = """,
        per_customer_split AS (
            SELECT *, w_days - holdout_purchases AS cal_days,
                   w_amount - coalesce(holdout_amount, 0) AS cal_amount,
                   CASE WHEN w_days > holdout_purchases THEN w_first_day END AS cal_first_day,
                   CASE WHEN w_days > holdout_purchases THEN w_first_day_amount END AS cal_first_day_amount,
                   CAST(coalesce(holdout_amount, 0) AS DOUBLE) AS holdout_spend
            FROM per_customer
        )"""
    elif split:
        split_aggregates = f""",
                   {_day_totals("cal_", "day < $split_day")},
                   count(*) FILTER (WHERE day >= $split_day) AS holdout_purchases,
                   CAST(coalesce(sum(day_amount) FILTER (WHERE day >= $split_day), 0) AS DOUBLE)
                       AS holdout_spend"""
    else:
        split_aggregates = ""
    if not split:
        split_select = ""
    elif calibration_days_only:
        split_select = """,
               c.cal_days"""
    else:
        split_select = f""",
               c.cal_days, CAST(coalesce(c.cal_amount, 0) AS DOUBLE) AS cal_mon_value,
               {_model_inputs("cal_", "$cal_period_end", "cal_")},
               c.holdout_purchases, c.holdout_spend"""
    return f"""
        WITH per_day AS (
            SELECT customer_id, {local_day_sql("order_ts")} AS day,
                   CAST(sum(CAST(amount AS {money})) AS {day_money}) AS day_amount, count(*) AS orders,
                   min(order_ts) AS first_ts, max(order_ts) AS last_ts
            FROM transactions
            WHERE order_ts >= $range_start AND order_ts < $cutoff{customers}
            GROUP BY ALL
        ),
        per_customer AS (
            SELECT customer_id,
                   {_day_totals("w_", in_window)},
                   CAST(sum(orders){where} AS BIGINT) AS freq_value,
                   min(first_ts){where} AS first_ts,
                   -- the window runs to the cutoff: a customer's last day, if any, is in it
                   max(last_ts) AS last_ts,
                   {windows}{split_aggregates}
            FROM per_day GROUP BY customer_id
        ){derived_calibration}
        SELECT c.customer_id, c.w_days AS days_in_window,
               c.freq_value, CAST(c.w_amount AS DOUBLE) AS mon_value, c.first_ts, c.last_ts,
               epoch($cutoff - c.last_ts) / 86400.0 AS rec_value,
               CASE WHEN c.freq_value > 1
                    THEN epoch(c.last_ts - c.first_ts) / 86400.0 / (c.freq_value - 1) END
                   AS days_btw_purchase,
               epoch($cutoff - c.first_ts) / 86400.0 AS tenure_days,
               {", ".join(f"c.lst{d}_revenue, c.lst{d}_freq" for d in WINDOWS)},
               {_model_inputs("w_", "$period_end")}{split_select}
        FROM {"per_customer_split" if derived_calibration else "per_customer"} c
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
    calibration_days_only: bool = False,
) -> pa.Table:
    """The per-customer pass of :func:`build_features`, with the backtest's columns if ``split_date``.

    One row per customer with a purchase day in the history window (``days_in_window >
    0``) or, with ``split_date``, in the calibration window (``cal_days > 0``), sorted by
    customer id. See :func:`build_features` and :func:`clv_jobs.backtest.split_history`.
    ``calibration_days_only``: of the backtest's columns, ``cal_days`` alone.
    """
    window_start = range_start = window_start_utc(as_of, history_window_months, timezone)
    params = {
        "cutoff": cutoff_utc(as_of, timezone),
        "window_day": months_before(as_of, history_window_months),
        "period_end": as_of - dt.timedelta(days=1),
        "tz": timezone,
        "unit_days": TIME_UNIT_DAYS[time_unit],
    }
    window_day = params["window_day"]
    # A recent window never reaches before the history window (a window of 6 months, say).
    params |= {f"lst{days}_day": max(as_of - dt.timedelta(days=days), window_day) for days in WINDOWS}
    if split_date is not None:
        range_start = min(range_start, window_start_utc(split_date, history_window_months, timezone))
        params |= {"split_day": split_date, "cal_window_day": months_before(split_date, history_window_months),
                   "cal_period_end": split_date - dt.timedelta(days=1)}
    params["range_start"] = range_start
    # Of the orders read: the first (whether any lies before the history window), the
    # largest amount and the sum of all (whether 64-bit decimals hold every order's amount
    # and every day's total) and their count (the parts).
    first_read, largest, total, orders_read = con.execute(
        "SELECT min(order_ts), max(abs(amount)), sum(abs(amount)), count(*) FROM transactions "
        "WHERE order_ts >= $range_start AND order_ts < $cutoff",
        {"range_start": range_start, "cutoff": params["cutoff"]}).fetchall()[0]
    whole_window = split_date is not None and (first_read is None or first_read >= window_start)
    money = MONEY if largest is None or largest < MONEY_LIMIT else WIDE_MONEY
    day_money = MONEY if total is None or total < MONEY_LIMIT else WIDE_MONEY
    parts = []
    for first_id, last_id in customer_ranges(con, orders_read):
        sql = _feature_sql(split_date is not None, whole_window, money, first_id is not None, last_id is not None,
                           calibration_days_only, day_money)
        bound = params | {"first_id": first_id, "last_id": last_id}
        parts.append(con.sql(sql, params={name: value for name, value in bound.items() if f"${name}" in sql})
                     .to_arrow_table())
    return pa.concat_tables(parts)


#: Orders per part of :func:`feature_table`'s pass (:func:`customer_ranges`).
ORDERS_PER_PART = 1_500_000


def customer_ranges(con: duckdb.DuckDBPyConnection, orders: int) -> list[tuple[str | None, str | None]]:
    """Consecutive ranges ``[first, last)`` of customer ids (``None``: open), of about :data:`ORDERS_PER_PART` orders.

    The per-customer pass holds a hash table of every customer it sees: in parts, a part at
    a time (five million buyers: 1.3 GiB more at the peak than the orders, not 2.7 GiB, and
    no slower); parts of consecutive ids, each sorted, are together sorted. The bounds come
    from a sample of the ids: the rows out do not depend on them.
    """
    count = -(-orders // ORDERS_PER_PART)
    if count < 2:
        return [(None, None)]
    quantiles = [index / count for index in range(1, count)]
    # About 200,000 ids, in whole vectors of rows: a hundredth of the time of a sample of
    # single rows (0.3 s at twelve million orders).
    share = min(100.0, 100.0 * 200_000 / orders)
    bounds = con.execute(
        f"SELECT quantile_disc(customer_id, $quantiles) FROM "
        f"(SELECT customer_id FROM transactions USING SAMPLE {share:.6f} PERCENT (system))",
        {"quantiles": quantiles}).fetchall()[0][0]
    if not bounds or None in bounds:  # nothing sampled: one part
        return [(None, None)]
    bounds = sorted(set(bounds))
    return list(zip([None, *bounds], [*bounds, None], strict=True))


def buyer_rows(table: pa.Table, columns: list[str], days_column: str) -> pa.Table:
    """``columns`` of a :func:`feature_table`'s rows with ``days_column > 0``, in one chunk.

    The columns first: filtering every column of the table took seconds at 5M buyers. In
    one chunk, converted with a block per column (``to_pandas(split_blocks=True)``), pandas
    takes each column as it is (a copy of every number into 2-D blocks took a second more).
    """
    rows = table.select(columns)
    buyers = pc.greater(table[days_column], 0)
    # Usually every row is a buyer's (the history window holds all the orders read): no filter.
    return (rows if pc.all(buyers).as_py() else rows.filter(buyers)).combine_chunks()


def features_frame(table: pa.Table) -> pd.DataFrame:
    """The :func:`build_features` frame of a :func:`feature_table` (buyers of the history window)."""
    result = buyer_rows(table, FEATURE_COLUMNS, "days_in_window").to_pandas(split_blocks=True)
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
