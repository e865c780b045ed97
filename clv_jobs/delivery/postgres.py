"""Deliver to a PostgreSQL table shared by accounts (SPEC "Export": optionally a table).

The SPEC's table (``sql/datamodel_clv.sql``) has the 25 columns and no account; a warehouse
table that several accounts load into needs one, so the delivery's table is
``sql/datamodel_clv_load.sql``: the 25 columns plus ``account_id`` and ``as_of``. It is
created when missing under the destination's ``table`` (``schema.table`` allowed). Then,
in ONE transaction, the account's rows are replaced:

1. ``pg_advisory_xact_lock`` on (table, account): two deliveries of one account queue;
2. ``DELETE FROM t WHERE account_id = …``;
3. ``COPY`` the file (plain or gzip) into a temporary table of the file's columns;
4. ``INSERT INTO t … SELECT`` the 25 columns with ``account_id`` and ``as_of``;
5. the inserted row count must equal the manifest's ``rows``, else ROLLBACK.

A failure anywhere (a corrupt row, a lost connection, a wrong count) rolls back and leaves
the previous rows; readers never see a mix. The connection is ``conn_id``, resolved by
:func:`clv_jobs.sources.postgres_conninfo` (Airflow's URI or JSON form, or a libpq
string). Transient, retried by :func:`clv_jobs.delivery.with_retries`: connection
failures, a connection lost mid-load, serialization failures and deadlocks, server
shutdowns and "too many clients". Permanent, at once: authentication, unknown role or
database, missing privilege, a bad table or schema name, data that does not fit.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import psycopg
from psycopg import sql

from clv_jobs import delivery
from clv_jobs.connections import Resolver
from clv_jobs.datamodel import COLUMNS, file_digest
from clv_jobs.delivery import DeliveryError, with_retries
from clv_jobs.errors import ConfigError
from clv_jobs.settings import PostgresDestination
from clv_jobs.sources import SQL_DIR, postgres_conninfo

#: Tries and first backoff delay (module attributes, read at each delivery: tests lower them).
ATTEMPTS = delivery.ATTEMPTS
FIRST_DELAY_SECONDS = delivery.FIRST_DELAY_SECONDS

#: Seconds to wait for a connection when the connection itself does not say.
CONNECT_TIMEOUT_SECONDS = 30

#: The delivery's table: the 25 columns plus account_id and as_of.
LOAD_DDL = SQL_DIR / "datamodel_clv_load.sql"

#: The table name written in :data:`LOAD_DDL`, replaced by the destination's.
DDL_HEADER = re.compile(r"CREATE TABLE IF NOT EXISTS datamodel_clv \(")

DATAMODEL_COLUMNS = tuple(COLUMNS)
ACCOUNT_COLUMNS = ("account_id", "as_of")

#: SQLSTATEs worth another try: serialization failure, deadlock, lock not available,
#: insufficient resources, too many connections, server shutting down or starting up.
TRANSIENT_SQLSTATES = frozenset({
    "40001", "40P01", "55P03", "53000", "53200", "53300", "57P01", "57P02", "57P03", "57P05",
})

#: libpq messages (no SQLSTATE on a failed connection) that no retry can fix.
PERMANENT_CONNECT = re.compile(
    r"authentication failed|role \".*\" does not exist|database \".*\" does not exist|no pg_hba\.conf entry"
    r"|permission denied|SSL .*(required|not supported|off)|certificate|invalid (sslmode|port|connection option)"
    r"|could not translate host name",
    re.IGNORECASE,
)

_CHUNK = 1 << 20


def is_transient(exc: BaseException) -> bool:
    """Whether a PostgreSQL fault is worth another try (see the module docstring)."""
    if not isinstance(exc, psycopg.Error):
        return isinstance(exc, (ConnectionError, TimeoutError))
    state = exc.sqlstate
    if state:
        return state.startswith("08") or state in TRANSIENT_SQLSTATES
    # No SQLSTATE: libpq's own failures (refused, reset, timed out, server closed the
    # connection), and the server's FATAL answers to a connection attempt.
    return isinstance(exc, psycopg.OperationalError) and not PERMANENT_CONNECT.search(str(exc))


def describe_error(exc: psycopg.Error) -> str:
    """One line: the server's message and, for COPY, where in the file (line and column)."""
    diag = exc.diag
    primary = diag.message_primary if diag.message_primary else str(exc).strip().splitlines()[0]
    context = (diag.context or "").strip().splitlines()
    if context and context[-1].startswith("COPY "):
        # "COPY <stage>, line 32, column FREQ_VALUE: "many"": line 1 is the header.
        return f"{primary} (file {context[-1].partition(', ')[2]})"
    return primary


def table_identifier(table: str) -> sql.Identifier:
    """``table`` or ``schema.table`` (as the settings allow) as a quoted identifier."""
    return sql.Identifier(*table.split("."))


def create_table_statement(table: str) -> sql.Composed:
    """The ``CREATE TABLE IF NOT EXISTS`` of :data:`LOAD_DDL` for the destination's table."""
    text = "\n".join(line for line in LOAD_DDL.read_text(encoding="utf-8").splitlines()
                     if not line.lstrip().startswith("--")).strip().rstrip(";")
    match = DDL_HEADER.search(text)
    if match is None:  # pragma: no cover - the file is the repository's
        raise ConfigError(f"{LOAD_DDL}: no 'CREATE TABLE IF NOT EXISTS datamodel_clv (' in it")
    return sql.SQL("CREATE TABLE IF NOT EXISTS {} (").format(table_identifier(table)) + sql.SQL(text[match.end():])


@contextmanager
def _open_text_bytes(path: Path) -> Iterator[IO[bytes]]:
    """The file's bytes, gunzipped when it is gzip (by its magic number, not its name)."""
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        if gzipped:
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                yield stream
        else:
            yield raw


def file_columns(path: Path) -> list[str]:
    """The header of a Datamodel file (plain or gzip); DeliveryError if it is not one."""
    with _open_text_bytes(path) as stream:
        first = stream.readline(1 << 16)
    try:
        header = next(csv.reader(io.StringIO(first.decode("utf-8").removeprefix("\ufeff"))), [])
    except (UnicodeDecodeError, csv.Error):
        header = []
    if tuple(header[:len(DATAMODEL_COLUMNS)]) != DATAMODEL_COLUMNS:
        raise DeliveryError(f"{path.name} is not a Datamodel file: its header does not start with the 25 "
                            f"columns {', '.join(DATAMODEL_COLUMNS[:3])}, …, {DATAMODEL_COLUMNS[-1]}")
    extra = header[len(DATAMODEL_COLUMNS):]
    if any(not name for name in extra) or len(set(header)) != len(header):
        raise DeliveryError(f"{path.name}: empty or repeated column names after the 25")
    return header


def _connect(conninfo: str) -> psycopg.Connection:
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    overrides: dict[str, object] = {"client_encoding": "utf8"}
    if "connect_timeout" not in params:
        overrides["connect_timeout"] = CONNECT_TIMEOUT_SECONDS
    if "application_name" not in params:
        overrides["application_name"] = "clv_jobs delivery"
    return psycopg.connect(conninfo, **overrides)


def _ensure_table(conn: psycopg.Connection, table: str, where: str) -> None:
    """Create the table when missing (own transaction), then check it has the load's columns."""
    name = table_identifier(table).as_string(conn)
    if conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()[0] is None:
        try:
            with conn.transaction():
                # Two CREATE TABLE IF NOT EXISTS at once collide in the catalogue (on the
                # table, or on its row type: DuplicateObject). Deliveries take turns here;
                # the lock is held to the commit below, so the next one finds the table.
                conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                             (f"clv_jobs.delivery.postgres:create:{name}",))
                conn.execute(create_table_statement(table))
        except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable, psycopg.errors.DuplicateObject):
            pass  # created at the same moment by someone not taking the lock
    columns = {row[0] for row in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
        (name,),
    )}
    missing = [column for column in (*DATAMODEL_COLUMNS, *ACCOUNT_COLUMNS) if column not in columns]
    if missing:
        raise DeliveryError(f"{where}: the table lacks column(s) {', '.join(missing)}; it must have the shape of "
                            f"{LOAD_DDL.name} (the 25 Datamodel columns plus account_id and as_of)")
    conn.commit()


def _load(conn: psycopg.Connection, local_file: Path, header: list[str], table: str, account: str,
          as_of: dt.date, expected_rows: int, where: str) -> dict:
    """Replace the account's rows in one transaction; ROLLBACK unless the count matches."""
    target = table_identifier(table)
    stage = sql.Identifier("clv_datamodel_load")
    datamodel_columns = sql.SQL(", ").join(map(sql.Identifier, DATAMODEL_COLUMNS))
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                     (f"clv_jobs.delivery.postgres:{target.as_string(conn)}:{account}",))
        deleted = conn.execute(sql.SQL("DELETE FROM {} WHERE account_id = %s").format(target), (account,)).rowcount
        # The stage has the table's own types for the 25 (COPY reports a bad value with its
        # line and column) and text for any extra columns of the file, which are not loaded.
        conn.execute(sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
            stage, datamodel_columns, target))
        for name in header[len(DATAMODEL_COLUMNS):]:
            conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} text").format(stage, sql.Identifier(name)))
        copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv, HEADER true)").format(
            stage, sql.SQL(", ").join(map(sql.Identifier, header)))
        with conn.cursor() as cursor:
            with cursor.copy(copy_sql) as copy, _open_text_bytes(local_file) as stream:
                while chunk := stream.read(_CHUNK):
                    copy.write(chunk)
            copied = cursor.rowcount
        inserted = conn.execute(
            sql.SQL("INSERT INTO {} ({}, account_id, as_of) SELECT {}, %s, %s FROM {}").format(
                target, datamodel_columns, datamodel_columns, stage),
            (account, as_of),
        ).rowcount
        if inserted != expected_rows:
            # Raising inside the transaction block rolls it back: the previous rows stay.
            raise DeliveryError(f"{where}: {inserted} rows loaded ({copied} copied) but the manifest says "
                                f"{expected_rows}; rolled back, the previous rows are kept")
    return {"rows": inserted, "replaced": deleted}


def deliver(
    local_file: Path, destination: PostgresDestination, manifest: dict, resolver: Resolver | None = None
) -> dict:
    """Replace the account's rows of the table with the file's, in one transaction.

    Returns
    -------
    dict
        ``destination``, ``conn_id``, ``table``, ``account``, ``as_of``, ``rows`` (loaded)
        and ``replaced`` (the account's rows deleted in the same transaction).

    Raises
    ------
    DeliveryError
        The file is not the published Datamodel, a permanent fault (authentication,
        privilege, table), a row count that is not the manifest's, or transient faults
        on every try; the previous rows are kept in every case.
    ConfigError
        The connection is missing or not a PostgreSQL one.
    """
    local_file = Path(local_file)
    account = manifest["account"]
    as_of = dt.date.fromisoformat(str(manifest["as_of"]))
    table = destination.table
    where = f"account {account}, postgres connection {destination.conn_id!r}, table {table}"

    local = file_digest(local_file)
    if local["sha256"] != manifest["sha256"] or local["bytes"] != manifest["bytes"]:
        raise DeliveryError(f"{where}: the local file {local_file} differs from the published one "
                            "(size or sha256 not the manifest's); nothing loaded")
    try:
        header = file_columns(local_file)
    except DeliveryError as exc:
        raise DeliveryError(f"{where}: {exc}") from None
    try:
        conninfo = postgres_conninfo(destination.conn_id, resolver)
    except ConfigError as exc:
        raise ConfigError(f"account {account}, destination postgres table {table}: {exc}") from None

    def attempt() -> dict:
        # One connection per try; leaving the block rolls back whatever was not committed.
        try:
            with _connect(conninfo) as conn:
                _ensure_table(conn, table, where)
                return _load(conn, local_file, header, table, account, as_of, int(manifest["rows"]), where)
        except psycopg.Error as exc:
            if is_transient(exc):
                raise
            raise DeliveryError(f"{where}: {type(exc).__name__}: {describe_error(exc)} (not retried)") from exc

    loaded = with_retries(attempt, where, is_transient, attempts=ATTEMPTS, first_delay=FIRST_DELAY_SECONDS)
    return {"destination": "postgres", "conn_id": destination.conn_id, "table": table, "account": account,
            "as_of": as_of.isoformat(), **loaded}
