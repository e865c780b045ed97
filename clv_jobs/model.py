"""Buy-Till-You-Die models with pymc-marketing: fit, then score every buyer.

Transaction models (``ModelSettings.transaction_model``): Pareto/NBD (default), BG/NBD,
MBG/NBD; spend model: Gamma-Gamma on repeat buyers' mean repeat-day spend. Every
prediction is pymc-marketing's own method on the fitted model, so the published numbers
are its formulas exactly. Predictions are computed once per distinct
``(frequency, recency, T, monetary_value)`` pattern and joined back: customers with the
same pattern have the same scores, and there are far fewer patterns than customers.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings

import numpy as np
import pandas as pd

from clv_jobs.errors import ModelError
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


def _model_class(name: str):
    # Imported here: pymc takes seconds to import and the CLI's --help must not wait.
    from pymc_marketing.clv import BetaGeoModel, ModifiedBetaGeoModel, ParetoNBDModel

    return {"pareto_nbd": ParetoNBDModel, "bg_nbd": BetaGeoModel, "mbg_nbd": ModifiedBetaGeoModel}[name]


def _model_config(parameter_names: tuple[str, ...], priors: str) -> dict | None:
    """``flat`` priors make the MAP the maximum-likelihood estimate; ``default`` keeps pymc-marketing's."""
    if priors == "default":
        return None
    from pymc_extras.prior import Prior

    return {name: Prior("HalfFlat") for name in parameter_names}


def _log_likelihood(clv_model) -> float:
    """Log-likelihood of the data at the fitted point (priors and Jacobians left out)."""
    pymc_model = clv_model.model
    posterior = clv_model.fit_result
    point = {}
    for rv in pymc_model.free_RVs:
        value = np.asarray(posterior[rv.name].values).squeeze()
        value_var = pymc_model.rvs_to_values[rv]
        transform = pymc_model.rvs_to_transforms.get(rv)
        if transform is not None:
            value = transform.forward(value, *rv.owner.inputs).eval()
        point[value_var.name] = value
    logp = pymc_model.compile_logp(
        vars=[*pymc_model.observed_RVs, *pymc_model.potentials], jacobian=False
    )
    return float(logp(point))


def _parameters(clv_model, names: tuple[str, ...]) -> dict[str, float]:
    posterior = clv_model.fit_result
    return {name: float(np.asarray(posterior[name].values).mean()) for name in names}


@dataclasses.dataclass
class FittedModels:
    """A fitted transaction model and spend model, with what is stored about them."""

    transaction_model: str
    transaction: object
    spend: object
    parameters: dict[str, dict[str, float]]
    diagnostics: dict[str, float | int | str]


def fit_transaction_model(rfm: pd.DataFrame, name: str, priors: str = "default"):
    """Fit one pymc-marketing transaction model by MAP.

    Parameters
    ----------
    rfm : pandas.DataFrame
        ``customer_id, frequency, recency, T``.
    name : {"pareto_nbd", "bg_nbd", "mbg_nbd"}
    priors : {"default", "flat"}

    Returns
    -------
    pymc_marketing.clv.CLVModel
        The fitted model.
    """
    model = _model_class(name)(model_config=_model_config(TRANSACTION_PARAMETERS[name], priors))
    with warnings.catch_warnings():
        # T=0 (first purchase on the last day) is legitimate here: warned once per fit otherwise.
        warnings.simplefilter("ignore", UserWarning)
        model.fit(rfm[["customer_id", "frequency", "recency", "T"]], method="map", progressbar=False)
    return model


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


def fit_spend_model(rfm: pd.DataFrame, priors: str = "default"):
    """Fit Gamma-Gamma on repeat buyers with a positive mean repeat spend."""
    from pymc_marketing.clv import GammaGammaModel

    repeat = _spend_fit_rows(rfm)
    model = GammaGammaModel(model_config=_model_config(SPEND_PARAMETERS, priors))
    model.fit(repeat, method="map", progressbar=False)
    return model


def fit_models(rfm: pd.DataFrame, settings: ModelSettings) -> FittedModels:
    """Fit the account's transaction and spend models.

    Raises
    ------
    ModelError
        Too little data, or a fit that fails or gives non-finite parameters.
    """
    name = settings.transaction_model
    if settings.fit_method != "map":
        raise ModelError(f"fit_method {settings.fit_method!r} (the Bayesian mode) is not available in this "
                         "version yet; use fit_method: map")
    _spend_fit_rows(rfm)  # fail in milliseconds, not after a transaction fit, when too small
    try:
        started = time.perf_counter()
        transaction = fit_transaction_model(rfm, name, settings.priors)
        transaction_seconds = time.perf_counter() - started
        started = time.perf_counter()
        spend = fit_spend_model(rfm, settings.priors)
        spend_seconds = time.perf_counter() - started
    except ModelError:
        raise
    except Exception as exc:  # pymc raises many types; the message is what matters
        # pymc's messages can run to pages of starting values: the first line says what failed.
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelError(f"{name} fit failed: {type(exc).__name__}: {first_line}") from exc
    parameters = {
        name: _parameters(transaction, TRANSACTION_PARAMETERS[name]),
        "gamma_gamma": _parameters(spend, SPEND_PARAMETERS),
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
        "transaction_log_likelihood": _log_likelihood(transaction),
        "spend_log_likelihood": _log_likelihood(spend),
        "transaction_fit_seconds": round(transaction_seconds, 3),
        "spend_fit_seconds": round(spend_seconds, 3),
    }
    return FittedModels(name, transaction, spend, parameters, diagnostics)


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

    Returns
    -------
    pandas.DataFrame
        ``customer_id, p_alive, churn, expected_purchases, expected_spend, clv``, in the
        order of ``rfm``.
    """
    from pymc_marketing.clv.utils import customer_lifetime_value

    keys = ["frequency", "recency", "T", "monetary_value"]
    patterns = rfm[keys].drop_duplicates().reset_index(drop=True)
    patterns["customer_id"] = np.arange(len(patterns))
    horizon = horizon_months * DAYS_PER_MONTH / (7.0 if time_unit == "W" else 1.0)

    transaction = models.transaction
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        patterns["p_alive"] = _values(transaction.expected_probability_alive(data=patterns))
        patterns["expected_purchases"] = _values(
            transaction.expected_purchases(data=patterns, future_t=horizon)
        )
        patterns["expected_spend"] = _values(models.spend.expected_customer_spend(data=patterns))
        patterns["clv"] = _values(
            customer_lifetime_value(
                transaction,
                patterns.assign(future_spend=patterns["expected_spend"]),
                future_t=horizon_months,
                discount_rate=discount_rate,
                time_unit=time_unit,
            )
        )
    # pymc-marketing's closed forms can land a rounding error outside [0, 1] (Pareto/NBD
    # gives 1 + 9e-16 when recency == T on CDNOW), which made churn negative and printed
    # "-0.000000" in the CHURN column. Clipping moves values by that rounding error only.
    patterns["p_alive"] = patterns["p_alive"].clip(0.0, 1.0)
    patterns["churn"] = 1.0 - patterns["p_alive"]
    scored = rfm[["customer_id", *keys]].merge(
        patterns.drop(columns="customer_id"), on=keys, how="left", sort=False
    )
    columns = ["customer_id", "p_alive", "churn", "expected_purchases", "expected_spend", "clv"]
    result = scored[columns]
    if not np.isfinite(result[columns[1:]].to_numpy()).all():
        raise ModelError(f"{models.transaction_model} gave non-finite scores")
    return result


def _with_posterior(model_class, point: dict[str, float]):
    """A pymc-marketing model whose posterior is the single point ``point`` (as after a MAP fit)."""
    import xarray as xr

    model = model_class()
    # The predictive methods read the model's coordinates: any valid frame builds them.
    placeholder = pd.DataFrame({"customer_id": [0], "frequency": [1], "recency": [1.0], "T": [2.0],
                                "monetary_value": [1.0]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model.build_model(placeholder)
    posterior = xr.Dataset({name: xr.DataArray(np.array([[value]]), dims=("chain", "draw"))
                            for name, value in point.items()})
    model.idata = xr.DataTree.from_dict({"posterior": posterior})
    return model


def models_from_parameters(transaction_model: str, parameters: dict[str, dict[str, float]]) -> FittedModels:
    """Rebuild fitted models from stored parameters (``model.json``), to score without refitting.

    Scoring a run in another process (an Airflow task, a rescore between refits) then gives
    exactly the scores of the process that fitted.
    """
    from pymc_marketing.clv import GammaGammaModel

    transaction = _with_posterior(_model_class(transaction_model), parameters[transaction_model])
    spend = _with_posterior(GammaGammaModel, parameters["gamma_gamma"])
    return FittedModels(transaction_model, transaction, spend, parameters, {})
