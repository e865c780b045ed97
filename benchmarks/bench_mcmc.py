"""Time the Bayesian mode (``fit_method: mcmc``) on one simulated account.

Simulates BUYERS buyers of the sample generator (the account's true process is the
model's), builds the project's features (24-month window, days), samples the full
posterior with the default settings (nutpie, 2 chains x 1,000 + 1,000 draws) and scores
every buyer with the intervals. Prints the pattern counts, sampling and scoring seconds,
convergence (r-hat, bulk ESS, divergences) and peak memory.

    .venv/bin/python benchmarks/bench_mcmc.py --buyers 1000000 --model pareto_nbd
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import time

import pandas as pd

from clv_jobs import features, sources
from clv_jobs.model import fit_models, score_customers
from clv_jobs.sample_data import SampleAccount, simulate_account
from clv_jobs.settings import ModelSettings

AS_OF = dt.date(2025, 6, 1)


def _peak_rss_gib() -> tuple[float, float]:
    """Peak resident memory of this process and of its largest finished child (the chains)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    return own, children


def main() -> None:
    """Simulate, fit, score; print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--buyers", type=int, default=100_000, help="Simulated buyers (default 100,000).")
    parser.add_argument("--model", choices=["pareto_nbd", "bg_nbd", "mbg_nbd"], default="pareto_nbd",
                        help="Transaction model; the data follow its process (MBG/NBD: BG/NBD's).")
    parser.add_argument("--seed", type=int, default=1, help="Simulation seed.")
    args = parser.parse_args()

    started = time.perf_counter()
    process = "pareto_nbd" if args.model == "pareto_nbd" else "bg_nbd"
    sample = simulate_account(SampleAccount("bench", n_buyers=args.buyers, history_days=730, seed=args.seed,
                                            bad_rows=False, process=process), AS_OF)
    orders = sample.transactions.assign(order_ts=pd.to_datetime(sample.transactions["order_ts"]))
    con = sources.connect()
    con.register("transactions", orders[["customer_id", "order_id", "order_ts", "amount"]])
    rfm = features.rfm_frame(features.build_features(con, AS_OF, "UTC", 24, time_unit="D"))
    con.close()
    del sample, orders
    print(f"simulated {len(rfm):,} buyers ({process} process) and their features in "
          f"{time.perf_counter() - started:.0f} s", flush=True)

    started = time.perf_counter()
    models = fit_models(rfm, ModelSettings(transaction_model=args.model, fit_method="mcmc"))
    fit_seconds = time.perf_counter() - started
    d = models.diagnostics
    print(f"{args.model} + gamma_gamma, {d['transaction_patterns']:,} transaction and {d['spend_patterns']:,} "
          f"spend patterns: sampled in {fit_seconds:.0f} s wall (seconds of each model's chains, summed: "
          f"transaction {d['transaction_fit_seconds']:.0f} s, spend {d['spend_fit_seconds']:.0f} s)", flush=True)
    print(f"  r_hat_max {d['r_hat_max']:.4f} ({d['r_hat_max_parameter']}), ess_bulk_min {d['ess_bulk_min']:.0f} "
          f"({d['ess_bulk_min_parameter']}), divergences {d['divergences']}", flush=True)

    started = time.perf_counter()
    scores = score_customers(models, rfm, 12, 0.0, "D")
    score_seconds = time.perf_counter() - started
    own, children = _peak_rss_gib()
    print(f"scored {len(scores):,} buyers with {d['predictive_draws']} draws in {score_seconds:.0f} s; "
          f"mean CLV {scores['clv'].mean():.2f}, mean P10-P90 width "
          f"{(scores['clv_p90'] - scores['clv_p10']).mean():.2f}", flush=True)
    print(f"peak RSS: {own:.2f} GiB (this process), {children:.2f} GiB (largest chain process)")
    print(f"total fit + score: {fit_seconds + score_seconds:.0f} s")


if __name__ == "__main__":
    main()
