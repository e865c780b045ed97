"""Read an account's ``transactions`` and ``contacts`` into a DuckDB session.

Why DuckDB: one columnar engine serves as the embedded warehouse (a single file the
project creates, no server), reads users' CSV and Parquet files in place (globs, gzip),
and runs validation and per-customer features as one multi-threaded scan — the step that
dominates at ten million buyers. Each job opens its own in-memory session
(:func:`connect`); the tables below live only in that session:

``raw_transactions``
    the account's rows as found, plus ``source_row`` (1-based position in the source).
``raw_contacts``
    the account's contacts as found.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import duckdb

from clv_jobs.errors import InputError
from clv_jobs.settings import DuckDBSource, FilesSource

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
) -> int:
    available = _columns(con, relation_sql)
    select = _select_list(available, required, optional, where)
    # A file without account_id holds one account's rows; a shared table is filtered.
    account_filter = (
        f"WHERE CAST(account_id AS VARCHAR) = {_quote(account_id)}" if "account_id" in available else ""
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE {table} AS
        SELECT source_row, {select}
        -- Rows are numbered before the account filter: "row N" is the file's N-th data row.
        FROM (SELECT row_number() OVER () AS source_row, * FROM {relation_sql})
        {account_filter}
        """
    )
    return con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]


def load_account(
    con: duckdb.DuckDBPyConnection,
    source: DuckDBSource | FilesSource,
    account_id: str,
) -> dict[str, int | str]:
    """Load one account's raw rows into ``raw_transactions`` and ``raw_contacts``.

    Parameters
    ----------
    con : duckdb.DuckDBPyConnection
        The job's session (see :func:`connect`).
    source : DuckDBSource or FilesSource
        Where the rows are; paths already resolved.
    account_id : str
        Rows of other accounts in a shared table are ignored.

    Returns
    -------
    dict
        ``source`` (a printable name), ``transactions`` and ``contacts`` row counts.

    Raises
    ------
    InputError
        Missing file, table or required column.
    """
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
        n_tx = _load(con, "raw_transactions", _file_reader(source.transactions), source.transactions,
                     account_id, TRANSACTION_COLUMNS, OPTIONAL_TRANSACTION_COLUMNS)
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
    return {"source": name, "transactions": n_tx, "contacts": n_contacts}


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
