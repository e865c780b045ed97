"""What the CLV DAGs share: tags, retry policy, the as-of date of a run, the account label.

Not a DAG (listed in ``.airflowignore``). Imports only the standard library and pendulum, so
parsing the DAG files stays fast; ``clv_jobs`` is imported inside the tasks.
"""

from __future__ import annotations

import datetime as dt
import enum
import os

import pendulum

#: Highest number of accounts processed at once by a heavy task, per DAG (memory bound:
#: one big account's fit can take several GB).
MAX_PARALLEL_ACCOUNTS = int(os.environ.get("CLV_MAX_PARALLEL_ACCOUNTS", "2"))

DEFAULT_ARGS = {
    "owner": "clv",
    "retries": 2,
    # Transient faults (a warehouse restart, a full disk being cleaned) pass within minutes.
    "retry_delay": pendulum.duration(seconds=int(os.environ.get("CLV_RETRY_DELAY_SECONDS", "120"))),
    "retry_exponential_backoff": True,
    "max_retry_delay": pendulum.duration(minutes=30),
}

START_DATE = pendulum.datetime(2025, 1, 1, tz="UTC")


class Tag(enum.StrEnum):
    """Every tag a CLV DAG may carry (a typo fails the DAG tests)."""

    CLV = "clv"
    DAILY = "daily"
    MONTHLY = "monthly"


def run_date(context) -> dt.date:
    """The UTC date the run is for: ``run_after`` (set for scheduled and manual runs alike)."""
    return pendulum.instance(context["dag_run"].run_after).in_timezone("UTC").date()


def label_account(account_id: str) -> None:
    """Show the account id as the mapped task's name in the UI (``map_index_template``)."""
    from airflow.sdk import get_current_context

    get_current_context()["account_id"] = account_id


def project():
    """The CLV project of this deployment (``$CLV_CONFIG_DIR``), reading Airflow connections."""
    from clv_jobs.settings import load_project

    configured = load_project()
    configured.connection_resolver = airflow_connection_uri
    return configured


def airflow_connection_uri(conn_id: str) -> str | None:
    """A source's ``conn_id`` as a URI, from Airflow's connections (env, secrets backend, DB)."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return BaseHook.get_connection(conn_id).get_uri()
    except AirflowNotFoundException:
        return None  # clv_jobs then says where it looked
