"""Airflow plugin: record every CLV account task's outcome in the account's store.

A listener sees each task instance finish (success, failure, skip) in the worker that ran
it. For the tasks of the CLV DAGs that work on one account (their mapped task is named by
the account id), it writes the state, the error's first line, the host and the try number
through :func:`clv_jobs.reporting.record_outcome`. The DAGs' final tasks read these records
to report every account's outcome — also for accounts whose tasks failed and pushed nothing.
A failure to record is logged and never fails the task.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys

from airflow.listeners import hookimpl
from airflow.plugins_manager import AirflowPlugin

log = logging.getLogger(__name__)

CLV_DAG_PREFIX = "clv_"


def _record(task_instance, state: str, error=None) -> None:
    account = getattr(task_instance, "rendered_map_index", None)
    if not task_instance.dag_id.startswith(CLV_DAG_PREFIX) or not account:
        return
    try:
        from clv_jobs.reporting import record_outcome
        from clv_jobs.settings import load_project
        from clv_jobs.store import Store

        message = str(error).strip().splitlines()[0] if error and str(error).strip() else None
        record_outcome(
            Store(load_project().store_uri), account, task_instance.dag_id, task_instance.run_id,
            task_instance.task_id,
            {"state": state, "error": message, "hostname": getattr(task_instance, "hostname", None),
             "try_number": getattr(task_instance, "try_number", None),
             "recorded_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")},
        )
    except Exception:  # recording is best effort: the task's own outcome stands
        log.exception("could not record the outcome of %s for account %s", task_instance.task_id, account)


class _Listener:
    @hookimpl
    def on_task_instance_success(self, previous_state, task_instance):
        _record(task_instance, "success")

    @hookimpl
    def on_task_instance_failed(self, previous_state, task_instance, error):
        _record(task_instance, "failed", error)

    @hookimpl
    def on_task_instance_skipped(self, previous_state, task_instance):
        _record(task_instance, "skipped", _skip_reason())


def _skip_reason() -> str | None:
    # The skip hook gets no exception: the one being handled is the AirflowSkipException.
    error = sys.exc_info()[1]
    return str(error) if error else None


class ClvOutcomesPlugin(AirflowPlugin):
    """Registers the listener that records CLV account outcomes."""

    name = "clv_outcomes"
    listeners = [_Listener()]
