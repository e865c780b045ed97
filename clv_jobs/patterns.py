"""pymc-marketing's BTYD models on weighted unique patterns, and their fast MAP fit.

The transaction models' likelihood depends on a customer only through ``(frequency,
recency, T)``, and Gamma-Gamma's only through ``(frequency, monetary_value)``: customers
sharing a pattern contribute the same log-likelihood. So the models are built on the
distinct patterns, each pattern's log-likelihood multiplied by its number of customers.
The posterior is exactly the per-customer model's (same priors, same likelihood, a sum
in another order), and ten million buyers are about a million transaction patterns
when recency and T are whole days.

The models use pymc-marketing's own pieces, so they are its models:

- BG/NBD and MBG/NBD: its distributions ``BetaGeoNBD`` / ``ModifiedBetaGeoNBD``
  (``pm.logp`` per pattern, times the pattern's count);
- Pareto/NBD: its ``ParetoNBD`` log-likelihood, term by term, with the two
  hypergeometric terms evaluated once per distinct ``(frequency, recency)`` and
  ``(frequency, T)`` pair instead of once per pattern (:func:`pareto_nbd_loglike`).
  ``pt.hyp2f1``'s gradient is a series costing about 1 µs per evaluation near the
  optimum; per pattern it made a 100,000-buyer posterior take over 20 minutes;
- Gamma-Gamma: ``GammaGammaModel.build_model``'s likelihood term, per pattern, times
  the pattern's count;
- priors: each model class's ``model_config`` (pymc-marketing's defaults, or
  ``HalfFlat`` when ``priors: flat``), created with the same names and in the same order
  as its ``build_model``.

For a MAP fit the same log-posterior and its gradient are NumPy closed forms
(:class:`clv_jobs.formulas.NumpyObjective`, built once per process by :func:`objective`);
the PyMC model is what the Bayesian mode samples and what the tests check the closed
forms against (its compiled log-posterior). The MAP (:func:`find_map`)
is ``pm.find_MAP``'s: the same L-BFGS-B from the same initial point on the same
objective. ``tests/clv_jobs/test_patterns.py`` checks that it equals
pymc-marketing's own ``fit(method="map")`` of the per-customer model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pandas as pd

TRANSACTION_KEYS = ["frequency", "recency", "T"]
SPEND_KEYS = ["frequency", "monetary_value"]

#: ``pm.find_MAP``'s default budget of objective evaluations.
MAX_EVALUATIONS = 5000


# --- patterns --------------------------------------------------------------------------


#: ``DataFrame.attrs`` flag of a frame built with one row per customer (a SQL ``GROUP BY``
#: customer id): the fits then skip re-hashing millions of ids to prove it.
UNIQUE_CUSTOMERS = "one_row_per_customer"


@dataclasses.dataclass(frozen=True)
class _KeyLevel:
    """One step of :func:`distinct_rows`' combined key: ``combined = combined * size + code``.

    ``key`` None marks a renumbering of the keys so far (``decode`` maps the new numbers
    back to the combined keys before it).
    """

    key: str | None
    size: int
    decode: Callable[[np.ndarray], np.ndarray]


def _key_level(key: str, values: np.ndarray) -> tuple[np.ndarray, _KeyLevel]:
    """Integer codes of ``values`` numbered in the values' order, and their :class:`_KeyLevel`.

    Whole numbers in a small range (frequencies, days) are their own codes, offset by the
    smallest: no hash needed. Anything else is factorised (NaN last, as a sort puts it).
    """
    if values.dtype.kind in "iuf" and values.size:
        whole = np.rint(values) if values.dtype.kind == "f" else values
        low, high = whole.min(), whole.max()
        if high - low < 2**31 and (whole is values or np.array_equal(whole, values)):
            return (whole - low).astype(np.int64), _KeyLevel(key, int(high - low) + 1,
                                                             lambda codes: (codes + low).astype(values.dtype))
    codes, uniques = pd.factorize(values, use_na_sentinel=False, sort=True)
    return codes.astype(np.int64), _KeyLevel(key, max(len(uniques), 1), np.asarray(uniques).take)


#: :func:`distinct_rows`' result: the distinct rows, and each row's index into them.
DistinctRows = tuple[pd.DataFrame, np.ndarray]


def distinct_rows(frame: pd.DataFrame, keys: list[str]) -> DistinctRows:
    """The distinct ``keys`` rows of ``frame``, sorted by the keys, and each row's index into them.

    Scores are computed once per distinct pattern and taken back with the index. Each key
    column gets codes in its values' order, the codes are combined into one integer (so
    that its order is the keys' order) and that is factorised: several times faster than a
    multi-column group-by, and the distinct rows come sorted without sorting rows.
    """
    combined = np.zeros(len(frame), dtype=np.int64)
    levels: list[_KeyLevel] = []
    for key in keys:
        codes, level = _key_level(key, frame[key].to_numpy())
        if combined.max(initial=0) > (2**62) // level.size:
            # Keep the product within int64: renumber the keys so far, in order.
            combined, before = pd.factorize(combined, sort=True)
            combined = combined.astype(np.int64)
            levels.append(_KeyLevel(None, len(before), np.asarray(before).take))
        combined = combined * level.size + codes
        levels.append(level)
    pattern_of, distinct = pd.factorize(combined, sort=True)
    # Each distinct combined key taken apart again, last key first.
    columns, combined = {}, np.asarray(distinct)
    for level in reversed(levels):
        if level.key is None:
            combined = level.decode(combined)
        else:
            combined, codes = np.divmod(combined, level.size)
            columns[level.key] = level.decode(codes)
    return pd.DataFrame({key: columns[key] for key in keys}), pattern_of.astype(np.int64)


def _counted(frame: pd.DataFrame, keys: list[str],
             rows: DistinctRows | None = None) -> pd.DataFrame:
    """Distinct ``keys`` rows with their number of rows (``count``), sorted by the keys.

    ``rows``: :func:`distinct_rows` of ``frame`` and ``keys``, when already computed.
    """
    distinct, pattern_of = distinct_rows(frame, keys) if rows is None else rows
    return distinct.assign(count=np.bincount(pattern_of, minlength=len(distinct)))


def transaction_patterns(rfm: pd.DataFrame, rows: DistinctRows | None = None) -> pd.DataFrame:
    """Distinct ``(frequency, recency, T)`` with their number of customers (``count``).

    ``rows``: :func:`distinct_rows` of ``rfm`` and :data:`TRANSACTION_KEYS`, when already computed.
    """
    if "customer_id" in rfm and not rfm.attrs.get(UNIQUE_CUSTOMERS) and not rfm["customer_id"].is_unique:
        # One row per customer, as pymc-marketing's models require: a repeated id is a bug upstream.
        raise ValueError("customer_id has duplicate entries")
    patterns = _counted(rfm, TRANSACTION_KEYS, rows)
    _check_transaction_patterns(patterns)  # here, so that no customer is silently left out
    return patterns


def spend_patterns(rfm: pd.DataFrame) -> pd.DataFrame:
    """Distinct ``(frequency, monetary_value)`` of repeat buyers with a positive spend, counted."""
    return _counted(rfm.loc[(rfm["frequency"] > 0) & (rfm["monetary_value"] > 0), SPEND_KEYS], SPEND_KEYS)


def patterns_of(kind: str, rfm: pd.DataFrame) -> pd.DataFrame:
    """:func:`spend_patterns` for ``gamma_gamma``, :func:`transaction_patterns` otherwise."""
    return spend_patterns(rfm) if kind == "gamma_gamma" else transaction_patterns(rfm)


def _check_transaction_patterns(patterns: pd.DataFrame) -> None:
    values = patterns[TRANSACTION_KEYS].to_numpy(dtype=float)
    if not np.isfinite(values).all():
        raise ValueError("frequency, recency and T must be finite")
    x, t_x, T = values.T
    if (x < 0).any() or (t_x < 0).any() or (t_x > T).any():
        # pymc-marketing's distributions give these a log-likelihood of -inf.
        raise ValueError("frequency and recency must be >= 0 and recency <= T")


def _pareto_pairs(patterns: pd.DataFrame) -> dict[str, np.ndarray]:
    """Distinct ``(frequency, recency)`` and ``(frequency, T)`` pairs and each pattern's index into them."""
    x_values, x_code = np.unique(patterns["frequency"].to_numpy(dtype=float), return_inverse=True)
    pairs = {}
    for time, value_name, index_name in (("recency", "t_x_u", "xt_index"), ("T", "T_v", "xT_index")):
        # One integer key per pair: a 1-D unique sorts far faster than np.unique(axis=0) on rows.
        t_values, t_code = np.unique(patterns[time].to_numpy(dtype=float), return_inverse=True)
        keys, index = np.unique(x_code.astype(np.int64) * t_values.size + t_code, return_inverse=True)
        pairs[value_name], pairs[index_name] = t_values[keys % t_values.size], index.ravel().astype(np.int64)
        pairs["x_u" if time == "recency" else "x_v"] = x_values[keys // t_values.size]
    return pairs


def model_data(kind: str, patterns: pd.DataFrame) -> dict[str, np.ndarray]:
    """The arrays a model of ``kind`` reads from its patterns (see :func:`pymc_model`)."""
    counts = patterns["count"].to_numpy(dtype=float)
    if kind == "gamma_gamma":
        return {"x": patterns["frequency"].to_numpy(dtype=float),
                "z_mean": patterns["monetary_value"].to_numpy(dtype=float), "count": counts}
    _check_transaction_patterns(patterns)
    if kind == "pareto_nbd":
        return _pareto_pairs(patterns) | {"count": counts}
    return {"T": patterns["T"].to_numpy(dtype=float),
            "observed": patterns[["recency", "frequency"]].to_numpy(dtype=float), "count": counts}


# --- models ----------------------------------------------------------------------------


def model_class(name: str):
    """pymc-marketing's model class of ``name`` (a transaction model or ``gamma_gamma``)."""
    # Imported here: pymc takes seconds to import and the CLI's --help must not wait.
    from pymc_marketing.clv import BetaGeoModel, GammaGammaModel, ModifiedBetaGeoModel, ParetoNBDModel

    return {"pareto_nbd": ParetoNBDModel, "bg_nbd": BetaGeoModel, "mbg_nbd": ModifiedBetaGeoModel,
            "gamma_gamma": GammaGammaModel}[name]


def _model_config(name: str, priors: str) -> dict:
    """The priors pymc-marketing's model class uses: its defaults, or flat on its parameters."""
    from pymc_extras.prior import Prior

    from clv_jobs.model import SPEND_PARAMETERS, TRANSACTION_PARAMETERS

    names = SPEND_PARAMETERS if name == "gamma_gamma" else TRANSACTION_PARAMETERS[name]
    config = None if priors == "default" else {parameter: Prior("HalfFlat") for parameter in names}
    return model_class(name)(model_config=config).model_config


def pareto_nbd_loglike(r, alpha, s, beta, data):
    """Per-pattern log-likelihood of pymc-marketing's ``ParetoNBD`` distribution.

    The expression of ``ParetoNBD.logp`` (pymc-marketing 1.3, Fader & Hardie 2005 eq. 22-23
    rearranged for stability), regrouped so that its first hypergeometric term is computed
    once per distinct ``(frequency, recency)`` and the second once per distinct
    ``(frequency, T)``: about 35,000 pairs for 330,000 patterns of a million buyers.
    Patterns are validated beforehand (the distribution's ``-inf`` branch for impossible
    values is not needed) and the parameters are positive by their priors' support.

    Parameters
    ----------
    r, alpha, s, beta : pytensor scalars
    data : dict
        :func:`model_data` of ``pareto_nbd`` (arrays or shared variables).

    Returns
    -------
    pytensor.tensor.TensorVariable
        Shape ``(patterns,)``, equal to ``pm.logp(ParetoNBD.dist(r, alpha, s, beta, T),
        [recency, frequency])`` to rounding (checked by the tests).
    """
    import pytensor.tensor as pt

    cond = alpha >= beta
    larger_param = pt.switch(cond, alpha, beta)
    smaller_param = pt.switch(cond, beta, alpha)
    param_diff = larger_param - smaller_param

    # Terms of the (frequency, recency) pairs.
    x_u, t_x_u = data["x_u"], data["t_x_u"]
    rsx_u, rx_u = r + s + x_u, r + x_u
    refactored_u = rsx_u * pt.log(larger_param + t_x_u)
    hyp2f1_t1_u = pt.log(pt.hyp2f1(rsx_u, pt.switch(cond, s + 1, rx_u), rsx_u + 1,
                                   param_diff / (larger_param + t_x_u)))
    a1_u = pt.gammaln(rx_u) - pt.gammaln(r) + r * pt.log(alpha) + s * pt.log(beta) - refactored_u
    a2_u = pt.log(s) - pt.log(rsx_u) + hyp2f1_t1_u
    a3_u = pt.log(rx_u) - pt.log(rsx_u) + refactored_u

    # Terms of the (frequency, T) pairs.
    x_v, T_v = data["x_v"], data["T_v"]
    rsx_v = r + s + x_v
    hyp2f1_t2_v = (pt.log(pt.hyp2f1(rsx_v, pt.switch(cond, s, r + x_v + 1), rsx_v + 1,
                                    param_diff / (larger_param + T_v)))
                   - rsx_v * pt.log(larger_param + T_v))

    a1 = a1_u[data["xt_index"]]
    a2 = a2_u[data["xt_index"]]
    a3 = a3_u[data["xt_index"]] + hyp2f1_t2_v[data["xT_index"]]
    return a1 + pt.logaddexp(a2, a3)


def _transaction_loglike(name: str, config: dict, data: dict):
    """Create the transaction model's variables (in pymc-marketing's order); per-pattern log-likelihood."""
    import pymc as pm
    from pymc_marketing.clv.distributions import BetaGeoNBD, ModifiedBetaGeoNBD

    # The variables of pymc-marketing's build_model (no covariates), in its order.
    alpha = config["alpha"].create_variable("alpha")
    if name == "pareto_nbd":
        beta = config["beta"].create_variable("beta")
        r = config["r"].create_variable("r")
        s = config["s"].create_variable("s")
        return pareto_nbd_loglike(r, alpha, s, beta, data)
    if "a" in config and "b" in config:
        a = config["a"].create_variable("a")
        b = config["b"].create_variable("b")
    else:
        phi_dropout = config["phi_dropout"].create_variable("phi_dropout")
        kappa_dropout = config["kappa_dropout"].create_variable("kappa_dropout")
        a = pm.Deterministic("a", phi_dropout * kappa_dropout)
        b = pm.Deterministic("b", (1.0 - phi_dropout) * kappa_dropout)
    r = config["r"].create_variable("r")
    distribution = BetaGeoNBD if name == "bg_nbd" else ModifiedBetaGeoNBD
    return pm.logp(distribution.dist(a=a, b=b, r=r, alpha=alpha, T=data["T"]), data["observed"])


def _spend_loglike(config: dict, data: dict):
    """Gamma-Gamma's term of ``GammaGammaModel.build_model`` (Fader & Hardie 2013 eq. 1a, ``nu`` marginalised)."""
    import pytensor.tensor as pt

    p = config["p"].create_variable("p")
    q = config["q"].create_variable("q")
    v = config["v"].create_variable("v")
    x, z_mean = data["x"], data["z_mean"]
    return (pt.gammaln(p * x + q) - pt.gammaln(p * x) - pt.gammaln(q) + q * pt.log(v)
            + (p * x - 1) * pt.log(z_mean) + (p * x) * pt.log(x) - (p * x + q) * pt.log(x * z_mean + v))


def pymc_model(kind: str, patterns: pd.DataFrame | None, priors: str = "default", data: dict | None = None):
    """A PyMC model of ``kind`` on weighted patterns.

    Parameters
    ----------
    kind : {"pareto_nbd", "bg_nbd", "mbg_nbd", "gamma_gamma"}
    patterns : pandas.DataFrame or None
        :func:`transaction_patterns` / :func:`spend_patterns` (``count`` included), or
        None when ``data`` is given.
    priors : {"default", "flat"}
    data : dict, optional
        The model's arrays (:func:`model_data`), for example as shared variables.

    Returns
    -------
    pymc.Model
        Variables named as in pymc-marketing's model (``r, alpha, s, beta``; ``r, alpha,
        a, b``, the last two deterministics of ``phi_dropout, kappa_dropout`` under the
        default priors; ``p, q, v``); the likelihood is the potential ``loglike``.
    """
    import pymc as pm
    import pytensor.tensor as pt

    data = model_data(kind, patterns) if data is None else data
    config = _model_config(kind, priors)
    with pm.Model() as model:
        loglike = _spend_loglike(config, data) if kind == "gamma_gamma" else _transaction_loglike(kind, config, data)
        pm.Potential("loglike", pt.sum(data["count"] * loglike))
    return model


def transaction_pymc_model(name: str, patterns: pd.DataFrame, priors: str = "default"):
    """:func:`pymc_model` of a transaction model on :func:`transaction_patterns`."""
    return pymc_model(name, patterns, priors)


def spend_pymc_model(patterns: pd.DataFrame, priors: str = "default"):
    """:func:`pymc_model` of Gamma-Gamma on :func:`spend_patterns`."""
    return pymc_model("gamma_gamma", patterns, priors)


# --- the compiled objective and the MAP -------------------------------------------------


def objective(kind: str, priors: str = "default"):
    """A new objective of ``kind`` with ``priors``, for one fit's data.

    :class:`clv_jobs.formulas.NumpyObjective`: the closed forms, no PyMC, nothing to
    compile, so each fit builds its own and fits can run side by side in threads (the
    refit's full-history fit runs beside its backtest).
    """
    from clv_jobs import formulas

    return formulas.NumpyObjective(kind, priors)


@dataclasses.dataclass
class MapFit:
    """A MAP point: every free variable and deterministic, and the data's log-likelihood there."""

    parameters: dict[str, float]
    log_likelihood: float
    evaluations: int
    #: The objective maximised, holding the fit's data (the quality gate's convergence
    #: check evaluates it again at the optimum without setting the data up anew).
    objective: object = dataclasses.field(default=None, repr=False, compare=False)


def find_map(kind: str, patterns: pd.DataFrame, priors: str = "default") -> MapFit:
    """MAP of ``kind`` on weighted ``patterns``, as ``pm.find_MAP`` finds it.

    scipy's L-BFGS-B on the negative log-posterior in the unconstrained space, from the
    model's initial point, at most :data:`MAX_EVALUATIONS` evaluations, stopping at the
    last point with a finite gradient if the budget runs out (``find_MAP``'s behaviour).

    Returns
    -------
    MapFit
        ``parameters``: ``r, alpha, a, b, …`` at the MAP (free variables and
        deterministics); ``log_likelihood``: of the data there, without the priors.

    Raises
    ------
    ValueError
        The objective is not finite at the start (impossible data).
    """
    from scipy import optimize

    target = objective(kind, priors)
    target.set_data(patterns)
    state = {"evaluations": 0, "last_finite": target.initial}

    def cost(x: np.ndarray) -> tuple[float, np.ndarray]:
        value, gradient = target.logp_and_gradient(x)
        if np.isfinite(gradient).all():
            state["last_finite"] = x.copy()
        state["evaluations"] += 1
        if state["evaluations"] > MAX_EVALUATIONS:
            raise StopIteration
        return -value, -gradient

    start_value, _ = target.logp_and_gradient(target.initial)
    if not np.isfinite(start_value):
        raise ValueError(f"the {kind} log-posterior is not finite at the initial point")
    try:
        x = optimize.minimize(cost, target.initial, method="L-BFGS-B", jac=True)["x"]
    except StopIteration:
        x = state["last_finite"]
    return MapFit(target.parameters(x), target.log_likelihood(x), state["evaluations"], target)


def log_likelihood(kind: str, patterns: pd.DataFrame, values: dict[str, float]) -> float:
    """Log-likelihood of the data (sum over customers) at parameter ``values``; no priors."""
    target = objective(kind, "flat")  # flat priors: the free variables are the parameters
    target.set_data(patterns)
    return target.log_likelihood(target.unconstrained(values))
