"""Fill the warehouse with simulated accounts (service seed-warehouse, profile "demo").

    python seed-warehouse.py ACCOUNT [ACCOUNT ...]

Each account gets 3,000 buyers over 30 months as of today (clv_jobs' BTYD simulator, with
a few bad rows for the quarantine to catch), replacing its rows in the warehouse tables
``transactions`` and ``contacts`` in one transaction. The connection is the CLV source's
own: $AIRFLOW_CONN_CLV_WAREHOUSE.
"""

import datetime as dt
import io
import sys

import psycopg

from clv_jobs.sample_data import SampleAccount, simulate_account
from clv_jobs.sources import resolve_connection

TABLES = {
    "transactions": ["account_id", "order_id", "customer_id", "order_ts", "amount", "status",
                     "currency", "ingested_at"],
    "contacts": ["account_id", "customer_id", "contact_id", "email", "email_opt_in",
                 "merged_into", "merged_at"],
}


def main(accounts: list[str]) -> int:
    if not accounts:
        print(__doc__, file=sys.stderr)
        return 2
    as_of = dt.date.today()
    with psycopg.connect(resolve_connection("clv_warehouse")) as conn:
        for seed, account_id in enumerate(accounts, start=1):
            data = simulate_account(SampleAccount(account_id, n_buyers=3_000, history_days=900, seed=seed), as_of)
            frames = {"transactions": data.transactions, "contacts": data.contacts}
            for table, columns in TABLES.items():
                buffer = io.StringIO()
                frames[table][columns].to_csv(buffer, index=False, header=False, na_rep="\\N")
                conn.execute(f"DELETE FROM {table} WHERE account_id = %s", [account_id])
                with conn.cursor().copy(
                    f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv, NULL '\\N')"
                ) as copy:
                    copy.write(buffer.getvalue())
            print(f"{account_id}: {len(data.transactions):,} orders, {len(data.contacts):,} contacts "
                  f"as of {as_of}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
