"""``clv demo`` as the README runs it, and its Datamodel loaded into a real PostgreSQL."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from clv_jobs.datamodel import COLUMNS

pytestmark = pytest.mark.slow

SQL_DIR = Path(__file__).parents[2] / "sql"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, list[dict]]:
    workdir = tmp_path_factory.mktemp("demo")
    result = subprocess.run(
        [sys.executable, "-m", "clv_jobs.cli", "--json", "demo", "--workdir", str(workdir)],
        capture_output=True, text=True, timeout=900, env=os.environ | {"NO_COLOR": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "@example.com" not in result.stderr + result.stdout
    return workdir, json.loads(result.stdout)


def test_demo_runs_every_sample_account(demo):
    workdir, rows = demo
    by_account = {row["account"]: row for row in rows}
    assert set(by_account) == {"shop_new", "shop_small", "shop_large"}
    assert not by_account["shop_new"]["eligible"] and by_account["shop_new"]["file"] is None
    assert by_account["shop_large"]["buyers"] > 150_000
    for account in ("shop_small", "shop_large"):
        row = by_account[account]
        assert row["eligible"] and row["fit_seconds"] > 0
        assert sum(row["segments"].values()) == row["buyers"]
        assert Path(row["file"]).exists() and Path(row["file"] + ".manifest.json").exists()
    assert not list((workdir / "outbox").glob("*shop_new*"))


@pytest.mark.parametrize("account", ["shop_small", "shop_large"])
def test_demo_datamodel_has_the_25_columns_and_loads_into_postgres(demo, account, postgres_dsn):
    import psycopg

    _, rows = demo
    row = next(r for r in rows if r["account"] == account)
    path = Path(row["file"])
    raw = path.read_bytes()
    assert not raw.startswith(b"\xef\xbb\xbf")  # UTF-8 without BOM
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        widths = {len(line) for line in reader}
    assert header == list(COLUMNS) and len(header) == 25
    assert widths == {25}

    schema = f"clv_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        try:
            conn.execute(f"SET search_path TO {schema}")
            conn.execute((SQL_DIR / "datamodel_clv.sql").read_text())
            with conn.cursor() as cursor:
                with cursor.copy("COPY datamodel_clv FROM STDIN (FORMAT csv, HEADER true)") as copy:
                    copy.write(raw)
                loaded, distinct, null_emails = cursor.execute(
                    'SELECT count(*), count(DISTINCT "CustomerId"), count(*) FILTER (WHERE "Email" IS NULL) '
                    "FROM datamodel_clv"
                ).fetchone()
                first = cursor.execute(
                    'SELECT "FIRST_TICKET_DATE" <= "LAST_TICKET_DATE", "EMAIL_COMMUNICATIONS" '
                    'FROM datamodel_clv ORDER BY "CustomerId" LIMIT 1'
                ).fetchone()
        finally:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
    assert loaded == distinct == row["buyers"]
    assert 0 < null_emails < loaded  # unknown emails arrive as NULL, not as empty strings
    assert first[0] is True and isinstance(first[1], bool)
