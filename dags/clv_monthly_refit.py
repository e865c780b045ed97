"""
### CLV monthly refit

On the 1st of each month (UTC), for every **activated** account (one mapped group per
account, named by its id): refit its Buy-Till-You-Die models and rescore every buyer, then
deliver the Datamodel. The as-of date is the 1st of the run's month: the run sees every
order up to the end of the previous month.

`validate → features → fit → score → datamodel → publish → export`, each a task calling one
stage of `clv_jobs.pipeline`, so a failed stage is retried alone; `export` is separate so a
delivery can be retried without a refit. An account that is no longer eligible is skipped
(it keeps its last model). One account's failure never blocks the others; `summary` runs
after all of them, reports every account's outcome, and fails if any account failed.

**Backtest, model choice, quality gate** (all in `fit`). Every refit first fits the
account's model on its history minus the last `holdout_days` (90) and scores that holdout,
beside a naive baseline (`model.json` and the run summary keep the figures; `auto` picks
the model here). The fit on the full history must then pass the quality gate (converged,
no parameter at a bound, finite predictions, MCMC r-hat/ESS, backtest no more than 10 %
worse than the previous published model's on the same holdout).

**`published_with_previous_model`: failed but non-blocking.** A refit that fails the gate
is not published as the new model: `fit` succeeds, `score → datamodel → publish → export`
rescore **every buyer with the previous run's parameters** and deliver the Datamodel as
usual (the rejected fit is kept under `rejected` in `model.json`), and a WARNING is logged.
`summary` lists such accounts with the gate's reasons and **fails at the end**, after every
other account and stage has completed, so the run shows red and someone looks at the
model. Nothing needs re-running: the delivered file is complete and correct for the
previous model. A **first** model that fails the gate has nothing to fall back on: its
`fit` task fails at once (no retry: the verdict would not change) and nothing is published.

**Manual trigger parameters** (also how `clv_daily_eligibility` asks for a first refit)

| param | meaning |
|---|---|
| `accounts` | account ids; empty = every activated, enabled account |
| `as_of` | YYYY-MM-DD; empty = the 1st of the run's month (backfill: any past date) |
| `deliver` | deliver the Datamodel to the account's destinations (default on) |
| `force` | refit even accounts that are not eligible or not activated |
"""

from __future__ import annotations

from pathlib import Path

from airflow.sdk import Param, dag, get_current_context, task, task_group
from clv_dag_support import (
    DEFAULT_ARGS,
    MAX_PARALLEL_ACCOUNTS,
    START_DATE,
    Tag,
    label_account,
    project,
    run_date,
)

ACCOUNT_TASK = {"map_index_template": "{{ account_id }}", "max_active_tis_per_dag": MAX_PARALLEL_ACCOUNTS}


@dag(
    dag_id=Path(__file__).stem,
    schedule="0 3 1 * *",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    tags=[Tag.CLV, Tag.MONTHLY],
    default_args=DEFAULT_ARGS,
    doc_md=__doc__,
    params={
        "accounts": Param([], type="array", items={"type": "string"}, title="Accounts",
                          description="Account ids; empty means every activated, enabled account."),
        "as_of": Param(None, type=["null", "string"], format="date", title="As-of date",
                       description="YYYY-MM-DD; empty means the 1st of the run's month."),
        "deliver": Param(True, type="boolean", title="Deliver",
                         description="Deliver the Datamodel to the account's destinations."),
        "force": Param(False, type="boolean", title="Force refit",
                       description="Refit even accounts that are not eligible or not activated."),
    },
)
def clv_monthly_refit():
    @task
    def plan(params=None, **context) -> list[dict]:
        """One job per account to refit."""
        from clv_jobs.store import Store

        configured = project()
        as_of = params["as_of"] or run_date(context).replace(day=1).isoformat()
        if params["accounts"]:
            accounts = [configured.account(a).account_id for a in params["accounts"]]
        else:
            store = Store(configured.store_uri)
            accounts = [a for a, s in sorted(configured.accounts.items())
                        if s.enabled and (params["force"] or store.activation(a))]
        return [{"account": a, "as_of": as_of, "force": params["force"], "deliver": params["deliver"]}
                for a in accounts]

    @task_group
    def refit_account(job: dict):
        @task(**ACCOUNT_TASK)
        def validate(job: dict) -> dict:
            import datetime as dt

            from airflow.sdk.exceptions import AirflowSkipException

            from clv_jobs import pipeline
            from clv_jobs.errors import NotEligibleError

            label_account(job["account"])
            try:
                run = pipeline.validate(project(), job["account"], dt.date.fromisoformat(job["as_of"]),
                                        force=job["force"])
            except NotEligibleError as exc:  # SPEC: it keeps its last model, flagged
                raise AirflowSkipException(str(exc)) from exc
            return run | {"deliver": job["deliver"]}

        @task(**ACCOUNT_TASK)
        def features(run: dict) -> dict:
            from clv_jobs import pipeline

            label_account(run["account"])
            return pipeline.features(project(), run)

        @task(**ACCOUNT_TASK)
        def fit(run: dict) -> dict:
            from airflow.sdk.exceptions import AirflowFailException

            from clv_jobs import pipeline
            from clv_jobs.gate import QualityGateError

            label_account(run["account"])
            try:
                return pipeline.fit(project(), run)
            except QualityGateError as exc:  # a first model failing the gate: a retry would refit in vain
                raise AirflowFailException(str(exc)) from exc

        @task(**ACCOUNT_TASK)
        def score(run: dict) -> dict:
            from clv_jobs import pipeline

            label_account(run["account"])
            return pipeline.score(project(), run)

        @task(**ACCOUNT_TASK)
        def datamodel(run: dict) -> dict:
            from clv_jobs import pipeline

            label_account(run["account"])
            return pipeline.datamodel(project(), run)

        @task(**ACCOUNT_TASK)
        def publish(run: dict) -> dict:
            from clv_jobs import pipeline

            label_account(run["account"])
            return pipeline.publish(project(), run) | {"deliver": run["deliver"]}

        @task(**ACCOUNT_TASK)
        def export(summary: dict) -> dict:
            import datetime as dt

            from airflow.sdk.exceptions import AirflowSkipException

            from clv_jobs import pipeline

            label_account(summary["account"])
            if not summary["deliver"]:
                raise AirflowSkipException("delivery turned off for this run")
            return pipeline.export(project(), summary["account"], dt.date.fromisoformat(summary["as_of"]))

        return export(publish(datamodel(score(fit(features(validate(job)))))))

    @task(trigger_rule="all_done")
    def summary(jobs: list[dict]) -> dict:
        """Every account's outcome, read from the store; fails if any account failed or kept its previous model."""
        from clv_jobs.reporting import refit_report

        context = get_current_context()
        return refit_report(project(), jobs, context["dag"].dag_id, context["run_id"])

    jobs = plan()
    refit_account.expand(job=jobs) >> summary(jobs)


clv_monthly_refit()
