"""The quality gate a refit passes before its model is published.

A refit's model is **not** published when (``ModelSettings.gate``):

1. the fit failed (:class:`~clv_jobs.errors.ModelError` from ``fit_models``: too little
   data, an optimiser error, invalid parameters);
2. a parameter is non-finite, at a bound of its support (within ``bound_tolerance``,
   relative) or absurd (above 1e6 or below 1e-6);
3. a MAP fit did not converge (:func:`map_convergence`);
4. a full-posterior fit has ``r_hat_max > max_r_hat`` or ``ess_bulk_min < min_ess`` in its
   diagnostics (keys absent: not applicable);
5. its predictions (P-Alive, expected purchases over the horizon, expected spend) are
   non-finite or out of range for some buyer;
6. its backtest is worse than the previous published model's on **this** run's holdout by
   more than ``max_backtest_degradation`` (relative purchase MAE).

What happens then (the previous model rescores the account, or nothing is published for
a first model) is :func:`clv_jobs.pipeline.fit`'s business; this module only judges.

Why a convergence check of our own: pymc-marketing's MAP fit calls ``pymc.find_MAP``
without ``return_raw``, so scipy's ``OptimizeResult`` (and its ``success`` flag) is never
seen. :func:`map_convergence` checks the optimum itself instead: it takes the model on the
same data with the same priors (:func:`clv_jobs.patterns.objective`, the fit's own
objective), puts the published parameters in, and takes the gradient and the Hessian
(forward differences of the gradient) of exactly the objective ``find_MAP`` maximises (the log-posterior without
Jacobian terms, in the unconstrained space the optimiser works in). At a maximum the
Hessian is negative definite and the Newton step ``(-H)^-1 g`` is tiny. It is "tiny" when
it moves no parameter by more than 0.1 % (log scale) **or** stays within a tenth of a
posterior standard deviation (``sqrt(g' (-H)^-1 g)``, the Laplace approximation's
Mahalanobis distance): the first is the test for small accounts, the second for very large
ones, where scipy's relative stopping rule leaves points that are statistically exact
though not to 0.1 %. It uses only the stored parameters, so it judges what is published,
however the fit was obtained.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from clv_jobs.errors import ModelError
from clv_jobs.features import TIME_UNIT_DAYS
from clv_jobs.model import (
    DAYS_PER_MONTH,
    FittedModels,
    models_from_parameters,
)
from clv_jobs.settings import ModelSettings, QualityGateSettings

#: Parameters above or below these are absurd for any account (days or weeks alike).
ABSURD_HIGH = 1e6
ABSURD_LOW = 1e-6

#: A MAP point is converged when the Newton step moves no parameter by more than this
#: (unconstrained scale: log for positive parameters, i.e. relative) …
MAX_NEWTON_STEP = 1e-3
#: … or when it is within this many posterior standard deviations of the optimum.
MAX_NEWTON_DISTANCE_SD = 0.1

#: Slack of the prediction range checks (P-Alive in [0, 1], counts and spend >= 0).
_RANGE_SLACK = 1e-9


@dataclasses.dataclass
class GateResult:
    """The gate's verdict on one refit."""

    enabled: bool
    passed: bool
    reasons: list[str]
    checks: dict

    def as_dict(self, model_used: str | None) -> dict:
        """JSON form stored in ``model.json`` and the run summary."""
        return {"enabled": self.enabled, "passed": self.passed, "reasons": self.reasons,
                "model_used": model_used, "checks": json_safe(self.checks)}


def json_safe(value):
    """Non-finite floats as strings (``"nan"``, ``"inf"``): strict JSON readers choke on NaN."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float | np.floating) and not math.isfinite(value):
        return str(float(value))
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


# -- the objective of a fit, at its published parameters ------------------------------

def _free_values(parameters: dict[str, float], free_names: list[str]) -> dict[str, float]:
    """The model's free variables from published parameters.

    pymc-marketing's default BG/NBD and MBG/NBD priors are on ``phi_dropout = a / (a + b)``
    and ``kappa_dropout = a + b``, not on ``a`` and ``b``.
    """
    values = {}
    for name in free_names:
        if name in parameters:
            values[name] = float(parameters[name])
        elif name == "phi_dropout":
            values[name] = parameters["a"] / (parameters["a"] + parameters["b"])
        elif name == "kappa_dropout":
            values[name] = parameters["a"] + parameters["b"]
        else:
            raise KeyError(f"no stored parameter gives the model's variable {name!r}")
    return values


def _gradient_and_hessian(target, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gradient and (forward-difference) Hessian of ``target``'s log-posterior at ``x``.

    Forward differences of the analytic gradient: one evaluation per variable, not two
    (each is a pass over every pattern, 0.1 s at five million buyers); their error, of the
    order of the step (1e-5), is far below what the Newton-step check can notice.
    """
    g = target.logp_and_gradient(x)[1]
    hessian = np.empty((x.size, x.size))
    for i in range(x.size):
        step = 1e-5 * max(1.0, abs(x[i]))
        up = x.copy()
        up[i] += step
        hessian[:, i] = (target.logp_and_gradient(up)[1] - g) / step
    return g, (hessian + hessian.T) / 2


def map_convergence(name: str, parameters: dict[str, float], rfm: pd.DataFrame, priors: str,
                    objective=None) -> dict:
    """Whether published MAP parameters are at the optimum of pymc-marketing's objective.

    Parameters
    ----------
    name : {"pareto_nbd", "bg_nbd", "mbg_nbd", "gamma_gamma"}
    parameters : dict
        The published parameters of that model (``r, alpha, …``).
    rfm : pandas.DataFrame
        The data the model was fitted on.
    priors : {"default", "flat"}
    objective : clv_jobs.formulas.NumpyObjective, optional
        The objective the fit maximised, its data (``rfm``'s patterns) set
        (:attr:`FittedModels.objectives`): taken as it is when it is ``name``'s with
        ``priors``, so that the patterns are not found and set up again.

    Returns
    -------
    dict
        ``converged`` (bool), ``newton_step`` (largest move of a parameter, unconstrained
        scale), ``distance_sd`` (posterior standard deviations to the optimum),
        ``max_abs_gradient``, ``concave`` (Hessian negative definite), and ``support``
        (each free variable's value and bounds, for the bound check).
    """
    from clv_jobs import patterns

    if objective is not None and (objective.kind, objective.priors) == (name, priors):
        target = objective
    else:
        target = patterns.objective(name, priors)  # the objective the fit maximised, on its data
        target.set_data(patterns.patterns_of(name, rfm))
    free_names = target.free_names
    values = _free_values(parameters, free_names)
    support = target.bounds
    record = {"support": {k: {"value": values[k], "lower": support[k][0], "upper": support[k][1]}
                          for k in free_names}}
    if not all(np.isfinite(v) for v in values.values()):
        return record | {"converged": False, "detail": "non-finite parameters"}
    g, hessian = _gradient_and_hessian(target, target.unconstrained(values))
    if not (np.isfinite(g).all() and np.isfinite(hessian).all()):
        return record | {"converged": False, "detail": "non-finite gradient at the published point"}
    eigenvalues = np.linalg.eigvalsh(-hessian)
    concave = bool(eigenvalues.min() > 0)
    record |= {"max_abs_gradient": float(np.abs(g).max()), "concave": concave}
    if not concave:
        return record | {"converged": False,
                         "detail": "the log-posterior is not curved down around the published point "
                                   "(not a maximum, or a flat ridge)"}
    step = np.linalg.solve(-hessian, g)
    newton_step = float(np.abs(step).max())
    distance = float(math.sqrt(max(float(g @ step), 0.0)))
    converged = newton_step <= MAX_NEWTON_STEP or distance <= MAX_NEWTON_DISTANCE_SD
    return record | {"converged": converged, "newton_step": newton_step, "distance_sd": distance}


# -- the gate -----------------------------------------------------------------------------

def _bound_problems(parameters: dict[str, dict[str, float]], tolerance: float) -> list[str]:
    problems = []
    for model, values in parameters.items():
        for name, value in values.items():
            if not math.isfinite(value):
                problems.append(f"{model}.{name} is not finite ({value})")
            elif value <= 0:
                problems.append(f"{model}.{name} = {value:.6g} is not positive")
            elif value > ABSURD_HIGH or value < ABSURD_LOW:
                problems.append(f"{model}.{name} = {value:.6g} is absurd (outside [{ABSURD_LOW:g}, {ABSURD_HIGH:g}])")
            elif value <= tolerance:  # every published parameter is positive: its bound is 0
                problems.append(f"{model}.{name} = {value:.6g} is at its bound 0")
    return problems


def _support_problems(model: str, support: dict, tolerance: float) -> list[str]:
    problems = []
    for name, entry in support.items():
        value = entry["value"]
        for side in ("lower", "upper"):
            bound = entry[side]
            if math.isfinite(bound) and math.isfinite(value) and abs(value - bound) <= tolerance * max(1.0, abs(bound)):
                problems.append(f"{model}.{name} = {value:.6g} is at its {side} bound {bound:g}")
    return problems


def _prediction_problems(models: FittedModels, rfm: pd.DataFrame, settings: ModelSettings) -> tuple[list[str], dict]:
    from clv_jobs.backtest import model_predictions

    horizon = settings.horizon_months * DAYS_PER_MONTH / TIME_UNIT_DAYS[settings.time_unit]
    if models.posterior:
        # A Bayesian fit: at its posterior means (the score stage checks every draw's scores).
        models = models_from_parameters(models.transaction_model, models.parameters)
    try:
        predicted = model_predictions(models, rfm, horizon)
    except Exception as exc:  # pymc raises many types; the message is what matters
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return [f"predictions failed: {type(exc).__name__}: {first_line}"], {}
    bad = {
        "p_alive": ~np.isfinite(predicted["p_alive"])
        | (predicted["p_alive"] < -_RANGE_SLACK) | (predicted["p_alive"] > 1 + _RANGE_SLACK),
        "expected purchases": ~np.isfinite(predicted["purchases"]) | (predicted["purchases"] < -_RANGE_SLACK),
        "expected spend": ~np.isfinite(predicted["spend"]) | (predicted["spend"] < -_RANGE_SLACK),
    }
    counts = {name: int(mask.sum()) for name, mask in bad.items()}
    problems = [f"{name} non-finite or out of range for {count} of {len(rfm)} buyers"
                for name, count in counts.items() if count]
    return problems, {"invalid_predictions": counts}


def check_fit(
    models: FittedModels | None, fit_error: str | None, rfm: pd.DataFrame, settings: ModelSettings
) -> tuple[list[str], dict]:
    """The checks of :func:`evaluate` that need only the fit: its reasons to fail and its checks.

    Bounds, convergence (or the chains' agreement) and every buyer's predictions; a refit
    runs them beside its backtest, right after the full-history fit.
    """
    gate: QualityGateSettings = settings.gate
    reasons: list[str] = []
    checks: dict = {}
    if fit_error is not None or models is None:
        return [f"fit failed: {fit_error}"], checks

    reasons += _bound_problems(models.parameters, gate.bound_tolerance)

    diagnostics = models.diagnostics or {}
    if "r_hat_max" in diagnostics:
        checks["r_hat_max"] = diagnostics["r_hat_max"]
        if not diagnostics["r_hat_max"] <= gate.max_r_hat:
            reasons.append(f"r_hat_max {diagnostics['r_hat_max']:.4g} > {gate.max_r_hat:g} (chains disagree)")
    if "ess_bulk_min" in diagnostics:
        checks["ess_bulk_min"] = diagnostics["ess_bulk_min"]
        if not diagnostics["ess_bulk_min"] >= gate.min_ess:
            reasons.append(f"ess_bulk_min {diagnostics['ess_bulk_min']:.4g} < {gate.min_ess:g} "
                           "(too few effective draws)")

    if settings.fit_method == "map" and not reasons:
        convergence = {}
        for model, values in models.parameters.items():
            try:
                result = map_convergence(model, values, rfm, settings.priors, models.objectives.get(model))
            except Exception as exc:  # a check that cannot run is reported, not fatal
                convergence[model] = {"error": f"{type(exc).__name__}: {str(exc).strip()[:200]}"}
                continue
            convergence[model] = result
            reasons += _support_problems(model, result.pop("support"), gate.bound_tolerance)
            if not result["converged"]:
                detail = result.get("detail") or (
                    f"Newton step {result['newton_step']:.2g} (log scale), "
                    f"{result['distance_sd']:.2g} posterior SD from the optimum")
                reasons.append(f"{model} MAP fit did not converge: {detail}")
        checks["convergence"] = convergence

    problems, prediction_checks = _prediction_problems(models, rfm, settings)
    return reasons + problems, checks | prediction_checks


def evaluate(
    models: FittedModels | None,
    fit_error: str | None,
    rfm: pd.DataFrame,
    settings: ModelSettings,
    backtest: dict,
    previous: dict | None = None,
    fit_checks: tuple[list[str], dict] | None = None,
) -> GateResult:
    """Judge a refit; every failed check is one reason.

    Parameters
    ----------
    models : FittedModels or None
        The full-history fit (None when it failed).
    fit_error : str or None
        Why the fit failed.
    rfm : pandas.DataFrame
        The full-history model inputs.
    settings : ModelSettings
        The concrete settings of the fit (``transaction_model`` not ``auto``).
    backtest : dict
        The run's backtest record (:func:`clv_jobs.backtest.backtest_record`).
    previous : dict, optional
        The previous published model on this run's holdout: ``{"run_id", "transaction_model",
        "metrics"}`` (or ``{"error": …}`` when it could not be scored).
    fit_checks : tuple, optional
        :func:`check_fit` of these models, when already run.
    """
    gate: QualityGateSettings = settings.gate
    reasons, checks = fit_checks if fit_checks is not None else check_fit(models, fit_error, rfm, settings)
    reasons, checks = list(reasons), dict(checks)
    if fit_error is not None or models is None:
        return GateResult(gate.enabled, False, reasons, checks)

    if previous is not None and "error" in previous:
        checks["backtest_vs_previous"] = f"not compared: the previous model could not be scored ({previous['error']})"
    if previous is not None and "metrics" in previous and "model" in backtest:
        new = backtest["model"]["purchases_mae"]
        old = previous["metrics"]["purchases_mae"]
        if new is not None and old is not None and old > 0:
            degradation = (new - old) / old
            checks["backtest_degradation"] = degradation
            if degradation > gate.max_backtest_degradation + 1e-12:  # exactly at the limit passes
                reasons.append(
                    f"backtest purchase MAE {new:.4g} is {degradation:.1%} worse than the previous model's "
                    f"{old:.4g} ({previous['transaction_model']} of run {previous['run_id']}) on this run's "
                    f"holdout (limit {gate.max_backtest_degradation:.0%})")
    return GateResult(gate.enabled, not reasons, reasons, checks)


class QualityGateError(ModelError):
    """A first model failed the quality gate: there is no previous model to fall back on."""
