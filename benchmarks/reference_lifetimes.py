"""Reference pipeline: the legacy ``lifetimes`` library (0.11.3), BG/NBD only.

    python benchmarks/reference_lifetimes.py FILE AS_OF OUTDIR

Reads the transactions Parquet FILE (``customer_id, order_ts, amount``) with pandas, builds
the model inputs with ``lifetimes.utils.summary_data_from_transaction_data`` (daily
periods, observation period ending on AS_OF - 1 day, as the project and the
pymc-marketing reference), fits ``BetaGeoFitter`` and ``GammaGammaFitter`` (repeat buyers
with a positive mean spend) by maximum likelihood (no penalizer), and predicts for every
buyer:

* ``p_alive``: ``conditional_probability_alive``;
* ``expected_purchases``: ``conditional_expected_number_of_purchases_up_to_time`` over
  365.25 days (12 months of 30.4375 days: the project's and pymc-marketing's horizon);
* ``clv_lifetimes``: ``customer_lifetime_value(bgf, ..., time=12, discount_rate=0.0,
  freq="D")``, lifetimes' own CLV. lifetimes counts a month as **30 days**, so this is the
  expected spend over 360 days, not 365.25;
* ``clv``: the same quantity over 365.25 days, for a like-for-like comparison:
  ``conditional_expected_average_profit x expected_purchases``. With no discount,
  ``customer_lifetime_value`` is exactly that product at 360 days (its monthly sum
  telescopes), so this only moves the horizon.

Writes ``OUTDIR/parameters.json`` and ``OUTDIR/predictions.parquet``. lifetimes' Pareto/NBD
(``ParetoNBDFitter``) is not run: it is far too slow at these sizes. It is one of the
pipelines ``benchmarks/bench.py`` times as a whole process.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

#: The project's and pymc-marketing's month.
DAYS_PER_MONTH = 30.4375
HORIZON_MONTHS = 12


def run(file: Path, as_of: dt.date, outdir: Path) -> dict:
    """Run the reference pipeline and write its outputs.

    Parameters
    ----------
    file : pathlib.Path
        Transactions Parquet file.
    as_of : datetime.date
        The as-of date: orders on or after it are not seen.
    outdir : pathlib.Path
        Where ``parameters.json`` and ``predictions.parquet`` go.

    Returns
    -------
    dict
        What ``parameters.json`` holds.
    """
    import lifetimes
    from lifetimes import BetaGeoFitter, GammaGammaFitter
    from lifetimes.utils import summary_data_from_transaction_data

    seconds: dict[str, float] = {}
    started = time.perf_counter()
    transactions = pd.read_parquet(file, columns=["customer_id", "order_ts", "amount"])
    seconds["read"] = time.perf_counter() - started

    started = time.perf_counter()
    summary = summary_data_from_transaction_data(
        transactions, "customer_id", "order_ts", monetary_value_col="amount",
        observation_period_end=as_of - dt.timedelta(days=1), freq="D",
    )
    del transactions
    seconds["summary"] = time.perf_counter() - started
    f, r, t, m = (summary[c] for c in ("frequency", "recency", "T", "monetary_value"))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        started = time.perf_counter()
        bgf = BetaGeoFitter(penalizer_coef=0.0).fit(f, r, t)
        seconds["fit_transaction"] = time.perf_counter() - started

        started = time.perf_counter()
        repeat = summary[(f > 0) & (m > 0)]
        ggf = GammaGammaFitter(penalizer_coef=0.0).fit(repeat["frequency"], repeat["monetary_value"])
        seconds["fit_spend"] = time.perf_counter() - started

        started = time.perf_counter()
        horizon = HORIZON_MONTHS * DAYS_PER_MONTH
        expected = np.asarray(bgf.conditional_expected_number_of_purchases_up_to_time(horizon, f, r, t))
        profit = np.asarray(ggf.conditional_expected_average_profit(f, m))
        own_clv = ggf.customer_lifetime_value(bgf, f, r, t, m, time=HORIZON_MONTHS, discount_rate=0.0, freq="D")
        predictions = pd.DataFrame({
            "customer_id": summary.index.to_numpy(),
            "frequency": f.to_numpy(), "recency": r.to_numpy(), "T": t.to_numpy(), "monetary_value": m.to_numpy(),
            "p_alive": np.asarray(bgf.conditional_probability_alive(f, r, t)),
            "expected_purchases": expected,
            "clv": profit * expected,
            "clv_lifetimes": np.asarray(own_clv),
        })
        seconds["predict"] = time.perf_counter() - started

    started = time.perf_counter()
    outdir.mkdir(parents=True, exist_ok=True)
    predictions.to_parquet(outdir / "predictions.parquet", index=False)
    seconds["write"] = time.perf_counter() - started
    result = {
        "pipeline": "lifetimes",
        "model": "bg_nbd",
        "buyers": int(len(summary)),
        "repeat_buyers": int(len(repeat)),
        "parameters": {
            "bg_nbd": {name: float(bgf.params_[name]) for name in ("r", "alpha", "a", "b")},
            "gamma_gamma": {name: float(ggf.params_[name]) for name in ("p", "q", "v")},
        },
        "stage_seconds": {name: round(value, 3) for name, value in seconds.items()},
        "versions": {"lifetimes": lifetimes.__version__, "pandas": pd.__version__},
    }
    (outdir / "parameters.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    """Parse the command line and run."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path, help="Transactions Parquet file.")
    parser.add_argument("as_of", type=dt.date.fromisoformat, help="As-of date YYYY-MM-DD.")
    parser.add_argument("outdir", type=Path, help="Output folder.")
    args = parser.parse_args()
    result = run(args.file, args.as_of, args.outdir)
    print(json.dumps({"buyers": result["buyers"], "stage_seconds": result["stage_seconds"]}))


if __name__ == "__main__":
    main()
