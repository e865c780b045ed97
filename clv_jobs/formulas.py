"""pymc-marketing's BG/NBD, MBG/NBD, Pareto/NBD and Gamma-Gamma closed forms in NumPy, for point parameters.

A MAP fit and its scores need no PyMC at all: the log-posterior these models maximise and
the predictions they publish are closed forms. Evaluated here with NumPy and SciPy (the
same ``scipy.special`` functions pymc-marketing's predictive methods call), a refit skips
PyMC's and pymc-marketing's import and PyTensor's compilation (about 8 s per process, paid
again by every Pareto/NBD prediction, which pymc-marketing compiles anew on each call) and
xarray's per-call overhead.

- :class:`NumpyObjective`: the log-posterior of :func:`clv_jobs.patterns.pymc_model`
  (pymc-marketing's priors and likelihood on weighted patterns, no Jacobian, as
  ``pm.find_MAP`` optimises it) with its analytic gradient, on the same unconstrained
  variables in the same order; :func:`clv_jobs.patterns.find_map` runs the same L-BFGS-B
  on it. The per-customer terms depend on a pattern through ``frequency`` (a few hundred
  distinct values), ``recency`` and ``T`` (whole days: a few hundred each), so the special
  functions are evaluated once per distinct value (BG/NBD, MBG/NBD) or distinct
  ``(frequency, recency)`` and ``(frequency, T)`` pair (Pareto/NBD) and only an ``exp``
  or a ``logaddexp`` runs per pattern.
- Pareto/NBD's likelihood holds ``2F1(a, b; a + 1; z)`` whose parameters move with the
  model's: :func:`log_hyp2f1_tied` sums its series with the derivatives, as pytensor's
  ``hyp2f1`` gradient does.
- :func:`transaction_predictions`, :func:`expected_spend`, :func:`lifetime_value`: the
  bodies of ``expected_probability_alive``, ``expected_purchases``,
  ``expected_customer_spend`` and ``clv.utils.customer_lifetime_value``.

``tests/clv_jobs/test_formulas.py`` checks every function here against the PyMC model
(its compiled log-posterior, ``tests/clv_jobs/helpers.PymcObjective``) and
pymc-marketing's methods.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy.special import digamma, expit, gammaln, hyp2f1

#: Models with closed forms here.
KINDS = ("bg_nbd", "mbg_nbd", "pareto_nbd", "gamma_gamma")

#: pymc-marketing's default priors (``default_model_config``): Weibull(alpha, beta) shapes.
_WEIBULL = {"alpha": (2.0, 10.0), "r": (2.0, 1.0), "p": (2.0, 1.0), "q": (2.0, 1.0), "v": (2.0, 10.0),
            "s": (2.0, 1.0), "beta": (2.0, 10.0)}

#: The models' free variables in ``pymc_model``'s creation order (``model.value_vars``).
FREE_VARIABLES = {
    ("bg_nbd", "default"): ("alpha", "phi_dropout", "kappa_dropout", "r"),
    ("bg_nbd", "flat"): ("alpha", "a", "b", "r"),
    ("gamma_gamma", "default"): ("p", "q", "v"),
    ("gamma_gamma", "flat"): ("p", "q", "v"),
    ("pareto_nbd", "default"): ("alpha", "beta", "r", "s"),
    ("pareto_nbd", "flat"): ("alpha", "beta", "r", "s"),
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


#: Most terms of the hypergeometric series summed per value (pytensor's ``hyp2f1`` gradient loop cap).
_MAX_SERIES_TERMS = 1_000_000


def log_hyp2f1_tied(a: np.ndarray, b: np.ndarray, z: np.ndarray, gradient: bool = True):
    """``log 2F1(a, b; a + 1; z)`` for ``0 <= z < 1``, and its derivatives.

    In ``a`` (``c = a + 1`` moving with it), ``b`` and ``z``: the form Pareto/NBD's
    likelihood needs; SciPy gives the value but no derivative in the parameters. Euler's
    transformation ``(1 - z) ** (1 - b) * 2F1(1, a + 1 - b; a + 1; z)`` leaves a series of
    positive, decreasing terms when ``a + 1 - b > 0`` (always, in Pareto/NBD), summed with
    each term's logarithmic derivatives as pytensor's ``hyp2f1`` gradient does, until a
    term no longer moves the sums at double precision.

    Returns
    -------
    tuple
        ``(value, d_a, d_b, d_z)``; the derivatives are None without ``gradient``.
    """
    shifted, lower = a + 1.0 - b, a + 1.0  # 2F1(1, shifted; lower; z)
    total = np.ones_like(z)
    d_shifted, d_lower, d_z = (np.zeros_like(z) for _ in range(3))
    active = np.arange(z.size)
    term, log_d_shifted, log_d_lower = np.ones(active.size), np.zeros(active.size), np.zeros(active.size)
    for k in range(_MAX_SERIES_TERMS):
        if not active.size:
            break
        ratio = (shifted[active] + k) / (lower[active] + k)
        if gradient:
            d_z[active] += (k + 1) * term * ratio  # d/dz of the next term: (k + 1) term_(k+1) / z
            log_d_shifted += 1.0 / (shifted[active] + k)
            log_d_lower += 1.0 / (lower[active] + k)
        term = term * ratio * z[active]
        total[active] += term
        if gradient:
            d_shifted[active] += term * log_d_shifted
            d_lower[active] += term * log_d_lower
        # Stop when the rest of the series (below term / (1 - z), k / (1 - z)**2 for d/dz) is lost in rounding.
        going = term * (k + 2) > 1e-17 * total[active] * (1.0 - z[active]) ** 2
        active, term = active[going], term[going]
        log_d_shifted, log_d_lower = log_d_shifted[going], log_d_lower[going]
    log_1mz = np.log1p(-z)
    value = (1.0 - b) * log_1mz + np.log(total)
    if not gradient:
        return value, None, None, None
    return (value, (d_shifted - d_lower) / total, -log_1mz - d_shifted / total,
            (b - 1.0) / (1.0 - z) + d_z / total)


def _scipy_log_hyp2f1_tied(a: np.ndarray, b: np.ndarray, z: np.ndarray, gradient: bool = False):
    """:func:`log_hyp2f1_tied`'s value by ``scipy.special.hyp2f1``, as pymc-marketing's predictions take it."""
    return np.log(hyp2f1(a, b, a + 1.0, z)), None, None, None


def _pareto_nbd_pieces(r: float, alpha: float, s: float, beta: float, x_u, t_x_u, x_v, T_v, log_hyp):
    """pymc-marketing's ``ParetoNBD.logp`` split by what each part depends on.

    ``log_like = a1 + logaddexp(a2, a3 + h2)`` where ``a1, a2, a3`` are of the
    ``(frequency, recency)`` pairs ``x_u, t_x_u`` and ``h2`` of the ``(frequency, T)``
    pairs ``x_v, T_v`` (the same arrays twice when there is one pattern per row).
    ``log_hyp`` is :func:`log_hyp2f1_tied` or :func:`_scipy_log_hyp2f1_tied`.

    Returns
    -------
    dict
        The four parts, and what their derivatives need: ``cond`` (alpha >= beta), the
        larger and smaller of alpha and beta, the two hypergeometric terms' results.
    """
    cond = alpha >= beta
    larger, smaller = (alpha, beta) if cond else (beta, alpha)
    difference = larger - smaller
    rsx_u, rx_u = r + s + x_u, r + x_u
    log_larger_t = np.log(larger + t_x_u)
    refactored = rsx_u * log_larger_t  # factored out of the first hypergeometric term for stability
    hyp_1 = log_hyp(rsx_u, np.full_like(rsx_u, s + 1.0) if cond else rx_u, difference / (larger + t_x_u))
    rsx_v = r + s + x_v
    log_larger_T = np.log(larger + T_v)
    hyp_2 = log_hyp(rsx_v, np.full_like(rsx_v, s) if cond else r + x_v + 1.0, difference / (larger + T_v))
    return {
        "a1": gammaln(rx_u) - gammaln(r) + r * math.log(alpha) + s * math.log(beta) - refactored,
        "a2": math.log(s) - np.log(rsx_u) + hyp_1[0],
        "a3": np.log(rx_u) - np.log(rsx_u) + refactored,
        "h2": hyp_2[0] - rsx_v * log_larger_T,
        "cond": cond, "larger": larger, "smaller": smaller, "hyp_1": hyp_1, "hyp_2": hyp_2,
        "log_larger_t": log_larger_t, "log_larger_T": log_larger_T,
    }


def pareto_nbd_log_likelihood(parameters: dict[str, float], x, t_x, T) -> np.ndarray:
    """Per-customer log-likelihood of pymc-marketing's ``ParetoNBD`` (``ParetoNBDModel._logp``)."""
    r, alpha, s, beta = (parameters[k] for k in ("r", "alpha", "s", "beta"))
    x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
    pieces = _pareto_nbd_pieces(r, alpha, s, beta, x, t_x, x, T, _scipy_log_hyp2f1_tied)
    return pieces["a1"] + np.logaddexp(pieces["a2"], pieces["a3"] + pieces["h2"])


class NumpyObjective:
    """A model's log-posterior and gradient in NumPy, on weighted patterns swapped by :meth:`set_data`.

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
        from clv_jobs.patterns import _check_transaction_patterns, _pareto_pairs

        _check_transaction_patterns(patterns)
        if self.kind == "pareto_nbd":
            pairs = _pareto_pairs(patterns)
            self._data = pairs | {
                "count": count, "n": float(count.sum()),
                "count_xt": np.bincount(pairs["xt_index"], weights=count, minlength=pairs["x_u"].size),
            }
            return
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

    def _pareto_terms(self, r: float, alpha: float, s: float, beta: float, gradient: bool):
        """Sum over patterns of the Pareto/NBD log-likelihood, and d/d(r, alpha, s, beta).

        Per pattern ``a1 + logaddexp(a2, a3 + h2)`` (:func:`_pareto_nbd_pieces`); the
        derivatives are summed per pair, weighted by the patterns' counts and the two
        branches' shares of the ``logaddexp``.
        """
        d = self._data
        x_u, t_u, x_v, T_v = d["x_u"], d["t_x_u"], d["x_v"], d["T_v"]
        xt, xT, count = d["xt_index"], d["xT_index"], d["count"]
        pieces = _pareto_nbd_pieces(r, alpha, s, beta, x_u, t_u, x_v, T_v,
                                    functools.partial(log_hyp2f1_tied, gradient=gradient))
        first, second = pieces["a2"][xt], pieces["a3"][xt] + pieces["h2"][xT]
        value = float(d["count_xt"] @ pieces["a1"] + count @ np.logaddexp(first, second))
        if not gradient:
            return value, None
        share = count * expit(first - second)  # of the a2 branch, times the pattern's count
        n_u = d["count_xt"]
        w2_u = np.bincount(xt, weights=share, minlength=x_u.size)
        w3_u = n_u - w2_u
        w3_v = np.bincount(xT, weights=count - share, minlength=x_v.size)
        cond, larger, smaller = pieces["cond"], pieces["larger"], pieces["smaller"]
        _, h1_a, h1_b, h1_z = pieces["hyp_1"]
        _, h2_a, h2_b, h2_z = pieces["hyp_2"]
        rsx_u, rsx_v = r + s + x_u, r + s + x_v
        log_t, log_T = pieces["log_larger_t"], pieces["log_larger_T"]
        # The second parameter of both hypergeometric terms is s + 1 and s when alpha >= beta,
        # r + x and r + x + 1 otherwise; the first is r + s + x; z = (larger - smaller) / (larger + t).
        d_r = (n_u @ (digamma(r + x_u) - log_t) + d["n"] * (math.log(alpha) - digamma(r))
               + w2_u @ (-1.0 / rsx_u + h1_a + (0.0 if cond else h1_b))
               + w3_u @ (1.0 / (r + x_u) - 1.0 / rsx_u + log_t)
               + w3_v @ (h2_a + (0.0 if cond else h2_b) - log_T))
        d_s = (d["n"] * math.log(beta) - n_u @ log_t
               + w2_u @ (1.0 / s - 1.0 / rsx_u + h1_a + (h1_b if cond else 0.0))
               + w3_u @ (-1.0 / rsx_u + log_t)
               + w3_v @ (h2_a + (h2_b if cond else 0.0) - log_T))
        inv_t, inv_T = 1.0 / (larger + t_u), 1.0 / (larger + T_v)
        d_larger = (-(n_u - w3_u) @ (rsx_u * inv_t) - w3_v @ (rsx_v * inv_T)
                    + w2_u @ (h1_z * (smaller + t_u) * inv_t**2) + w3_v @ (h2_z * (smaller + T_v) * inv_T**2))
        d_smaller = -(w2_u @ (h1_z * inv_t)) - w3_v @ (h2_z * inv_T)
        d_alpha = d["n"] * r / alpha + (d_larger if cond else d_smaller)
        d_beta = d["n"] * s / beta + (d_smaller if cond else d_larger)
        return value, np.array([d_r, d_alpha, d_s, d_beta])

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
        if self.kind == "pareto_nbd":
            return self._pareto_terms(values["r"], values["alpha"], values["s"], values["beta"], gradient)
        return self._transaction_terms(values["r"], values["alpha"], values["a"], values["b"], gradient)

    def logp_and_gradient(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """Log-posterior (no Jacobian, as ``find_MAP``) and its gradient at unconstrained ``x``."""
        values = self.parameters(x)
        with np.errstate(all="ignore"):
            loglike, d_model = self._loglike(values, gradient=True)
        names = {"gamma_gamma": ("p", "q", "v"), "pareto_nbd": ("r", "alpha", "s", "beta")}.get(
            self.kind, ("r", "alpha", "a", "b"))
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
    """P-Alive and expected purchases over ``(T, T + future_t]`` of BG/NBD, MBG/NBD or Pareto/NBD.

    The bodies of pymc-marketing's ``BetaGeoModel`` / ``ModifiedBetaGeoModel`` /
    ``ParetoNBDModel`` ``expected_probability_alive`` and ``expected_purchases``.
    """
    log_like = history_log_likelihood(name, parameters, x, t_x, T)
    return {"p_alive": probability_alive(name, parameters, x, t_x, T, log_like),
            "purchases": expected_purchases(name, parameters, x, t_x, T, future_t, log_like)}


def history_log_likelihood(name: str, parameters: dict[str, float], x, t_x, T) -> np.ndarray | None:
    """What Pareto/NBD's predictions divide by (:func:`pareto_nbd_log_likelihood`); None for the others.

    Computed once and passed to each prediction of the same customers: pymc-marketing
    evaluates it in every method call (a CLV with a monthly discount makes twelve).
    """
    return pareto_nbd_log_likelihood(parameters, x, t_x, T) if name == "pareto_nbd" else None


def probability_alive(name: str, parameters: dict[str, float], x, t_x, T, log_like=None) -> np.ndarray:
    """``expected_probability_alive`` of BG/NBD, MBG/NBD or Pareto/NBD (``future_t = 0``).

    ``log_like``: :func:`history_log_likelihood` of these customers, if already computed.
    """
    if name == "pareto_nbd":
        r, alpha, s, beta = (parameters[k] for k in ("r", "alpha", "s", "beta"))
        log_like = pareto_nbd_log_likelihood(parameters, x, t_x, T) if log_like is None else log_like
        return np.exp(gammaln(r + x) - gammaln(r) + r * np.log(alpha / (alpha + T)) - x * np.log(alpha + T)
                      + s * np.log(beta / (beta + T)) - log_like)
    a, b, alpha, r = (parameters[k] for k in ("a", "b", "alpha", "r"))
    if name == "mbg_nbd":
        return 1.0 / (1 + (a / (b + x)) * ((alpha + T) / (alpha + t_x)) ** (r + x))
    log_div = (r + x) * np.log((alpha + T) / (alpha + t_x)) + np.log(a / (b + np.maximum(x, 1) - 1))
    return np.where(x == 0, 1.0, expit(-log_div))


def expected_purchases(name: str, parameters: dict[str, float], x, t_x, T, future_t, log_like=None) -> np.ndarray:
    """``expected_purchases`` of BG/NBD, MBG/NBD or Pareto/NBD over ``future_t`` (``log_like`` as above)."""
    if name == "pareto_nbd":
        r, alpha, s, beta = (parameters[k] for k in ("r", "alpha", "s", "beta"))
        log_like = pareto_nbd_log_likelihood(parameters, x, t_x, T) if log_like is None else log_like
        first_term = (gammaln(r + x) - gammaln(r) + r * np.log(alpha) + s * np.log(beta)
                      - (r + x) * np.log(alpha + T) - s * np.log(beta + T))
        second_term = np.log(r + x) + np.log(beta + T) - np.log(alpha + T)
        third_term = np.log((1 - ((beta + T) / (beta + T + future_t)) ** (s - 1)) / (s - 1))
        return np.exp(first_term + second_term + third_term - log_like)
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


def lifetime_value(purchases_over: Callable[[float], np.ndarray], future_spend: np.ndarray, future_t: int = 12,
                   discount_rate: float = 0.0, time_unit: str = "D") -> np.ndarray:
    """``clv.utils.customer_lifetime_value``: discounted spend of the monthly expected purchases.

    ``purchases_over(t)``: each customer's :func:`expected_purchases` over ``t`` (in
    ``time_unit``); ``future_t`` in months (pymc-marketing's 30.4375 days). The same
    operations in the same order as pymc-marketing's, so the same numbers.
    """
    from clv_jobs.model import DAYS_PER_MONTH

    steps = np.arange(future_t, future_t + 1) if discount_rate == 0.0 else np.arange(1, future_t + 1)
    factor = {"W": DAYS_PER_MONTH / 7, "D": DAYS_PER_MONTH}[time_unit]
    clv = np.zeros(np.shape(future_spend))
    previous = 0
    for i in steps * factor:
        purchases = purchases_over(i)
        clv = clv + (future_spend * (purchases - previous)) / (1 + discount_rate) ** (i / factor)
        previous = purchases
    return clv
