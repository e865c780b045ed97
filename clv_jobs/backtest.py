"""Backtest of every refit on a holdout, and the choice of the transaction model (``auto``).

The account's clean history is split at ``split = as_of - holdout_days``:

- **calibration**: :func:`clv_jobs.features.build_features` as of the split date (orders
  before it, the same history window, time zone and time unit as the refit);
- **holdout**: per calibration buyer, the repeat purchase days (local calendar days, as
  ``frequency`` counts them) and the spend in ``[split, as_of)``.

The account's model is fitted on the calibration data with the refit's own settings and
predicts the holdout: expected purchases over the holdout length (in the model's time
unit), P-Alive at the split, Gamma-Gamma expected spend per purchase day. The metrics
(:func:`holdout_metrics`) sit beside a naive baseline — each customer's past rate carried
forward — so a reader sees at once whether the model earns its keep.

``transaction_model: auto`` fits the three candidates on the calibration data, keeps the
one with the lowest per-customer purchase MAE on the holdout (ties go to Pareto/NBD,
SPEC's default) and records why (:func:`choose_model`).

A large account is backtested on a seeded random sample of its calibration buyers
(``model.backtest_max_buyers``, :func:`backtest_buyers`): the metrics are means and ranks
over customers, and a quarter of a million of them pin each down far below the differences
a reader or ``auto`` acts on, at a fraction of the time and memory of every buyer.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
import time
import warnings

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from clv_jobs import formulas
from clv_jobs.errors import ModelError
from clv_jobs.features import TIME_UNIT_DAYS, buyer_rows, feature_table, rfm_frame
from clv_jobs.model import FittedModels, fit_models, predict_patterns
from clv_jobs.patterns import TRANSACTION_KEYS, UNIQUE_CUSTOMERS, distinct_rows
from clv_jobs.settings import ModelSettings

log = logging.getLogger("clv_jobs")

#: Candidates of ``auto``, in tie-break order: SPEC's default first.
CANDIDATE_MODELS = ("pareto_nbd", "bg_nbd", "mbg_nbd")

#: What ``auto`` minimises, and how the record names it.
CHOICE_METRIC = "purchases_mae"
CHOICE_BY = "holdout purchase MAE"

#: Two MAEs closer than this (relative) are a tie: only floating-point noise, not skill.
TIE_TOLERANCE = 1e-9

#: Seed of the backtest's sample of calibration buyers: the same data, the same sample.
SAMPLE_SEED = 20240601

#: Predictions are computed in chunks of at most this many (pattern x posterior draw) cells,
#: so a full posterior (MCMC) on millions of patterns stays within memory.
_CHUNK_CELLS = 20_000_000


@dataclasses.dataclass
class HoldoutSplit:
    """An account's history split into calibration features and holdout actuals.

    Attributes
    ----------
    split_date : date
        First day of the holdout (``as_of - holdout_days``).
    holdout_days : int
        Length of the holdout in days.
    time_unit : {"D", "W"}
        Unit of ``recency`` and ``T`` in ``calibration``.
    calibration : pandas.DataFrame
        :func:`clv_jobs.features.build_features` as of ``split_date``: one row per
        calibration buyer, sorted by customer id.
    holdout_purchases : numpy.ndarray
        Purchase days in ``[split, as_of)`` of each calibration buyer (same order).
    holdout_spend : numpy.ndarray
        Spend in ``[split, as_of)`` of each calibration buyer.
    calibration_buyers : int, optional
        Every calibration buyer of the account, when ``calibration`` is a sample of them
        (``model.backtest_max_buyers``); None when it holds them all.
    """

    split_date: dt.date
    holdout_days: int
    time_unit: str
    calibration: pd.DataFrame
    holdout_purchases: np.ndarray
    holdout_spend: np.ndarray
    calibration_buyers: int | None = None

    @property
    def holdout_length(self) -> float:
        """The holdout in the model's time unit (what ``expected_purchases`` takes)."""
        return self.holdout_days / TIME_UNIT_DAYS[self.time_unit]

    @functools.cached_property
    def rfm(self) -> pd.DataFrame:
        """The calibration model inputs (one frame: the predictions of its fit reuse its patterns)."""
        return rfm_frame(self.calibration)

    def in_unit(self, time_unit: str) -> HoldoutSplit:
        """The same split with ``recency`` and ``T`` in another time unit (exact: days / unit)."""
        if time_unit == self.time_unit:
            return self
        factor = TIME_UNIT_DAYS[self.time_unit] / TIME_UNIT_DAYS[time_unit]
        calibration = self.calibration.assign(recency=self.calibration["recency"] * factor,
                                              T=self.calibration["T"] * factor)
        return dataclasses.replace(self, time_unit=time_unit, calibration=calibration)


def split_history(
    con: duckdb.DuckDBPyConnection,
    as_of: dt.date,
    timezone: str,
    history_window_months: int,
    holdout_days: int,
    time_unit: str = "D",
) -> HoldoutSplit:
    """Split the clean ``transactions`` of a session into calibration features and holdout actuals.

    Parameters
    ----------
    con : duckdb.DuckDBPyConnection
        Session holding the clean ``transactions`` table (the run's ``work/transactions.parquet``).
    as_of : date
        The run's as-of date; the holdout ends there.
    timezone : str
        The account's time zone (purchase days are local days, split at local midnight).
    history_window_months : int
        The refit's history window, applied as of the split date.
    holdout_days : int
        Length of the holdout.
    time_unit : {"D", "W"}
        Unit of ``recency`` and ``T``.
    """
    split_date = as_of - dt.timedelta(days=holdout_days)
    table = feature_table(con, as_of, timezone, history_window_months, time_unit, split_date)
    return holdout_split(calibration_rows(table), split_date, holdout_days, time_unit)


#: Calibration columns of a :func:`clv_jobs.features.feature_table` with a split, and their names here.
_CALIBRATION_COLUMNS = {"customer_id": "customer_id", "cal_frequency": "frequency", "cal_recency": "recency",
                        "cal_T": "T", "cal_monetary_value": "monetary_value", "cal_mon_value": "mon_value"}


#: Schema metadata of :func:`calibration_rows`' table: every calibration buyer of the account.
_BUYERS_KEY = b"calibration_buyers"


def backtest_buyers(table: pa.Table, max_buyers: int | None = None) -> tuple[np.ndarray | None, int]:
    """Which rows of a :func:`clv_jobs.features.feature_table` with a split date the backtest takes.

    The calibration buyers (a purchase day in the calibration window, ``cal_days > 0``) or,
    with more than ``max_buyers`` of them, a seeded uniform sample of ``max_buyers``: the
    same table gives the same sample, so a rerun gives the same backtest.

    Returns
    -------
    (numpy.ndarray or None, int)
        The sample's row positions, in order (None: every calibration buyer), and how many
        calibration buyers there are.
    """
    positions = np.flatnonzero(table["cal_days"].to_numpy() > 0)
    if max_buyers is None or positions.size <= max_buyers:
        return None, positions.size
    chosen = np.random.default_rng(SAMPLE_SEED).choice(positions.size, size=max_buyers, replace=False)
    return positions[np.sort(chosen)], positions.size


def calibration_rows(table: pa.Table, max_buyers: int | None = None, buyers: int | None = None) -> pa.Table:
    """The backtest's rows of a :func:`clv_jobs.features.feature_table` computed with a split date.

    The buyers of :func:`backtest_buyers` in customer-id order, as
    :func:`clv_jobs.features.build_features` as of the split date would list them, with
    their calibration inputs and holdout actuals. The schema's metadata keeps how many
    calibration buyers there were: ``buyers`` when the table holds the backtest's buyers
    only (a pass over them alone), else its own count.
    """
    columns = [*_CALIBRATION_COLUMNS, "holdout_purchases", "holdout_spend"]
    positions, counted = backtest_buyers(table, max_buyers)
    if positions is None:
        rows = buyer_rows(table, columns, "cal_days")
    else:
        rows = table.select(columns).take(positions).combine_chunks()
    return rows.replace_schema_metadata({_BUYERS_KEY: str(counted if buyers is None else buyers).encode()})


def holdout_split(rows: pa.Table, split_date: dt.date, holdout_days: int, time_unit: str) -> HoldoutSplit:
    """The :class:`HoldoutSplit` of a table of :func:`calibration_rows`."""
    calibration = rows.select(list(_CALIBRATION_COLUMNS)).rename_columns(list(_CALIBRATION_COLUMNS.values()))
    calibration = calibration.to_pandas(split_blocks=True)
    calibration.attrs[UNIQUE_CUSTOMERS] = True
    buyers = int((rows.schema.metadata or {}).get(_BUYERS_KEY, rows.num_rows))
    return HoldoutSplit(
        split_date=split_date,
        holdout_days=holdout_days,
        time_unit=time_unit,
        calibration=calibration,
        holdout_purchases=rows["holdout_purchases"].to_numpy().astype(float),
        holdout_spend=rows["holdout_spend"].to_numpy().astype(float),
        calibration_buyers=buyers if buyers > rows.num_rows else None,
    )


# -- metrics -------------------------------------------------------------------------------

def _none_if_nan(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def roc_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of ``score`` for the boolean ``positive`` (Mann-Whitney, ties counted half).

    What ``sklearn.metrics.roc_auc_score`` computes, without importing scikit-learn (a
    second per process) for one number. Each class sorted, a binary search counts the
    negatives below and tied with each positive: exact integer counts, and a third of the
    time of ranking every score (``np.unique``) at four million customers.
    """
    positive = np.asarray(positive, dtype=bool)
    scores_of_positives, scores_of_negatives = np.sort(score[positive]), np.sort(score[~positive])
    below = np.searchsorted(scores_of_negatives, scores_of_positives, side="left").sum()
    below_or_tied = np.searchsorted(scores_of_negatives, scores_of_positives, side="right").sum()
    u = (int(below) + int(below_or_tied)) / 2.0
    return float(u / (scores_of_positives.size * scores_of_negatives.size))


def holdout_metrics(
    holdout_purchases: np.ndarray,
    holdout_spend: np.ndarray,
    predicted_purchases: np.ndarray,
    alive_score: np.ndarray | None = None,
    alive_probability: np.ndarray | None = None,
    predicted_spend: np.ndarray | None = None,
) -> dict:
    """Accuracy of holdout predictions, one number per question a marketer asks.

    Parameters
    ----------
    holdout_purchases, holdout_spend : numpy.ndarray
        Per calibration customer: purchase days and spend in the holdout.
    predicted_purchases : numpy.ndarray
        Expected purchases over the holdout.
    alive_score : numpy.ndarray, optional
        Ranking score of "will buy in the holdout" (P-Alive; the naive baseline's past rate).
    alive_probability : numpy.ndarray, optional
        A probability for the Brier score (P-Alive; the naive baseline's Poisson
        probability of a purchase).
    predicted_spend : numpy.ndarray, optional
        Expected spend per purchase day.

    Returns
    -------
    dict
        ``customers, holdout_buyers, actual_purchases, predicted_purchases`` (sums),
        ``purchases_mae`` (mean absolute error per customer), ``purchases_error_pct``
        (100 x (predicted − actual) / actual, aggregate), ``spend_mae`` (mean absolute
        error of the spend per purchase day, holdout buyers only), ``p_alive_auc`` (ROC AUC
        of the score against "bought in the holdout"), ``p_alive_brier`` (Brier score of
        the probability). A metric that cannot be computed (no holdout buyer, a single
        class) is ``None``.
    """
    actual = np.asarray(holdout_purchases, dtype=float)
    predicted = np.asarray(predicted_purchases, dtype=float)
    bought = actual > 0
    total_actual = float(actual.sum())
    total_predicted = float(predicted.sum())
    metrics: dict = {
        "customers": int(actual.size),
        "holdout_buyers": int(bought.sum()),
        "actual_purchases": total_actual,
        "predicted_purchases": _none_if_nan(total_predicted),
        "purchases_mae": _none_if_nan(float(np.abs(predicted - actual).mean())) if actual.size else None,
        "purchases_error_pct": (_none_if_nan(100.0 * (total_predicted - total_actual) / total_actual)
                                if total_actual > 0 else None),
        "spend_mae": None,
        "p_alive_auc": None,
        "p_alive_brier": None,
    }
    if predicted_spend is not None and bought.any():
        mean_spend = np.asarray(holdout_spend, dtype=float)[bought] / actual[bought]
        metrics["spend_mae"] = _none_if_nan(float(np.abs(np.asarray(predicted_spend)[bought] - mean_spend).mean()))
    both_classes = 0 < bought.sum() < bought.size
    if alive_score is not None and both_classes and np.isfinite(alive_score).all():
        metrics["p_alive_auc"] = roc_auc(bought, np.asarray(alive_score, dtype=float))
    if alive_probability is not None and bought.size and np.isfinite(alive_probability).all():
        metrics["p_alive_brier"] = float(np.mean((np.clip(alive_probability, 0.0, 1.0) - bought) ** 2))
    return metrics


def naive_predictions(split: HoldoutSplit) -> dict[str, np.ndarray]:
    """The naive baseline: each customer's past rate carried forward.

    - purchases: ``frequency / T x holdout length`` (0 when ``T`` is 0: first purchase on
      the last calibration day, no rate yet);
    - ranking score (AUC): the past rate ``frequency / T``;
    - probability (Brier): a Poisson process at the past rate buys in the holdout with
      probability ``1 − exp(−rate x holdout length)``;
    - spend per purchase day: the customer's own past mean (revenue / purchase days).
    """
    calibration = split.calibration
    frequency = calibration["frequency"].to_numpy(dtype=float)
    age = calibration["T"].to_numpy(dtype=float)
    rate = np.divide(frequency, age, out=np.zeros_like(frequency), where=age > 0)
    purchases = rate * split.holdout_length
    spend = calibration["mon_value"].to_numpy(dtype=float) / (frequency + 1.0)
    return {"purchases": purchases, "score": rate, "probability": 1.0 - np.exp(-purchases), "spend": spend}


def _mean_over_draws(array) -> np.ndarray:
    dims = [dim for dim in ("chain", "draw") if dim in array.dims]
    return np.asarray(array.mean(dims).values if dims else array.values, dtype=float)


def _draws(clv_model) -> int:
    """Posterior draws of a fitted model (1 for a MAP fit); only sizes the prediction chunks."""
    try:
        posterior = clv_model.fit_result
        return int(np.prod([posterior.sizes.get(dim, 1) for dim in ("chain", "draw")]))
    except Exception:  # a model without a stored posterior: its predictions say how big they are
        return 1


def model_predictions(models: FittedModels, rfm: pd.DataFrame, future_t: float) -> dict[str, np.ndarray]:
    """pymc-marketing's own predictions for every row of ``rfm``, one pass per distinct pattern.

    Parameters
    ----------
    models : FittedModels
    rfm : pandas.DataFrame
        ``customer_id, frequency, recency, T, monetary_value``.
    future_t : float
        Purchases are expected over ``(T, T + future_t]``, in the model's time unit.

    Returns
    -------
    dict
        ``purchases`` (expected over ``future_t``), ``p_alive``, ``spend`` (Gamma-Gamma
        expected spend per purchase day; the population mean for one-time buyers), each in
        the order of ``rfm``; posterior means for a full posterior.
    """
    fitted_rows = models.rows_of(rfm)
    patterns, pattern_of = fitted_rows or distinct_rows(rfm, TRANSACTION_KEYS)
    patterns = patterns[TRANSACTION_KEYS]  # a fit's patterns carry their counts too
    if models.closed_form:
        parameters = models.parameters
        predicted = (models.pattern_predictions(future_t) if fitted_rows is not None
                     else predict_patterns(models.transaction_model, parameters, patterns, future_t))
        with np.errstate(all="ignore"):
            # A few operations per row: cheaper than finding the distinct spend patterns.
            spend = formulas.expected_spend(parameters["gamma_gamma"], rfm["frequency"].to_numpy(dtype=float),
                                            rfm["monetary_value"].to_numpy(dtype=float))
        return {"purchases": predicted["purchases"][pattern_of], "p_alive": predicted["p_alive"][pattern_of],
                "spend": spend}
    spend_patterns, spend_pattern_of = distinct_rows(rfm, ["frequency", "monetary_value"])
    purchases, p_alive, spend = [], [], []
    chunk = max(1_000, _CHUNK_CELLS // max(1, _draws(models.transaction)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for start in range(0, max(len(patterns), 1), chunk):
            part = patterns.iloc[start:start + chunk]
            part = part.assign(customer_id=np.arange(len(part)))
            purchases.append(_mean_over_draws(models.transaction.expected_purchases(data=part, future_t=future_t)))
            p_alive.append(_mean_over_draws(models.transaction.expected_probability_alive(data=part)))
        chunk = max(1_000, _CHUNK_CELLS // max(1, _draws(models.spend)))
        for start in range(0, max(len(spend_patterns), 1), chunk):
            part = spend_patterns.iloc[start:start + chunk]
            part = part.assign(customer_id=np.arange(len(part)))
            spend.append(_mean_over_draws(models.spend.expected_customer_spend(data=part)))
    return {"purchases": np.concatenate(purchases)[: len(patterns)][pattern_of],
            "p_alive": np.concatenate(p_alive)[: len(patterns)][pattern_of],
            "spend": np.concatenate(spend)[: len(spend_patterns)][spend_pattern_of]}


def score_holdout(models: FittedModels, split: HoldoutSplit) -> dict:
    """:func:`holdout_metrics` of fitted (or rebuilt) models on a split."""
    predicted = model_predictions(models, split.rfm, split.holdout_length)
    return holdout_metrics(split.holdout_purchases, split.holdout_spend, predicted["purchases"],
                           alive_score=predicted["p_alive"], alive_probability=predicted["p_alive"],
                           predicted_spend=predicted["spend"])


def naive_metrics(split: HoldoutSplit) -> dict:
    """:func:`holdout_metrics` of the naive baseline (:func:`naive_predictions`)."""
    naive = naive_predictions(split)
    return holdout_metrics(split.holdout_purchases, split.holdout_spend, naive["purchases"],
                           alive_score=naive["score"], alive_probability=naive["probability"],
                           predicted_spend=naive["spend"])


# -- the backtest of a refit ----------------------------------------------------------------

@dataclasses.dataclass
class CandidateResult:
    """One transaction model fitted on the calibration data and scored on the holdout."""

    transaction_model: str
    metrics: dict | None = None
    parameters: dict | None = None
    fit_seconds: float | None = None
    error: str | None = None

    def as_dict(self) -> dict:
        """JSON form: the metrics and parameters, or the error."""
        if self.error is not None:
            return {"error": self.error}
        return {"metrics": self.metrics, "parameters": self.parameters, "fit_seconds": self.fit_seconds}


def skip_reason(split: HoldoutSplit) -> str | None:
    """Why a split cannot be backtested at all, or None."""
    if split.calibration.empty:
        return f"no buyer before the split date {split.split_date} (the history is shorter than the holdout)"
    if not (split.calibration["frequency"] > 0).any():
        return f"no repeat buyer before the split date {split.split_date}"
    return None


def evaluate_candidate(split: HoldoutSplit, settings: ModelSettings, name: str) -> CandidateResult:
    """Fit ``name`` (with the refit's other settings) on the calibration data; score the holdout.

    A fit that fails (too little data, optimiser error, non-finite parameters) is a result
    with ``error`` set, not an exception: the refit goes on without a backtest.
    """
    started = time.perf_counter()
    try:
        # MAP even in Bayesian mode: the backtest scores point predictions, and sampling the
        # calibration split too would double a Bayesian refit's time for no other use.
        models = fit_models(split.rfm, settings.model_copy(update={"transaction_model": name, "fit_method": "map"}))
        metrics = score_holdout(models, split)
    except ModelError as exc:
        return CandidateResult(name, error=str(exc))
    except Exception as exc:  # a prediction error must not fail the refit: it only loses the backtest
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return CandidateResult(name, error=f"{name} holdout predictions failed: {type(exc).__name__}: {first_line}")
    seconds = round(time.perf_counter() - started, 2)
    if metrics["purchases_mae"] is None:
        return CandidateResult(name, parameters=models.parameters, fit_seconds=seconds,
                               error=f"{name} gave non-finite holdout predictions")
    return CandidateResult(name, metrics=metrics, parameters=models.parameters, fit_seconds=seconds)


def choose_model(results: dict[str, CandidateResult]) -> str | None:
    """The candidate with the lowest holdout purchase MAE, or None if every candidate failed.

    Ties go to the earliest in :data:`CANDIDATE_MODELS` (Pareto/NBD, SPEC's default, first).
    """
    scored = {name: r.metrics[CHOICE_METRIC] for name, r in results.items() if r.error is None}
    if not scored:
        return None
    best = min(scored.values())
    order = {name: i for i, name in enumerate(CANDIDATE_MODELS)}
    tied = [name for name, mae in scored.items() if mae <= best * (1 + TIE_TOLERANCE) + 1e-300]
    return min(tied, key=lambda name: order.get(name, len(order)))


def backtest_record(split: HoldoutSplit, result: CandidateResult | None, reason: str | None = None) -> dict:
    """What ``model.json`` and the run summary keep under ``"backtest"``.

    ``{"skipped": reason}`` when there is no backtest; otherwise the split, the buyers
    backtested (``customers``, of ``calibration_buyers``), the model's metrics
    (``"model"``), the naive baseline's (``"naive"``), the calibration fit's parameters and
    seconds.
    """
    if result is None or result.error is not None:
        return {"skipped": reason or (result.error if result else "no backtest")}
    model = result.metrics
    naive = naive_metrics(split)
    return {
        "split_date": split.split_date.isoformat(),
        "holdout_days": split.holdout_days,
        "time_unit": split.time_unit,
        "holdout_length": split.holdout_length,
        "transaction_model": result.transaction_model,
        "fit_method": "map",
        "customers": model["customers"],
        # Every calibration buyer of the account; more than ``customers`` when a sample was backtested.
        "calibration_buyers": split.calibration_buyers or model["customers"],
        "holdout_buyers": model["holdout_buyers"],
        "model": model,
        "naive": naive,
        "beats_naive": naive["purchases_mae"] is None or model["purchases_mae"] < naive["purchases_mae"],
        "calibration_parameters": result.parameters,
        "fit_seconds": result.fit_seconds,
    }


def run_backtest(split: HoldoutSplit, settings: ModelSettings) -> tuple[str, dict, dict]:
    """Backtest the account's model; with ``auto``, choose it.

    Parameters
    ----------
    split : HoldoutSplit
    settings : ModelSettings
        The account's model settings (``transaction_model`` may be ``auto``).

    Returns
    -------
    (str, dict, dict)
        The concrete transaction model to fit on the full history, the backtest record
        (:func:`backtest_record`) and the model-choice record
        (``{"chosen", "by", "candidates"}``).
    """
    name = settings.transaction_model
    reason = skip_reason(split)
    candidates = list(CANDIDATE_MODELS) if name == "auto" else [name]
    results: dict[str, CandidateResult] = {}
    if reason is None:
        for candidate in candidates:
            results[candidate] = evaluate_candidate(split, settings, candidate)
            log.info("backtest: %s on %d%s calibration buyers: %s", candidate, len(split.calibration),
                     f" (a sample) of {split.calibration_buyers}" if split.calibration_buyers else "",
                     results[candidate].error or f"purchase MAE {results[candidate].metrics[CHOICE_METRIC]:.4f}")
    if name != "auto":
        choice = {"chosen": name, "by": "account setting"}
        return name, backtest_record(split, results.get(name), reason), choice
    chosen = choose_model(results) if results else None
    candidates_record = {c: results[c].as_dict() if c in results else {"error": reason} for c in candidates}
    if chosen is None:
        # Nothing to compare: SPEC's default model, and the record says so.
        chosen = CANDIDATE_MODELS[0]
        why = reason or "; ".join(f"{c}: {r.error}" for c, r in results.items())
        choice = {"chosen": chosen, "by": f"default (no candidate could be backtested: {why})",
                  "candidates": candidates_record}
        return chosen, {"skipped": why}, choice
    choice = {"chosen": chosen, "by": CHOICE_BY, "candidates": candidates_record}
    return chosen, backtest_record(split, results[chosen]), choice
