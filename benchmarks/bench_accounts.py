"""Overhead per account: one process refits and exports many small accounts.

Simulates ACCOUNTS accounts of BUYERS buyers each into one DuckDB warehouse (the
embedded default source), configures them like ``clv demo`` does, then runs what the
monthly job runs for each account (refit: validate, backtest, fit, gate, score,
Datamodel, publish; then export to a local folder) one after the other in this process,
as ``clv refit`` and an Airflow worker process do. Prints the first account's time (it
pays the imports and the first use of each model objective), the others' median and
total, and the per-account overhead beyond the model work.

    .venv/bin/python benchmarks/bench_accounts.py --accounts 200 --buyers 1000
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Everything the accounts need is imported when the first account runs, so that its time
# shows what a fresh worker process pays once.
STARTED = time.perf_counter()

AS_OF = dt.date(2025, 6, 1)


def main() -> None:
    """Simulate the accounts, run them, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=200, help="Number of accounts (default 200).")
    parser.add_argument("--buyers", type=int, default=1000, help="Buyers per account (default 1,000).")
    parser.add_argument("--workdir", help="Folder for the warehouse, config and store (default: a temporary one).")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="clv-accounts-") as scratch:
        workdir = Path(args.workdir or scratch)
        run(workdir, args.accounts, args.buyers)


def run(workdir: Path, n_accounts: int, n_buyers: int) -> dict:
    """Simulate, refit and export every account; print and return the figures."""
    from clv_jobs import demo
    from clv_jobs.sample_data import SampleAccount

    accounts = [SampleAccount(f"acct{i:04d}", n_buyers=n_buyers, history_days=600, seed=i, bad_rows=False)
                for i in range(n_accounts)]
    started = time.perf_counter()
    config_dir = demo.create_project(workdir, AS_OF, accounts)
    print(f"simulated {n_accounts} accounts of {n_buyers:,} buyers in {time.perf_counter() - started:.1f} s",
          flush=True)

    from clv_jobs import pipeline
    from clv_jobs.settings import load_project

    project = load_project(config_dir)
    seconds, model_seconds = [], []
    first_started = time.perf_counter()
    for index, account in enumerate(accounts):
        started = time.perf_counter()
        summary = pipeline.refit(project, account.account_id, AS_OF, force=True)
        pipeline.export(project, account.account_id, AS_OF)
        seconds.append(time.perf_counter() - started)
        # The work that grows with the account: the fits (backtest + full history).
        model_seconds.append((summary.get("backtest_seconds") or 0.0) + (summary.get("fit_seconds") or 0.0))
        if index in (0, 9) or (index + 1) % 50 == 0:
            print(f"  {index + 1:>4}/{n_accounts} accounts, last {seconds[-1]:.2f} s", flush=True)
    total = time.perf_counter() - first_started
    rest = seconds[1:] or seconds
    figures = {
        "accounts": n_accounts,
        "buyers_per_account": n_buyers,
        "first_account_seconds": seconds[0],
        "median_account_seconds": statistics.median(rest),
        "median_model_seconds": statistics.median(model_seconds[1:] or model_seconds),
        "total_seconds": total,
        "process_seconds": time.perf_counter() - STARTED,
    }
    print(f"first account (imports paid here): {figures['first_account_seconds']:.2f} s")
    print(f"every other account: median {figures['median_account_seconds']:.2f} s, of which backtest + fit "
          f"{figures['median_model_seconds']:.2f} s")
    print(f"{n_accounts} accounts in {total:.1f} s ({total / n_accounts:.2f} s per account)")
    return figures


if __name__ == "__main__":
    sys.exit(main())
