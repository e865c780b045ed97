"""Tests for clv_jobs.delivery.postgres against the real PostgreSQL on loopback.

Each module run gets a fresh schema (dropped at the end) and reaches the server only
through an Airflow-style connection (``$AIRFLOW_CONN_<ID>``, URI form), as a worker would.
Datamodel files are written by the project's own writer (``make_datamodel`` fixture).
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import json
import logging
import socket
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from clv_jobs.datamodel import COLUMNS, file_digest
from clv_jobs.delivery import DeliveryError
from clv_jobs.delivery import postgres as pg_delivery
from clv_jobs.errors import ConfigError
from clv_jobs.settings import PostgresDestination
from clv_jobs.sources import SQL_DIR

CONN_ID = "clv_test_dm_target"
ENV = f"AIRFLOW_CONN_{CONN_ID.upper()}"
SECRET = "pg-S3cret:never/logged"
D1, D2 = dt.date(2025, 5, 1), dt.date(2025, 6, 1)


def _uri(dsn: str, user: str | None = None, password: str | None = SECRET, port: str | None = None) -> str:
    """Airflow's URI form of the test server (trust auth accepts any password)."""
    params = conninfo_to_dict(dsn)
    quote = urllib.parse.quote
    auth = quote(user or params.get("user", "postgres"), safe="")
    if password:
        auth += ":" + quote(password, safe="")
    host = quote(params.get("host", "127.0.0.1"), safe="")
    return (f"postgresql://{auth}@{host}:{port or params.get('port', '5432')}/"
            f"{quote(params.get('dbname', 'postgres'), safe='')}?connect_timeout=5")


@pytest.fixture(scope="module")
def schema(postgres_dsn):
    name = f"clv_test_delivery_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    try:
        yield name
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {name} CASCADE")


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(pg_delivery, "ATTEMPTS", 3)
    monkeypatch.setattr(pg_delivery, "FIRST_DELAY_SECONDS", 0.01)


@pytest.fixture
def conn_env(monkeypatch, postgres_dsn):
    monkeypatch.setenv(ENV, _uri(postgres_dsn))
    monkeypatch.delenv(f"CLV_CONN_{CONN_ID.upper()}", raising=False)


@pytest.fixture
def table(schema, request) -> str:
    """A table name of the test's own in the module's schema (``schema.table``)."""
    return f"{schema}.dm_{request.node.name.removeprefix('test_')[:40].replace('[', '_').strip(']')}"


def _closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def destination(table: str, conn_id: str = CONN_ID) -> PostgresDestination:
    return PostgresDestination(type="postgres", conn_id=conn_id, table=table)


def rows_of(dsn: str, table: str, account: str) -> list[tuple]:
    """The account's rows (25 columns, then as_of) as Python values, by CustomerId."""
    schema_name, name = table.split(".")
    columns = ", ".join(f'"{column}"' for column in COLUMNS)
    with psycopg.connect(dsn) as conn:
        return conn.execute(f'SELECT {columns}, as_of FROM "{schema_name}"."{name}" WHERE account_id = %s '
                            'ORDER BY "CustomerId" COLLATE "C"', (account,)).fetchall()


def count(dsn: str, table: str) -> dict[str, int]:
    schema_name, name = table.split(".")
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute(f'SELECT account_id, count(*) FROM "{schema_name}"."{name}" GROUP BY 1'))


def file_rows(path: Path, as_of: dt.date) -> list[tuple]:
    """The file's rows parsed as SQL would type them (empty field = NULL), by CustomerId."""
    parse = {
        "varchar(255)": lambda text: text,
        "double precision": float,
        "int": int,
        "timestamp": dt.datetime.fromisoformat,
        "boolean": {"true": True, "false": False}.__getitem__,
    }
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        assert header[:25] == list(COLUMNS)
        rows = [tuple(None if text == "" else parse[kind](text) for text, kind in zip(row, COLUMNS.values(),
                                                                                       strict=False))
                + (as_of,) for row in reader]
    return sorted(rows, key=lambda row: row[0].encode())


# --- loading ------------------------------------------------------------------------------------


def test_load_creates_the_table_and_rows_equal_the_file(conn_env, postgres_dsn, table, make_datamodel):
    path, manifest = make_datamodel("acme", 40, as_of=D2)
    result = pg_delivery.deliver(path, destination(table), manifest)
    assert result == {"destination": "postgres", "conn_id": CONN_ID, "table": table, "account": "acme",
                      "as_of": "2025-06-01", "rows": 40, "replaced": 0}
    loaded = rows_of(postgres_dsn, table, "acme")
    assert loaded == file_rows(path, D2)
    assert any(row[0] == 'acme,"quoted"' for row in loaded)
    assert any(row[1] is None and row[2] is None for row in loaded)  # unknown email and contact: NULL
    assert any(row[11] is None for row in loaded)  # one purchase: no DAYS_BTW_PURCHASE


def test_created_table_is_the_load_ddl_and_matches_the_spec_table(conn_env, postgres_dsn, table, schema,
                                                                   make_datamodel):
    path, manifest = make_datamodel("acme", 3)
    pg_delivery.deliver(path, destination(table), manifest)
    spec_table = f"{schema}.spec_shape"
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute(f"SET search_path TO {schema}")
        conn.execute((SQL_DIR / "datamodel_clv.sql").read_text().replace("datamodel_clv", "spec_shape"))

        def shape(qualified: str) -> list[tuple]:
            return conn.execute(
                "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute "
                "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                (qualified,)).fetchall()

        loaded, spec = shape(table), shape(spec_table)
        key = conn.execute("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass "
                           "AND contype = 'p'", (table,)).fetchone()[0]
    assert loaded[:25] == spec  # the SPEC's 25 columns, same names, order, types
    assert [name for name, _, _ in spec] == list(COLUMNS)
    assert loaded[25:] == [("account_id", "character varying(255)", True), ("as_of", "date", True)]
    assert key == 'PRIMARY KEY (account_id, "CustomerId")'


def test_reloading_an_account_replaces_its_rows_and_leaves_the_other_account(
    conn_env, postgres_dsn, table, make_datamodel
):
    first_a, manifest_a = make_datamodel("acme", 30, seed=1, as_of=D1)
    file_b, manifest_b = make_datamodel("bravo", 20, seed=2, as_of=D1)
    pg_delivery.deliver(first_a, destination(table), manifest_a)
    pg_delivery.deliver(file_b, destination(table), manifest_b)
    rows_b = rows_of(postgres_dsn, table, "bravo")
    assert count(postgres_dsn, table) == {"acme": 30, "bravo": 20}

    second_a, manifest_a2 = make_datamodel("acme", 12, seed=3, as_of=D2)
    result = pg_delivery.deliver(second_a, destination(table), manifest_a2)
    assert (result["rows"], result["replaced"]) == (12, 30)
    assert rows_of(postgres_dsn, table, "acme") == file_rows(second_a, D2)
    assert rows_of(postgres_dsn, table, "bravo") == rows_b
    assert count(postgres_dsn, table) == {"acme": 12, "bravo": 20}

    # Same file again: same rows (idempotent).
    pg_delivery.deliver(second_a, destination(table), manifest_a2)
    assert rows_of(postgres_dsn, table, "acme") == file_rows(second_a, D2)


def test_gzip_file_with_extra_columns_loads_the_25(conn_env, postgres_dsn, table, make_datamodel):
    path, manifest = make_datamodel("acme", 25, seed=4, compress=True, extra_columns=("P_ALIVE", "MODEL"))
    assert path.name.endswith(".csv.gz") and path.read_bytes()[:2] == b"\x1f\x8b"
    assert pg_delivery.deliver(path, destination(table), manifest)["rows"] == 25
    assert rows_of(postgres_dsn, table, "acme") == file_rows(path, D2)


def test_default_table_name_on_the_search_path(monkeypatch, postgres_dsn, schema, make_datamodel):
    # JSON form through the resolver, schema chosen by the connection's libpq `options` extra.
    params = conninfo_to_dict(postgres_dsn)
    value = json.dumps({"conn_type": "postgres", "host": params.get("host", "127.0.0.1"),
                        "port": int(params.get("port", 5432)), "login": params.get("user", "postgres"),
                        "password": SECRET, "schema": params.get("dbname", "postgres"),
                        "extra": {"options": f"-c search_path={schema}"}})
    monkeypatch.delenv(ENV, raising=False)
    path, manifest = make_datamodel("acme", 5)
    result = pg_delivery.deliver(path, PostgresDestination(type="postgres", conn_id=CONN_ID), manifest,
                                 resolver=lambda conn_id: value if conn_id == CONN_ID else None)
    assert result["table"] == "datamodel_clv" and result["rows"] == 5
    assert rows_of(postgres_dsn, f"{schema}.datamodel_clv", "acme") == file_rows(path, D2)


# --- failures keep the previous rows ----------------------------------------------------------------


def test_corrupt_row_at_the_end_rolls_back_and_keeps_the_previous_rows(
    conn_env, postgres_dsn, table, make_datamodel, tmp_path, caplog
):
    good, manifest = make_datamodel("acme", 20, seed=5)
    pg_delivery.deliver(good, destination(table), manifest)
    before = rows_of(postgres_dsn, table, "acme")

    newer, _ = make_datamodel("acme", 30, seed=6)
    corrupt = tmp_path / "corrupt" / newer.name
    corrupt.parent.mkdir()
    # A last row whose FREQ_VALUE is not an integer: COPY fails after 30 good rows.
    corrupt.write_bytes(newer.read_bytes() + b"zz-last,,,1.00,1.0,many,1.00,x,1,y,1,,1.00,"
                        b"2024-01-01 00:00:00,2024-01-01 00:00:00,0.00,0.00,0.00,0,0,0,TARGET,new,,false\n")
    bad_manifest = manifest | {"rows": 31, **file_digest(corrupt)}
    caplog.set_level(logging.WARNING)
    started = time.monotonic()
    with pytest.raises(DeliveryError) as error:
        pg_delivery.deliver(corrupt, destination(table), bad_manifest)
    message = str(error.value)
    assert f"account acme, postgres connection '{CONN_ID}', table {table}" in message
    assert "not retried" in message and "FREQ_VALUE" in message and "many" in message
    assert "line 32" in message  # the header is line 1
    assert "retrying" not in caplog.text and time.monotonic() - started < 5
    assert SECRET not in message
    assert rows_of(postgres_dsn, table, "acme") == before


def test_row_count_not_the_manifests_rolls_back(conn_env, postgres_dsn, table, make_datamodel):
    first, manifest = make_datamodel("acme", 10, seed=7)
    pg_delivery.deliver(first, destination(table), manifest)
    before = rows_of(postgres_dsn, table, "acme")
    second, manifest2 = make_datamodel("acme", 15, seed=8)
    with pytest.raises(DeliveryError, match=r"15 rows loaded \(15 copied\) but the manifest says 16; rolled back"):
        pg_delivery.deliver(second, destination(table), manifest2 | {"rows": 16})
    assert rows_of(postgres_dsn, table, "acme") == before


def test_connection_lost_mid_load_is_retried_and_readers_never_see_a_mix(
    conn_env, postgres_dsn, table, make_datamodel, caplog
):
    """The first try is killed while it holds the account's DELETE; the second one succeeds."""
    first, manifest = make_datamodel("acme", 10, seed=9)
    pg_delivery.deliver(first, destination(table), manifest)
    second, manifest2 = make_datamodel("acme", 7, seed=10)
    schema_name, name = table.split(".")
    outcome: dict = {}
    caplog.set_level(logging.WARNING)
    with psycopg.connect(postgres_dsn) as blocker:
        # Hold the table: the delivery's DELETE waits behind this lock, inside its transaction.
        blocker.execute(f'LOCK TABLE "{schema_name}"."{name}" IN ACCESS EXCLUSIVE MODE')
        thread = threading.Thread(target=lambda: outcome.update(
            result=pg_delivery.deliver(second, destination(table), manifest2)))
        thread.start()
        with psycopg.connect(postgres_dsn, autocommit=True) as watcher:
            deadline = time.monotonic() + 20
            pid = None
            while pid is None and time.monotonic() < deadline:
                row = watcher.execute(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = 'clv_jobs delivery' "
                    "AND wait_event_type = 'Lock' AND query LIKE %s", (f"DELETE FROM %{name}%",)).fetchone()
                pid = row[0] if row else time.sleep(0.05)
            assert pid is not None, "the delivery never reached its DELETE"
            watcher.execute("SELECT pg_terminate_backend(%s)", (pid,))
        time.sleep(0.2)  # the retry now waits for the lock: nothing of the new file is visible yet
        blocker.rollback()
    thread.join(timeout=30)
    assert outcome["result"]["rows"] == 7
    assert "try 1 of 3 failed" in caplog.text
    assert rows_of(postgres_dsn, table, "acme") == file_rows(second, D2)


def test_concurrent_deliveries_of_one_account_queue(conn_env, postgres_dsn, table, make_datamodel):
    files = [make_datamodel("acme", rows, seed=20 + rows) for rows in (8, 9, 10, 11)]
    errors: list[BaseException] = []

    def run(path, manifest):
        try:
            pg_delivery.deliver(path, destination(table), manifest)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=item) for item in files]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    loaded = rows_of(postgres_dsn, table, "acme")
    assert loaded in [file_rows(path, D2) for path, _ in files]  # exactly one file's rows, never a mix


# --- permanent and transient faults -----------------------------------------------------------------


def test_unreachable_server_is_retried_then_fails_without_the_password(monkeypatch, table, make_datamodel,
                                                                      caplog, postgres_dsn):
    monkeypatch.setenv(ENV, _uri(postgres_dsn, port=str(_closed_port())))
    path, manifest = make_datamodel("acme", 3)
    caplog.set_level(logging.WARNING)
    with pytest.raises(DeliveryError, match=r"still failing after 3 tries: OperationalError") as error:
        pg_delivery.deliver(path, destination(table), manifest)
    assert caplog.text.count("retrying") == 2
    for text in (str(error.value), caplog.text):
        assert SECRET not in text and urllib.parse.quote(SECRET, safe="") not in text


def test_missing_privilege_fails_at_once(monkeypatch, postgres_dsn, schema, table, make_datamodel, caplog):
    role = f"clv_test_noperm_{uuid.uuid4().hex[:8]}"
    path, manifest = make_datamodel("acme", 3)
    monkeypatch.setenv(ENV, _uri(postgres_dsn))
    pg_delivery.deliver(path, destination(table), manifest)  # the table exists, owned by another role
    before = rows_of(postgres_dsn, table, "acme")
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
    try:
        monkeypatch.setenv(ENV, _uri(postgres_dsn, user=role))
        caplog.set_level(logging.WARNING)
        with pytest.raises(DeliveryError, match=r"InsufficientPrivilege: permission denied for schema \S+ "
                                                r"\(not retried\)"):
            pg_delivery.deliver(path, destination(table), manifest)
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
            conn.execute(f"GRANT SELECT ON {table} TO {role}")
        with pytest.raises(DeliveryError, match=r"permission denied for table \S+ \(not retried\)"):
            pg_delivery.deliver(path, destination(table), manifest)
        assert "retrying" not in caplog.text
        assert rows_of(postgres_dsn, table, "acme") == before
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def test_unknown_role_fails_at_once(monkeypatch, postgres_dsn, table, make_datamodel, caplog):
    monkeypatch.setenv(ENV, _uri(postgres_dsn, user=f"clv_no_such_role_{uuid.uuid4().hex[:6]}"))
    path, manifest = make_datamodel("acme", 3)
    caplog.set_level(logging.WARNING)
    with pytest.raises(DeliveryError, match=r"role .* does not exist \(not retried\)") as error:
        pg_delivery.deliver(path, destination(table), manifest)
    assert "retrying" not in caplog.text and SECRET not in str(error.value)


def test_bad_schema_in_the_table_name_fails_at_once(conn_env, make_datamodel):
    path, manifest = make_datamodel("acme", 3)
    with pytest.raises(DeliveryError, match=r'schema "no_such_schema_x" does not exist \(not retried\)'):
        pg_delivery.deliver(path, destination("no_such_schema_x.datamodel_clv"), manifest)


def test_spec_table_without_account_columns_is_refused(conn_env, postgres_dsn, schema, make_datamodel):
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute(f"SET search_path TO {schema}")
        conn.execute((SQL_DIR / "datamodel_clv.sql").read_text().replace("datamodel_clv", "legacy_shape"))
    path, manifest = make_datamodel("acme", 3)
    with pytest.raises(DeliveryError, match=r"lacks column\(s\) account_id, as_of; .*datamodel_clv_load\.sql"):
        pg_delivery.deliver(path, destination(f"{schema}.legacy_shape"), manifest)


def test_a_file_that_is_not_the_published_one_or_not_a_datamodel_is_refused(conn_env, table, make_datamodel,
                                                                            tmp_path):
    path, manifest = make_datamodel("acme", 3)
    with pytest.raises(DeliveryError, match="differs from the published one"):
        pg_delivery.deliver(path, destination(table), manifest | {"sha256": "0" * 64})
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(DeliveryError, match="other.csv is not a Datamodel file"):
        pg_delivery.deliver(other, destination(table), manifest | {"rows": 1, **file_digest(other)})


def test_missing_connection_is_a_config_error(monkeypatch, table, make_datamodel):
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.delenv(f"CLV_CONN_{CONN_ID.upper()}", raising=False)
    path, manifest = make_datamodel("acme", 3)
    with pytest.raises(ConfigError, match=rf"account acme, destination postgres table {table}: "
                                          rf"connection '{CONN_ID}' not found"):
        pg_delivery.deliver(path, destination(table), manifest)


@pytest.mark.parametrize(
    ("sqlstate", "transient"),
    [("40001", True), ("40P01", True), ("57P01", True), ("53300", True), ("08006", True),
     ("28P01", False), ("42501", False), ("42P01", False), ("22P02", False), ("3F000", False)],
)
def test_sqlstate_classification(sqlstate, transient):
    error = psycopg.errors.lookup(sqlstate)("x")
    assert pg_delivery.is_transient(error) is transient


def test_deliveries_creating_one_table_at_the_same_moment_all_succeed(postgres_dsn, table):
    """Many first deliveries start together: one creates the table, the others find it.

    Two ``CREATE TABLE IF NOT EXISTS`` at once collide in PostgreSQL's catalogue
    (``DuplicateObject`` on the table's row type, seen in CI); the creations take turns.
    """
    workers = 8
    start = threading.Barrier(workers)
    errors: list[BaseException] = []

    def create() -> None:
        try:
            with psycopg.connect(postgres_dsn) as conn:
                start.wait(timeout=10)
                pg_delivery._ensure_table(conn, table, "test")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    for _ in range(40):  # a fresh race each round
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
        threads = [threading.Thread(target=create) for _ in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        start.reset()
        assert errors == []
    with psycopg.connect(postgres_dsn) as conn:
        assert conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is not None
