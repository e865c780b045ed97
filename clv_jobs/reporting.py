"""Per-account outcomes of orchestrated runs, and the reports the DAGs end with.

The Airflow listener in ``plugins/clv_outcomes.py`` records, for every account task it
sees, one small JSON object in the store (``<account>/airflow/<dag_id>/<run_id>/<task>.json``:
state, error, host, try). The reports read those records back, so a final task can tell
every account's outcome, including the accounts whose tasks failed and pushed nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
import re

from clv_jobs.errors import ClvError
from clv_jobs.settings import Project
from clv_jobs.store import Store

log = logging.getLogger("clv_jobs")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def outcome_folder(store: Store, account_id: str, dag_id: str, run_id: str) -> str:
    """Where one DAG run's task outcomes of one account are kept."""
    return store.path(account_id, "airflow", _safe(dag_id), _safe(run_id))


def record_outcome(store: Store, account_id: str, dag_id: str, run_id: str, task_id: str, outcome: dict) -> None:
    """Keep one task's outcome (replacing the record of an earlier try)."""
    store.write_json(f"{outcome_folder(store, account_id, dag_id, run_id)}/{_safe(task_id)}.json", outcome)


def read_outcomes(store: Store, account_id: str, dag_id: str, run_id: str) -> dict[str, dict]:
    """Task id → recorded outcome, for one account and DAG run."""
    folder = outcome_folder(store, account_id, dag_id, run_id)
    return {name.removesuffix(".json"): store.read_json(f"{folder}/{name}")
            for name in store.list_files(folder) if name.endswith(".json")}


class AccountsFailed(ClvError):
    """Some accounts of an orchestrated run failed (the others completed)."""


#: Row status of an account whose refit failed the quality gate: its buyers were rescored
#: with the previous model and delivered, but the run is flagged (the report then fails).
KEPT_PREVIOUS_MODEL = "published_with_previous_model"


def _finish(title: str, rows: list[dict]) -> dict:
    for row in rows:
        log.info("%s | %-24s | %-10s | %s", title, row["account"], row["status"], row.get("detail", ""))
    failed = [row["account"] for row in rows if row["status"] == "failed"]
    kept = [row["account"] for row in rows if row["status"] == KEPT_PREVIOUS_MODEL]
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    report = {"accounts": rows, "counts": counts}
    problems = []
    if failed:
        problems.append(f"{len(failed)} of {len(rows)} account(s) failed: {', '.join(failed)}")
    if kept:
        for account in kept:
            log.warning("%s | %s: quality gate failed, published with the previous model", title, account)
        problems.append(f"{len(kept)} of {len(rows)} account(s) published with the previous model because "
                        f"their refit failed the quality gate (every buyer was still rescored and "
                        f"delivered): {', '.join(kept)}")
    if problems:
        raise AccountsFailed(f"{title}: " + "; ".join(problems))
    return report


def eligibility_report(accounts: list[str], results: list[dict]) -> dict:
    """One row per planned account of a daily check; fails if any account has no result."""
    by_account = {r["account"]: r for r in results}
    rows = []
    for account in accounts:
        result = by_account.get(account)
        if result is None:
            rows.append({"account": account, "status": "failed", "detail": "the check failed (see its task log)"})
        elif result["newly_activated"]:
            rows.append({"account": account, "status": "activated", "detail": f"{result['buyers']} buyers"})
        else:
            status = "eligible" if result["eligible"] else ("lapsed" if result["lapsed"] else "not eligible")
            rows.append({"account": account, "status": status, "detail": "; ".join(result["reasons"])})
    return _finish("eligibility", rows)


def refit_report(project: Project, jobs: list[dict], dag_id: str, run_id: str) -> dict:
    """One row per planned account of a refit run, from the recorded outcomes and the store.

    Status: ``delivered``, ``published`` (delivery off), ``published_with_previous_model``
    (the refit failed the quality gate: the previous model rescored every buyer, and the
    Datamodel was built and delivered as usual; the report fails to flag it), ``skipped``
    (not eligible), ``failed`` (with the failing task and its error) or ``incomplete``.
    """
    store = Store(project.store_uri)
    rows = []
    for job in jobs:
        account = job["account"]
        outcomes = read_outcomes(store, account, dag_id, run_id)
        stages = {task_id.rsplit(".", 1)[-1]: outcome for task_id, outcome in outcomes.items()}
        failed = [(stage, o) for stage, o in stages.items() if o["state"] == "failed"]
        published = store.run_for(account, dt.date.fromisoformat(job["as_of"]))
        if failed:
            stage, outcome = failed[0]
            row = {"status": "failed", "detail": f"{stage}: {outcome.get('error') or 'failed'}"}
        elif stages.get("validate", {}).get("state") == "skipped":
            row = {"status": "skipped", "detail": stages["validate"].get("error") or "not eligible"}
        elif stages.get("publish", {}).get("state") == "success" and _kept_previous(store, account, published):
            summary = _summary(store, account, published)
            delivered = "delivered" if stages.get("export", {}).get("state") == "success" else "not delivered"
            row = {"status": KEPT_PREVIOUS_MODEL,
                   "detail": f"{published['run_id']} scored with {summary['model_version']} ({delivered}); "
                             f"quality gate: {'; '.join(summary['gate']['reasons'])}"}
        elif stages.get("export", {}).get("state") == "success":
            row = {"status": "delivered", "detail": published["run_id"] if published else ""}
        elif stages.get("publish", {}).get("state") == "success":
            row = {"status": "published", "detail": published["run_id"] if published else ""}
        else:
            row = {"status": "failed", "detail": "did not complete (no outcome recorded for every stage)"}
        rows.append({"account": account, "as_of": job["as_of"], **row,
                     "hosts": sorted({o["hostname"] for o in outcomes.values() if o.get("hostname")})})
    return _finish("refit", rows)


def _summary(store: Store, account: str, pointer: dict) -> dict:
    return store.read_json(store.run_path(account, dt.date.fromisoformat(pointer["as_of"]), pointer["run_id"],
                                          "summary.json")) or {}


def _kept_previous(store: Store, account: str, pointer: dict | None) -> bool:
    """Whether the published run kept the previous model (quality gate failed)."""
    return pointer is not None and _summary(store, account, pointer).get("status") == KEPT_PREVIOUS_MODEL
