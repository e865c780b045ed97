"""The NumPy closed forms equal the PyMC model and pymc-marketing's predictive methods."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose

from clv_jobs import formulas, patterns
from clv_jobs.model import models_from_parameters
from tests.clv_jobs.helpers import PymcObjective


@pytest.fixture(scope="module")
def rfm() -> pd.DataFrame:
    """Histories of every shape: one-time buyers, repeat buyers, recency = T, whole days."""
    rng = np.random.default_rng(7)
    n = 5_000
    x = rng.poisson(1.2, n).astype(float)
    T = rng.integers(1, 700, n).astype(float)
    t_x = np.where(x > 0, np.floor(rng.uniform(0, 1, n) * (T + 1)), 0.0)
    money = np.where(x > 0, np.round(rng.gamma(3.0, 20.0, n), 2), 0.0)
    return pd.DataFrame({"customer_id": np.arange(n), "frequency": x, "recency": t_x, "T": T,
                         "monetary_value": money})


@pytest.mark.parametrize("priors", ["default", "flat"])
@pytest.mark.parametrize("kind", formulas.KINDS)
def test_numpy_objective_is_the_pymc_models_log_posterior(rfm, kind, priors):
    data = patterns.patterns_of(kind, rfm)
    pymc_objective = PymcObjective(kind, priors)
    pymc_objective.set_data(data)
    numpy_objective = formulas.NumpyObjective(kind, priors)
    numpy_objective.set_data(data)
    assert numpy_objective.value_names == pymc_objective.value_names
    assert numpy_objective.free_names == pymc_objective.free_names
    assert numpy_objective.bounds == pymc_objective.bounds
    assert_allclose(numpy_objective.initial, pymc_objective.initial, rtol=1e-14)
    rng = np.random.default_rng(1)
    for _ in range(6):
        point = pymc_objective.initial + rng.normal(0.0, 0.6, pymc_objective.initial.size)
        value, gradient = numpy_objective.logp_and_gradient(point)
        expected_value, expected_gradient = pymc_objective.logp_and_gradient(point)
        assert value == pytest.approx(expected_value, rel=1e-10)
        assert_allclose(gradient, expected_gradient, rtol=1e-8, atol=1e-8 * np.abs(expected_gradient).max())
        assert numpy_objective.log_likelihood(point) == pytest.approx(pymc_objective.log_likelihood(point), rel=1e-10)
        expected = pymc_objective.parameters(point)
        assert numpy_objective.parameters(point) == pytest.approx(expected, rel=1e-12)
        assert_allclose(numpy_objective.unconstrained(expected), pymc_objective.unconstrained(expected), rtol=1e-12)


def test_the_fit_uses_the_numpy_objective():
    for kind, priors in (("bg_nbd", "default"), ("gamma_gamma", "flat"), ("pareto_nbd", "default")):
        assert isinstance(patterns.objective(kind, priors), formulas.NumpyObjective)


def test_tied_hypergeometric_series_is_scipys_value_and_its_derivatives():
    """log 2F1(a, b; a + 1; z) of Pareto/NBD's likelihood: value as SciPy's, derivatives as central differences."""
    from scipy.special import hyp2f1

    rng = np.random.default_rng(0)
    n = 2_000
    a = rng.uniform(0.1, 60.0, n)
    b = np.minimum(np.abs(a + 1.0 - rng.uniform(0.05, 30.0, n)) + 0.01, a + 0.999)  # a + 1 - b > 0
    z = rng.uniform(0.0, 0.995, n)
    z[:10] = 0.0  # alpha == beta, the models' initial point
    value, d_a, d_b, d_z = formulas.log_hyp2f1_tied(a, b, z)

    def log_f(a_, b_, z_):
        return np.log(hyp2f1(a_, b_, a_ + 1.0, z_))

    assert_allclose(value, log_f(a, b, z), rtol=1e-13, atol=1e-13)
    h = 1e-6
    assert_allclose(d_a, (log_f(a + h, b, z) - log_f(a - h, b, z)) / (2 * h), rtol=1e-6, atol=1e-8)
    assert_allclose(d_b, (log_f(a, b + h, z) - log_f(a, b - h, z)) / (2 * h), rtol=1e-6, atol=1e-8)
    inner = slice(10, None)  # z = 0: one-sided; its derivative is a b / (a + 1)
    assert_allclose(d_z[inner], (log_f(a, b, z + h) - log_f(a, b, z - h))[inner] / (2 * h), rtol=1e-6)
    assert_allclose(d_z[:10], (a * b / (a + 1.0))[:10], rtol=1e-14)
    assert formulas.log_hyp2f1_tied(a, b, z, gradient=False)[1] is None


PARAMETERS = {
    "bg_nbd": {"r": 0.24, "alpha": 4.4, "a": 0.79, "b": 2.43},
    "mbg_nbd": {"r": 0.53, "alpha": 6.2, "a": 0.89, "b": 1.61},
    "pareto_nbd": {"r": 0.26, "alpha": 29.6, "s": 0.59, "beta": 82.4},
    "gamma_gamma": {"p": 6.25, "q": 3.74, "v": 15.44},
}


@pytest.mark.parametrize(("time_unit", "discount_rate"), [("D", 0.0), ("D", 0.01), ("W", 0.02)])
@pytest.mark.parametrize("name", ["bg_nbd", "mbg_nbd", "pareto_nbd"])
def test_closed_form_scores_are_pymc_marketings(rfm, name, time_unit, discount_rate):
    from clv_jobs.model import _closed_form_scores, _pymc_marketing_scores

    parameters = {name: PARAMETERS[name], "gamma_gamma": PARAMETERS["gamma_gamma"]}
    models = models_from_parameters(name, parameters)
    assert models.closed_form
    data = rfm.assign(customer_id=np.arange(len(rfm)))
    if time_unit == "W":
        data = data.assign(recency=data["recency"] / 7.0, T=data["T"] / 7.0)
    horizon = 12 * 30.4375 / (7.0 if time_unit == "W" else 1.0)
    ours = _closed_form_scores(models, data, horizon, 12, discount_rate, time_unit)
    reference = _pymc_marketing_scores(models, data, horizon, 12, discount_rate, time_unit)
    assert set(ours) == set(reference)
    for column, values in reference.items():
        assert_allclose(ours[column], values, rtol=1e-12, err_msg=column)


@pytest.mark.parametrize("name", ["bg_nbd", "pareto_nbd"])
def test_holdout_predictions_are_pymc_marketings(rfm, name):
    from clv_jobs.backtest import model_predictions

    parameters = {name: PARAMETERS[name], "gamma_gamma": PARAMETERS["gamma_gamma"]}
    ours = model_predictions(models_from_parameters(name, parameters), rfm, 90.0)
    # With draws (here one, twice), the same models go through pymc-marketing's methods.
    posterior = {model: {p: [[v, v]] for p, v in values.items()} for model, values in parameters.items()}
    reference = model_predictions(models_from_parameters(name, parameters, posterior), rfm, 90.0)
    for column in ("purchases", "p_alive", "spend"):
        assert_allclose(ours[column], reference[column], rtol=1e-12, err_msg=column)


@pytest.mark.parametrize("name", ["bg_nbd", "pareto_nbd"])
def test_a_map_fit_and_its_scores_never_import_pymc(tmp_path, name):
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import pandas as pd
        from clv_jobs.model import fit_models, score_customers
        from clv_jobs.settings import ModelSettings
        rng = np.random.default_rng(3)
        n = 3000
        x = rng.poisson(1.0, n).astype(float)
        T = rng.integers(30, 400, n).astype(float)
        rfm = pd.DataFrame({{"customer_id": np.arange(n), "frequency": x,
                             "recency": np.where(x > 0, np.floor(rng.uniform(0, 1, n) * T), 0.0), "T": T,
                             "monetary_value": np.where(x > 0, rng.gamma(3.0, 20.0, n), 0.0)}})
        models = fit_models(rfm, ModelSettings(transaction_model="{name}"))
        scores = score_customers(models, rfm)
        assert np.isfinite(scores["clv"]).all()
        print(sorted(m for m in ("pymc", "pytensor", "pymc_marketing", "sklearn") if m in sys.modules))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
