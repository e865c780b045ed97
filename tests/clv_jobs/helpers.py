"""Helpers shared by the model tests (CDNOW constants, a session holding given orders, reference scores)."""

from __future__ import annotations

import datetime as dt
import functools
import warnings

import numpy as np
import pandas as pd

from clv_jobs import patterns, sources

CDNOW_AS_OF = dt.date(1997, 10, 1)  # calibration: orders of 1997-01-01 .. 1997-09-30
CDNOW_PERIOD_END = pd.Timestamp("1997-09-30")
CDNOW_CUSTOMERS = 2_357


def orders_session(transactions: pd.DataFrame):
    """A pipeline session holding ``transactions`` as the clean orders table."""
    con = sources.connect()
    con.execute(
        "CREATE TEMP TABLE transactions("
        "customer_id VARCHAR, order_id VARCHAR, order_ts TIMESTAMP, amount DOUBLE)"
    )
    con.register("orders_in", transactions[["customer_id", "order_id", "order_ts", "amount"]])
    con.execute("INSERT INTO transactions SELECT customer_id, order_id, order_ts, amount FROM orders_in")
    con.unregister("orders_in")
    return con


def pymc_marketing_scores(transaction, spend, data: pd.DataFrame, horizon_months: int = 12,
                          time_unit: str = "D") -> dict[str, np.ndarray]:
    """pymc-marketing's own predictions for every row of ``data``, averaged over the models' draws.

    The straightforward per-customer computation the optimised scoring is checked against:
    ``p_alive`` (unclipped), ``expected_purchases`` over the horizon, ``expected_spend``
    and ``clv`` (``customer_lifetime_value`` with that spend, undiscounted).
    """
    from pymc_marketing.clv.utils import customer_lifetime_value

    from clv_jobs.model import DAYS_PER_MONTH, _values

    horizon = horizon_months * DAYS_PER_MONTH / (7.0 if time_unit == "W" else 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        expected_spend = _values(spend.expected_customer_spend(data=data))
        return {
            "p_alive": _values(transaction.expected_probability_alive(data=data)),
            "expected_purchases": _values(transaction.expected_purchases(data=data, future_t=horizon)),
            "expected_spend": expected_spend,
            "clv": _values(customer_lifetime_value(transaction, data.assign(future_spend=expected_spend),
                                                   future_t=horizon_months, discount_rate=0.0,
                                                   time_unit=time_unit)),
        }


class PymcObjective:
    """A PyMC model's log-posterior and gradient, compiled once, on data that can be swapped.

    The reference :class:`clv_jobs.formulas.NumpyObjective` is checked against: the same
    interface, on :func:`clv_jobs.patterns.pymc_model` (the fit uses the NumPy one: it
    needs no PyMC import and no compilation).

    The unconstrained (value-variable) point is a vector in the order of
    ``model.value_vars``, as ``pm.find_MAP`` ravels it (every variable is a scalar).
    """

    def __init__(self, kind: str, priors: str):
        import pytensor
        import pytensor.tensor as pt

        self.kind = kind
        placeholder = patterns.model_data(kind, _placeholder_patterns(kind))
        self.shared = {name: pytensor.shared(value, name=name, shape=(None,) * value.ndim)
                       for name, value in placeholder.items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            self.model = model = patterns.pymc_model(kind, None, priors, data=self.shared)
            value_vars = model.value_vars
            logp = model.logp(jacobian=False)
            gradient = pt.stack(pytensor.grad(logp, value_vars))
            loglike = model.logp(vars=model.potentials, jacobian=False)
            self._logp_and_gradient = pytensor.function(value_vars, [logp, gradient])
            self._loglike = pytensor.function(value_vars, loglike)
            self.free_names = [rv.name for rv in model.free_RVs]
            self.parameter_names = self.free_names + [d.name for d in model.deterministics]
            self._parameters = pytensor.function(
                value_vars, model.replace_rvs_by_values([*model.free_RVs, *model.deterministics]))
            self._to_unconstrained = [self._forward_function(rv) for rv in model.free_RVs]
        initial = model.initial_point()
        self.value_names = [v.name for v in value_vars]
        self.initial = np.array([float(initial[name]) for name in self.value_names])

    def _forward_function(self, rv):
        """Compiled ``constrained value -> unconstrained value`` of one free variable."""
        import pytensor
        import pytensor.tensor as pt

        transform = self.model.rvs_to_transforms.get(rv)
        value = pt.dscalar(f"{rv.name}_constrained")
        if transform is None:
            return pytensor.function([value], value)
        return pytensor.function([value], transform.forward(value, *rv.owner.inputs))

    def set_data(self, weighted: pd.DataFrame) -> None:
        """Point the compiled functions at these patterns."""
        for name, value in patterns.model_data(self.kind, weighted).items():
            self.shared[name].set_value(value)

    def logp_and_gradient(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """Log-posterior (no Jacobian, as ``find_MAP``) and its gradient at unconstrained ``x``."""
        value, gradient = self._logp_and_gradient(*x)
        return float(value), np.asarray(gradient, dtype=float)

    def parameters(self, x: np.ndarray) -> dict[str, float]:
        """Constrained free variables and deterministics at unconstrained ``x``."""
        return {name: float(v) for name, v in zip(self.parameter_names, self._parameters(*x), strict=True)}

    def unconstrained(self, values: dict[str, float]) -> np.ndarray:
        """Unconstrained point of the free variables' constrained ``values``."""
        return np.array([float(forward(values[rv.name]))
                         for rv, forward in zip(self.model.free_RVs, self._to_unconstrained, strict=True)])

    def log_likelihood(self, x: np.ndarray) -> float:
        """Log-likelihood of the data at unconstrained ``x`` (no prior)."""
        return float(self._loglike(*x))

    @functools.cached_property
    def bounds(self) -> dict[str, tuple[float, float]]:
        """Lower and upper bound of each free variable (the limits of its transform)."""
        import math

        bounds = {}
        for rv in self.model.free_RVs:
            transform = self.model.rvs_to_transforms.get(rv)
            if transform is None:
                bounds[rv.name] = (-math.inf, math.inf)
                continue
            low, high = (float(np.asarray(transform.backward(np.array(x), *rv.owner.inputs).eval()))
                         for x in (-700.0, 700.0))
            bounds[rv.name] = (low, high if high < 1e300 else math.inf)
        return bounds


def _placeholder_patterns(kind: str) -> pd.DataFrame:
    if kind == "gamma_gamma":
        return pd.DataFrame({"frequency": [1.0, 2.0], "monetary_value": [10.0, 20.0], "count": [1, 1]})
    return pd.DataFrame({"frequency": [0.0, 2.0], "recency": [0.0, 5.0], "T": [9.0, 20.0], "count": [1, 1]})
