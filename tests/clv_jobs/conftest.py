"""CDNOW fixtures shared by the model test modules: each model is fitted once per session."""

from __future__ import annotations

import pandas as pd
import pytest

from clv_jobs import features
from clv_jobs.model import fit_models
from clv_jobs.settings import ModelSettings
from tests.clv_jobs.helpers import CDNOW_AS_OF, orders_session


@pytest.fixture(scope="session")
def cdnow_orders(cdnow_transactions_path) -> pd.DataFrame:
    """The raw CDNOW order log: customer id, sample id (the published summaries' order), date, amount."""
    raw = pd.read_csv(
        cdnow_transactions_path,
        sep=r"\s+",
        header=None,
        names=["customer_id", "sample_id", "date", "quantity", "amount"],
        dtype={"customer_id": str, "sample_id": int, "date": str},
    )
    raw["date"] = pd.to_datetime(raw["date"], format="%Y%m%d")
    return raw


@pytest.fixture(scope="session")
def cdnow_features(cdnow_orders) -> pd.DataFrame:
    """The project's features of the 39-week calibration (orders at noon, weeks)."""
    orders = cdnow_orders.assign(
        order_id=[f"o{i}" for i in range(len(cdnow_orders))],
        order_ts=cdnow_orders["date"] + pd.Timedelta(hours=12),
    )
    con = orders_session(orders)
    try:
        return features.build_features(con, CDNOW_AS_OF, "UTC", 24, time_unit="W")
    finally:
        con.close()


@pytest.fixture(scope="session")
def cdnow_rfm(cdnow_features) -> pd.DataFrame:
    """The model inputs (customer_id, frequency, recency, T, monetary_value)."""
    return features.rfm_frame(cdnow_features)


@pytest.fixture(scope="session")
def cdnow_fit(cdnow_rfm):
    """``fit_models`` on CDNOW with flat priors (maximum likelihood), once per model."""
    cache = {}

    def fit(name: str):
        if name not in cache:
            cache[name] = fit_models(cdnow_rfm, ModelSettings(transaction_model=name, priors="flat", time_unit="W"))
        return cache[name]

    return fit
