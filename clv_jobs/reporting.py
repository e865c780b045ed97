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


def _finish(title: str, rows: list[dict]) -> dict:
    for row in rows:
        log.info("%s | %-24s | %-10s | %s", title, row["account"], row["status"], row.get("detail", ""))
    failed = [row["account"] for row in rows if row["status"] == "failed"]
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    report = {"accounts": rows, "counts": counts}
    if failed:
        raise AccountsFailed(f"{title}: {len(failed)} of {len(rows)} account(s) failed: {', '.join(failed)}")
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

    Status: ``delivered``, ``published`` (delivery off), ``skipped`` (not eligible),
    ``failed`` (with the failing task and its error) or ``incomplete``.
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
        elif stages.get("export", {}).get("state") == "success":
            row = {"status": "delivered", "detail": published["run_id"] if published else ""}
        elif stages.get("publish", {}).get("state") == "success":
            row = {"status": "published", "detail": published["run_id"] if published else ""}
        else:
            row = {"status": "failed", "detail": "did not complete (no outcome recorded for every stage)"}
        rows.append({"account": account, "as_of": job["as_of"], **row,
                     "hosts": sorted({o["hostname"] for o in outcomes.values() if o.get("hostname")})})
    return _finish("refit", rows)
