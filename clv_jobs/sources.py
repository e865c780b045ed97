"""Read an account's ``transactions`` and ``contacts`` into a DuckDB session.

Why DuckDB: one columnar engine serves as the embedded warehouse (a single file the
project creates, no server), reads users' CSV and Parquet files in place (globs, gzip),
and runs validation and per-customer features as one multi-threaded scan — the step that
dominates at ten million buyers. Each job opens its own in-memory session
(:func:`connect`); the tables below live only in that session:

``raw_transactions``
    the account's rows as found, plus ``source_row`` (1-based position in the source);
    of one Parquet file, a view of it (:func:`load_account`).
``raw_contacts``
    the account's contacts as found.

Three sources fill them the same way: the embedded DuckDB warehouse, a user's files, and
a PostgreSQL warehouse reached through an Airflow connection (:class:`PostgresSource`),
whose queries (``sql/transactions.sql``, ``sql/contacts.sql``) are streamed with
``COPY … TO STDOUT`` into a temporary CSV file and read as text, like the files source.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb

from clv_jobs.connections import lookup_raw, parse_connection
from clv_jobs.errors import ConfigError, InputError
from clv_jobs.settings import DuckDBSource, FilesSource, PostgresSource

log = logging.getLogger(__name__)

#: The repository's SQL folder: default home of the PostgreSQL source's queries.
SQL_DIR = Path(__file__).parents[1] / "sql"

#: The bind parameter every PostgreSQL query must use for the account id.
ACCOUNT_PARAMETER = "%(account_id)s"

TRANSACTION_COLUMNS = ("order_id", "customer_id", "order_ts", "amount")
OPTIONAL_TRANSACTION_COLUMNS = ("status", "currency", "ingested_at")
CONTACT_COLUMNS = ("customer_id", "contact_id", "email", "email_opt_in")
OPTIONAL_CONTACT_COLUMNS = ("merged_into", "merged_at")


def connect(memory_limit: str | None = None) -> duckdb.DuckDBPyConnection:
    """A fresh in-memory DuckDB session in UTC, ordered output, bounded memory."""
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    # Keep row order of sources, so "row N" in errors means the N-th data row of the file.
    con.execute("SET preserve_insertion_order = true")
    # DuckDB's allocator keeps freed memory for reuse until a single release exceeds this
    # (512 MiB by default): validation's hash tables and classified rows stayed resident
    # while its clean orders grew (its peak at five million buyers 2.0-2.1 -> 1.8-1.9 GiB).
    con.execute("SET allocator_bulk_deallocation_flush_threshold = '64MB'")
    limit = memory_limit or os.environ.get("CLV_DUCKDB_MEMORY_LIMIT")
    if limit:
        con.execute(f"SET memory_limit = '{limit}'")
    return con


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _file_reader(pattern: str) -> str:
    """The DuckDB table function reading a CSV or Parquet file (or glob)."""
    if not glob.glob(pattern):
        raise InputError(f"file {pattern} not found")
    lowered = pattern.lower()
    if lowered.endswith((".parquet", ".pq")):
        if glob.glob(pattern) == [pattern]:
            # One file: its own row numbers, read in parallel (row_number() OVER () is a
            # serial pass: 1.3 of 2.9 s on twelve million rows).
            return f"read_parquet({_quote(pattern)}, file_row_number = true)"
        return f"read_parquet({_quote(pattern)})"
    if lowered.endswith((".csv", ".csv.gz", ".txt", ".tsv")):
        # Everything as text: a bad value must reach validation as a quarantined row,
        # not abort the whole read with a type error.
        return f"read_csv({_quote(pattern)}, all_varchar = true, header = true)"
    raise InputError(f"file {pattern}: unknown format (use .csv, .csv.gz or .parquet)")


def _columns(con: duckdb.DuckDBPyConnection, relation_sql: str) -> list[str]:
    return [row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {relation_sql}").fetchall()]


def _select_list(
    available: list[str], required: tuple[str, ...], optional: tuple[str, ...], where: str
) -> str:
    missing = [name for name in required if name not in available]
    if missing:
        raise InputError(
            f"{where}: required column(s) {', '.join(missing)} missing "
            f"(found: {', '.join(available)})"
        )
    parts = [f'"{name}"' for name in required]
    parts += [f'"{name}"' if name in available else f"NULL AS {name}" for name in optional]
    return ", ".join(parts)


def _load(
    con: duckdb.DuckDBPyConnection,
    table: str,
    relation_sql: str,
    where: str,
    account_id: str,
    required: tuple[str, ...],
    optional: tuple[str, ...],
    filter_account: bool = True,
    view: bool = False,
) -> int:
    available = [name for name in _columns(con, relation_sql) if name != "file_row_number"]
    select = _select_list(available, required, optional, where)
    numbered = (f"(SELECT file_row_number + 1 AS source_row, * EXCLUDE (file_row_number) FROM {relation_sql})"
                if "file_row_number = true" in relation_sql
                else f"(SELECT row_number() OVER () AS source_row, * FROM {relation_sql})")
    # A file without account_id holds one account's rows; a shared table is filtered
    # (a PostgreSQL query filters on the server: filter_account=False).
    account_filter = (
        f"WHERE CAST(account_id AS VARCHAR) = {_quote(account_id)}"
        if filter_account and "account_id" in available
        else ""
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP {"VIEW" if view else "TABLE"} {table} AS
        SELECT source_row, {select}
        -- Rows are numbered before the account filter: "row N" is the file's N-th data row.
        FROM {numbered}
        {account_filter}
        """
    )
    return con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]


def load_account(
    con: duckdb.DuckDBPyConnection,
    source: DuckDBSource | FilesSource | PostgresSource,
    account_id: str,
    resolve_connection: Callable[[str], str | None] | None = None,
) -> dict[str, int | str]:
    """Load one account's raw rows into ``raw_transactions`` and ``raw_contacts``.

    Parameters
    ----------
    con : duckdb.DuckDBPyConnection
        The job's session (see :func:`connect`).
    source : DuckDBSource, FilesSource or PostgresSource
        Where the rows are; paths already resolved.
    account_id : str
        Rows of other accounts in a shared table are ignored.
    resolve_connection : callable, optional
        PostgreSQL source only: ``conn_id -> URI`` (e.g. Airflow's connection lookup),
        asked before the environment (see :func:`resolve_connection`).

    Returns
    -------
    dict
        ``source`` (a printable name), ``transactions`` and ``contacts`` row counts.

    Raises
    ------
    ConfigError
        PostgreSQL source: the connection is not found or not a PostgreSQL one.
    InputError
        Missing file, table or required column; PostgreSQL unreachable or a query failing.
    """
    if isinstance(source, PostgresSource):
        return _load_postgres(con, source, account_id, resolve_connection)
    state = None  # of a file read through a view
    if isinstance(source, DuckDBSource):
        if not Path(source.path).exists():
            raise InputError(
                f"account {account_id}: warehouse {source.path} not found (`clv demo` creates one)"
            )
        con.execute(f"ATTACH {_quote(source.path)} AS warehouse (READ_ONLY)")
        try:
            tables = {row[0] for row in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = 'warehouse'"
            ).fetchall()}
            for needed in ("transactions", "contacts"):
                if needed not in tables:
                    raise InputError(f"account {account_id}: warehouse {source.path} has no table {needed}")
            n_tx = _load(con, "raw_transactions", "warehouse.transactions",
                         f"{source.path} table transactions", account_id,
                         TRANSACTION_COLUMNS, OPTIONAL_TRANSACTION_COLUMNS)
            n_contacts = _load(con, "raw_contacts", "warehouse.contacts",
                               f"{source.path} table contacts", account_id,
                               CONTACT_COLUMNS, OPTIONAL_CONTACT_COLUMNS)
        finally:
            con.execute("DETACH warehouse")
        name = f"{source.path}"
    else:
        reader = _file_reader(source.transactions)
        # One Parquet file is read where it lies, through a view (validation reads it twice):
        # copying it into a table took a quarter of validation's time at five million
        # buyers, and its memory. check_unchanged tells whether it changed meanwhile.
        view = "file_row_number = true" in reader
        if view:
            state = _file_state(source.transactions)
        n_tx = _load(con, "raw_transactions", reader, source.transactions,
                     account_id, TRANSACTION_COLUMNS, OPTIONAL_TRANSACTION_COLUMNS, view=view)
        if source.contacts:
            n_contacts = _load(con, "raw_contacts", _file_reader(source.contacts), source.contacts,
                               account_id, CONTACT_COLUMNS, OPTIONAL_CONTACT_COLUMNS)
        else:
            con.execute(
                "CREATE OR REPLACE TEMP TABLE raw_contacts (source_row BIGINT, customer_id VARCHAR, "
                "contact_id VARCHAR, email VARCHAR, email_opt_in VARCHAR, merged_into VARCHAR, "
                "merged_at VARCHAR)"
            )
            n_contacts = 0
        name = source.transactions
    loaded = {"source": name, "transactions": n_tx, "contacts": n_contacts}
    return loaded | ({"file_state": state} if state else {})


def _file_state(path: str) -> tuple[str, int, int]:
    stat = os.stat(path)
    return path, stat.st_size, stat.st_mtime_ns


def check_unchanged(loaded: dict, account_id: str) -> None:
    """Fail when the file :func:`load_account` read through a view changed since (size or time).

    Call it once the rows are validated: every row then comes from one version of the file.
    """
    if "file_state" in loaded and _file_state(loaded["file_state"][0]) != tuple(loaded["file_state"]):
        raise InputError(f"account {account_id}: file {loaded['file_state'][0]} changed while it was being "
                         "read; nothing was published: run again once it is complete")


# --- PostgreSQL source ---------------------------------------------------------------


def _psycopg():
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is in the lock
        raise ConfigError("the postgres source needs the psycopg package (pip install 'psycopg[binary]')") from None
    return psycopg


_REDACTIONS = (
    # scheme://user:secret@host
    (re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):[^@\s]*@"), r"\1:***@"),
    # password=secret, password='se cret'
    (re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE), r"\1***"),
    # "password": "secret"
    (re.compile(r'("password"\s*:\s*)("(?:[^"\\]|\\.)*"|[^,}\s]+)', re.IGNORECASE), r"\1***"),
)


def _redact(text: str, *secrets: str | None) -> str:
    """``text`` without passwords: known ones, and anything shaped like a credential."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


def _libpq_keywords() -> frozenset[str]:
    psycopg = _psycopg()
    return frozenset(option.keyword.decode() for option in psycopg.pq.Conninfo.get_defaults())


def _libpq_extras(extra: dict) -> dict[str, str]:
    """The libpq parameters among an Airflow connection's extras (sslmode, options, …).

    Airflow-only extras (``cursor``, ``iam``, …) are not libpq's and are left out.
    """
    keywords = _libpq_keywords()
    return {key: str(value) for key, value in extra.items() if key in keywords and value is not None}


def _conninfo(conn_id: str, value: str, where: str) -> str:
    """A libpq connection string from Airflow's URI or JSON form, or a libpq string.

    The URI and JSON forms are parsed by :func:`clv_jobs.connections.parse_connection`
    (shared with every destination); only the libpq ``key=value`` form is read here.
    """
    psycopg = _psycopg()
    text = value.strip()
    if text.startswith("{") or "://" in text:
        try:
            conn = parse_connection(conn_id, text, where)
        except (TypeError, ValueError):  # e.g. a JSON "port" that is not a number
            raise ConfigError(f"connection {conn_id!r} ({where}) has an invalid port") from None
        # Airflow's JSON form may leave conn_type out; the URI's scheme is postgres(ql).
        conn_type = conn.conn_type or "postgres"
        params: dict[str, object] = {
            "host": conn.host,
            "port": conn.port,
            "user": conn.login,
            "password": conn.password,
            "dbname": conn.schema,
        } | _libpq_extras(conn.extra)
    else:
        try:
            params = psycopg.conninfo.conninfo_to_dict(text)
        except psycopg.Error:
            # libpq's message may quote the string, password included: not shown.
            raise ConfigError(
                f"connection {conn_id!r} ({where}) is neither an Airflow connection URI "
                "(postgresql://user:password@host:port/database), its JSON form, "
                "nor a libpq connection string"
            ) from None
        conn_type = "postgres"
    if conn_type not in ("postgres", "postgresql"):
        raise ConfigError(
            f"connection {conn_id!r} ({where}) is of type {conn_type!r}, not a PostgreSQL connection"
        )
    params = {key: str(value) for key, value in params.items() if value not in (None, "")}
    return psycopg.conninfo.make_conninfo("", **params)


def postgres_conninfo(conn_id: str, resolver: Callable[[str], str | None] | None = None) -> str:
    """The libpq connection string of an Airflow connection id, without Airflow.

    Looked up by :func:`clv_jobs.connections.lookup_raw`, in order: ``resolver(conn_id)``
    when given (in an Airflow task, e.g. ``lambda c: BaseHook.get_connection(c).get_uri()``;
    ``None`` means "not known here"), ``$AIRFLOW_CONN_<CONN_ID>`` (Airflow's convention: a
    URI such as ``postgresql://user:password@host:5432/database`` or the JSON form with
    ``conn_type, host, login, password, port, schema, extra``), then ``$CLV_CONN_<CONN_ID>``
    (the same forms, or a libpq ``key=value`` string). ``<CONN_ID>`` is the id upper-cased.
    libpq parameters among the extras (``sslmode``, ``options``, …) are kept. Used by the
    PostgreSQL source and the PostgreSQL delivery (:mod:`clv_jobs.delivery.postgres`).

    Raises
    ------
    ConfigError
        Not found (naming where it was looked for), not parseable, or not PostgreSQL.
        Messages never contain the password or the connection string.
    """
    value, where = lookup_raw(conn_id, resolver)
    return _conninfo(conn_id, value, where)


#: The name the PostgreSQL source has always used (kept for callers and scripts).
resolve_connection = postgres_conninfo


def _query(source: PostgresSource, setting: str, account_id: str) -> tuple[Path, str]:
    """A query file's path and text (account parameter checked, trailing ``;`` removed)."""
    name = getattr(source, setting)
    path = Path(os.path.expanduser(name))
    path = path if path.is_absolute() else SQL_DIR / path
    where = f"account {account_id}: connection {source.conn_id!r}, query file {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{where} not found ({setting} in the source settings)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{where} cannot be read ({type(exc).__name__}: {exc})") from None
    text = text.strip().rstrip(";").rstrip()
    if ACCOUNT_PARAMETER not in text:
        raise InputError(
            f"{where} does not filter by account: it must use the bind parameter {ACCOUNT_PARAMETER} "
            "(e.g. WHERE account_id = %(account_id)s)"
        )
    return path, text


def _csv_reader(path: Path) -> str:
    # Everything as text, as the files source: bad values reach validation. PostgreSQL's
    # CSV writes NULL unquoted and '' quoted: keep them apart (allow_quoted_nulls).
    return (
        f"read_csv({_quote(str(path))}, all_varchar = true, header = true, delim = ',', "
        "quote = '\"', escape = '\"', allow_quoted_nulls = false, encoding = 'utf-8')"
    )


def _load_postgres(
    con: duckdb.DuckDBPyConnection,
    source: PostgresSource,
    account_id: str,
    resolver: Callable[[str], str | None] | None,
) -> dict[str, int | str]:
    """Stream both queries with COPY into temporary CSV files, then into DuckDB."""
    psycopg = _psycopg()
    conn_id = source.conn_id
    queries = {
        "raw_transactions": (*_query(source, "transactions_query", account_id),
                             TRANSACTION_COLUMNS, OPTIONAL_TRANSACTION_COLUMNS),
        "raw_contacts": (*_query(source, "contacts_query", account_id),
                         CONTACT_COLUMNS, OPTIONAL_CONTACT_COLUMNS),
    }
    dsn = postgres_conninfo(conn_id, resolver)
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    password = params.get("password")
    overrides: dict[str, object] = {"autocommit": True, "client_encoding": "utf8"}
    if "connect_timeout" not in params:
        overrides["connect_timeout"] = 30
    if "application_name" not in params:
        overrides["application_name"] = "clv_jobs"
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="clv-postgres-") as folder:
        try:
            conn = psycopg.connect(dsn, **overrides)
        except psycopg.Error as exc:
            raise InputError(
                f"account {account_id}: cannot connect to PostgreSQL connection {conn_id!r}: "
                f"{_redact(str(exc).strip(), password)}"
            ) from None
        with conn:
            # Text the DuckDB side parses the same way whatever the server's defaults.
            for setting in ("TimeZone TO 'UTC'", "DateStyle TO 'ISO, YMD'", "extra_float_digits TO 3"):
                conn.execute(f"SET {setting}")
            # One snapshot for both tables, and a query file cannot write.
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            with conn.transaction():
                for table, (path, query, _, _) in queries.items():
                    csv_path = Path(folder) / f"{table}.csv"
                    started = time.perf_counter()
                    try:
                        bound = psycopg.ClientCursor(conn).mogrify(query, {"account_id": account_id})
                        with conn.cursor() as cursor, open(csv_path, "wb", buffering=1 << 20) as out:
                            with cursor.copy(f"COPY (\n{bound}\n) TO STDOUT (FORMAT csv, HEADER true)") as copy:
                                write = out.write
                                for chunk in copy:
                                    write(chunk)
                    except psycopg.Error as exc:
                        diag = getattr(exc, "diag", None)
                        message = (diag.message_primary if diag else None) or str(exc).strip().splitlines()[0]
                        raise InputError(
                            f"account {account_id}: connection {conn_id!r}, query file {path}: "
                            f"{_redact(message, password)}"
                        ) from None
                    log.info("%s: %s read from connection %s (%s) in %.1f s, %.1f MB", account_id, table,
                             conn_id, path.name, time.perf_counter() - started, csv_path.stat().st_size / 1e6)
        for table, (path, _, required, optional) in queries.items():
            counts[table] = _load(con, table, _csv_reader(Path(folder) / f"{table}.csv"),
                                  f"connection {conn_id!r} query {path}", account_id,
                                  required, optional, filter_account=False)
    name = f"connection {conn_id} ({queries['raw_transactions'][0]})"
    return {"source": name, "transactions": counts["raw_transactions"], "contacts": counts["raw_contacts"]}


def prepare_contacts(con: duckdb.DuckDBPyConnection) -> None:
    """One contact per customer in temp table ``contacts``, from ``raw_contacts``.

    A customer with several contact rows keeps the one that was not merged away, has a
    contact id, and comes first in the source. Email consent is ``true`` only when given
    explicitly; blank emails are unknown (null).
    """
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE contacts AS
        SELECT CAST(customer_id AS VARCHAR) AS customer_id,
               nullif(trim(CAST(contact_id AS VARCHAR)), '') AS contact_id,
               nullif(trim(CAST(email AS VARCHAR)), '') AS email,
               coalesce(TRY_CAST(email_opt_in AS BOOLEAN), false) AS email_opt_in
        FROM raw_contacts
        WHERE nullif(trim(CAST(customer_id AS VARCHAR)), '') IS NOT NULL
        QUALIFY row_number() OVER (
            PARTITION BY CAST(customer_id AS VARCHAR)
            ORDER BY merged_into IS NOT NULL, contact_id IS NULL, source_row
        ) = 1
        """
    )
