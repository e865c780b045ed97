"""The 25-column Datamodel CSV (SPEC "Data out" and "CSV format").

UTF-8 without BOM, comma, header, RFC 4180 quoting (only where a field needs it), ``.``
decimals, money to 2 decimals and days to 1, timestamps ``YYYY-MM-DD HH:MM:SS`` in the
account's time zone, ``true``/``false``, empty field for null, sorted by CustomerId so a
rerun is byte-identical. DuckDB's CSV writer does the quoting and writing in one
columnar pass, streaming: the scores are sorted first and the contact fields are put
beside them in that order, so nothing sorts the formatted rows.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from clv_jobs.asof import local_time_sql
from clv_jobs.segments import SCORE_LABELS, SEGMENT_LABELS

#: The Datamodel's columns, in order, with their SQL type (sql/datamodel_clv.sql).
COLUMNS = {
    "CustomerId": "varchar(255)",
    "Email": "varchar(255)",
    "ContactId": "varchar(255)",
    "LTV_VALUE": "double precision",
    "REC_VALUE": "double precision",
    "FREQ_VALUE": "int",
    "MON_VALUE": "double precision",
    "CLV_SEGMENT": "varchar(255)",
    "ID_CLV_SEGMENT": "varchar(255)",
    "CLV_SCORE": "varchar(255)",
    "ID_CLV_SCORE": "varchar(255)",
    "DAYS_BTW_PURCHASE": "double precision",
    "TICKET_AVG": "double precision",
    "FIRST_TICKET_DATE": "timestamp",
    "LAST_TICKET_DATE": "timestamp",
    "LST90DAYS_REVENUE": "double precision",
    "LST180DAYS_REVENUE": "double precision",
    "LST360DAYS_REVENUE": "double precision",
    "LST90DAYS_FREQ": "int",
    "LST180DAYS_FREQ": "int",
    "LST360DAYS_FREQ": "int",
    "CG_SEGMENT": "varchar(255)",
    "CLV_EVOLUTION": "varchar(255)",
    "DIFF_TBP_RECENCY": "double precision",
    "EMAIL_COMMUNICATIONS": "boolean",
}

#: A customer's contact fields (:func:`contact_fields`), beside the scores in the query.
CONTACT_FIELDS = ("email", "contact_id", "email_opt_in")

#: Optional columns after the 25, from the scores table.
EXTRA_COLUMNS = {
    "P_ALIVE": "printf('%.6f', s.p_alive + 0.0)",
    "CHURN": "printf('%.6f', s.churn + 0.0)",
    "EXPECTED_PURCHASES": "printf('%.4f', s.expected_purchases + 0.0)",
    "MODEL": "s.model",
}


#: The fixed-decimal fields, over ``scores s``: money to 2 decimals, days to 1.
FIXED_FIELDS = {
    "LTV_VALUE": ("s.clv", 2),
    "REC_VALUE": ("s.rec_value", 1),
    "MON_VALUE": ("s.mon_value", 2),
    "DAYS_BTW_PURCHASE": ("s.days_btw_purchase", 1),
    "TICKET_AVG": ("s.mon_value / s.freq_value", 2),
    "LST90DAYS_REVENUE": ("s.lst90_revenue", 2),
    "LST180DAYS_REVENUE": ("s.lst180_revenue", 2),
    "LST360DAYS_REVENUE": ("s.lst360_revenue", 2),
    "DIFF_TBP_RECENCY": ("s.days_btw_purchase - s.rec_value", 1),
}

#: Rows of the Datamodel written by one ``COPY`` (:func:`write_datamodel`).
SLICE_ROWS = 1_000_000

#: Below this magnitude a double rounded to a DECIMAL prints printf's digits (:func:`_fixed`).
DECIMAL_LIMIT = 1e11


def _decimal(expr: str, decimals: int) -> str:
    """``expr`` rounded to a DECIMAL, which prints with exactly ``decimals`` decimals.

    A DECIMAL prints as ``printf`` would while ``|expr| <`` :data:`DECIMAL_LIMIT`, two to
    three times faster (nine such columns on five million rows: 2.4 s against 5.3 s), and
    it cannot go negative zero ("-0.00"). Left a number, not text, it needs no quoting
    check: the file took about half a second less at five million rows.
    """
    return f"CAST(round({expr}, {decimals}) AS DECIMAL(18, {decimals}))"


def _fixed(expr: str, decimals: int) -> str:
    """``expr`` as text with exactly ``decimals`` decimals, at any magnitude.

    :func:`_decimal` below :data:`DECIMAL_LIMIT`; from there on (absurd for money or days),
    where a double has too few digits left for the cast to round as printf does,
    ``printf`` (``+ 0.0`` turns -0.0 into 0.0).
    """
    return (f"CASE WHEN abs({expr}) < {DECIMAL_LIMIT:g} THEN CAST({_decimal(expr, decimals)} AS VARCHAR) "
            f"ELSE printf('%.{decimals}f', round({expr}, {decimals}) + 0.0) END")


def has_large_values(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether a fixed-decimal field of ``scores s`` reaches :data:`DECIMAL_LIMIT` (or is not finite)."""
    magnitudes = ", ".join(f"abs({expr})" for expr, _ in FIXED_FIELDS.values())
    # In DuckDB NaN sorts above every number, so a NaN counts as large, as in _fixed.
    return con.execute(
        f"SELECT coalesce(max(greatest({magnitudes})) >= {DECIMAL_LIMIT:g}, false) FROM scores s").fetchall()[0][0]


def _timestamp(expr: str) -> str:
    """``expr`` in local time, to the second: the CSV writer prints ``YYYY-MM-DD HH:MM:SS``.

    Left a timestamp, not ``strftime`` text, it needs no formatting call or quoting check
    (the two timestamp columns of five million rows took a quarter less time).
    """
    return f"date_trunc('second', {local_time_sql(expr)})"


def _label_case(column: str, labels: dict[int, str]) -> str:
    whens = " ".join(f"WHEN {key} THEN '{label.replace(chr(39), chr(39) * 2)}'" for key, label in labels.items())
    return f"CASE {column} {whens} END"


def datamodel_query(locale: str, extra_columns: list[str] = (), large_values: bool = False) -> str:
    """SELECT producing the Datamodel's fields from ``scores s`` (with :func:`contact_fields`' columns).

    ``large_values`` (:func:`has_large_values`): money and days as :func:`_fixed` text, not
    :func:`_decimal` numbers; the file is the same where both apply.
    """
    fixed = _fixed if large_values else _decimal

    def number(name: str) -> str:
        return fixed(*FIXED_FIELDS[name])

    # Integers as they are: the CSV writer prints them as a cast to text would.
    select = {
        "CustomerId": "s.customer_id",
        "Email": "s.email",
        "ContactId": "s.contact_id",
        "LTV_VALUE": number("LTV_VALUE"),
        "REC_VALUE": number("REC_VALUE"),
        "FREQ_VALUE": "s.freq_value",
        "MON_VALUE": number("MON_VALUE"),
        "CLV_SEGMENT": _label_case("s.segment_id", SEGMENT_LABELS[locale]),
        "ID_CLV_SEGMENT": "s.segment_id",
        "CLV_SCORE": _label_case("s.score_id", SCORE_LABELS[locale]),
        "ID_CLV_SCORE": "s.score_id",
        "DAYS_BTW_PURCHASE": number("DAYS_BTW_PURCHASE"),
        "TICKET_AVG": number("TICKET_AVG"),
        "FIRST_TICKET_DATE": _timestamp("s.first_ts"),
        "LAST_TICKET_DATE": _timestamp("s.last_ts"),
        "LST90DAYS_REVENUE": number("LST90DAYS_REVENUE"),
        "LST180DAYS_REVENUE": number("LST180DAYS_REVENUE"),
        "LST360DAYS_REVENUE": number("LST360DAYS_REVENUE"),
        "LST90DAYS_FREQ": "s.lst90_freq",
        "LST180DAYS_FREQ": "s.lst180_freq",
        "LST360DAYS_FREQ": "s.lst360_freq",
        "CG_SEGMENT": "s.control_group",
        "CLV_EVOLUTION": "s.evolution",
        "DIFF_TBP_RECENCY": number("DIFF_TBP_RECENCY"),
        "EMAIL_COMMUNICATIONS": "CASE WHEN coalesce(s.email_opt_in, false) THEN 'true' ELSE 'false' END",
    }
    assert list(select) == list(COLUMNS)
    select |= {name: EXTRA_COLUMNS[name] for name in extra_columns}
    fields = ",\n    ".join(f'{expr} AS "{name}"' for name, expr in select.items())
    return f"""
SELECT
    {fields}
FROM scores s
"""


def _by_customer(rows: pa.Table) -> pa.Table:
    """``rows`` sorted by customer id (byte order, as SQL sorts text); a refit's are already."""
    ids = rows["customer_id"]
    # Arrow compares the strings in place; pandas' check took 0.7 s at five million ids.
    in_order = len(ids) < 2 or not pc.any(pc.less(ids[1:], ids[:-1])).as_py()
    return rows if in_order else rows.take(pc.sort_indices(ids))


def contact_fields(con: duckdb.DuckDBPyConnection, customer_ids: pa.ChunkedArray | pa.Array) -> pa.Table:
    """``email, contact_id, email_opt_in`` of each customer from ``contacts``, in ``customer_ids``' order.

    Null for a customer without a contact. A join finds the contacts and each one's row;
    a ``take`` puts them in place. Sorting the joined rows instead held every formatted
    row in memory: 2.3 GB more at five million buyers.
    """
    rows = len(customer_ids)
    con.register("datamodel_ids", pa.table({"customer_id": pc.cast(customer_ids, pa.large_string()),
                                            "row": np.arange(rows, dtype=np.int64)}))
    try:
        found = con.sql(
            "SELECT i.row, c.email, c.contact_id, c.email_opt_in "
            "FROM datamodel_ids i JOIN contacts c ON c.customer_id = i.customer_id"
        ).to_arrow_table()
    finally:
        con.unregister("datamodel_ids")
    position = np.full(rows, -1, dtype=np.int64)
    position[found["row"].to_numpy()] = np.arange(found.num_rows)
    missing = position < 0
    take = pa.array(np.where(missing, 0, position), mask=missing)  # a null index takes a null
    return pa.table({name: found[name].take(take) for name in CONTACT_FIELDS})


def file_digest(path: str | Path) -> dict[str, int | str]:
    """Bytes and SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return {"bytes": size, "sha256": digest.hexdigest()}


def write_datamodel(
    con: duckdb.DuckDBPyConnection,
    scores: pd.DataFrame | pa.Table,
    path: str | Path,
    timezone: str = "UTC",
    locale: str = "es",
    extra_columns: list[str] = (),
    compress: bool = False,
) -> dict[str, int | str]:
    """Write the Datamodel CSV of ``scores`` joined with the session's ``contacts`` table.

    Parameters
    ----------
    con : duckdb.DuckDBPyConnection
        Session holding ``contacts``, one row per customer (:func:`clv_jobs.sources.prepare_contacts`).
    scores : pandas.DataFrame or pyarrow.Table
        The run's scores table (:func:`clv_jobs.pipeline.score_account`), one row per customer;
        a refit hands over the Arrow table it also writes as Parquet (one conversion, not two).
    path : str or Path
        Destination file; written beside it under a temporary name, then renamed.
    timezone, locale : str
        Of the account: timestamps and labels.
    extra_columns : list of str
        Names from :data:`EXTRA_COLUMNS`, appended after the 25.
    compress : bool
        Gzip the file (deterministically: no name or time in the gzip header).

    Returns
    -------
    dict
        ``rows``, ``bytes``, ``sha256`` of the file as written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.partial")
    plain = staging.with_suffix(".csv") if compress else staging
    part = staging.with_suffix(".slice")
    # The path is a SQL string literal: double its quotes (a template may hold "o'brien").
    literal = "'" + str(part).replace("'", "''") + "'"
    rows = _by_customer(scores if isinstance(scores, pa.Table) else pa.Table.from_pandas(scores, preserve_index=False))
    # One table, contacts beside the scores: DuckDB reads it on every thread (a positional
    # join of two tables was read on one: a second more at five million buyers).
    for name, column in zip(CONTACT_FIELDS, contact_fields(con, rows["customer_id"]).columns, strict=True):
        rows = rows.append_column(name, column)
    con.register("scores", rows)
    try:
        query = datamodel_query(locale, list(extra_columns), has_large_values(con))
    finally:
        con.unregister("scores")
    digest, size = hashlib.sha256(), 0
    try:
        with open(plain, "wb") as target:
            # Slice by slice, each appended to the file (and hashed) as it is written: one
            # COPY of every row held up to 0.9 GB of formatted rows waiting for their turn
            # in the file's order (0.36 GB in slices, and no slower, at five million rows).
            for start in range(0, max(rows.num_rows, 1), SLICE_ROWS):
                con.register("scores", rows.slice(start, SLICE_ROWS))
                try:
                    con.execute(
                        f"COPY ({query}) TO {literal} (FORMAT csv, HEADER {'true' if start == 0 else 'false'}, "
                        "DELIMITER ',', QUOTE '\"', ESCAPE '\"', NULLSTR '')",
                        {"tz": timezone},
                    )
                finally:
                    con.unregister("scores")
                with open(part, "rb") as source:
                    while chunk := source.read(1 << 20):
                        digest.update(chunk)
                        size += len(chunk)
                        target.write(chunk)
        part.unlink()
        if compress:
            with open(plain, "rb") as source, open(staging, "wb") as raw:
                with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as target:
                    shutil.copyfileobj(source, target, 1 << 20)
            plain.unlink()
        os.replace(staging, path)
    except BaseException:
        # A failed write leaves the previous file and no staging litter beside it.
        for litter in (part, plain, staging):
            litter.unlink(missing_ok=True)
        raise
    written = file_digest(path) if compress else {"bytes": size, "sha256": digest.hexdigest()}
    return {"rows": rows.num_rows, **written}
