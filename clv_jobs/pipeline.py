"""The jobs, one function each, as the CLI and the Airflow DAGs call them.

- :func:`check_eligibility` — the daily check; records it and activates the account.
- :func:`refit` — validate → features → fit (with its backtest, model choice and quality
  gate) → score → segments → Datamodel → publish.
- :func:`export` — deliver a published Datamodel to the account's destinations.

Each takes explicit arguments (project, account id, as-of date), reads and writes only that
account and date, and returns a small JSON-safe dict.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

import clv_jobs
from clv_jobs import backtest, delivery, gate, segments
from clv_jobs.asof import cutoff_utc
from clv_jobs.datamodel import write_datamodel
from clv_jobs.eligibility import EligibilityResult, evaluate, history_stats
from clv_jobs.errors import InputError, ModelError, NotEligibleError
from clv_jobs.features import TIME_UNIT_DAYS, feature_table, features_frame, rfm_frame
from clv_jobs.model import FittedModels, fit_models, models_from_parameters, score_customers
from clv_jobs.patterns import UNIQUE_CUSTOMERS, DistinctRows
from clv_jobs.settings import AccountSettings, ModelSettings, Project
from clv_jobs.sources import check_unchanged, connect, load_account, prepare_contacts
from clv_jobs.store import Store
from clv_jobs.validation import ValidationReport, quarantined_rows, require_rows, validate_transactions

log = logging.getLogger("clv_jobs")

# Arrow's default allocator (mimalloc) faulted in fresh pages for each of a refit's big
# tables, where the system allocator reuses them: a refit of five million buyers took
# 30.1 s against 33.2 s (median of four runs each). ARROW_DEFAULT_MEMORY_POOL, if set, wins.
if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
    pa.set_memory_pool(pa.system_memory_pool())


@contextmanager
def _step(account: str, name: str):
    """Log the start and duration of a step (the progress a user sees on long runs)."""
    started = time.perf_counter()
    log.info("%s: %s …", account, name)
    yield
    log.info("%s: %s done in %.1f s", account, name, time.perf_counter() - started)


@dataclasses.dataclass
class AccountData:
    """An account's validated data for one as-of date, in an open DuckDB session."""

    con: duckdb.DuckDBPyConnection
    validation: ValidationReport
    eligibility: EligibilityResult


def load_validated(
    project: Project, account: AccountSettings, as_of: dt.date, read_at: dt.datetime | None = None
) -> AccountData:
    """Read, validate and check eligibility of an account's data (shared by every job)."""
    con = connect()
    source = project.source_for(account)
    with _step(account.account_id, "read and validate"):
        loaded = load_account(con, source, account.account_id, project.connection_resolver)
        report = validate_transactions(
            con, account.account_id, str(loaded["source"]), cutoff_utc(as_of, account.timezone),
            account.quarantine_limit, read_at,
        )
        check_unchanged(loaded, account.account_id)
    eligibility = evaluate(history_stats(con, account.timezone), as_of, account.eligibility)
    return AccountData(con, report, eligibility)


def check_eligibility(
    project: Project, account_id: str, as_of: dt.date, read_at: dt.datetime | None = None
) -> dict:
    """Daily eligibility check: record it; activate the account the first time it passes.

    Returns
    -------
    dict
        ``account, as_of, eligible, reasons, buyers, first_purchase, max_purchases,
        newly_activated`` (first scores are due today), ``lapsed`` (activated but no
        longer eligible: it keeps its last model, flagged), ``activated_on``.
    """
    account = project.account(account_id)
    store = Store(project.store_uri)
    data = load_validated(project, account, as_of, read_at)
    data.con.close()
    result = data.eligibility
    was_active = store.activation(account_id) is not None
    record = result.as_dict() | {"account": account_id, "validation": data.validation.as_dict()}
    store.record_eligibility(account_id, as_of, record)
    if result.eligible and not was_active:
        store.activate(account_id, as_of)
    activation = store.activation(account_id)
    outcome = {
        "account": account_id,
        "as_of": as_of.isoformat(),
        "eligible": result.eligible,
        "reasons": result.reasons,
        "buyers": result.buyers,
        "first_purchase": record["first_purchase"],
        "max_purchases": result.max_purchases,
        "newly_activated": result.eligible and not was_active,
        "lapsed": was_active and not result.eligible,
        "activated_on": activation["activated_on"] if activation else None,
    }
    log.info("%s: eligible=%s %s", account_id, result.eligible, "; ".join(result.reasons))
    return outcome


def _fingerprint(con: duckdb.DuckDBPyConnection, account: AccountSettings, previous: dict | None) -> str:
    """Hash of everything a run's output depends on: same inputs, same run id, same bytes."""
    data = con.execute(
        # Integer sums and xors: the same rows give the same fingerprint in any order.
        "SELECT count(*), bit_xor(hash(customer_id, order_id, order_ts, amount)), "
        "sum(hash(customer_id, order_id, order_ts, amount) >> 32) FROM transactions"
    ).fetchall()[0]
    contacts = con.execute(
        "SELECT count(*), bit_xor(hash(customer_id, contact_id, email, email_opt_in)) FROM contacts"
    ).fetchall()[0]
    payload = json.dumps(
        [str(data), str(contacts), account.model_dump(mode="json"), clv_jobs.__version__,
         duckdb.__version__, previous["run_id"] if previous else None],
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def score_account(
    features: pd.DataFrame,
    models: FittedModels,
    account: AccountSettings,
    previous_segments: pd.Series | None = None,
    time_unit: str | None = None,
    rows: DistinctRows | None = None,
) -> pd.DataFrame:
    """The run's full per-customer scores table: features, predictions, segments, groups.

    Parameters
    ----------
    features : pandas.DataFrame
        :func:`clv_jobs.features.build_features`.
    models : FittedModels
    account : AccountSettings
    previous_segments : pandas.Series, optional
        Segment id by customer id from the previous run (for CLV_EVOLUTION).
    time_unit : {"D", "W"}, optional
        Time unit of the models' parameters when it is not the account's (a previous model
        kept by the quality gate after the account changed ``time_unit``): ``recency`` and
        ``T`` are converted for the models, the features table keeps its own.
    rows : (pandas.DataFrame, numpy.ndarray), optional
        The transaction patterns of ``features`` and each buyer's index into them, when the
        refit's own fit found them (:func:`clv_jobs.model.score_customers`).
    """
    unit = time_unit or account.model.time_unit
    rfm = rfm_frame(features)
    if unit != account.model.time_unit:
        factor = TIME_UNIT_DAYS[account.model.time_unit] / TIME_UNIT_DAYS[unit]
        rfm = rfm.assign(recency=rfm["recency"] * factor, T=rfm["T"] * factor)
        rows = None  # patterns in the features' unit
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="clv-control") as beside:
        # The control group's hashes (DuckDB, on its own threads) are computed beside the
        # predictions (NumPy, on one core).
        control_group = beside.submit(segments.assign_control_group, features["customer_id"],
                                      account.control_group_salt, account.control_group.share)
        predictions = score_customers(
            models, rfm, account.model.horizon_months, account.model.discount_rate, unit, rows,
        )
    # A Bayesian fit's scores add the intervals (clv_p10 ... p_alive_p90).
    scores = {column: predictions[column].to_numpy() for column in predictions.columns.drop("customer_id")}
    scores["segment_id"] = segments.assign_segments(
        features["freq_value"], features["rec_value"], features["days_btw_purchase"], features["tenure_days"],
        scores["clv"], scores["p_alive"], account.segments,
    )
    scores["score_id"] = segments.assign_scores(scores["clv"])
    scores["control_group"] = control_group.result()
    previous = (
        features["customer_id"].map(previous_segments).to_numpy(dtype=float)
        if previous_segments is not None else np.full(len(features), np.nan)
    )
    scores["evolution"] = segments.evolution(scores["segment_id"], previous)
    scores["model"] = pd.Categorical.from_codes(np.zeros(len(features), dtype=np.int8), [models.transaction_model])
    # The features' columns and the new ones side by side, none copied: a column set on a
    # frame is copied (copy-on-write), 0.1 s apiece in fresh memory at five million buyers.
    return pd.concat([features, pd.DataFrame(scores, index=features.index, copy=False)], axis=1)


def _previous_segments(store: Store, account_id: str, previous: dict | None) -> pd.Series | None:
    if previous is None:
        return None
    path = store.run_path(account_id, dt.date.fromisoformat(previous["as_of"]), previous["run_id"],
                          "scores.parquet")
    frame = store.read_parquet(path, columns=["customer_id", "segment_id"])
    return frame.set_index("customer_id")["segment_id"]


# -- the refit, in stages ---------------------------------------------------------------
# Each stage reads what the previous one wrote into the run's folder in the store and
# returns a small dict (``run``) naming it, so Airflow can retry one stage alone and run
# stages on different workers. Bulky intermediates live in ``<run>/work/``, removed on
# publication. Nothing is current before :func:`publish` moves the pointers.

def _run_file(store: Store, run: dict, name: str) -> str:
    return store.run_path(run["account"], dt.date.fromisoformat(run["as_of"]), run["run_id"], name)


# A stage hands its bulky tables to the next through ``<run>/work/<name>.parquet``, or,
# when :func:`refit` runs every stage in one process, through ``memory`` (a dict it
# passes along): writing and reading back millions of rows took a sixth of a refit.

def _put(store: Store, run: dict, name: str, table: pd.DataFrame | pa.Table, memory: dict | None) -> None:
    if memory is not None:
        memory[name] = table
    else:
        store.write_parquet(_run_file(store, run, f"work/{name}.parquet"), table)


def _get_arrow(store: Store, run: dict, name: str, memory: dict | None) -> pa.Table:
    if memory is not None:
        table = memory[name]
        return table if isinstance(table, pa.Table) else pa.Table.from_pandas(table, preserve_index=False)
    return store.read_arrow(_run_file(store, run, f"work/{name}.parquet"))


def _get_frame(store: Store, run: dict, name: str, memory: dict | None) -> pd.DataFrame:
    if memory is not None and isinstance(memory[name], pd.DataFrame):
        return memory[name]
    return _get_arrow(store, run, name, memory).to_pandas()


def validate(
    project: Project,
    account_id: str,
    as_of: dt.date,
    force: bool = False,
    read_at: dt.datetime | None = None,
    memory: dict | None = None,
) -> dict:
    """Stage 1: read, validate and check eligibility; keep the clean orders for the next stages.

    Parameters
    ----------
    project : Project
    account_id : str
    as_of : date
        The run sees everything before this date (account time zone).
    force : bool
        Go on even when the account is not eligible (for example a backfill before
        activation); otherwise a NotEligibleError says what is missing.
    read_at : datetime, optional
        When the data was read (naive UTC); defaults to now.
    memory : dict, optional
        Hand the clean orders to the next stages in memory (:func:`refit`), not in ``work/``.

    Returns
    -------
    dict
        ``account, as_of, run_id, previous_run, rows_clean, rows_quarantined``.
    """
    account = project.account(account_id)
    store = Store(project.store_uri)
    data = load_validated(project, account, as_of, read_at)
    con = data.con
    try:
        if not data.eligibility.eligible and not force:
            raise NotEligibleError(
                f"account {account_id} is not eligible as of {as_of}: "
                + "; ".join(data.eligibility.reasons) + " (use --force to fit anyway)"
            )
        require_rows(data.validation)
        prepare_contacts(con)
        previous = store.previous_run(account_id, as_of)
        fingerprint = _fingerprint(con, account, previous)
        run = {"account": account_id, "as_of": as_of.isoformat(), "run_id": f"{as_of:%Y%m%d}-{fingerprint[:12]}",
               "previous_run": previous["run_id"] if previous else None}
        with _step(account_id, "keep clean orders"):
            _put(store, run, "contacts", con.sql("SELECT * FROM contacts").to_arrow_table(), memory)
            store.write_parquet(_run_file(store, run, "quarantine.parquet"), quarantined_rows(con))
            if memory is not None:
                # One process: the session itself goes on to the features stage, its clean
                # orders in place (exported to Arrow and copied back, 0.5 s at 5M buyers).
                con.execute("DROP TABLE quarantine; DROP TABLE contacts; ALTER TABLE transactions DROP order_id")
                memory["session"] = con
            else:
                # The columns the features read: the order ids alone took 0.3 GB at 5M buyers.
                orders = con.sql("SELECT customer_id, order_ts, amount FROM transactions").to_arrow_table()
                _put(store, run, "transactions", orders, memory)
        store.write_json(_run_file(store, run, "validation.json"), {
            "fingerprint": fingerprint,
            "previous_run": previous,
            "eligibility": data.eligibility.as_dict(),
            "validation": data.validation.as_dict(),
        })
        return run | {"rows_clean": data.validation.rows_clean,
                      "rows_quarantined": data.validation.rows_quarantined}
    finally:
        if memory is None or memory.get("session") is not con:
            con.close()


#: Clean orders per backtest buyer (``model.backtest_max_buyers``) from which the features
#: stage takes the backtest's calibration columns in a second pass (:func:`features`).
SECOND_PASS_SAMPLES = 20


def _load_orders(con: duckdb.DuckDBPyConnection, orders: pa.Table) -> None:
    """Copy clean orders into the session's ``transactions`` table.

    A table of DuckDB's own: the feature pass reads the orders once per part of the
    customers, and each read of an Arrow table converts its text again (0.6 s more at
    five million buyers; the copy took 0.3 s).
    """
    con.register("clean_orders", orders)
    con.execute("CREATE TEMP TABLE transactions AS SELECT * FROM clean_orders")
    con.unregister("clean_orders")


def _sampled_calibration(con: duckdb.DuckDBPyConnection, table: pa.Table, account: AccountSettings,
                         as_of: dt.date, split_date: dt.date) -> pa.Table:
    """:func:`clv_jobs.backtest.calibration_rows` of the backtest's buyers, from a second pass over their orders.

    ``table`` is the pass of every buyer with ``cal_days`` alone: it says which buyers the
    backtest takes; a pass over their orders alone, in a session of its own, gives their
    calibration columns (a customer's row depends on its own orders only: the same row).
    """
    positions, buyers = backtest.backtest_buyers(table, account.model.backtest_max_buyers)
    ids = table.select(["customer_id"])  # the ids alone: filtering every column took seconds at 5M
    chosen = ids.filter(pc.greater(table["cal_days"], 0)) if positions is None else ids.take(positions)
    con.register("backtest_customers", chosen)
    orders = con.sql("SELECT * FROM transactions SEMI JOIN backtest_customers USING (customer_id)").to_arrow_table()
    con.unregister("backtest_customers")
    with closing(connect()) as backtest_session:
        _load_orders(backtest_session, orders)
        del orders
        return backtest.calibration_rows(
            feature_table(backtest_session, as_of, account.timezone, account.history_window_months,
                          account.model.time_unit, split_date), buyers=buyers)


def features(project: Project, run: dict, memory: dict | None = None) -> dict:
    """Stage 2: per-customer features of the history window and the backtest's split.

    ``work/features.parquet``: :func:`clv_jobs.features.build_features`;
    ``work/calibration.parquet``: the backtest's calibration buyers (a sample of them on a
    large account) with their inputs and holdout actuals (:func:`clv_jobs.backtest.calibration_rows`).
    """
    account = project.account(run["account"])
    store = Store(project.store_uri)
    as_of = dt.date.fromisoformat(run["as_of"])
    # In one process, validation's session with its clean orders (:func:`validate`).
    con = memory.pop("session") if memory is not None else connect()
    split_date = as_of - dt.timedelta(days=account.model.holdout_days)
    max_buyers = account.model.backtest_max_buyers
    # An account of many more buyers than the backtest takes: the pass carries only which
    # buyers it may take, and a second pass their calibration columns (every buyer's, held
    # from the pass to the sample, were 0.3 GB at five million buyers). The second pass
    # costs the same at any size (0.5 s for 250,000 buyers): below twenty clean orders per
    # sampled buyer (two million buyers or so, by default) one pass carries every column.
    sampled = max_buyers is not None and run.get("rows_clean", 0) > SECOND_PASS_SAMPLES * max_buyers
    try:
        with _step(account.account_id, "features"):
            if memory is None:
                _load_orders(con, _get_arrow(store, run, "transactions", None))
            table = feature_table(con, as_of, account.timezone, account.history_window_months,
                                  account.model.time_unit, split_date, calibration_days_only=sampled)
            calibration = (_sampled_calibration(con, table, account, as_of, split_date) if sampled
                           else backtest.calibration_rows(table, max_buyers))
    finally:
        con.close()
    frame = features_frame(table)
    del table
    if frame.empty:
        raise InputError(f"account {account.account_id}: no buyer in the {account.history_window_months}"
                         f"-month history window before {run['as_of']}")
    _put(store, run, "features", frame, memory)
    _put(store, run, "calibration", calibration, memory)
    return run | {"buyers": int(len(frame))}


def _rfm(features: pd.DataFrame) -> pd.DataFrame:
    """The models' inputs of the run's features (one row per customer: the features stage's GROUP BY)."""
    rfm = rfm_frame(features)
    rfm.attrs[UNIQUE_CUSTOMERS] = True
    return rfm


def _holdout_split(store: Store, run: dict, account: AccountSettings, memory: dict | None) -> backtest.HoldoutSplit:
    """The backtest's split of the run's history (``work/calibration.parquet``, :func:`backtest.calibration_rows`)."""
    holdout_days = account.model.holdout_days
    split_date = dt.date.fromisoformat(run["as_of"]) - dt.timedelta(days=holdout_days)
    table = _get_arrow(store, run, "calibration", memory)
    if memory is not None:
        del memory["calibration"]  # the split's alone: freed once it is built, not after the backtest
    return backtest.holdout_split(table, split_date, holdout_days, account.model.time_unit)


def _previous_model(store: Store, account_id: str, previous: dict | None) -> dict | None:
    """``model.json`` of the previous published run (what it scored with), with its run id."""
    if previous is None:
        return None
    stored = store.read_json(store.run_path(account_id, dt.date.fromisoformat(previous["as_of"]),
                                            previous["run_id"], "model.json"))
    if not stored or "parameters" not in stored:
        return None
    return stored | {"run_id": previous["run_id"]}


def _model_time_unit(stored: dict, default: str) -> str:
    """Time unit of a stored model's parameters."""
    return stored.get("time_unit") or stored.get("settings", {}).get("time_unit") or default


def _previous_on_holdout(previous: dict, split: backtest.HoldoutSplit) -> dict:
    """The previous published model's parameters scored on this run's holdout (a fair comparison)."""
    record = {"run_id": previous["run_id"], "transaction_model": previous["model"],
              "model_origin": previous.get("model_origin", previous["run_id"])}
    try:
        # Point parameters (a Bayesian model's posterior means), as the backtest's own fit.
        models = models_from_parameters(previous["model"], previous["parameters"])
        metrics = backtest.score_holdout(models, split.in_unit(_model_time_unit(previous, split.time_unit)))
    except Exception as exc:  # an unreadable previous model loses the comparison, not the refit
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return record | {"error": f"{type(exc).__name__}: {first_line}"}
    return record | {"metrics": metrics}


#: Buyers from which a refit's full-history fit runs beside its backtest (:func:`fit`).
SIDE_BY_SIDE_MIN_BUYERS = 100_000


def _fit_full_history(
    account_id: str, rfm: pd.DataFrame, settings: ModelSettings
) -> tuple[FittedModels | None, str | None, float, tuple[list[str], dict] | None]:
    """Fit the models on every buyer.

    Returns the models or, with the gate enabled, the error that stopped the fit; the fit's
    seconds; and, with the gate enabled, the gate's checks of the fit
    (:func:`clv_jobs.gate.check_fit`: run here, so that they too run beside the backtest).
    """
    models, fit_error = None, None
    started = time.perf_counter()
    with _step(account_id, f"fit {settings.transaction_model} + gamma_gamma on {len(rfm)} buyers"):
        try:
            models = fit_models(rfm, settings)
        except ModelError as exc:
            if not settings.gate.enabled:
                raise
            fit_error = str(exc)  # the quality gate reports it and keeps the previous model
    seconds = round(time.perf_counter() - started, 2)
    if not settings.gate.enabled:
        return models, fit_error, seconds, None
    with _step(account_id, "quality gate: checks of the fit"):
        return models, fit_error, seconds, gate.check_fit(models, fit_error, rfm, settings)


#: Keys of ``model.json`` that describe a run, not its model (not carried to the next run).
_RUN_KEYS = frozenset({"run_id", "settings", "fingerprint", "backtest", "model_choice", "stage_seconds", "gate",
                       "rejected"})


def fit(project: Project, run: dict, memory: dict | None = None) -> dict:
    """Stage 3: backtest (and choose) the model, fit it, pass it through the quality gate.

    1. Backtest (:mod:`clv_jobs.backtest`): the history is split ``holdout_days`` before
       the as-of date; the account's model (``auto``: each candidate) is fitted on the
       calibration part and scored on the holdout, beside a naive baseline.
    2. Fit the (chosen) model on the full history.
    3. Quality gate (:mod:`clv_jobs.gate`, ``model.gate``). A fit that fails it is not
       published: the previous published model's parameters go into ``model.json`` (the
       score stage rescores every buyer with them; the run's status becomes
       ``published_with_previous_model``) and the rejected fit is kept under
       ``"rejected"``. A first model that fails it publishes nothing
       (:class:`clv_jobs.gate.QualityGateError`).

    ``model.json``: ``model, parameters, diagnostics, time_unit, model_origin`` (the run
    whose fit the parameters are), ``settings, fingerprint, backtest, model_choice, gate,
    stage_seconds`` and, for a rejected fit, ``rejected``.

    Returns
    -------
    dict
        ``run`` plus ``model`` (the model that scores), ``fit_seconds`` and ``gate_passed``.
    """
    account = project.account(run["account"])
    account_id = account.account_id
    settings = account.model
    store = Store(project.store_uri)
    checks = store.read_json(_run_file(store, run, "validation.json"))
    rfm = _rfm(_get_frame(store, run, "features", memory))
    seconds: dict[str, float] = {}
    # A named MAP model's full-history fit, and the gate's checks of it, do not wait for the
    # backtest: they run beside it, in a thread (NumPy leaves the GIL in its sums over many
    # patterns; on a small account the two threads would only take turns). ``auto`` fits the
    # model the backtest chooses; a Bayesian fit keeps every core busy by itself.
    side_by_side = (settings.transaction_model != "auto" and settings.fit_method == "map"
                    and len(rfm) >= SIDE_BY_SIDE_MIN_BUYERS)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="clv-fit") as beside:
        early_fit = beside.submit(_fit_full_history, account_id, rfm, settings) if side_by_side else None

        started = time.perf_counter()
        with _step(account_id, f"backtest ({settings.transaction_model}, last {settings.holdout_days} days held out)"):
            split = _holdout_split(store, run, account, memory)
            name, backtest_record, choice = backtest.run_backtest(split, settings)
            previous = _previous_model(store, account_id, checks["previous_run"])
            if previous is not None and "model" in backtest_record:
                backtest_record["previous"] = _previous_on_holdout(previous, split)
        seconds["backtest"] = round(time.perf_counter() - started, 2)
        if "skipped" in backtest_record:
            log.info("%s: backtest skipped: %s", account_id, backtest_record["skipped"])
        else:
            log.info("%s: backtest %s: purchase MAE %.4f (naive %.4f), aggregate %+.1f %%", account_id, name,
                     backtest_record["model"]["purchases_mae"], backtest_record["naive"]["purchases_mae"],
                     backtest_record["model"]["purchases_error_pct"] or 0.0)
        del split

        concrete = settings.model_copy(update={"transaction_model": name})
        models, fit_error, seconds["fit"], fit_checks = (
            early_fit.result() if early_fit else _fit_full_history(account_id, rfm, concrete))

    if settings.gate.enabled:
        with _step(account_id, "quality gate"):
            started = time.perf_counter()
            verdict = gate.evaluate(models, fit_error, rfm, concrete, backtest_record,
                                    backtest_record.get("previous"), fit_checks)
            seconds["gate"] = round(time.perf_counter() - started, 2)
    else:
        verdict = gate.GateResult(enabled=False, passed=True, reasons=[], checks={})

    record = {
        "settings": settings.model_dump(mode="json"),
        "fingerprint": checks["fingerprint"],
        "backtest": gate.json_safe(backtest_record),
        "model_choice": gate.json_safe(choice),
        "stage_seconds": seconds,
    }
    if verdict.passed:
        if memory is not None:
            # The score stage scores these very buyers with this fit: its patterns, not found
            # again (a second at five million buyers; none after a Bayesian fit), and the
            # predictions the gate computed on them.
            memory["fitted_models"] = models
        store.write_json(_run_file(store, run, "model.json"), record | {
            "model": name,
            "parameters": models.parameters,
            "diagnostics": models.diagnostics | {"fit_seconds": seconds["fit"]},
            "time_unit": settings.time_unit,
            "model_origin": run["run_id"],
            "gate": verdict.as_dict(run["run_id"]) | ({} if verdict.enabled else {"passed": None}),
        } | ({"posterior": models.posterior} if models.posterior else {}))
        return run | {"model": name, "fit_seconds": seconds["fit"], "gate_passed": True}

    rejected = {"model": name, "reasons": verdict.reasons, "error": fit_error,
                "parameters": gate.json_safe(models.parameters) if models else None,
                "diagnostics": gate.json_safe(models.diagnostics | {"fit_seconds": seconds["fit"]}) if models else None}
    if previous is None:
        store.write_json(_run_file(store, run, "model.json"),
                         record | {"gate": verdict.as_dict(None), "rejected": rejected})
        raise gate.QualityGateError(
            f"account {account_id}: the {name} model fails the quality gate and there is no previous model "
            f"to keep, so nothing was published: {'; '.join(verdict.reasons)}")
    log.warning("%s: QUALITY GATE FAILED, the %s fit is not published; every buyer is rescored with the "
                "previous model (%s of run %s): %s", account_id, name, previous["model"], previous["run_id"],
                "; ".join(verdict.reasons))
    # Everything that describes the previous model (parameters, diagnostics, whatever else
    # its fit stored), none of what describes its run.
    kept = {key: value for key, value in previous.items() if key not in _RUN_KEYS}
    store.write_json(_run_file(store, run, "model.json"), record | kept | {
        "diagnostics": previous.get("diagnostics", {}),
        "time_unit": _model_time_unit(previous, settings.time_unit),
        "model_origin": previous.get("model_origin", previous["run_id"]),
        "gate": verdict.as_dict(previous["run_id"]),
        "rejected": rejected,
    })
    return run | {"model": previous["model"], "fit_seconds": seconds["fit"], "gate_passed": False}


def score(project: Project, run: dict, memory: dict | None = None) -> dict:
    """Stage 4: score, segment and group every buyer with the stored model (``scores.parquet``)."""
    account = project.account(run["account"])
    store = Store(project.store_uri)
    stored = store.read_json(_run_file(store, run, "model.json"))
    # In one process, the fit that passed the gate (the model.json parameters, and the
    # patterns of these very buyers); in a task of its own, the model rebuilt from model.json.
    fitted = memory.pop("fitted_models", None) if memory is not None else None
    models = fitted or models_from_parameters(stored["model"], stored["parameters"], stored.get("posterior"))
    previous = store.read_json(_run_file(store, run, "validation.json"))["previous_run"]
    with _step(account.account_id, "score and segment"):
        table = score_account(_get_frame(store, run, "features", memory), models,
                              account, _previous_segments(store, account.account_id, previous),
                              time_unit=_model_time_unit(stored, account.model.time_unit),
                              rows=fitted.fitted_rows if fitted else None)
    path = _run_file(store, run, "scores.parquet")
    # In Arrow once: the Parquet file and the Datamodel are both written from it.
    scores = pa.Table.from_pandas(table, preserve_index=False)
    if memory is not None:
        del memory["features"]  # the scores hold every column of them
        memory["scores"] = scores
    if memory is not None and "writer" in memory:
        # The Parquet write runs beside the Datamodel's CSV write, in refit's writer thread
        # (alone, each left a core idle: 3.5 s saved at five million buyers).
        memory["writes"].append(memory["writer"].submit(store.write_parquet, path, scores))
    else:
        store.write_parquet(path, scores)
    return run


def datamodel(project: Project, run: dict, memory: dict | None = None) -> dict:
    """Stage 5: write the Datamodel CSV into the run (skipped when the account disables it)."""
    account = project.account(run["account"])
    if not account.datamodel.enabled:
        return run | {"datamodel": None}
    store = Store(project.store_uri)
    as_of = dt.date.fromisoformat(run["as_of"])
    file_name = account.datamodel_file_name(as_of)
    con = connect()
    try:
        con.register("contacts", _get_arrow(store, run, "contacts", memory))
        scores = memory["scores"] if memory is not None else store.read_arrow(_run_file(store, run, "scores.parquet"))
        with tempfile.TemporaryDirectory(prefix="clv-") as workdir, _step(account.account_id, "Datamodel"):
            stored = _run_file(store, run, file_name)
            # A local store gets the file where it belongs (written beside it, then renamed):
            # no copy of hundreds of MB; an object store gets it uploaded in one stream.
            local_file = Path(stored) if store.is_local else Path(workdir) / file_name
            written = write_datamodel(
                con, scores, local_file, account.timezone,
                account.labels_locale, account.datamodel.extra_columns, account.datamodel.gzip,
            )
            if not store.is_local:
                store.upload(str(local_file), stored)
    finally:
        con.close()
    return run | {"datamodel": written | {"file": file_name}}


def publish(project: Project, run: dict) -> dict:
    """Stage 6: write the run summary and make the run current (one step); drop ``work/``.

    Returns
    -------
    dict
        The run summary (also stored as ``summary.json``).
    """
    account_id = run["account"]
    store = Store(project.store_uri)
    as_of = dt.date.fromisoformat(run["as_of"])
    checks = store.read_json(_run_file(store, run, "validation.json"))
    stored = store.read_json(_run_file(store, run, "model.json"))
    table = store.read_parquet(_run_file(store, run, "scores.parquet"),
                               columns=["segment_id", "score_id", "control_group", "evolution", "clv"])

    def counts(column: str) -> dict[str, int]:
        # Categorical columns count their unused labels too: only the ones present are listed.
        return {str(k): int(v) for k, v in sorted(table[column].value_counts().items()) if v}

    gate_record = stored.get("gate") or {}
    kept_previous = gate_record.get("passed") is False
    # The model version names the run whose fit scored this one (the previous run's when
    # the gate kept it), so every score traces back to its parameters.
    model_version = f"{stored['model']}@{stored.get('model_origin', run['run_id'])}"
    summary = {
        "account": account_id,
        "as_of": run["as_of"],
        "run_id": run["run_id"],
        "status": "published_with_previous_model" if kept_previous else "published",
        "model": stored["model"],
        "model_version": model_version,
        "buyers": int(len(table)),
        "fit_seconds": stored.get("stage_seconds", {}).get("fit", stored["diagnostics"].get("fit_seconds")),
        "backtest_seconds": stored.get("stage_seconds", {}).get("backtest"),
        "backtest": stored.get("backtest"),
        "model_choice": stored.get("model_choice"),
        "gate": {key: gate_record.get(key) for key in ("enabled", "passed", "reasons", "model_used")},
        "segments": counts("segment_id"),
        "scores": counts("score_id"),
        "control_group": int((table["control_group"] == "CONTROL").sum()),
        "evolution": counts("evolution"),
        "total_clv": round(float(table["clv"].sum()), 2),
        "previous_run": checks["previous_run"]["run_id"] if checks["previous_run"] else None,
        "fingerprint": checks["fingerprint"],
        "eligibility": checks["eligibility"],
        "validation": checks["validation"],
        "datamodel": run.get("datamodel"),
        "clv_jobs_version": clv_jobs.__version__,
    }
    store.write_json(_run_file(store, run, "summary.json"), summary)
    if kept_previous:
        log.warning("%s: run %s published with the previous model (%s): the quality gate rejected this "
                    "refit: %s", account_id, run["run_id"], model_version, "; ".join(gate_record["reasons"]))
    store.publish_run(account_id, as_of, {"as_of": run["as_of"], "run_id": run["run_id"],
                                          "datamodel": summary["datamodel"], "model_version": model_version})
    store.remove(_run_file(store, run, "work"))
    if store.activation(account_id) is None and checks["eligibility"]["eligible"]:
        store.activate(account_id, as_of)
    return summary


def refit(
    project: Project,
    account_id: str,
    as_of: dt.date,
    force: bool = False,
    read_at: dt.datetime | None = None,
) -> dict:
    """Refit the account's models and rescore every buyer; publish the run to the store.

    The stages :func:`validate` → :func:`features` → :func:`fit` → :func:`score` →
    :func:`datamodel` → :func:`publish` in one process (the Airflow DAG runs them as tasks).
    Arguments as for :func:`validate`; returns the run summary.
    """
    # One process: the stages hand their tables over in memory, not through work/, and a
    # stage may leave a write to the writer thread; every write is done before publishing
    # (and, on a failure, before the error propagates).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="clv-write") as writer:
        memory: dict = {"writer": writer, "writes": []}
        run = validate(project, account_id, as_of, force=force, read_at=read_at, memory=memory)
        for stage in (features, fit, score, datamodel):
            run = stage(project, run, memory=memory)
        for write in memory["writes"]:
            write.result()
    return publish(project, run)


def export(project: Project, account_id: str, as_of: dt.date | None = None) -> dict:
    """Deliver the published Datamodel of ``as_of`` (default: the latest run).

    Returns
    -------
    dict
        ``account, as_of, run_id, file, deliveries`` (one entry per destination).
    """
    account = project.account(account_id)
    store = Store(project.store_uri)
    pointer = store.run_for(account_id, as_of) if as_of else store.latest_run(account_id)
    if pointer is None:
        when = f"as of {as_of}" if as_of else "yet"
        raise InputError(f"account {account_id}: no published run {when}; run `clv refit` first")
    datamodel = pointer.get("datamodel")
    if not datamodel:
        raise InputError(f"account {account_id}: run {pointer['run_id']} has no Datamodel (disabled)")
    run_day = dt.date.fromisoformat(pointer["as_of"])
    manifest = {
        "account": account_id,
        "as_of": pointer["as_of"],
        "file": datamodel["file"],
        "rows": datamodel["rows"],
        "bytes": datamodel["bytes"],
        "sha256": datamodel["sha256"],
        "model_version": pointer["model_version"],
    }
    with tempfile.TemporaryDirectory(prefix="clv-export-") as workdir:
        stored = store.run_path(account_id, run_day, pointer["run_id"], datamodel["file"])
        local_file = Path(workdir) / datamodel["file"]
        if store.is_local:
            local_file = Path(stored)  # delivered from where it lies: no copy of a file of hundreds of MB
        else:
            store.download(stored, str(local_file))
        destinations = [
            dest.model_copy(update={"path": project.resolve(dest.path)}) if dest.type == "local" else dest
            for dest in account.datamodel.destinations
        ]
        deliveries = delivery.deliver(local_file, destinations, manifest, project.connection_resolver)
    log.info("%s: delivered %s to %d destination(s)", account_id, datamodel["file"], len(deliveries))
    return {"account": account_id, "as_of": pointer["as_of"], "run_id": pointer["run_id"],
            "file": datamodel["file"], "rows": datamodel["rows"], "deliveries": deliveries}
