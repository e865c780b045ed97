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
