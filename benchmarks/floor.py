"""The floor: the least work any CLV pipeline must do on the same file.

    python benchmarks/floor.py FILE AS_OF OUT.csv

One DuckDB scan and group-by of the transactions Parquet FILE: per buyer (orders before
AS_OF 00:00) the order count, first and last order date and total amount, written as a CSV
with one row per buyer (``COPY ... TO``). No validation, no model, no scores: a pipeline
that reads the orders and writes one row per buyer cannot be faster than this, so
``benchmarks/bench.py`` reports the project's time as a multiple of it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path

import duckdb


def run(file: Path, as_of: dt.date, out: Path) -> dict:
    """Scan, group and write the per-buyer CSV.

    Parameters
    ----------
    file : pathlib.Path
        Transactions Parquet file (``customer_id, order_ts, amount``).
    as_of : datetime.date
        Orders on or after this date are left out.
    out : pathlib.Path
        The CSV to write.

    Returns
    -------
    dict
        ``buyers`` and ``seconds``.
    """
    started = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    source = str(file).replace("'", "''")
    target = str(out).replace("'", "''")
    rows = con.execute(
        f"""
        COPY (
            SELECT customer_id,
                   count(*) AS orders,
                   CAST(min(order_ts) AS DATE) AS first_date,
                   CAST(max(order_ts) AS DATE) AS last_date,
                   sum(amount) AS amount
            FROM read_parquet('{source}')
            WHERE order_ts < $as_of
            GROUP BY customer_id
        ) TO '{target}' (FORMAT csv, HEADER)
        """,
        {"as_of": dt.datetime.combine(as_of, dt.time(0))},
    ).fetchone()[0]
    con.close()
    return {"buyers": int(rows), "seconds": round(time.perf_counter() - started, 3)}


def main() -> None:
    """Parse the command line and run."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path, help="Transactions Parquet file.")
    parser.add_argument("as_of", type=dt.date.fromisoformat, help="As-of date YYYY-MM-DD.")
    parser.add_argument("out", type=Path, help="CSV to write (one row per buyer).")
    args = parser.parse_args()
    print(json.dumps(run(args.file, args.as_of, args.out)))


if __name__ == "__main__":
    main()
