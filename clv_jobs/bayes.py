"""Full-posterior (MCMC) fits of the Buy-Till-You-Die models, and per-customer intervals.

``fit_method: mcmc`` (see :func:`clv_jobs.model.fit_models`). The models are
pymc-marketing's on weighted unique patterns (:mod:`clv_jobs.patterns`: each distinct
``(frequency, recency, T)`` or ``(frequency, monetary_value)`` once, its log-likelihood
times its number of customers): exactly the per-customer posterior, and a million buyers
(about 330,000 transaction patterns when recency and T are whole days) are sampled in
minutes instead of hours.

Sampling is nutpie's NUTS (numba backend, low-rank mass-matrix adaptation), one process
per chain so that chains run on separate cores, or PyMC's NUTS with ``sampler: pymc``.
Both are seeded: the same data and settings give the same draws.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import pandas as pd

from clv_jobs.patterns import pymc_model
from clv_jobs.settings import McmcSettings

log = logging.getLogger(__name__)

#: pymc-marketing's month length (``clv.utils._DAYS_PER_MONTH``).
DAYS_PER_MONTH = 30.4375

#: Seed of the customers' latent draws behind the CLV intervals (fixed: reruns and rescores
#: of a customer give the same interval).
INTERVAL_SEED = 20_240_601


# --- sampling --------------------------------------------------------------------------


@dataclasses.dataclass
class Posterior:
    """Draws of one model, ``(chain, draw)`` per variable (free and deterministic)."""

    draws: object  # xarray.Dataset
    divergences: int
    #: Wall seconds of each chain's sampling (compilation included).
    chain_seconds: list[float]


def _chain_seed(seed: int, kind: str, chain: int) -> int:
    """A seed per (model, chain): chains are independent, reruns identical."""
    kind_id = ["pareto_nbd", "bg_nbd", "mbg_nbd", "gamma_gamma"].index(kind)
    return int(np.random.SeedSequence([int(seed) % 2**32, kind_id, chain]).generate_state(1)[0])


def _sample_nutpie_chain(kind: str, patterns: pd.DataFrame, priors: str, settings: McmcSettings, chain: int):
    """One nutpie chain (a process-pool job): ``(posterior Dataset, divergences, seconds)``."""
    import nutpie

    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        compiled = nutpie.compile_pymc_model(pymc_model(kind, patterns, priors), backend="numba")
        trace = nutpie.sample(compiled, draws=settings.draws, tune=settings.tune, chains=1, cores=1,
                              seed=_chain_seed(settings.seed, kind, chain), progress_bar=False,
                              adaptation="low_rank")
    posterior = trace["posterior"].to_dataset().assign_coords(chain=[chain])
    divergences = int(trace["sample_stats"]["diverging"].sum())
    return posterior.load(), divergences, time.perf_counter() - started


def _run_chain_in_subprocess(job: tuple, workdir: str, index: int):
    """Run :func:`_sample_nutpie_chain` in a fresh interpreter (``python -m clv_jobs.bayes``)."""
    job_file = os.path.join(workdir, f"job{index}.pkl")
    result_file = os.path.join(workdir, f"result{index}.pkl")
    log_file = os.path.join(workdir, f"job{index}.log")
    with open(job_file, "wb") as handle:
        pickle.dump(job, handle)
    with open(log_file, "wb") as output:
        completed = subprocess.run([sys.executable, "-m", "clv_jobs.bayes", job_file, result_file],
                                   stdout=output, stderr=subprocess.STDOUT, check=False)
    if completed.returncode != 0:
        with open(log_file, encoding="utf-8", errors="replace") as handle:
            lines = [line for line in handle.read().strip().splitlines() if line.strip()]
        raise RuntimeError(f"chain {job[-1]} of {job[0]} failed (exit code {completed.returncode}): "
                           + (lines[-1] if lines else "no output"))
    with open(result_file, "rb") as handle:
        return pickle.load(handle)


def _sample_nutpie(models: list[tuple[str, pd.DataFrame]], priors: str, settings: McmcSettings) -> list[Posterior]:
    import xarray as xr

    jobs = [(kind, patterns, priors, settings, chain) for kind, patterns in models for chain in range(settings.chains)]
    workers = min(len(jobs), _cpus())
    if workers > 1:
        # One interpreter per chain: this machine kind runs the threads of one process on one
        # core (nutpie's chain threads gave no speed-up), separate processes on all of them.
        # Plain subprocesses, not multiprocessing: they work from daemonic processes (Celery
        # workers) and never re-import the caller's __main__.
        with tempfile.TemporaryDirectory(prefix="clv-mcmc-") as workdir, \
                concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_run_chain_in_subprocess, jobs, [workdir] * len(jobs), range(len(jobs))))
    else:
        results = [_sample_nutpie_chain(*job) for job in jobs]
    posteriors = []
    for index in range(len(models)):
        chains = results[index * settings.chains:(index + 1) * settings.chains]
        posteriors.append(Posterior(
            draws=xr.concat([draws for draws, _, _ in chains], dim="chain"),
            divergences=sum(divergences for _, divergences, _ in chains),
            chain_seconds=[round(seconds, 3) for _, _, seconds in chains],
        ))
    return posteriors


def _cpus() -> int:
    """CPUs this process may run on (its affinity, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _sample_pymc(models: list[tuple[str, pd.DataFrame]], priors: str, settings: McmcSettings) -> list[Posterior]:
    import pymc as pm

    posteriors = []
    for kind, patterns in models:
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            trace = pm.sample(model=pymc_model(kind, patterns, priors), draws=settings.draws, tune=settings.tune,
                              chains=settings.chains, cores=min(settings.chains, _cpus()),
                              random_seed=_chain_seed(settings.seed, kind, 0), progressbar=False,
                              compute_convergence_checks=False)
        posteriors.append(Posterior(
            draws=trace["posterior"].to_dataset().load(),
            divergences=int(trace["sample_stats"]["diverging"].sum()),
            chain_seconds=[round(time.perf_counter() - started, 3)],
        ))
    return posteriors


def sample_posteriors(models: list[tuple[str, pd.DataFrame]], priors: str, settings: McmcSettings) -> list[Posterior]:
    """Sample each ``(kind, patterns)`` model's posterior with the configured sampler."""
    if settings.sampler == "nutpie":
        return _sample_nutpie(models, priors, settings)
    return _sample_pymc(models, priors, settings)


def convergence(draws) -> tuple[dict[str, float], dict[str, float]]:
    """Rank-normalised split R-hat and bulk ESS of every variable (arviz)."""
    import arviz as az

    r_hat = az.rhat(draws)
    ess = az.ess(draws, method="bulk")
    return ({name: float(r_hat[name]) for name in draws.data_vars},
            {name: float(ess[name]) for name in draws.data_vars})


def thin(draws, total: int):
    """About ``total`` draws spread evenly over each chain (all of them if fewer)."""
    n_chain, n_draw = draws.sizes["chain"], draws.sizes["draw"]
    per_chain = max(1, min(n_draw, total // n_chain))
    keep = np.unique(np.linspace(0, n_draw - 1, per_chain).round().astype(int))
    return draws.isel(draw=keep)


# --- per-customer intervals ------------------------------------------------------------


def _expm1_ratio(z: np.ndarray) -> np.ndarray:
    """``(1 - exp(-z)) / z``, 1 at ``z = 0``."""
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = -np.expm1(-z) / z
    return np.where(z > 0, ratio, 1.0)


def individual_clv_draws(
    name: str,
    transaction: dict[str, np.ndarray],
    spend: dict[str, np.ndarray],
    frequency: np.ndarray,
    T: np.ndarray,
    monetary_value: np.ndarray,
    p_alive: np.ndarray,
    horizon_months: int,
    discount_rate: float,
    time_unit: str,
) -> np.ndarray:
    """Posterior draws of each customer's own expected spend over the horizon.

    For posterior draw ``k`` of the population parameters, a customer's latent traits are
    drawn from their posterior given the customer's history, and the customer's expected
    spend given those traits is computed:

    - alive with probability P-Alive (``p_alive[k]``, pymc-marketing's own formula);
    - if alive, the purchase rate ``lambda ~ Gamma(r + x, alpha + T)`` and the dropout
      parameter ``p ~ Beta(a, b + x)`` (MBG/NBD: ``Beta(a, b + x + 1)``; Pareto/NBD: the
      dropout rate ``mu ~ Gamma(s, beta + T)``), independent given "alive";
    - expected purchases over ``(T, T + t]``: ``(1 - exp(-lambda p t)) / p`` (BG and MBG),
      ``lambda / mu (1 - exp(-mu t))`` (Pareto/NBD), discounted month by month as
      pymc-marketing's ``customer_lifetime_value`` does;
    - mean spend ``p_gg / nu`` with ``nu ~ Gamma(p_gg x + q, v + x z)``, the posterior of
      pymc-marketing's ``distribution_customer_spend``.

    Their mean over the latent draws is pymc-marketing's expected purchases times its
    expected spend (law of total expectation), so the interval is centred where the
    published CLV is; its spread is the uncertainty about this customer, not only about
    the population parameters (which alone give intervals far too narrow to cover a
    customer's true value). The random numbers are shared by customers of the same
    frequency and seeded by it, so a customer's interval does not depend on who else is
    scored.

    Parameters
    ----------
    name : {"pareto_nbd", "bg_nbd", "mbg_nbd"}
    transaction, spend : dict of numpy.ndarray
        Posterior draws (shape ``(K,)``) of the transaction and Gamma-Gamma parameters.
    frequency, T, monetary_value : numpy.ndarray
        Per customer (pattern), shape ``(n,)``.
    p_alive : numpy.ndarray
        Shape ``(K, n)``.
    horizon_months, discount_rate, time_unit
        As for :func:`clv_jobs.model.score_customers`.

    Returns
    -------
    numpy.ndarray
        Shape ``(K, n)``.
    """
    n_draws = p_alive.shape[0]
    x_values, x_index = np.unique(frequency, return_inverse=True)
    uniform = np.empty((n_draws, x_values.size))
    rate_shape = np.empty_like(uniform)  # Gamma(r + x, 1)
    dropout = np.empty_like(uniform)  # p (BG, MBG) or Gamma(s, 1) (Pareto/NBD)
    nu_shape = np.empty_like(uniform)  # Gamma(p_gg x + q, 1)
    for j, x in enumerate(x_values):
        rng = np.random.default_rng([INTERVAL_SEED, int(round(x))])
        uniform[:, j] = rng.random(n_draws)
        rate_shape[:, j] = rng.standard_gamma(transaction["r"] + x)
        if name == "pareto_nbd":
            dropout[:, j] = rng.standard_gamma(transaction["s"])
        else:
            dropout[:, j] = rng.beta(transaction["a"], transaction["b"] + x + (1 if name == "mbg_nbd" else 0))
        nu_shape[:, j] = rng.standard_gamma(spend["p"] * x + spend["q"])

    alive = uniform[:, x_index] < p_alive
    lam = rate_shape[:, x_index] / (transaction["alpha"][:, None] + T[None, :])
    if name == "pareto_nbd":
        mu = dropout[:, x_index] / (transaction["beta"][:, None] + T[None, :])
    else:
        drop = dropout[:, x_index]

    def purchases(t: float) -> np.ndarray:
        # E[X(T, T + t) | alive, traits], written to stay finite when lambda, p or mu is 0.
        if name == "pareto_nbd":
            return lam * t * _expm1_ratio(mu * t)
        return lam * t * _expm1_ratio(lam * drop * t)

    factor = DAYS_PER_MONTH / 7.0 if time_unit == "W" else DAYS_PER_MONTH
    steps = np.arange(horizon_months, horizon_months + 1) if discount_rate == 0.0 else np.arange(1, horizon_months + 1)
    total = np.zeros_like(lam)
    previous = 0.0
    for step in steps:
        current = purchases(step * factor)
        total += (current - previous) / (1 + discount_rate) ** step
        previous = current
    nu = nu_shape[:, x_index] / (spend["v"][:, None] + (frequency * monetary_value)[None, :])
    mean_spend = spend["p"][:, None] / nu
    return np.where(alive, total * mean_spend, 0.0)


def _main(argv: list[str]) -> int:
    """``python -m clv_jobs.bayes JOB RESULT``: sample one chain (see :func:`_sample_nutpie`)."""
    job_file, result_file = argv
    with open(job_file, "rb") as handle:
        job = pickle.load(handle)
    result = _sample_nutpie_chain(*job)
    with open(result_file, "wb") as handle:
        pickle.dump(result, handle)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
