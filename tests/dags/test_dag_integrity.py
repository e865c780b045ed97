"""Every DAG imports cleanly, cheaply, and follows the project's DAG rules."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.dags.conftest import DAGS

DAG_IDS = ["clv_daily_eligibility", "clv_monthly_refit"]
HEAVY_MODULES = ["pandas", "numpy", "pymc", "pymc_marketing", "pytensor", "duckdb", "pyarrow", "scipy",
                 "clv_jobs.pipeline", "clv_jobs.model"]


@pytest.fixture(scope="module")
def dag_bag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_no_import_errors(dag_bag):
    assert dag_bag.import_errors == {}, "\n".join(f"{k}:\n{v}" for k, v in dag_bag.import_errors.items())
    assert sorted(dag_bag.dag_ids) == DAG_IDS


@pytest.mark.parametrize("dag_file", [f"{d}.py" for d in DAG_IDS])
def test_parsing_a_dag_file_loads_no_heavy_module(dag_file):
    probe = (
        "import runpy, sys\n"
        f"sys.path.append({str(DAGS)!r})\n"
        "import airflow.sdk\n"
        f"before = {{m for m in {HEAVY_MODULES!r} if m in sys.modules}}\n"
        f"runpy.run_path({str(DAGS / dag_file)!r})\n"
        f"loaded = sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules and m not in before)\n"
        "print('LOADED', loaded)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LOADED []" in result.stdout, result.stdout


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_dag_rules(dag_bag, dag_id):
    from clv_dag_support import Tag

    dag = dag_bag.dags[dag_id]
    assert dag.catchup is False and dag.max_active_runs == 1
    assert dag.start_date.tzinfo is not None and str(dag.start_date.tzinfo) == "UTC"
    assert set(dag.tags) <= {t.value for t in Tag} and Tag.CLV in dag.tags
    assert dag.doc_md and dag_id.replace("clv_", "").split("_")[0] in dag.doc_md.lower()
    for name in dag.params:
        assert f"`{name}`" in dag.doc_md, f"param {name} is not documented in doc_md"
    for task in dag.tasks:
        assert task.retries >= 2, task.task_id
        assert task.retry_exponential_backoff, task.task_id


def test_account_tasks_are_mapped_bounded_and_labelled(dag_bag):
    dag = dag_bag.dags["clv_monthly_refit"]
    account_tasks = [t for t in dag.tasks if t.task_id.startswith("refit_account.")]
    assert [t.task_id.split(".")[1] for t in account_tasks] == [
        "validate", "features", "fit", "score", "datamodel", "publish", "export"]
    for task in account_tasks + [dag_bag.dags["clv_daily_eligibility"].get_task("check_eligibility")]:
        assert task.max_active_tis_per_dag and task.max_active_tis_per_dag <= 4
        assert task.map_index_template == "{{ account_id }}"
    assert dag.get_task("summary").trigger_rule == "all_done"


def test_schedules():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    daily, monthly = bag.dags["clv_daily_eligibility"].timetable, bag.dags["clv_monthly_refit"].timetable
    assert daily.expression == "0 0 * * *"  # @daily
    assert monthly.expression == "0 3 1 * *" and str(monthly.timezone) == "UTC"  # 1st of each month, UTC
