"""Tests for the PostgreSQL source of clv_jobs.sources: the same account read from a real
PostgreSQL (through an Airflow-style connection) and from the embedded DuckDB warehouse
gives the same validation, features and contacts; connection resolution (URI, JSON,
libpq string, resolver) never leaks a password; bad query files and missing tables fail
with an InputError naming the connection and the file."""

from __future__ import annotations

import datetime as dt
import json
import logging
import urllib.parse
import uuid
from pathlib import Path

import pandas as pd
import psycopg
import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from clv_jobs.asof import cutoff_utc
from clv_jobs.errors import ConfigError, InputError
from clv_jobs.features import build_features
from clv_jobs.pipeline import load_validated
from clv_jobs.sample_data import SampleAccount, simulate_account, write_warehouse
from clv_jobs.settings import DuckDBSource, PostgresSource, load_project, parse_account
from clv_jobs.sources import SQL_DIR, connect, load_account, prepare_contacts, resolve_connection
from clv_jobs.validation import REASONS, validate_transactions

AS_OF = dt.date(2025, 6, 1)
READ_AT = dt.datetime(2025, 6, 1, 2)  # a fixed read time: both sources judge alike
CONN_ID = "clv_test_warehouse"
ENV = "AIRFLOW_CONN_CLV_TEST_WAREHOUSE"
SECRET = "s3cr3t-Pa55:w@rd/%"

TX_COLUMNS = ["account_id", "order_id", "customer_id", "order_ts", "amount", "status", "currency", "ingested_at"]
CT_COLUMNS = ["account_id", "customer_id", "contact_id", "email", "email_opt_in", "merged_into", "merged_at"]
DDL = """
CREATE TABLE transactions (
    account_id text, order_id text, customer_id text, order_ts text,
    amount double precision, status text, currency text, ingested_at timestamp
);
CREATE TABLE contacts (
    account_id text, customer_id text, contact_id text, email text,
    email_opt_in boolean, merged_into text, merged_at timestamp
);
"""


def _records(frame: pd.DataFrame, columns: list[str]) -> list[tuple]:
    """Rows as Python values: NULL for missing text and times, NaN/inf amounts kept as such."""
    values = []
    for name in columns:
        series = frame[name]
        if name == "amount":
            values.append([float(v) for v in series.to_numpy()])
        elif name == "email_opt_in":
            values.append([bool(v) for v in series.to_numpy()])
        elif pd.api.types.is_datetime64_any_dtype(series):
            values.append([None if pd.isna(v) else v.to_pydatetime() for v in series])
        else:
            values.append([None if pd.isna(v) else str(v) for v in series])
    return list(zip(*values, strict=True))


def _copy_in(conn: psycopg.Connection, table: str, columns: list[str], rows: list[tuple]) -> None:
    with conn.cursor().copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def _with_search_path(dsn: str, schema: str) -> str:
    return make_conninfo(dsn, options=f"-c search_path={schema}")


def _uri(dsn: str, schema: str, password: str | None = None) -> str:
    """An Airflow-style URI of the test server, the schema on the search path."""
    params = conninfo_to_dict(dsn)
    quote = urllib.parse.quote
    user = quote(params.get("user", "postgres"), safe="")
    secret = password if password is not None else params.get("password")
    auth = f"{user}:{quote(secret, safe='')}" if secret else user
    host = params.get("host", "127.0.0.1")
    port = params.get("port", "5432")
    query = urllib.parse.urlencode({"options": f"-c search_path={schema}", "cursor": "dictcursor"})
    return f"postgres://{auth}@{quote(host, safe='')}:{port}/{quote(params.get('dbname', 'postgres'), safe='')}?{query}"


@pytest.fixture(scope="module")
def samples():
    pg = simulate_account(SampleAccount("pg", n_buyers=1_500, history_days=700, seed=5), AS_OF)
    other = simulate_account(SampleAccount("other", n_buyers=300, history_days=400, seed=6), AS_OF)
    return pg, other


@pytest.fixture(scope="module")
def pg_schema(postgres_dsn, samples):
    """A fresh schema holding both accounts (the other one first), dropped at the end."""
    schema = f"clv_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        with psycopg.connect(_with_search_path(postgres_dsn, schema)) as conn:
            conn.execute(DDL)
            for sample in reversed(samples):
                _copy_in(conn, "transactions", TX_COLUMNS, _records(sample.transactions, TX_COLUMNS))
                _copy_in(conn, "contacts", CT_COLUMNS, _records(sample.contacts, CT_COLUMNS))
        yield schema
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(scope="module")
def empty_schema(postgres_dsn):
    schema = f"clv_test_empty_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    yield schema
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory, samples) -> Path:
    return write_warehouse(tmp_path_factory.mktemp("wh") / "warehouse.duckdb", samples)


def _run(source, account_id: str = "pg", resolver=None) -> dict:
    """load_account → validate_transactions → build_features and prepare_contacts."""
    con = connect()
    loaded = load_account(con, source, account_id, resolver)
    # The rows as loaded (validation drops raw_transactions once it has classified them).
    order_ids = con.execute("SELECT list(DISTINCT order_id[:9]) FROM raw_transactions").fetchall()[0][0]
    # No quarantine limit: the small second account has more than 1 % bad rows.
    report = validate_transactions(con, account_id, str(loaded["source"]), cutoff_utc(AS_OF, "UTC"), 1.0, READ_AT)
    features = build_features(con, AS_OF, "UTC", 24)
    prepare_contacts(con)
    result = {
        "loaded": loaded,
        "report": report,
        "features": features,
        "madrid": build_features(con, AS_OF, "Europe/Madrid", 12, "W"),
        "contacts": con.execute("SELECT * FROM contacts ORDER BY customer_id").df(),
        "quarantine": con.execute("SELECT source_row, reason FROM quarantine ORDER BY source_row").df(),
        "order_ids": order_ids,
    }
    con.close()
    return result


@pytest.fixture(scope="module")
def from_duckdb(warehouse):
    return _run(DuckDBSource(path=str(warehouse)))


@pytest.fixture
def pg_env(monkeypatch, postgres_dsn, pg_schema):
    monkeypatch.setenv(ENV, _uri(postgres_dsn, pg_schema))
    monkeypatch.delenv("CLV_CONN_CLV_TEST_WAREHOUSE", raising=False)


# --- same features as the embedded default ---------------------------------------------


def test_postgres_source_gives_the_same_validation_features_and_contacts_as_duckdb(
    pg_env, from_duckdb, samples
):
    from_pg = _run(PostgresSource(type="postgres", conn_id=CONN_ID))
    duck_report, pg_report = from_duckdb["report"], from_pg["report"]

    # The account filter: only the account's rows (its order-id tag), all of them.
    assert from_pg["order_ids"] == from_duckdb["order_ids"] and len(from_pg["order_ids"]) == 1
    assert from_pg["loaded"]["transactions"] == len(samples[0].transactions)
    assert from_pg["loaded"]["contacts"] == len(samples[0].contacts)
    assert from_pg["loaded"]["transactions"] == from_duckdb["loaded"]["transactions"]
    assert from_pg["loaded"]["contacts"] == from_duckdb["loaded"]["contacts"]

    # Bad rows of every kind are there, and judged alike (down to the example rows).
    assert set(pg_report.quarantined) == set(REASONS) - {"missing_order_id"}
    assert pg_report.duplicates > 0 and pg_report.rows_later > 0
    assert pg_report.as_dict() | {"source": ""} == duck_report.as_dict() | {"source": ""}
    assert "connection clv_test_warehouse" in pg_report.source
    pd.testing.assert_frame_equal(from_pg["quarantine"], from_duckdb["quarantine"])

    # Exactly the same features (no tolerance) and contacts.
    assert len(from_pg["features"]) == 1_500
    pd.testing.assert_frame_equal(from_pg["features"], from_duckdb["features"])
    pd.testing.assert_frame_equal(from_pg["madrid"], from_duckdb["madrid"])
    pd.testing.assert_frame_equal(from_pg["contacts"], from_duckdb["contacts"])
    assert from_pg["contacts"]["email_opt_in"].any()


def test_other_account_of_the_same_tables_is_read_alone(pg_env, warehouse, samples):
    from_pg = _run(PostgresSource(type="postgres", conn_id=CONN_ID), "other")
    from_duck = _run(DuckDBSource(path=str(warehouse)), "other")
    assert from_pg["order_ids"] == from_duck["order_ids"] and len(from_pg["order_ids"]) == 1
    assert from_pg["loaded"]["transactions"] == len(samples[1].transactions)
    pd.testing.assert_frame_equal(from_pg["features"], from_duck["features"])


def test_json_connection_and_resolver_give_the_same_features(
    monkeypatch, postgres_dsn, pg_schema, from_duckdb
):
    params = conninfo_to_dict(postgres_dsn)
    airflow_json = json.dumps({
        "conn_type": "postgres",
        "host": params.get("host", "127.0.0.1"),
        "port": int(params.get("port", 5432)),
        "login": params.get("user", "postgres"),
        "password": params.get("password") or SECRET,  # trust auth: any password is accepted
        "schema": params.get("dbname", "postgres"),
        "extra": {"options": f"-c search_path={pg_schema}", "cursor": "dictcursor"},
    })
    monkeypatch.delenv(ENV, raising=False)
    asked = []

    def resolver(conn_id: str) -> str:
        asked.append(conn_id)
        return airflow_json

    from_pg = _run(PostgresSource(type="postgres", conn_id=CONN_ID), resolver=resolver)
    assert asked == [CONN_ID]
    pd.testing.assert_frame_equal(from_pg["features"], from_duckdb["features"])


def test_project_config_with_postgres_source_runs_load_validated(
    tmp_path, monkeypatch, postgres_dsn, pg_schema, from_duckdb, caplog
):
    # A password in the URI (trust auth ignores it) must appear in no log line.
    monkeypatch.setenv(ENV, _uri(postgres_dsn, pg_schema, password=SECRET))
    (tmp_path / "accounts").mkdir()
    (tmp_path / "clv.yaml").write_text(yaml.safe_dump({"source": {"type": "postgres", "conn_id": CONN_ID}}))
    (tmp_path / "accounts" / "pg.yaml").write_text(yaml.safe_dump({"account_id": "pg"}))
    project = load_project(tmp_path)
    caplog.set_level(logging.DEBUG)
    data = load_validated(project, project.account("pg"), AS_OF, READ_AT)
    try:
        assert data.validation.as_dict() | {"source": ""} == from_duckdb["report"].as_dict() | {"source": ""}
        assert data.eligibility.eligible
    finally:
        data.con.close()
    assert SECRET not in caplog.text and urllib.parse.quote(SECRET, safe="") not in caplog.text
    assert "connection clv_test_warehouse" in caplog.text


# --- faithful text: NULL vs '', quotes, newlines, types ------------------------------------


def test_values_reach_duckdb_as_postgres_has_them(tmp_path, monkeypatch, postgres_dsn, empty_schema):
    with psycopg.connect(_with_search_path(postgres_dsn, empty_schema)) as conn:
        conn.execute(
            "CREATE TABLE odd_orders (account text, id bigint, customer text, ts timestamptz, "
            "amount numeric(12, 2), status text)"
        )
        conn.execute(
            "INSERT INTO odd_orders VALUES "
            "('x', 1, 'c,1', '2025-05-01 10:00:00+02', 12.50, ''), "
            "('x', 2, ' c\"2\n', '2025-05-02 00:00:00.123456+00', -1, NULL), "
            "('y', 3, 'c3', '2025-05-03 00:00:00+00', 1, 'completed')"
        )
        conn.execute(
            "CREATE TABLE odd_contacts (account text, customer text, contact text, email text, opt_in boolean)"
        )
        conn.execute("INSERT INTO odd_contacts VALUES ('x', 'c,1', '', 'ñandú@例え.jp', true), "
                     "('x', ' c\"2\n', NULL, NULL, NULL)")
    tx_sql = tmp_path / "orders.sql"
    tx_sql.write_text(
        "-- orders of one account\n"
        "SELECT account AS account_id, id AS order_id, customer AS customer_id, ts AS order_ts, amount, status\n"
        "FROM odd_orders WHERE account = %(account_id)s AND amount %% 1 >= 0 ORDER BY id;\n"
    )
    ct_sql = tmp_path / "people.sql"
    ct_sql.write_text(
        "SELECT account AS account_id, customer AS customer_id, contact AS contact_id, email,\n"
        "       opt_in AS email_opt_in\n"
        "FROM odd_contacts WHERE account = %(account_id)s ORDER BY customer -- trailing comment"
    )
    monkeypatch.setenv(f"CLV_CONN_{CONN_ID.upper()}", _with_search_path(postgres_dsn, empty_schema))
    monkeypatch.delenv(ENV, raising=False)
    con = connect()
    source = PostgresSource(type="postgres", conn_id=CONN_ID, transactions_query=str(tx_sql),
                            contacts_query=str(ct_sql))
    loaded = load_account(con, source, "x")
    assert (loaded["transactions"], loaded["contacts"]) == (2, 2)
    assert con.execute("SELECT * FROM raw_transactions ORDER BY source_row").fetchall() == [
        (1, "1", "c,1", "2025-05-01 08:00:00+00", "12.50", "", None, None),
        (2, "2", ' c"2\n', "2025-05-02 00:00:00.123456+00", "-1.00", None, None, None),
    ]
    assert con.execute("SELECT * FROM raw_contacts ORDER BY source_row").fetchall() == [
        (1, ' c"2\n', None, None, None, None, None),
        (2, "c,1", "", "ñandú@例え.jp", "t", None, None),
    ]
    prepare_contacts(con)
    assert con.execute("SELECT * FROM contacts ORDER BY customer_id").fetchall() == [
        (' c"2\n', None, None, False),
        ("c,1", None, "ñandú@例え.jp", True),
    ]


def test_account_without_rows_loads_empty_tables(monkeypatch, postgres_dsn, pg_schema):
    monkeypatch.setenv(ENV, _uri(postgres_dsn, pg_schema))
    con = connect()
    loaded = load_account(con, PostgresSource(type="postgres", conn_id=CONN_ID), "nobody")
    assert (loaded["transactions"], loaded["contacts"]) == (0, 0)
    assert "amount" in [row[0] for row in con.execute("DESCRIBE raw_transactions").fetchall()]


# --- errors naming the connection and the file -------------------------------------------


def test_missing_table_names_connection_and_query_file_not_the_dsn(monkeypatch, postgres_dsn, empty_schema):
    monkeypatch.setenv(ENV, _uri(postgres_dsn, empty_schema, password=SECRET))
    with pytest.raises(InputError) as error:
        load_account(connect(), PostgresSource(type="postgres", conn_id=CONN_ID), "pg")
    message = str(error.value)
    assert "clv_test_warehouse" in message
    assert str(SQL_DIR / "transactions.sql") in message
    assert 'relation "transactions" does not exist' in message
    assert SECRET not in message and "postgres://" not in message and "search_path" not in message


def test_missing_column_in_query_names_connection_and_file(tmp_path, monkeypatch, postgres_dsn, pg_schema):
    bad = tmp_path / "bad.sql"
    bad.write_text("SELECT order_id, no_such_column FROM transactions WHERE account_id = %(account_id)s")
    monkeypatch.setenv(ENV, _uri(postgres_dsn, pg_schema))
    with pytest.raises(InputError, match=r"clv_test_warehouse.*bad\.sql.*no_such_column.*does not exist"):
        load_account(connect(), PostgresSource(type="postgres", conn_id=CONN_ID, transactions_query=str(bad)), "pg")


def test_query_without_a_required_output_column_names_connection_and_file(
    tmp_path, monkeypatch, postgres_dsn, pg_schema
):
    short = tmp_path / "short.sql"
    short.write_text(
        "SELECT account_id, order_id, customer_id, order_ts FROM transactions WHERE account_id = %(account_id)s"
    )
    monkeypatch.setenv(ENV, _uri(postgres_dsn, pg_schema))
    with pytest.raises(InputError, match=r"clv_test_warehouse.*short\.sql: required column\(s\) amount missing"):
        load_account(connect(), PostgresSource(type="postgres", conn_id=CONN_ID, transactions_query=str(short)),
                     "pg")


def test_syntax_error_and_single_percent_are_input_errors(tmp_path, monkeypatch, postgres_dsn, pg_schema):
    monkeypatch.setenv(ENV, _uri(postgres_dsn, pg_schema))
    broken = tmp_path / "broken.sql"
    broken.write_text("SELEC * FROM transactions WHERE account_id = %(account_id)s")
    with pytest.raises(InputError, match=r"clv_test_warehouse.*broken\.sql.*syntax error"):
        load_account(connect(), PostgresSource(type="postgres", conn_id=CONN_ID, contacts_query=str(broken)), "pg")
    percent = tmp_path / "percent.sql"
    percent.write_text("SELECT * FROM transactions WHERE account_id = %(account_id)s AND amount % 2 = 0")
    with pytest.raises(InputError, match=r"percent\.sql.*'%%'"):
        load_account(connect(), PostgresSource(type="postgres", conn_id=CONN_ID, contacts_query=str(percent)), "pg")


def test_query_file_not_found_is_an_input_error_naming_connection_and_file(monkeypatch):
    monkeypatch.setenv(ENV, "postgresql://u@127.0.0.1:1/db")
    source = PostgresSource(type="postgres", conn_id=CONN_ID, contacts_query="nope/contacts.sql")
    expected = r"account pg: connection 'clv_test_warehouse', query file .*nope/contacts\.sql not found \(contacts_"
    with pytest.raises(InputError, match=expected):
        load_account(connect(), source, "pg")


def test_query_without_the_account_parameter_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, "postgresql://u@127.0.0.1:1/db")
    everything = tmp_path / "all.sql"
    everything.write_text("SELECT * FROM transactions")
    source = PostgresSource(type="postgres", conn_id=CONN_ID, transactions_query=str(everything))
    with pytest.raises(InputError, match=r"clv_test_warehouse.*all\.sql does not filter by account"):
        load_account(connect(), source, "pg")


def test_unreachable_server_is_an_input_error_without_the_password(monkeypatch):
    monkeypatch.setenv(ENV, f"postgresql://clv:{urllib.parse.quote(SECRET, safe='')}@127.0.0.1:1/wh?connect_timeout=5")
    with pytest.raises(InputError) as error:
        load_account(connect(), PostgresSource(type="postgres", conn_id=CONN_ID), "pg")
    message = str(error.value)
    assert "cannot connect to PostgreSQL connection 'clv_test_warehouse'" in message
    assert SECRET not in message and urllib.parse.quote(SECRET, safe="") not in message
    assert "postgresql://" not in message


# --- connection resolution (no server needed) ---------------------------------------------


@pytest.fixture
def no_connection_env(monkeypatch):
    for name in (ENV, f"CLV_CONN_{CONN_ID.upper()}"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_uri_connection_is_decoded_and_airflow_only_extras_dropped(no_connection_env):
    no_connection_env.setenv(
        ENV,
        f"postgres://etl%40corp:{urllib.parse.quote(SECRET, safe='')}@db.example.com:6543/dw%20prod"
        "?sslmode=require&cursor=realdictcursor&application_name=clv",
    )
    assert conninfo_to_dict(resolve_connection(CONN_ID)) == {
        "host": "db.example.com", "port": "6543", "user": "etl@corp", "password": SECRET,
        "dbname": "dw prod", "sslmode": "require", "application_name": "clv",
    }


@pytest.mark.parametrize(
    ("host", "expected"),
    [("DB.Example.com", "DB.Example.com"), ("%2FRun%2Fpostgresql", "/Run/postgresql"), ("[::1]", "::1")],
)
def test_uri_host_is_kept_as_written(no_connection_env, host, expected):
    no_connection_env.setenv(ENV, f"postgresql://u@{host}:5432/db")
    resolved = conninfo_to_dict(resolve_connection(CONN_ID))
    assert resolved == {"host": expected, "port": "5432", "user": "u", "dbname": "db"}
    no_connection_env.setenv(ENV, f"postgresql://{host}/db")
    assert conninfo_to_dict(resolve_connection(CONN_ID)) == {"host": expected, "dbname": "db"}


def test_uri_connection_with_airflow_extra_json(no_connection_env):
    extra = urllib.parse.quote(json.dumps({"sslmode": "verify-full", "iam": False}))
    no_connection_env.setenv(ENV, f"postgresql://u@h/db?__extra__={extra}")
    assert conninfo_to_dict(resolve_connection(CONN_ID)) == {
        "host": "h", "user": "u", "dbname": "db", "sslmode": "verify-full",
    }


@pytest.mark.parametrize("extra", [{"sslmode": "disable", "cursor": "x"}, json.dumps({"sslmode": "disable"})])
def test_json_connection_form(no_connection_env, extra):
    no_connection_env.setenv(ENV, json.dumps({
        "conn_type": "postgres", "host": "10.0.0.5", "login": "etl", "password": SECRET,
        "port": 5433, "schema": "dw", "extra": extra,
    }))
    assert conninfo_to_dict(resolve_connection(CONN_ID)) == {
        "host": "10.0.0.5", "port": "5433", "user": "etl", "password": SECRET, "dbname": "dw",
        "sslmode": "disable",
    }


def test_airflow_variable_comes_before_clv_variable(no_connection_env):
    no_connection_env.setenv(f"CLV_CONN_{CONN_ID.upper()}", "host=fallback dbname=db")
    assert conninfo_to_dict(resolve_connection(CONN_ID)) == {"host": "fallback", "dbname": "db"}
    no_connection_env.setenv(ENV, "postgresql://first/db")
    assert conninfo_to_dict(resolve_connection(CONN_ID))["host"] == "first"


def test_resolver_comes_first_and_none_falls_through(no_connection_env):
    no_connection_env.setenv(ENV, "postgresql://from-env/db")
    assert conninfo_to_dict(resolve_connection(CONN_ID, lambda c: "postgresql://from-resolver/db"))["host"] == (
        "from-resolver"
    )
    assert conninfo_to_dict(resolve_connection(CONN_ID, lambda c: None))["host"] == "from-env"


def test_resolver_failure_is_a_config_error_without_secrets(no_connection_env):
    def resolver(conn_id):
        raise LookupError(f"cannot parse postgresql://u:{SECRET}@h/db")

    expected = r"connection 'clv_test_warehouse': the resolver failed \(LookupError"
    with pytest.raises(ConfigError, match=expected) as error:
        resolve_connection(CONN_ID, resolver)
    assert SECRET not in str(error.value)


def test_missing_connection_is_a_config_error_naming_where_it_looked(no_connection_env):
    with pytest.raises(ConfigError) as error:
        resolve_connection(CONN_ID, lambda c: None)
    message = str(error.value)
    assert "connection 'clv_test_warehouse' not found" in message
    for place in ("the resolver", "$AIRFLOW_CONN_CLV_TEST_WAREHOUSE", "$CLV_CONN_CLV_TEST_WAREHOUSE"):
        assert place in message
    with pytest.raises(ConfigError, match="not found"):
        load_account(connect(), PostgresSource(type="postgres", conn_id=CONN_ID), "pg")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f'{{"conn_type": "postgres", "password": "{SECRET}"', "is not valid JSON"),
        (f"mysql://u:{SECRET}@h/db", "of type 'mysql', not a PostgreSQL connection"),
        (json.dumps({"conn_type": "http", "password": SECRET}), "of type 'http'"),
        (f"just-a-{SECRET}", "neither an Airflow connection URI"),
        (f"postgresql://u:{urllib.parse.quote(SECRET, safe='')}@h:notaport/db", "invalid port"),
        (json.dumps({"host": "h", "password": SECRET, "extra": "{not json"}), "'extra' is not a JSON object"),
    ],
)
def test_bad_connection_values_are_config_errors_without_secrets(no_connection_env, value, expected):
    no_connection_env.setenv(ENV, value)
    with pytest.raises(ConfigError, match=expected) as error:
        resolve_connection(CONN_ID)
    assert SECRET not in str(error.value) and urllib.parse.quote(SECRET, safe="") not in str(error.value)
    assert ENV in str(error.value)


# --- settings ------------------------------------------------------------------------------


def test_postgres_source_settings_and_defaults():
    account = parse_account({"account_id": "a", "source": {"type": "postgres", "conn_id": "dw.prod-1"}})
    assert account.source == PostgresSource(
        type="postgres", conn_id="dw.prod-1", transactions_query="transactions.sql", contacts_query="contacts.sql"
    )
    assert (SQL_DIR / "transactions.sql").is_file() and (SQL_DIR / "contacts.sql").is_file()
    with pytest.raises(ConfigError, match=r"source\.postgres\.conn_id"):
        parse_account({"account_id": "a", "source": {"type": "postgres"}})
    with pytest.raises(ConfigError, match=r"source\.postgres\.conn_id.*pattern"):
        parse_account({"account_id": "a", "source": {"type": "postgres", "conn_id": "has space"}})
    with pytest.raises(ConfigError, match=r"source\.postgres\.password: unknown setting"):
        parse_account({"account_id": "a", "source": {"type": "postgres", "conn_id": "dw", "password": "x"}})
    with pytest.raises(ConfigError, match="duckdb, files or postgres"):
        parse_account({"account_id": "a", "source": {"conn_id": "dw"}})


def test_query_paths_resolve_against_config_folder_then_sql_folder(tmp_path):
    (tmp_path / "accounts").mkdir()
    (tmp_path / "queries").mkdir()
    (tmp_path / "queries" / "tx.sql").write_text("SELECT 1")
    (tmp_path / "clv.yaml").write_text(yaml.safe_dump({"source": {
        "type": "postgres", "conn_id": "dw", "transactions_query": "queries/tx.sql",
        "contacts_query": str(tmp_path / "elsewhere.sql"),
    }}))
    (tmp_path / "accounts" / "a.yaml").write_text(yaml.safe_dump({"account_id": "a"}))
    (tmp_path / "accounts" / "b.yaml").write_text(
        yaml.safe_dump({"account_id": "b", "source": {"type": "postgres", "conn_id": "other"}})
    )
    project = load_project(tmp_path)
    source = project.source_for(project.account("a"))
    assert source.transactions_query == str((tmp_path / "queries" / "tx.sql").resolve())
    assert source.contacts_query == str(tmp_path / "elsewhere.sql")
    own = project.source_for(project.account("b"))
    assert (own.conn_id, own.transactions_query, own.contacts_query) == ("other", "transactions.sql", "contacts.sql")


def test_shipped_queries_bind_the_account_and_select_the_spec_columns():
    for name, columns in (("transactions.sql", TX_COLUMNS), ("contacts.sql", CT_COLUMNS)):
        text = (SQL_DIR / name).read_text()
        assert "%(account_id)s" in text
        select = next(line for line in text.splitlines() if line.startswith("SELECT "))
        assert [c.strip() for c in select.removeprefix("SELECT ").split(",")] == columns
        # No stray percent sign outside the parameter (psycopg would refuse it).
        assert text.replace("%(account_id)s", "").count("%") == 0
