"""Helpers shared by the model tests (CDNOW constants, a session holding given orders, reference scores)."""

from __future__ import annotations

import datetime as dt
import warnings

import numpy as np
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


def pymc_marketing_scores(transaction, spend, data: pd.DataFrame, horizon_months: int = 12,
                          time_unit: str = "D") -> dict[str, np.ndarray]:
    """pymc-marketing's own predictions for every row of ``data``, averaged over the models' draws.

    The straightforward per-customer computation the optimised scoring is checked against:
    ``p_alive`` (unclipped), ``expected_purchases`` over the horizon, ``expected_spend``
    and ``clv`` (``customer_lifetime_value`` with that spend, undiscounted).
    """
    from pymc_marketing.clv.utils import customer_lifetime_value

    from clv_jobs.model import DAYS_PER_MONTH, _values

    horizon = horizon_months * DAYS_PER_MONTH / (7.0 if time_unit == "W" else 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        expected_spend = _values(spend.expected_customer_spend(data=data))
        return {
            "p_alive": _values(transaction.expected_probability_alive(data=data)),
            "expected_purchases": _values(transaction.expected_purchases(data=data, future_t=horizon)),
            "expected_spend": expected_spend,
            "clv": _values(customer_lifetime_value(transaction, data.assign(future_spend=expected_spend),
                                                   future_t=horizon_months, discount_rate=0.0,
                                                   time_unit=time_unit)),
        }
