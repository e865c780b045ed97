"""Buy-Till-You-Die models with pymc-marketing: fit, then score every buyer.

Transaction models (``ModelSettings.transaction_model``): Pareto/NBD (default), BG/NBD,
MBG/NBD; spend model: Gamma-Gamma on repeat buyers' mean repeat-day spend. Every
prediction is pymc-marketing's formula: its own method on the fitted model, or, for a MAP
fit of BG/NBD, MBG/NBD and Gamma-Gamma, the same closed form in NumPy
(:mod:`clv_jobs.formulas`, checked against the method). Predictions are computed once per distinct
``(frequency, recency, T, monetary_value)`` pattern and joined back: customers with the
same pattern have the same scores, and there are far fewer patterns than customers.

``fit_method: mcmc`` samples the full posterior (:mod:`clv_jobs.bayes`); the fitted models
then carry posterior draws, every prediction is their posterior mean, and the scores gain
per-customer intervals (:data:`INTERVAL_COLUMNS`).
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import logging
import time
import warnings

import numpy as np
import pandas as pd

from clv_jobs import formulas, patterns
from clv_jobs.errors import ModelError
from clv_jobs.patterns import TRANSACTION_KEYS, DistinctRows, distinct_rows
from clv_jobs.settings import ModelSettings

log = logging.getLogger(__name__)

#: pymc-marketing's month length (``clv.utils._DAYS_PER_MONTH``): horizons in months use it.
DAYS_PER_MONTH = 30.4375

TRANSACTION_PARAMETERS = {
    "pareto_nbd": ("r", "alpha", "s", "beta"),
    "bg_nbd": ("r", "alpha", "a", "b"),
    "mbg_nbd": ("r", "alpha", "a", "b"),
}
SPEND_PARAMETERS = ("p", "q", "v")

#: Fewest repeat buyers with positive spend for a Gamma-Gamma fit.
MIN_REPEAT_BUYERS = 10

#: Scores of a Bayesian (``mcmc``) fit only: 10th/50th/90th posterior percentiles of the
#: customer's CLV and 10th/90th of P-Alive (see :func:`score_customers`).
INTERVAL_COLUMNS = ("clv_p10", "clv_p50", "clv_p90", "p_alive_p10", "p_alive_p90")

#: Posterior draws x customers patterns scored at once in Bayesian mode (memory bound:
#: about 40 MB per array).
_SCORING_CHUNK_ELEMENTS = 5_000_000


def predict_patterns(name: str, parameters: dict[str, dict[str, float]], patterns: pd.DataFrame,
                     future_t: float) -> dict[str, np.ndarray]:
    """P-Alive and expected purchases over ``future_t`` of each transaction pattern.

    :func:`clv_jobs.formulas.transaction_predictions` of the rows of ``patterns``.
    """
    x, t_x, T = (patterns[c].to_numpy(dtype=float) for c in ("frequency", "recency", "T"))
    with np.errstate(all="ignore"):
        return formulas.transaction_predictions(name, parameters[name], x, t_x, T, future_t)


@dataclasses.dataclass
class FittedModels:
    """A fitted transaction model and spend model, with what is stored about them.

    ``transaction`` and ``spend`` are pymc-marketing's model objects carrying the fit,
    built on first use: a MAP fit of BG/NBD, MBG/NBD and Gamma-Gamma is scored with the
    same formulas in NumPy (:mod:`clv_jobs.formulas`) and never imports PyMC.
    """

    transaction_model: str
    parameters: dict[str, dict[str, float]]
    diagnostics: dict[str, float | int | str]
    #: Bayesian fits: the posterior draws the models carry, ``{model: {parameter:
    #: [[draws of chain 0], [draws of chain 1], ...]}}`` (JSON-ready, for ``model.json``);
    #: ``None`` after a MAP fit.
    posterior: dict[str, dict[str, list[list[float]]]] | None = None
    #: The weighted patterns each model was fitted on (:mod:`clv_jobs.patterns`): the
    #: transaction model's serve predictions for the fitted rows (:meth:`rows_of`); not stored.
    patterns: dict[str, pd.DataFrame] = dataclasses.field(default_factory=dict, repr=False, compare=False)
    #: The objective each MAP fit maximised, with its data (:attr:`clv_jobs.patterns.MapFit.objective`),
    #: for the quality gate's convergence check; not stored.
    objectives: dict[str, object] = dataclasses.field(default_factory=dict, repr=False, compare=False)
    #: The frame a MAP fit was fitted on, and each of its rows' index into
    #: ``patterns[transaction_model]``: predictions for those very rows (the backtest's,
    #: the quality gate's) need not find the patterns again (half a second at 5M buyers).
    fitted_rfm: pd.DataFrame | None = dataclasses.field(default=None, repr=False, compare=False)
    rows_pattern: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)
    #: :meth:`pattern_predictions` already computed, by ``future_t``; not stored.
    _pattern_predictions: dict[float, dict[str, np.ndarray]] = dataclasses.field(
        default_factory=dict, repr=False, compare=False)

    @property
    def fitted_rows(self) -> DistinctRows | None:
        """The transaction patterns of the fitted frame and each of its rows' index into them (a MAP fit's)."""
        if self.rows_pattern is None:
            return None
        return self.patterns[self.transaction_model], self.rows_pattern

    def rows_of(self, rfm: pd.DataFrame) -> DistinctRows | None:
        """:attr:`fitted_rows`, if ``rfm`` is the fitted frame."""
        return self.fitted_rows if rfm is self.fitted_rfm else None

    def pattern_predictions(self, future_t: float) -> dict[str, np.ndarray]:
        """:func:`predict_patterns` of the fitted transaction patterns (a MAP fit's).

        Computed once per ``future_t``: the quality gate checks them and the score stage
        publishes them (their hypergeometric terms took half a second at five million buyers).
        """
        if future_t not in self._pattern_predictions:
            self._pattern_predictions[future_t] = predict_patterns(
                self.transaction_model, self.parameters, self.patterns[self.transaction_model], future_t)
        return self._pattern_predictions[future_t]

    def _point_or_draws(self, model: str, names: tuple[str, ...]) -> dict:
        source = self.posterior if self.posterior else self.parameters
        return {p: source[model][p] for p in names}

    @functools.cached_property
    def transaction(self):
        """pymc-marketing's transaction model carrying the point or the posterior draws."""
        name = self.transaction_model
        return _with_posterior(patterns.model_class(name), self._point_or_draws(name, TRANSACTION_PARAMETERS[name]))

    @functools.cached_property
    def spend(self):
        """pymc-marketing's Gamma-Gamma model carrying the point or the posterior draws."""
        spend = self._point_or_draws("gamma_gamma", SPEND_PARAMETERS)
        return _with_posterior(patterns.model_class("gamma_gamma"), spend)

    @property
    def closed_form(self) -> bool:
        """Point parameters of a model :mod:`clv_jobs.formulas` predicts (no PyMC needed)."""
        return not self.posterior and self.transaction_model in formulas.KINDS


def fit_transaction_model(rfm: pd.DataFrame, name: str, priors: str = "default",
                          data: pd.DataFrame | None = None) -> patterns.MapFit:
    """Fit one pymc-marketing transaction model by MAP, on weighted unique patterns.

    The MAP of pymc-marketing's model (same priors, likelihood and optimiser as its
    ``fit(method="map")``) computed on the distinct ``(frequency, recency, T)`` with
    their counts (:mod:`clv_jobs.patterns`): the same optimum, in far fewer terms.

    Parameters
    ----------
    rfm : pandas.DataFrame
        ``customer_id, frequency, recency, T``.
    name : {"pareto_nbd", "bg_nbd", "mbg_nbd"}
    priors : {"default", "flat"}
    data : pandas.DataFrame, optional
        ``patterns.transaction_patterns(rfm)``, when already computed.

    Returns
    -------
    patterns.MapFit
    """
    return patterns.find_map(name, patterns.transaction_patterns(rfm) if data is None else data, priors)


def _spend_fit_rows(rfm: pd.DataFrame) -> pd.DataFrame:
    """Repeat buyers with a positive mean repeat spend, or a ModelError if too few."""
    repeat = rfm.loc[(rfm["frequency"] > 0) & (rfm["monetary_value"] > 0),
                     ["customer_id", "frequency", "monetary_value"]]
    if len(repeat) < MIN_REPEAT_BUYERS:
        raise ModelError(
            f"only {len(repeat)} repeat buyers with spend: the Gamma-Gamma spend model needs "
            f"at least {MIN_REPEAT_BUYERS}"
        )
    return repeat


def fit_spend_model(rfm: pd.DataFrame, priors: str = "default", data: pd.DataFrame | None = None) -> patterns.MapFit:
    """Fit Gamma-Gamma by MAP on repeat buyers with a positive mean repeat spend (as patterns, or ``data``)."""
    return patterns.find_map("gamma_gamma", patterns.spend_patterns(_spend_fit_rows(rfm)) if data is None else data,
                             priors)


def fit_models(rfm: pd.DataFrame, settings: ModelSettings) -> FittedModels:
    """Fit the account's transaction and spend models.

    Raises
    ------
    ModelError
        Too little data, or a fit that fails or gives non-finite parameters.
    """
    name = settings.transaction_model
    repeat_buyers = _spend_fit_rows(rfm)  # fail in milliseconds, not after a transaction fit, when too small
    if settings.fit_method == "mcmc":
        return _fit_mcmc(rfm, settings)
    try:
        started = time.perf_counter()
        transaction_rows = distinct_rows(rfm, TRANSACTION_KEYS)
        fitted_patterns = {name: patterns.transaction_patterns(rfm, transaction_rows),
                           "gamma_gamma": patterns.spend_patterns(repeat_buyers)}
        transaction_fit = fit_transaction_model(rfm, name, settings.priors, fitted_patterns[name])
        transaction_seconds = time.perf_counter() - started
        started = time.perf_counter()
        spend_fit = fit_spend_model(rfm, settings.priors, fitted_patterns["gamma_gamma"])
        spend_seconds = time.perf_counter() - started
    except ModelError:
        raise
    except Exception as exc:  # pymc raises many types; the message is what matters
        # pymc's messages can run to pages of starting values: the first line says what failed.
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelError(f"{name} fit failed: {type(exc).__name__}: {first_line}") from exc
    parameters = {
        name: {p: float(transaction_fit.parameters[p]) for p in TRANSACTION_PARAMETERS[name]},
        "gamma_gamma": {p: float(spend_fit.parameters[p]) for p in SPEND_PARAMETERS},
    }
    bad = [f"{model}.{p}" for model, values in parameters.items() for p, v in values.items()
           if not np.isfinite(v) or v <= 0]
    if bad:
        raise ModelError(f"{name} fit gave invalid parameters: {', '.join(bad)}")
    diagnostics = {
        "customers": int(len(rfm)),
        "repeat_buyers": int((rfm["frequency"] > 0).sum()),
        "priors": settings.priors,
        "time_unit": settings.time_unit,
        "transaction_log_likelihood": transaction_fit.log_likelihood,
        "spend_log_likelihood": spend_fit.log_likelihood,
        "transaction_fit_seconds": round(transaction_seconds, 3),
        "spend_fit_seconds": round(spend_seconds, 3),
    }
    return FittedModels(name, parameters, diagnostics, patterns=fitted_patterns,
                        objectives={name: transaction_fit.objective, "gamma_gamma": spend_fit.objective},
                        fitted_rfm=rfm, rows_pattern=transaction_rows[1])


def _fit_mcmc(rfm: pd.DataFrame, settings: ModelSettings) -> FittedModels:
    """Full posterior of the transaction model and Gamma-Gamma (:mod:`clv_jobs.bayes`).

    The returned models carry ``settings.mcmc.predictive_draws`` posterior draws (thinned
    evenly over each chain); ``parameters`` are the posterior means over all draws, and the
    diagnostics add ``r_hat_max`` and ``ess_bulk_min`` over every sampled variable of both
    models, ``divergences``, ``sampler``, ``chains``, ``draws``.
    """
    from clv_jobs import bayes

    name = settings.transaction_model
    mcmc = settings.mcmc
    started = time.perf_counter()
    try:
        transaction_patterns = patterns.transaction_patterns(rfm)
        spend_patterns = patterns.spend_patterns(rfm)
        transaction_post, spend_post = bayes.sample_posteriors(
            [(name, transaction_patterns), ("gamma_gamma", spend_patterns)], settings.priors, mcmc
        )
    except Exception as exc:  # pymc, nutpie and numba raise many types; the message is what matters
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelError(f"{name} mcmc fit failed: {type(exc).__name__}: {first_line}") from exc
    fit_seconds = time.perf_counter() - started

    parameters = {
        name: {p: float(transaction_post.draws[p].mean()) for p in TRANSACTION_PARAMETERS[name]},
        "gamma_gamma": {p: float(spend_post.draws[p].mean()) for p in SPEND_PARAMETERS},
    }
    bad = [f"{model}.{p}" for model, values in parameters.items() for p, v in values.items()
           if not np.isfinite(v) or v <= 0]
    if bad:
        raise ModelError(f"{name} mcmc fit gave invalid parameters: {', '.join(bad)}")
    r_hat, ess = {}, {}
    for model, post in ((name, transaction_post), ("gamma_gamma", spend_post)):
        model_r_hat, model_ess = bayes.convergence(post.draws)
        r_hat |= {f"{model}.{p}": v for p, v in model_r_hat.items()}
        ess |= {f"{model}.{p}": v for p, v in model_ess.items()}
    # NaN (a chain stuck on one value) must fail the gate's "<=" and ">=" checks, so it wins.
    worst_r_hat = max(r_hat, key=lambda k: np.inf if np.isnan(r_hat[k]) else r_hat[k])
    worst_ess = min(ess, key=lambda k: -np.inf if np.isnan(ess[k]) else ess[k])
    posterior = {
        name: _draw_lists(bayes.thin(transaction_post.draws, mcmc.predictive_draws), TRANSACTION_PARAMETERS[name]),
        "gamma_gamma": _draw_lists(bayes.thin(spend_post.draws, mcmc.predictive_draws), SPEND_PARAMETERS),
    }
    diagnostics = {
        "customers": int(len(rfm)),
        "repeat_buyers": int((rfm["frequency"] > 0).sum()),
        "priors": settings.priors,
        "time_unit": settings.time_unit,
        "transaction_log_likelihood": patterns.log_likelihood(name, transaction_patterns, parameters[name]),
        "spend_log_likelihood": patterns.log_likelihood("gamma_gamma", spend_patterns, parameters["gamma_gamma"]),
        "transaction_fit_seconds": round(sum(transaction_post.chain_seconds), 3),
        "spend_fit_seconds": round(sum(spend_post.chain_seconds), 3),
        "fit_method": "mcmc",
        "sampler": mcmc.sampler,
        "chains": mcmc.chains,
        "draws": mcmc.draws,
        "tune": mcmc.tune,
        "seed": mcmc.seed,
        "predictive_draws": int(sum(len(chain) for chain in next(iter(posterior[name].values())))),
        "transaction_patterns": int(len(transaction_patterns)),
        "spend_patterns": int(len(spend_patterns)),
        "r_hat_max": float(r_hat[worst_r_hat]),
        "r_hat_max_parameter": worst_r_hat,
        "ess_bulk_min": float(ess[worst_ess]),
        "ess_bulk_min_parameter": worst_ess,
        "divergences": int(transaction_post.divergences + spend_post.divergences),
        "fit_seconds": round(fit_seconds, 3),
    }
    return FittedModels(name, parameters, diagnostics, posterior)


def _draw_lists(draws, names: tuple[str, ...]) -> dict[str, list[list[float]]]:
    """``{parameter: [[chain 0 draws], ...]}`` as plain floats (exact through JSON)."""
    return {p: [[float(v) for v in chain] for chain in np.asarray(draws[p].transpose("chain", "draw").values)]
            for p in names}


def _draw_count(clv_model) -> int:
    sizes = clv_model.fit_result.sizes
    return int(sizes.get("chain", 1) * sizes.get("draw", 1))


def _flat_draws(clv_model, names) -> dict[str, np.ndarray]:
    """Each parameter's draws as a ``(chain * draw,)`` vector, chain-major."""
    posterior = clv_model.fit_result
    return {p: np.asarray(posterior[p].transpose("chain", "draw").values, dtype=float).ravel() for p in names}


def _values(array) -> np.ndarray:
    """A MAP prediction (chain=1, draw=1, customer_id) as a flat vector; posterior mean otherwise."""
    dims = [dim for dim in ("chain", "draw") if dim in array.dims]
    return np.asarray(array.mean(dims).values, dtype=float)


def score_customers(
    models: FittedModels,
    rfm: pd.DataFrame,
    horizon_months: int = 12,
    discount_rate: float = 0.0,
    time_unit: str = "D",
    rows: DistinctRows | None = None,
) -> pd.DataFrame:
    """Score every customer with the fitted models.

    Parameters
    ----------
    models : FittedModels
    rfm : pandas.DataFrame
        ``customer_id, frequency, recency, T, monetary_value``.
    horizon_months : int
        CLV and expected-purchases horizon, in pymc-marketing months (30.4375 days).
    discount_rate : float
        Monthly discount rate of the CLV.
    time_unit : {"D", "W"}
        Unit of ``recency`` and ``T``.
    rows : (pandas.DataFrame, numpy.ndarray), optional
        :func:`clv_jobs.patterns.distinct_rows` of ``rfm``'s ``frequency, recency, T``, when
        already known (a refit scoring with its own fit, which found them): not found again.

    Returns
    -------
    pandas.DataFrame
        ``customer_id, p_alive, churn, expected_purchases, expected_spend, clv``, in the
        order of ``rfm``; with models carrying several posterior draws (``fit_method:
        mcmc``), each of these is the posterior mean and :data:`INTERVAL_COLUMNS` follow
        (see :func:`_score_with_intervals`).
    """
    if models.posterior and (_draw_count(models.transaction) > 1 or _draw_count(models.spend) > 1):
        return _score_with_intervals(models, rfm, horizon_months, discount_rate, time_unit)

    horizon = horizon_months * DAYS_PER_MONTH / (7.0 if time_unit == "W" else 1.0)
    if models.closed_form:
        predicted = _closed_form_scores(models, rfm, horizon, horizon_months, discount_rate, time_unit, rows)
    else:
        # pymc-marketing's methods once per distinct row of their inputs, taken back.
        distinct, pattern_of = distinct_rows(rfm, ["frequency", "recency", "T", "monetary_value"])
        distinct["customer_id"] = np.arange(len(distinct))
        predicted = {column: values[pattern_of] for column, values in _pymc_marketing_scores(
            models, distinct, horizon, horizon_months, discount_rate, time_unit).items()}
    # pymc-marketing's closed forms can land a rounding error outside [0, 1] (Pareto/NBD
    # gives 1 + 9e-16 when recency == T on CDNOW), which made churn negative and printed
    # "-0.000000" in the CHURN column. Clipping moves values by that rounding error only.
    p_alive = np.clip(predicted["p_alive"], 0.0, 1.0)
    columns = ["customer_id", "p_alive", "churn", "expected_purchases", "expected_spend", "clv"]
    # The arrays as they are (no copy into one block); the ids stay Arrow strings.
    result = pd.DataFrame({"customer_id": rfm["customer_id"].array, "p_alive": p_alive, "churn": 1.0 - p_alive}
                          | {c: predicted[c] for c in columns[3:]}, copy=False)
    if not all(np.isfinite(result[c].to_numpy()).all() for c in columns[1:]):
        raise ModelError(f"{models.transaction_model} gave non-finite scores")
    return result


def _closed_form_scores(models: FittedModels, rfm: pd.DataFrame, horizon: float, horizon_months: int,
                        discount_rate: float, time_unit: str,
                        rows: DistinctRows | None = None) -> dict[str, np.ndarray]:
    """:func:`_pymc_marketing_scores` by the same formulas in NumPy (:mod:`clv_jobs.formulas`), per row of ``rfm``.

    The transaction model's predictions are computed once per distinct ``(frequency,
    recency, T)`` and taken back; the expected spend (a few operations) and the CLV per row.
    """
    name = models.transaction_model
    transaction, spend = models.parameters[name], models.parameters["gamma_gamma"]
    patterns, pattern_of = distinct_rows(rfm, TRANSACTION_KEYS) if rows is None else rows
    x, t_x, T = (patterns[c].to_numpy(dtype=float) for c in ("frequency", "recency", "T"))
    purchases: dict[float, np.ndarray] = {}
    # The fit's own patterns: the horizon's predictions are the quality gate's, computed once.
    fitted = models.pattern_predictions(horizon) if patterns is models.patterns.get(name) else None
    if fitted is not None:
        purchases[horizon] = fitted["purchases"][pattern_of]
    with np.errstate(all="ignore"):

        @functools.cache
        def log_like() -> np.ndarray | None:
            # Pareto/NBD's (hypergeometric terms): only if a prediction is still to be computed.
            return formulas.history_log_likelihood(name, transaction, x, t_x, T)

        def purchases_over(future_t: float) -> np.ndarray:
            # An undiscounted CLV asks for the horizon's purchases again: computed once.
            if future_t not in purchases:
                purchases[future_t] = formulas.expected_purchases(name, transaction, x, t_x, T, future_t,
                                                                  log_like())[pattern_of]
            return purchases[future_t]

        expected_spend = formulas.expected_spend(spend, rfm["frequency"].to_numpy(dtype=float),
                                                 rfm["monetary_value"].to_numpy(dtype=float))
        p_alive = fitted["p_alive"] if fitted is not None else formulas.probability_alive(
            name, transaction, x, t_x, T, log_like())
        return {
            "p_alive": p_alive[pattern_of],
            "expected_purchases": purchases_over(horizon),
            "expected_spend": expected_spend,
            "clv": formulas.lifetime_value(purchases_over, expected_spend, horizon_months, discount_rate, time_unit),
        }


def _pymc_marketing_scores(models: FittedModels, distinct: pd.DataFrame, horizon: float, horizon_months: int,
                           discount_rate: float, time_unit: str) -> dict[str, np.ndarray]:
    """pymc-marketing's predictive methods on the distinct patterns (``customer_id`` = row)."""
    from pymc_marketing.clv.utils import customer_lifetime_value

    transaction = models.transaction
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        expected_spend = _values(models.spend.expected_customer_spend(data=distinct))
        return {
            "p_alive": _values(transaction.expected_probability_alive(data=distinct)),
            "expected_purchases": _values(transaction.expected_purchases(data=distinct, future_t=horizon)),
            "expected_spend": expected_spend,
            "clv": _values(customer_lifetime_value(
                transaction, distinct.assign(future_spend=expected_spend), future_t=horizon_months,
                discount_rate=discount_rate, time_unit=time_unit)),
        }


def _draw_matrix(array, n: int) -> np.ndarray:
    """A prediction ``(chain, draw, customer_id)`` as a ``(draws, customers)`` array, chain-major."""
    array = array.transpose("chain", "draw", "customer_id").sel(customer_id=np.arange(n))
    return np.asarray(array.values, dtype=float).reshape(-1, n)


def _score_with_intervals(
    models: FittedModels, rfm: pd.DataFrame, horizon_months: int, discount_rate: float, time_unit: str
) -> pd.DataFrame:
    """:func:`score_customers` for models carrying posterior draws.

    Every prediction is pymc-marketing's method evaluated for every posterior draw, then
    averaged over the draws: ``p_alive``, ``expected_purchases``, ``expected_spend`` and
    ``clv`` are exactly what :func:`score_customers` gives for a single point, averaged
    (``clv`` is pymc-marketing's ``customer_lifetime_value`` with the posterior-mean
    expected spend, as its ``GammaGammaModel.expected_customer_lifetime_value`` does).
    P-Alive and expected purchases are computed once per distinct ``(frequency, recency,
    T)``, expected spend per distinct ``(frequency, monetary_value)``, in chunks of
    ``_SCORING_CHUNK_ELEMENTS`` draws x patterns.

    Intervals:

    - ``p_alive_p10``, ``p_alive_p90``: percentiles of pymc-marketing's P-Alive over the
      posterior draws of the population parameters;
    - ``clv_p10``, ``clv_p50``, ``clv_p90``: percentiles of the posterior of the
      customer's **own** expected spend over the horizon, which adds the uncertainty
      about the customer's latent purchase rate, dropout and spend to that of the
      population parameters (:func:`clv_jobs.bayes.individual_clv_draws`). Its mean is
      ``clv``. A customer who may already have dropped out has a posterior mass at 0, so
      ``clv_p10`` (and ``clv_p50``, ``clv_p90`` when the chance of having dropped out
      exceeds 50 %, 90 %) can be 0 while ``clv`` is positive.
    """
    from pymc_marketing.clv.utils import customer_lifetime_value

    from clv_jobs import bayes

    name = models.transaction_model
    transaction = models.transaction
    n_draws = _draw_count(transaction)
    if _draw_count(models.spend) != n_draws:
        raise ModelError(f"the transaction model carries {n_draws} posterior draws and the spend model "
                         f"{_draw_count(models.spend)}: they must carry as many")
    transaction_draws = _flat_draws(transaction, TRANSACTION_PARAMETERS[name])
    spend_draws = _flat_draws(models.spend, SPEND_PARAMETERS)
    horizon = horizon_months * DAYS_PER_MONTH / (7.0 if time_unit == "W" else 1.0)

    t_keys = ["frequency", "recency", "T"]
    keys = [*t_keys, "monetary_value"]
    distinct = rfm[keys].drop_duplicates().reset_index(drop=True)
    triples = distinct[t_keys].drop_duplicates().reset_index(drop=True)
    distinct = distinct.merge(triples.assign(triple=np.arange(len(triples))), on=t_keys, how="left", sort=False)
    distinct = distinct.sort_values("triple", kind="stable").reset_index(drop=True)
    triple_of = distinct["triple"].to_numpy()

    n_triples, n_patterns = len(triples), len(distinct)
    by_triple = {column: np.empty(n_triples) for column in
                 ("p_alive", "p_alive_p10", "p_alive_p90", "expected_purchases", "unit_clv")}
    by_pattern = {column: np.empty(n_patterns) for column in ("expected_spend", "clv_p10", "clv_p50", "clv_p90")}
    chunk = max(1, _SCORING_CHUNK_ELEMENTS // n_draws)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for lo in range(0, n_triples, chunk):
            hi = min(lo + chunk, n_triples)
            part = triples.iloc[lo:hi].assign(customer_id=np.arange(hi - lo))
            p_alive = _draw_matrix(transaction.expected_probability_alive(data=part), hi - lo)
            purchases = _draw_matrix(transaction.expected_purchases(data=part, future_t=horizon), hi - lo)
            unit_clv = _draw_matrix(
                customer_lifetime_value(transaction, part.assign(future_spend=1.0), future_t=horizon_months,
                                        discount_rate=discount_rate, time_unit=time_unit),
                hi - lo,
            )
            by_triple["p_alive"][lo:hi] = p_alive.mean(axis=0)
            by_triple["expected_purchases"][lo:hi] = purchases.mean(axis=0)
            by_triple["unit_clv"][lo:hi] = unit_clv.mean(axis=0)
            # Rounding can put a closed form a hair outside [0, 1] (see score_customers).
            p_alive = np.clip(p_alive, 0.0, 1.0)
            by_triple["p_alive_p10"][lo:hi], by_triple["p_alive_p90"][lo:hi] = np.quantile(p_alive, [0.1, 0.9], axis=0)

            first, last = np.searchsorted(triple_of, [lo, hi])
            rows = distinct.iloc[first:last]
            local = triple_of[first:last] - lo
            spend = _draw_matrix(
                models.spend.expected_customer_spend(data=rows.assign(customer_id=np.arange(last - first))),
                last - first,
            )
            by_pattern["expected_spend"][first:last] = spend.mean(axis=0)
            clv_draws = bayes.individual_clv_draws(
                name, transaction_draws, spend_draws, rows["frequency"].to_numpy(dtype=float),
                rows["T"].to_numpy(dtype=float), rows["monetary_value"].to_numpy(dtype=float), p_alive[:, local],
                horizon_months, discount_rate, time_unit,
            )
            (by_pattern["clv_p10"][first:last], by_pattern["clv_p50"][first:last],
             by_pattern["clv_p90"][first:last]) = np.quantile(clv_draws, [0.1, 0.5, 0.9], axis=0)
            del p_alive, purchases, unit_clv, spend, clv_draws
            # pymc-marketing compiles a PyTensor function per Pareto/NBD call; its buffers
            # (hundreds of bytes per draw and customer) sit in reference cycles until
            # collected, and piled up to 14 GB over the chunks of a 100,000-buyer account.
            gc.collect()

    for column in ("p_alive", "p_alive_p10", "p_alive_p90", "expected_purchases"):
        distinct[column] = by_triple[column][triple_of]
    distinct["p_alive"] = distinct["p_alive"].clip(0.0, 1.0)
    distinct["churn"] = 1.0 - distinct["p_alive"]
    for column, values in by_pattern.items():
        distinct[column] = values
    # pymc-marketing's customer_lifetime_value is linear in the spend: the posterior-mean
    # spend times the posterior mean of the CLV per unit of spend.
    distinct["clv"] = distinct["expected_spend"].to_numpy() * by_triple["unit_clv"][triple_of]
    columns = ["customer_id", "p_alive", "churn", "expected_purchases", "expected_spend", "clv", *INTERVAL_COLUMNS]
    result = rfm[["customer_id", *keys]].merge(distinct.drop(columns="triple"), on=keys, how="left", sort=False)
    result = result[columns]
    if not np.isfinite(result[columns[1:]].to_numpy()).all():
        raise ModelError(f"{models.transaction_model} gave non-finite scores")
    return result


def _with_posterior(model_class, point: dict[str, float] | dict[str, list[list[float]]]):
    """A pymc-marketing model whose posterior is ``point``.

    ``point`` maps each parameter to one value (a MAP fit: chain=1, draw=1) or to its
    posterior draws, one list per chain (a Bayesian fit).
    """
    import xarray as xr

    model = model_class()
    # The predictive methods read the model's coordinates: any valid frame builds them.
    placeholder = pd.DataFrame({"customer_id": [0], "frequency": [1], "recency": [1.0], "T": [2.0],
                                "monetary_value": [1.0]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model.build_model(placeholder)
    posterior = xr.Dataset({name: xr.DataArray(_as_chain_draw(value),
                                               dims=("chain", "draw"))
                            for name, value in point.items()})
    model.idata = xr.DataTree.from_dict({"posterior": posterior})
    if hasattr(model, "_logp"):
        # Pareto/NBD: every predictive method first evaluates the log-likelihood of the
        # customers' histories for every draw (two hypergeometric functions per draw and
        # customer, compiled anew on each call: most of the scoring time); P-Alive,
        # expected purchases and each month of the CLV need the same one. Reuse it while
        # the inputs are identical.
        model._logp = _reuse_last_result(model._logp)
    return model


def _reuse_last_result(function):
    """``function`` of xarray arguments, remembering its last result (inputs compared exactly)."""
    last: dict = {}

    def same(left, right) -> bool:
        return (left.dims == right.dims and left.shape == right.shape
                and all(np.array_equal(left[d].values, right[d].values) for d in left.dims if d in left.coords)
                and np.array_equal(left.values, right.values))

    def wrapper(*args):
        previous = last.get("args")
        if previous is None or len(previous) != len(args) or not all(map(same, previous, args)):
            last["args"], last["result"] = args, function(*args)
        return last["result"]

    return wrapper


def _as_chain_draw(value) -> np.ndarray:
    """One value (a MAP fit) or one list of draws per chain, as a ``(chain, draw)`` array."""
    shape = _chain_draw_shape(value)
    return np.array(value, dtype=float).reshape(shape)


def _chain_draw_shape(value) -> tuple[int, int]:
    if not isinstance(value, list | tuple | np.ndarray):
        return (1, 1)
    chains = [len(chain) if isinstance(chain, list | tuple | np.ndarray) else -1 for chain in value]
    if not chains or len(set(chains)) != 1 or chains[0] < 1 or np.ndim(value) != 2:
        raise ModelError("stored posterior draws must be one non-empty list per chain, all of the same length")
    return (len(chains), chains[0])


def models_from_parameters(
    transaction_model: str,
    parameters: dict[str, dict[str, float]],
    posterior: dict[str, dict[str, list[list[float]]]] | None = None,
) -> FittedModels:
    """Rebuild fitted models from stored parameters (``model.json``), to score without refitting.

    Scoring a run in another process (an Airflow task, a rescore between refits) then gives
    exactly the scores of the process that fitted.

    Parameters
    ----------
    transaction_model : str
    parameters : dict
        ``{model: {parameter: value}}`` (:attr:`FittedModels.parameters`).
    posterior : dict, optional
        A Bayesian fit's draws (:attr:`FittedModels.posterior`). When given, the models
        carry these draws and :func:`score_customers` adds the intervals; without it they
        carry the point ``parameters`` (for a Bayesian fit: the posterior means).
    """
    if posterior is None:
        return FittedModels(transaction_model, parameters, {})
    expected = {transaction_model: TRANSACTION_PARAMETERS[transaction_model], "gamma_gamma": SPEND_PARAMETERS}
    missing = [f"{model}.{p}" for model, names in expected.items() for p in names if p not in posterior.get(model, {})]
    if missing:
        raise ModelError(f"stored posterior lacks draws of {', '.join(missing)}")
    for model, names in expected.items():
        for p in names:
            _chain_draw_shape(posterior[model][p])  # a ragged or empty list fails here, not when scoring
    return FittedModels(transaction_model, parameters, {}, posterior)
