"""
### CLV daily eligibility

Every day, for each configured account (one mapped task per account, named by its id):
check eligibility as of today — first purchase at least 4 months back, at least 500 buyers,
a buyer with 3 or more purchases, or the account's own thresholds — and record the result
in the store. An account eligible for the first time is **activated**, and
`clv_monthly_refit` is triggered at once for the accounts activated today, so they get
their first scores the same day (SPEC "Jobs" 1).

Code: `clv_jobs.pipeline.check_eligibility`.

**Manual trigger parameters**

| param | meaning |
|---|---|
| `accounts` | account ids to check; empty = every enabled account |
| `as_of` | check as of this date (YYYY-MM-DD); empty = the run's date |
| `first_refit` | trigger the first refit of newly activated accounts (default on) |
"""

from __future__ import annotations

from pathlib import Path

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Param, dag, task
from clv_dag_support import (
    DEFAULT_ARGS,
    MAX_PARALLEL_ACCOUNTS,
    START_DATE,
    Tag,
    label_account,
    project,
    run_date,
)


@dag(
    dag_id=Path(__file__).stem,
    schedule="@daily",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    tags=[Tag.CLV, Tag.DAILY],
    default_args=DEFAULT_ARGS,
    doc_md=__doc__,
    params={
        "accounts": Param([], type="array", items={"type": "string"}, title="Accounts",
                          description="Account ids to check; empty means every enabled account."),
        "as_of": Param(None, type=["null", "string"], format="date", title="As-of date",
                       description="YYYY-MM-DD; empty means the run's date."),
        "first_refit": Param(True, type="boolean", title="First refit",
                             description="Trigger the first refit of accounts activated by this run."),
    },
)
def clv_daily_eligibility():
    @task
    def list_accounts(params=None, **context) -> list[dict]:
        """One job per account: what the mapped check needs."""
        configured = project()
        accounts = params["accounts"] or sorted(a for a, s in configured.accounts.items() if s.enabled)
        for account_id in accounts:
            configured.account(account_id)  # an unknown id fails here, naming the known ones
        as_of = params["as_of"] or run_date(context).isoformat()
        return [{"account_id": account_id, "as_of": as_of} for account_id in accounts]

    @task(map_index_template="{{ account_id }}", max_active_tis_per_dag=MAX_PARALLEL_ACCOUNTS)
    def check_eligibility(job: dict) -> dict:
        import datetime as dt

        from clv_jobs import pipeline

        label_account(job["account_id"])
        return pipeline.check_eligibility(project(), job["account_id"], dt.date.fromisoformat(job["as_of"]))

    @task(trigger_rule="all_done")
    def first_refit_conf(results: list[dict], params=None) -> dict:
        """The refit DAG's conf for the accounts activated today; skips the trigger if none.

        Runs even when some checks failed: the other accounts' activation must not wait.
        """
        from airflow.sdk.exceptions import AirflowSkipException

        activated = [r for r in results if r and r["newly_activated"]]
        if not activated or not params["first_refit"]:
            raise AirflowSkipException("no account became eligible today")
        return {"accounts": sorted(r["account"] for r in activated), "as_of": activated[0]["as_of"],
                "deliver": True, "force": False}

    @task(trigger_rule="all_done")
    def report(jobs: list[dict], results: list[dict]) -> dict:
        """One line per account; fails (after the others are done) if any check failed."""
        from clv_jobs.reporting import eligibility_report

        return eligibility_report([job["account_id"] for job in jobs], [r for r in results if r])

    jobs = list_accounts()
    results = check_eligibility.expand(job=jobs)
    TriggerDagRunOperator(
        task_id="trigger_first_refit",
        trigger_dag_id="clv_monthly_refit",
        conf=first_refit_conf(results),
    )
    report(jobs, results)


clv_daily_eligibility()
