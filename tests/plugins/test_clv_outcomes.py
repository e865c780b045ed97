"""The outcome listener as a plain class: what it records, and what it leaves alone."""

from __future__ import annotations

import importlib.util
import types

import pytest
import yaml

from clv_jobs.reporting import read_outcomes
from clv_jobs.store import Store
from tests.dags.conftest import PLUGINS


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    config = tmp_path / "config"
    (config / "accounts").mkdir(parents=True)
    (config / "clv.yaml").write_text(yaml.safe_dump({"store": "../store"}))
    monkeypatch.setenv("CLV_CONFIG_DIR", str(config))
    spec = importlib.util.spec_from_file_location("clv_outcomes", PLUGINS / "clv_outcomes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, Store(str(tmp_path / "store"))


def _ti(dag_id="clv_monthly_refit", account="shop", task_id="refit_account.fit"):
    return types.SimpleNamespace(dag_id=dag_id, run_id="manual__2025-06-01T03:00:00+00:00", task_id=task_id,
                                 rendered_map_index=account, hostname="worker-1", try_number=2)


def test_plugin_registers_its_listener(plugin_module):
    module, _ = plugin_module
    assert module.ClvOutcomesPlugin.name == "clv_outcomes"
    assert len(module.ClvOutcomesPlugin.listeners) == 1


def test_failure_and_success_are_recorded_per_account_and_task(plugin_module):
    module, store = plugin_module
    listener = module.ClvOutcomesPlugin.listeners[0]
    listener.on_task_instance_failed(None, _ti(), ValueError("first line\nsecond line"))
    listener.on_task_instance_success(None, _ti(task_id="refit_account.validate"))
    outcomes = read_outcomes(store, "shop", "clv_monthly_refit", "manual__2025-06-01T03:00:00+00:00")
    assert outcomes["refit_account.fit"] | {"recorded_at": None} == {
        "state": "failed", "error": "first line", "hostname": "worker-1", "try_number": 2, "recorded_at": None}
    assert outcomes["refit_account.validate"]["state"] == "success"


@pytest.mark.parametrize("ti", [_ti(dag_id="other_dag"), _ti(account=None)], ids=["other_dag", "unmapped_task"])
def test_tasks_outside_clv_accounts_are_ignored(plugin_module, ti):
    module, store = plugin_module
    module.ClvOutcomesPlugin.listeners[0].on_task_instance_success(None, ti)
    assert not store.exists(store.root)


def test_a_recording_failure_never_fails_the_task(plugin_module, monkeypatch):
    module, _ = plugin_module
    monkeypatch.setenv("CLV_CONFIG_DIR", "/nonexistent/config")
    module.ClvOutcomesPlugin.listeners[0].on_task_instance_success(None, _ti())  # logs, does not raise
