"""pymc-marketing's BG/NBD, MBG/NBD and Gamma-Gamma closed forms in NumPy, for point parameters.

A MAP fit and its scores need no PyMC at all: the log-posterior these models maximise and
the predictions they publish are closed forms. Evaluated here with NumPy and SciPy (the
same ``scipy.special`` functions pymc-marketing's predictive methods call), a process
scoring a BG/NBD account skips PyMC's import and PyTensor's compilation (about 8 s per
process) and xarray's per-call overhead.

- :class:`NumpyObjective`: the log-posterior of :func:`clv_jobs.patterns.pymc_model`
  (pymc-marketing's priors and likelihood on weighted patterns, no Jacobian, as
  ``pm.find_MAP`` optimises it) with its analytic gradient, on the same unconstrained
  variables in the same order; :func:`clv_jobs.patterns.find_map` runs the same L-BFGS-B
  on it. The per-customer terms depend on a pattern through ``frequency`` (a few hundred
  distinct values), ``recency`` and ``T`` (whole days: a few hundred each), so the special
  functions are evaluated once per distinct value and only an ``exp`` runs per pattern.
- :func:`transaction_predictions`, :func:`expected_spend`, :func:`lifetime_value`: the
  bodies of ``expected_probability_alive``, ``expected_purchases``,
  ``expected_customer_spend`` and ``clv.utils.customer_lifetime_value``.

Pareto/NBD's likelihood needs the gradient of a hypergeometric function in its
parameters, which only PyTensor provides: it keeps :class:`clv_jobs.patterns.Objective`
and pymc-marketing's methods. ``tests/clv_jobs/test_formulas.py`` checks every function
here against the PyMC model and pymc-marketing's methods.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd
from scipy.special import digamma, expit, gammaln, hyp2f1

#: Models with closed forms here.
KINDS = ("bg_nbd", "mbg_nbd", "gamma_gamma")

#: pymc-marketing's default priors (``default_model_config``): Weibull(alpha, beta) shapes.
_WEIBULL = {"alpha": (2.0, 10.0), "r": (2.0, 1.0), "p": (2.0, 1.0), "q": (2.0, 1.0), "v": (2.0, 10.0)}

#: The models' free variables in ``pymc_model``'s creation order (``model.value_vars``).
FREE_VARIABLES = {
    ("bg_nbd", "default"): ("alpha", "phi_dropout", "kappa_dropout", "r"),
    ("bg_nbd", "flat"): ("alpha", "a", "b", "r"),
    ("gamma_gamma", "default"): ("p", "q", "v"),
    ("gamma_gamma", "flat"): ("p", "q", "v"),
}
FREE_VARIABLES[("mbg_nbd", "default")] = FREE_VARIABLES[("bg_nbd", "default")]
FREE_VARIABLES[("mbg_nbd", "flat")] = FREE_VARIABLES[("bg_nbd", "flat")]

#: Transform of each free variable: ``log`` (positive), ``logit`` (in (0, 1)), ``log1`` (> 1).
_TRANSFORMS = {"phi_dropout": "logit", "kappa_dropout": "log1"}


def _to_value(transform: str, u: float) -> float:
    if transform == "logit":
        return float(expit(u))
    if transform == "log1":
        return 1.0 + math.exp(u)
    return math.exp(u)


def _to_unconstrained(transform: str, value: float) -> float:
    if transform == "logit":
        return math.log(value / (1.0 - value))
    if transform == "log1":
        return math.log(value - 1.0)
    return math.log(value)


def _value_derivative(transform: str, value: float) -> float:
    """Derivative of the value in the unconstrained variable."""
    if transform == "logit":
        return value * (1.0 - value)
    if transform == "log1":
        return value - 1.0
    return value


def _prior(name: str, value: float, priors: str) -> tuple[float, float]:
    """Log-density of a free variable's prior and its derivative in the value."""
    if priors == "flat" or name == "phi_dropout":  # HalfFlat, Uniform(0, 1): constant 0
        return 0.0, 0.0
    if name == "kappa_dropout":  # Pareto(alpha=1, m=1)
        return -2.0 * math.log(value), -2.0 / value
    shape, scale = _WEIBULL[name]
    z = value / scale
    return (math.log(shape) - math.log(scale) + (shape - 1.0) * math.log(z) - z**shape,
            (shape - 1.0) / value - shape * z ** (shape - 1.0) / scale)


def _initial_value(name: str, priors: str) -> float:
    """PyMC's initial point: the prior's support point (Weibull mean, Uniform middle, Pareto median)."""
    if priors == "flat":
        return 1.0
    if name == "phi_dropout":
        return 0.5
    if name == "kappa_dropout":
        return 2.0
    shape, scale = _WEIBULL[name]
    return scale * math.gamma(1.0 + 1.0 / shape)


def _grouped(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values and each entry's index into them."""
    distinct, index = np.unique(values, return_inverse=True)
    return distinct, index.ravel()


class NumpyObjective:
    """:class:`clv_jobs.patterns.Objective`'s interface, in NumPy, for :data:`KINDS`.

    The point ``x`` is the vector of unconstrained free variables (:data:`FREE_VARIABLES`).
    """

    def __init__(self, kind: str, priors: str):
        if kind not in KINDS:
            raise ValueError(f"no NumPy objective for {kind!r}")
        self.kind, self.priors = kind, priors
        self.free_names = list(FREE_VARIABLES[(kind, priors)])
        self._transforms = [_TRANSFORMS.get(name, "log") for name in self.free_names]
        self.value_names = [f"{name}_{'interval' if t != 'log' else 'log'}__"
                            for name, t in zip(self.free_names, self._transforms, strict=True)]
        self.parameter_names = self.free_names + (["a", "b"] if "phi_dropout" in self.free_names else [])
        self.initial = np.array([_to_unconstrained(t, _initial_value(name, priors))
                                 for name, t in zip(self.free_names, self._transforms, strict=True)])
        self._data: dict | None = None

    # -- data ------------------------------------------------------------------------

    def set_data(self, patterns: pd.DataFrame) -> None:
        """Take the weighted patterns (:func:`clv_jobs.patterns.model_data`'s input)."""
        count = patterns["count"].to_numpy(dtype=float)
        x = patterns["frequency"].to_numpy(dtype=float)
        if self.kind == "gamma_gamma":
            z = patterns["monetary_value"].to_numpy(dtype=float)
            x_u, x_index = _grouped(x)
            self._data = {
                "count": count, "x": x, "xz": x * z, "x_u": x_u,
                "count_x_u": np.bincount(x_index, weights=count, minlength=x_u.size),
                # Terms without parameters, summed once: sum n (p x - 1) log z + p x log x.
                "sum_n_x_log_xz": float(np.sum(count * x * (np.log(z) + np.log(x)))),
                "sum_n_log_z": float(np.sum(count * np.log(z))),
                "n": float(count.sum()),
            }
            return
        from clv_jobs.patterns import _check_transaction_patterns

        _check_transaction_patterns(patterns)
        t_x = patterns["recency"].to_numpy(dtype=float)
        T = patterns["T"].to_numpy(dtype=float)
        x_u, x_index = _grouped(x)
        t_u, t_index = _grouped(t_x)
        T_u, T_index = _grouped(T)
        self._data = {
            "count": count, "x": x, "x_index": x_index, "t_index": t_index, "T_index": T_index,
            "x_u": x_u, "t_u": t_u, "T_u": T_u, "repeat": x > 0,
            "count_x_u": np.bincount(x_index, weights=count, minlength=x_u.size),
            "n": float(count.sum()), "sum_n_x": float(np.sum(count * x)),
        }

    # -- the log-likelihood and its gradient in the model's parameters -----------------

    def _transaction_terms(self, r: float, alpha: float, a: float, b: float, gradient: bool):
        """Sum over patterns of the BG/NBD (MBG/NBD) log-likelihood, and d/d(r, alpha, a, b)."""
        d = self._data
        x, count, x_u, n_x = d["x"], d["count"], d["x_u"], d["count_x_u"]
        modified = self.kind == "mbg_nbd"
        shift = 1.0 if modified else 0.0
        log_t = np.log(alpha + d["t_u"])[d["t_index"]]
        log_T = np.log(alpha + d["T_u"])[d["T_index"]]
        rx = r + x
        # Per frequency value: the gamma-function terms.
        value = float(n_x @ (gammaln(r + x_u) + gammaln(b + x_u + shift) - gammaln(a + b + x_u + shift)))
        value += d["n"] * (-gammaln(r) + gammaln(a + b) - gammaln(b) + r * math.log(alpha))
        if modified:
            # a3 + log(1 + exp(a4)), a4 = log(a / (b + x)) + (r + x)(log(alpha + T) - log(alpha + t_x))
            a4 = np.log(a / (b + x)) + rx * (log_T - log_t)
            value += float(count @ (-rx * log_T + np.logaddexp(a4, 0.0)))
            if not gradient:
                return value, None
            weight = count * expit(a4)  # d log(1 + e^a4) / d a4, times the pattern's count
            inv_t, inv_T = (1.0 / (alpha + d["t_u"]))[d["t_index"]], (1.0 / (alpha + d["T_u"]))[d["T_index"]]
            d_r = float(n_x @ digamma(r + x_u)) - d["n"] * digamma(r) + d["n"] * math.log(alpha)
            d_r += float(count @ -log_T + weight @ (log_T - log_t))
            d_alpha = d["n"] * r / alpha + float(count @ (-rx * inv_T) + weight @ (rx * (inv_T - inv_t)))
            d_a = d["n"] * digamma(a + b) - float(n_x @ digamma(a + b + x_u + 1.0)) + float(weight.sum()) / a
            d_b = (d["n"] * (digamma(a + b) - digamma(b)) + float(n_x @ (digamma(b + x_u + 1.0)
                                                                          - digamma(a + b + x_u + 1.0)))
                   - float(weight @ (1.0 / (b + x))))
            return value, np.array([d_r, d_alpha, d_a, d_b])
        # BG/NBD: - (r + x) log(alpha + t_x) + log(c3 + [x > 0] a / (b + x - 1)),
        # c3 = ((alpha + t_x) / (alpha + T)) ** (r + x).
        c3 = np.exp(rx * (log_t - log_T))
        c4 = np.where(d["repeat"], a / np.where(d["repeat"], b + x - 1.0, 1.0), 0.0)
        total = c3 + c4
        value += float(count @ (-rx * log_t + np.log(total)))
        if not gradient:
            return value, None
        w3 = count * (c3 / total)
        w4 = count * (c4 / total)
        inv_t, inv_T = (1.0 / (alpha + d["t_u"]))[d["t_index"]], (1.0 / (alpha + d["T_u"]))[d["T_index"]]
        d_r = (float(n_x @ digamma(r + x_u)) - d["n"] * digamma(r) + d["n"] * math.log(alpha)
               - float(count @ log_t) + float(w3 @ (log_t - log_T)))
        d_alpha = d["n"] * r / alpha - float(count @ (rx * inv_t)) + float(w3 @ (rx * (inv_t - inv_T)))
        d_a = d["n"] * digamma(a + b) - float(n_x @ digamma(a + b + x_u)) + float(w4.sum()) / a
        b_x = np.where(d["repeat"], b + x - 1.0, 1.0)
        d_b = (d["n"] * (digamma(a + b) - digamma(b)) + float(n_x @ (digamma(b + x_u) - digamma(a + b + x_u)))
               - float(w4 @ (1.0 / b_x)))
        return value, np.array([d_r, d_alpha, d_a, d_b])

    def _spend_terms(self, p: float, q: float, v: float, gradient: bool):
        """Sum over patterns of the Gamma-Gamma log-likelihood, and d/d(p, q, v)."""
        d = self._data
        count, x, x_u, n_x = d["count"], d["x"], d["x_u"], d["count_x_u"]
        log_xz_v = np.log(d["xz"] + v)
        value = float(n_x @ (gammaln(p * x_u + q) - gammaln(p * x_u)))
        value += d["n"] * (-gammaln(q) + q * math.log(v))
        value += p * d["sum_n_x_log_xz"] - d["sum_n_log_z"]
        value -= float(count @ ((p * x + q) * log_xz_v))
        if not gradient:
            return value, None
        inv = count / (d["xz"] + v)
        d_p = (float(n_x @ (x_u * (digamma(p * x_u + q) - digamma(p * x_u)))) + d["sum_n_x_log_xz"]
               - float(count @ (x * log_xz_v)))
        d_q = float(n_x @ digamma(p * x_u + q)) - d["n"] * digamma(q) + d["n"] * math.log(v) - float(count @ log_xz_v)
        d_v = d["n"] * q / v - float(inv @ (p * x + q))
        return value, np.array([d_p, d_q, d_v])

    # -- the objective in the unconstrained variables -------------------------------

    def _free_values(self, x: np.ndarray) -> dict[str, float]:
        return {name: _to_value(t, float(u)) for name, t, u in zip(self.free_names, self._transforms, x, strict=True)}

    def parameters(self, x: np.ndarray) -> dict[str, float]:
        """Constrained free variables (and ``a, b`` under BG/NBD's default priors) at ``x``."""
        values = self._free_values(x)
        if "phi_dropout" in values:
            values["a"] = values["phi_dropout"] * values["kappa_dropout"]
            values["b"] = (1.0 - values["phi_dropout"]) * values["kappa_dropout"]
        return values

    def _loglike(self, values: dict[str, float], gradient: bool):
        if self.kind == "gamma_gamma":
            return self._spend_terms(values["p"], values["q"], values["v"], gradient)
        return self._transaction_terms(values["r"], values["alpha"], values["a"], values["b"], gradient)

    def logp_and_gradient(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """Log-posterior (no Jacobian, as ``find_MAP``) and its gradient at unconstrained ``x``."""
        values = self.parameters(x)
        with np.errstate(all="ignore"):
            loglike, d_model = self._loglike(values, gradient=True)
        names = ("p", "q", "v") if self.kind == "gamma_gamma" else ("r", "alpha", "a", "b")
        d_values = dict(zip(names, d_model, strict=True))
        if "phi_dropout" in values:  # a = phi kappa, b = (1 - phi) kappa
            phi, kappa = values["phi_dropout"], values["kappa_dropout"]
            d_a, d_b = d_values.pop("a"), d_values.pop("b")
            d_values["phi_dropout"] = kappa * (d_a - d_b)
            d_values["kappa_dropout"] = phi * d_a + (1.0 - phi) * d_b
        logp, grad = loglike, np.empty(len(self.free_names))
        for i, (name, transform) in enumerate(zip(self.free_names, self._transforms, strict=True)):
            prior, d_prior = _prior(name, values[name], self.priors)
            logp += prior
            grad[i] = (d_values[name] + d_prior) * _value_derivative(transform, values[name])
        return float(logp), grad

    def log_likelihood(self, x: np.ndarray) -> float:
        """Log-likelihood of the data at unconstrained ``x`` (no prior)."""
        with np.errstate(all="ignore"):
            return float(self._loglike(self.parameters(x), gradient=False)[0])

    def unconstrained(self, values: dict[str, float]) -> np.ndarray:
        """Unconstrained point of the free variables' constrained ``values``."""
        return np.array([_to_unconstrained(t, float(values[name]))
                         for name, t in zip(self.free_names, self._transforms, strict=True)])

    @functools.cached_property
    def bounds(self) -> dict[str, tuple[float, float]]:
        """Lower and upper bound of each free variable (its transform at -700 and 700, as PyMC's)."""
        bounds = {}
        for name, transform in zip(self.free_names, self._transforms, strict=True):
            low, high = _to_value(transform, -700.0), _to_value(transform, 700.0)
            bounds[name] = (low, high if high < 1e300 else math.inf)
        return bounds


# -- predictions (pymc-marketing's predictive methods, one point) ------------------------


def transaction_predictions(name: str, parameters: dict[str, float], x: np.ndarray, t_x: np.ndarray,
                            T: np.ndarray, future_t: float) -> dict[str, np.ndarray]:
    """P-Alive and expected purchases over ``(T, T + future_t]`` of BG/NBD or MBG/NBD.

    The bodies of pymc-marketing's ``BetaGeoModel`` / ``ModifiedBetaGeoModel``
    ``expected_probability_alive`` and ``expected_purchases``.
    """
    return {"p_alive": probability_alive(name, parameters, x, t_x, T),
            "purchases": expected_purchases(name, parameters, x, t_x, T, future_t)}


def probability_alive(name: str, parameters: dict[str, float], x, t_x, T) -> np.ndarray:
    """``expected_probability_alive`` of BG/NBD or MBG/NBD."""
    a, b, alpha, r = (parameters[k] for k in ("a", "b", "alpha", "r"))
    if name == "mbg_nbd":
        return 1.0 / (1 + (a / (b + x)) * ((alpha + T) / (alpha + t_x)) ** (r + x))
    log_div = (r + x) * np.log((alpha + T) / (alpha + t_x)) + np.log(a / (b + np.maximum(x, 1) - 1))
    return np.where(x == 0, 1.0, expit(-log_div))


def expected_purchases(name: str, parameters: dict[str, float], x, t_x, T, future_t) -> np.ndarray:
    """``expected_purchases`` of BG/NBD or MBG/NBD over ``future_t``."""
    a, b, alpha, r = (parameters[k] for k in ("a", "b", "alpha", "r"))
    t = future_t
    if name == "mbg_nbd":
        hyp_term = hyp2f1(r + x, b + x + 1, a + b + x, t / (alpha + T + t))
        first_term = (a + b + x) / (a - 1)
        second_term = 1 - hyp_term * ((alpha + T) / (alpha + t + T)) ** (r + x)
        return first_term * second_term / (1 + (a / (b + x)) * ((alpha + T) / (alpha + t_x)) ** (r + x))
    numerator = 1 - ((alpha + T) / (alpha + T + t)) ** (r + x) * hyp2f1(r + x, b + x, a + b + x - 1,
                                                                        t / (alpha + T + t))
    numerator *= (a + b + x - 1) / (a - 1)
    denominator = 1 + (x > 0) * (a / (b + x - 1)) * ((alpha + T) / (alpha + t_x)) ** (r + x)
    return numerator / denominator


def expected_spend(parameters: dict[str, float], x: np.ndarray, monetary_value: np.ndarray) -> np.ndarray:
    """``GammaGammaModel.expected_customer_spend``: the population mean for one-time buyers."""
    p, q, v = parameters["p"], parameters["q"], parameters["v"]
    individual_weight = p * x / (p * x + q - 1)
    population_mean = v * p / (q - 1)
    return (1 - individual_weight) * population_mean + individual_weight * monetary_value


def lifetime_value(name: str, parameters: dict[str, float], x, t_x, T, future_spend, future_t: int = 12,
                   discount_rate: float = 0.0, time_unit: str = "D") -> np.ndarray:
    """``clv.utils.customer_lifetime_value``: discounted spend of the monthly expected purchases.

    ``future_t`` in months (pymc-marketing's 30.4375 days), ``time_unit`` of ``t_x`` and ``T``.
    """
    from clv_jobs.model import DAYS_PER_MONTH

    steps = np.arange(future_t, future_t + 1) if discount_rate == 0.0 else np.arange(1, future_t + 1)
    factor = {"W": DAYS_PER_MONTH / 7, "D": DAYS_PER_MONTH}[time_unit]
    clv = np.zeros(np.shape(x))
    previous = 0
    for i in steps * factor:
        purchases = expected_purchases(name, parameters, x, t_x, T, i)
        clv = clv + (future_spend * (purchases - previous)) / (1 + discount_rate) ** (i / factor)
        previous = purchases
    return clv
