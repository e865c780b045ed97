"""Helpers shared by the model tests (CDNOW constants, a session holding given orders)."""

from __future__ import annotations

import datetime as dt

import pandas as pd

from clv_jobs import sources

CDNOW_AS_OF = dt.date(1997, 10, 1)  # calibration: orders of 1997-01-01 .. 1997-09-30
CDNOW_PERIOD_END = pd.Timestamp("1997-09-30")
CDNOW_CUSTOMERS = 2_357


def orders_session(transactions: pd.DataFrame):
    """A pipeline session holding ``transactions`` as the clean orders table."""
    con = sources.connect()
    con.execute(
        "CREATE TEMP TABLE transactions("
        "customer_id VARCHAR, order_id VARCHAR, order_ts TIMESTAMP, amount DOUBLE)"
    )
    con.register("orders_in", transactions[["customer_id", "order_id", "order_ts", "amount"]])
    con.execute("INSERT INTO transactions SELECT customer_id, order_id, order_ts, amount FROM orders_in")
    con.unregister("orders_in")
    return con
