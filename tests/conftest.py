"""Shared fixtures: seeded randomness, real services on loopback, reference data."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest

DATA_DIR = Path(__file__).parent / "data"
ROOT = Path(__file__).parent.parent


@pytest.fixture(autouse=True)
def _seed_everything():
    """Each test starts from the same random state (failures reproduce)."""
    random.seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def cdnow_transactions_path() -> Path:
    """CDNOW 2,357-customer cohort (Fader & Hardie), copied from the lifetimes package."""
    return DATA_DIR / "CDNOW_sample.txt"


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """A real PostgreSQL on loopback (this machine kind runs one on 127.0.0.1:5432, trust auth).

    Skipped, with the reason, where no server answers: set CLV_TEST_POSTGRES_DSN to use another.
    """
    import psycopg

    dsn = os.environ.get("CLV_TEST_POSTGRES_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server reachable at {dsn!r} ({str(exc).strip()[:200]}); "
                    "start one or set CLV_TEST_POSTGRES_DSN")
    return dsn


@pytest.fixture
def make_datamodel(tmp_path):
    """Write a small Datamodel with the project's writer; returns ``(path, manifest)``.

    ``make_datamodel(account, rows, seed=0, as_of=date(2025, 6, 1), compress=False,
    extra_columns=())``: customers ``<account>-00000``…, some without email or contact,
    some with one purchase (empty DAYS_BTW_PURCHASE), a name that needs CSV quoting; the
    manifest is the one :func:`clv_jobs.pipeline.export` builds.
    """
    import datetime as dt

    import pandas as pd

    from clv_jobs.datamodel import write_datamodel
    from clv_jobs.sources import connect

    def make(account: str, rows: int, seed: int = 0, as_of: dt.date = dt.date(2025, 6, 1),
             compress: bool = False, extra_columns: tuple[str, ...] = ()) -> tuple[Path, dict]:
        rng = np.random.default_rng(seed)
        ids = [f"{account}-{i:05d}" for i in range(rows)]
        if rows > 1:
            ids[1] = f'{account},"quoted"'
        freq = rng.integers(1, 9, rows)
        first = pd.Timestamp("2023-06-01") + pd.to_timedelta(rng.integers(0, 300 * 86400, rows), unit="s")
        span = pd.to_timedelta(np.where(freq > 1, rng.integers(1, 400 * 86400, rows), 0), unit="s")
        mon = np.round(rng.gamma(2.0, 40.0, rows) * freq, 2)
        scores = pd.DataFrame({
            "customer_id": ids,
            "clv": np.round(rng.gamma(2.0, 50.0, rows), 2),
            "rec_value": np.round(rng.uniform(0, 500, rows), 1),
            "freq_value": freq,
            "mon_value": mon,
            "segment_id": rng.integers(1, 12, rows),
            "score_id": rng.integers(1, 6, rows),
            "days_btw_purchase": np.where(freq > 1, np.round(rng.uniform(5, 200, rows), 1), np.nan),
            "first_ts": first,
            "last_ts": first + span,
            "lst90_revenue": np.round(mon * 0.1, 2),
            "lst180_revenue": np.round(mon * 0.2, 2),
            "lst360_revenue": np.round(mon * 0.5, 2),
            "lst90_freq": freq // 4,
            "lst180_freq": freq // 3,
            "lst360_freq": freq // 2,
            "control_group": np.where(rng.uniform(size=rows) < 0.1, "CONTROL", "TARGET"),
            "evolution": rng.choice(["up", "down", "equal", "new"], rows),
            "p_alive": rng.uniform(size=rows),
            "churn": rng.uniform(size=rows),
            "expected_purchases": rng.uniform(0, 3, rows),
            "model": "pareto_nbd",
        })
        con = connect()
        con.execute("CREATE TEMP TABLE contacts (customer_id VARCHAR, contact_id VARCHAR, email VARCHAR, "
                    "email_opt_in BOOLEAN)")
        con.executemany("INSERT INTO contacts VALUES (?, ?, ?, ?)", [
            (cid, f"K{i}", f"{cid}@example.com", bool(i % 3)) for i, cid in enumerate(ids) if i % 5
        ])
        name = f"clv_datamodel_{account}_{as_of:%Y%m%d}.csv" + (".gz" if compress else "")
        folder = tmp_path / f"datamodel-{account}-{seed}-{rows}"
        try:
            written = write_datamodel(con, scores, folder / name, extra_columns=list(extra_columns),
                                      compress=compress)
        finally:
            con.close()
        manifest = {"account": account, "as_of": as_of.isoformat(), "file": name, "rows": written["rows"],
                    "bytes": written["bytes"], "sha256": written["sha256"], "model_version": f"test@{seed}"}
        return folder / name, manifest

    return make
