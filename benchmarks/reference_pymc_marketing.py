"""Reference pipeline: pymc-marketing used directly, as its documentation shows.

    python benchmarks/reference_pymc_marketing.py FILE AS_OF OUTDIR [--model bg_nbd|pareto_nbd]

Reads the transactions Parquet FILE (``customer_id, order_ts, amount``) with pandas, builds
the model inputs with ``pymc_marketing.clv.utils.rfm_summary`` (daily periods, observation
period ending on AS_OF - 1 day: the last day a run as of AS_OF sees, so ``T`` counts the
same days as the project's features), fits ``BetaGeoModel`` (or ``ParetoNBDModel``) and
``GammaGammaModel`` (repeat buyers with a positive mean spend) by MAP with the default
priors, and predicts for every buyer: P-Alive, expected purchases over 12 months of
30.4375 days (pymc-marketing's month, the project's horizon) and the 12-month CLV with no
discount.

Writes ``OUTDIR/parameters.json`` (fitted parameters, stage seconds, library versions) and
``OUTDIR/predictions.parquet`` (``customer_id, frequency, recency, T, monetary_value,
p_alive, expected_purchases, clv``). It is one of the pipelines ``benchmarks/bench.py``
times as a whole process.
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

#: pymc-marketing's month (``pymc_marketing.clv.utils._DAYS_PER_MONTH``).
DAYS_PER_MONTH = 30.4375
HORIZON_MONTHS = 12
PARAMETERS = {"bg_nbd": ("r", "alpha", "a", "b"), "pareto_nbd": ("r", "alpha", "s", "beta")}


def _point(model, names: tuple[str, ...]) -> dict[str, float]:
    """The MAP value of each parameter (``fit_result`` holds one chain and one draw)."""
    return {name: float(model.fit_result[name].values.mean()) for name in names}


def _values(array) -> np.ndarray:
    """A MAP prediction as a flat numpy array (drop the chain and draw axes of length 1)."""
    return np.asarray(array).reshape(-1)


def run(file: Path, as_of: dt.date, outdir: Path, model_name: str) -> dict:
    """Run the reference pipeline and write its outputs.

    Parameters
    ----------
    file : pathlib.Path
        Transactions Parquet file.
    as_of : datetime.date
        The as-of date: orders on or after it are not seen.
    outdir : pathlib.Path
        Where ``parameters.json`` and ``predictions.parquet`` go.
    model_name : {"bg_nbd", "pareto_nbd"}
        Transaction model.

    Returns
    -------
    dict
        What ``parameters.json`` holds.
    """
    import pymc_marketing
    from pymc_marketing.clv import BetaGeoModel, GammaGammaModel, ParetoNBDModel
    from pymc_marketing.clv.utils import rfm_summary

    seconds: dict[str, float] = {}
    started = time.perf_counter()
    transactions = pd.read_parquet(file, columns=["customer_id", "order_ts", "amount"])
    seconds["read"] = time.perf_counter() - started

    started = time.perf_counter()
    rfm = rfm_summary(transactions, "customer_id", "order_ts", monetary_value_col="amount",
                      observation_period_end=as_of - dt.timedelta(days=1), time_unit="D")
    del transactions
    seconds["rfm_summary"] = time.perf_counter() - started

    model_class = {"bg_nbd": BetaGeoModel, "pareto_nbd": ParetoNBDModel}[model_name]
    with warnings.catch_warnings():
        # T = 0 (first purchase on the last observed day) is legitimate; pymc-marketing warns.
        warnings.simplefilter("ignore", UserWarning)
        started = time.perf_counter()
        transaction = model_class()
        transaction.fit(rfm[["customer_id", "frequency", "recency", "T"]], method="map", progressbar=False)
        seconds["fit_transaction"] = time.perf_counter() - started

        started = time.perf_counter()
        repeat = rfm[(rfm["frequency"] > 0) & (rfm["monetary_value"] > 0)]
        spend = GammaGammaModel()
        spend.fit(repeat[["customer_id", "frequency", "monetary_value"]], method="map", progressbar=False)
        seconds["fit_spend"] = time.perf_counter() - started

        started = time.perf_counter()
        data = rfm[["customer_id", "frequency", "recency", "T", "monetary_value"]]
        predictions = data.assign(
            p_alive=_values(transaction.expected_probability_alive(data=data)),
            expected_purchases=_values(
                transaction.expected_purchases(data=data, future_t=HORIZON_MONTHS * DAYS_PER_MONTH)
            ),
            clv=_values(spend.expected_customer_lifetime_value(
                transaction_model=transaction, data=data, future_t=HORIZON_MONTHS, discount_rate=0.0,
                time_unit="D",
            )),
        )
        seconds["predict"] = time.perf_counter() - started

    started = time.perf_counter()
    outdir.mkdir(parents=True, exist_ok=True)
    predictions.to_parquet(outdir / "predictions.parquet", index=False)
    seconds["write"] = time.perf_counter() - started
    result = {
        "pipeline": "pymc-marketing",
        "model": model_name,
        "buyers": int(len(rfm)),
        "repeat_buyers": int(len(repeat)),
        "parameters": {
            model_name: _point(transaction, PARAMETERS[model_name]),
            "gamma_gamma": _point(spend, ("p", "q", "v")),
        },
        "stage_seconds": {name: round(value, 3) for name, value in seconds.items()},
        "versions": {"pymc-marketing": pymc_marketing.__version__, "pandas": pd.__version__},
    }
    (outdir / "parameters.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    """Parse the command line and run."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path, help="Transactions Parquet file.")
    parser.add_argument("as_of", type=dt.date.fromisoformat, help="As-of date YYYY-MM-DD.")
    parser.add_argument("outdir", type=Path, help="Output folder.")
    parser.add_argument("--model", choices=sorted(PARAMETERS), default="bg_nbd", help="Transaction model.")
    args = parser.parse_args()
    result = run(args.file, args.as_of, args.outdir, args.model)
    print(json.dumps({"buyers": result["buyers"], "stage_seconds": result["stage_seconds"]}))


if __name__ == "__main__":
    main()
