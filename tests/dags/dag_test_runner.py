"""Run one DAG with ``dag.test()`` in this process and print its task instances as JSON.

Used by the DAG tests in a subprocess, so each test run gets a fresh Airflow home (SQLite)
configured through the environment before Airflow is imported.

usage: python dag_test_runner.py DAG_ID RUN_AFTER_ISO '{"conf": ...}' [MARK_SUCCESS_PATTERN]
"""

import json
import sys

import pendulum


def main(dag_id: str, run_after: str, conf: str, mark_success_pattern: str | None = None) -> None:
    from airflow.configuration import conf as airflow_conf
    from airflow.dag_processing.dagbag import DagBag

    # As Airflow's bundle DagBag does for the dag-processor and the workers.
    sys.path.append(airflow_conf.get("core", "dags_folder"))
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    bag = DagBag(dag_folder=None)
    assert not bag.import_errors, bag.import_errors
    dag = bag.get_dag(dag_id)
    run = dag.test(run_after=pendulum.parse(run_after), run_conf=json.loads(conf) or None,
                   mark_success_pattern=mark_success_pattern)
    with create_session() as session:
        rows = session.query(TaskInstance).filter(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run.run_id)
        instances = [{"task_id": ti.task_id, "map_index": ti.map_index, "label": ti.rendered_map_index,
                      "state": ti.state, "hostname": ti.hostname} for ti in rows]
    print("DAG_TEST_RESULT " + json.dumps({"run_id": run.run_id, "state": run.state, "tasks": instances}))


if __name__ == "__main__":
    main(*sys.argv[1:5])
