"""The ``clv`` command as a user runs it: a real process, its exit code and what it prints."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from clv_jobs.datamodel import COLUMNS
from clv_jobs.sample_data import SampleAccount, simulate_account

AS_OF = dt.date(2025, 6, 1)
ACCOUNT = SampleAccount("myshop", n_buyers=1_500, history_days=700, seed=21)


def clv(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed ``clv`` entry point exactly as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "clv_jobs.cli", *args], capture_output=True, text=True, cwd=cwd,
        env=os.environ | {"COLUMNS": "200", "NO_COLOR": "1"}, timeout=600,
    )


@pytest.fixture(scope="module")
def user_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("user")
    sample = simulate_account(ACCOUNT, AS_OF)
    paths = {"transactions": folder / "orders.csv", "contacts": folder / "contacts.parquet"}
    sample.transactions.drop(columns="account_id").to_csv(paths["transactions"], index=False)
    sample.contacts.to_parquet(paths["contacts"], index=False)
    return paths


def assert_clean_failure(result: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    for fragment in fragments:
        assert fragment in " ".join(result.stderr.split()), result.stderr
    assert "@example.com" not in result.stderr + result.stdout


def test_help_explains_every_command():
    result = clv("--help")
    assert result.returncode == 0
    for command in ("demo", "run", "eligibility", "refit", "export", "accounts"):
        assert command in result.stdout
        sub = clv(command, "--help")
        assert sub.returncode == 0 and "--" in sub.stdout
    assert "--as-of" in clv("refit", "--help").stdout
    assert "exit codes" in result.stdout


@pytest.mark.slow
def test_run_on_user_files_end_to_end(user_files, tmp_path):
    out = tmp_path / "out"
    result = clv("--json", "run", "--transactions", str(user_files["transactions"]),
                 "--contacts", str(user_files["contacts"]), "--account", "myshop",
                 "--as-of", "2025-06-01", "--out", str(out))
    assert result.returncode == 0, result.stderr
    [summary] = json.loads(result.stdout)
    datamodel = out / "clv_datamodel_myshop_20250601.csv"
    assert summary["file"] == str(datamodel)
    frame = pd.read_csv(datamodel, dtype=str, keep_default_na=False)
    assert list(frame.columns) == list(COLUMNS)
    assert len(frame) == summary["buyers"] > 1000
    assert (out / "clv_datamodel_myshop_20250601.csv.manifest.json").exists()
    # Contacts were joined: most buyers have an email and a contact id, consent is true/false.
    assert (frame["Email"] != "").mean() > 0.8 and (frame["ContactId"] != "").mean() > 0.8
    assert set(frame["EMAIL_COMMUNICATIONS"]) == {"true", "false"}
    assert summary["quarantined"] > 0
    assert "@example.com" not in result.stderr  # progress logs carry no email


def test_missing_file_is_a_clear_error(tmp_path):
    result = clv("run", "--transactions", str(tmp_path / "nope.csv"), "--account", "a",
                 "--as-of", "2025-06-01", "--out", str(tmp_path / "out"))
    assert_clean_failure(result, 3, "nope.csv not found")


def test_missing_column_is_named(tmp_path):
    path = tmp_path / "orders.csv"
    orders = pd.DataFrame({"order_id": ["1"], "customer_id": ["c1"], "order_ts": ["2025-01-01 10:00:00"]})
    orders.to_csv(path, index=False)
    result = clv("run", "--transactions", str(path), "--account", "a", "--as-of", "2025-06-01",
                 "--out", str(tmp_path / "out"))
    assert_clean_failure(result, 3, "required column(s) amount missing", "orders.csv")


def test_quarantine_limit_names_reasons_and_rows(tmp_path):
    path = tmp_path / "orders.csv"
    rows = [{"order_id": f"o{i}", "customer_id": f"c{i % 50}", "order_ts": "2025-01-01 10:00:00", "amount": "10"}
            for i in range(100)]
    rows[4]["amount"] = "-5"
    rows[7]["order_ts"] = "yesterday"
    pd.DataFrame(rows).to_csv(path, index=False)
    result = clv("run", "--transactions", str(path), "--account", "a", "--as-of", "2025-06-01",
                 "--out", str(tmp_path / "out"))
    assert_clean_failure(result, 3, "account a: 2 of 100 rows", "limit 1.00%",
                         "invalid_amount", "(rows 5)", "unparseable_timestamp", "(rows 8)")
    assert not (tmp_path / "out" / "clv_datamodel_a_20250601.csv").exists()


def test_not_eligible_account_says_why(tmp_path):
    path = tmp_path / "orders.csv"
    rows = [{"order_id": f"o{i}", "customer_id": f"c{i}", "order_ts": "2025-05-01 10:00:00", "amount": "10"}
            for i in range(20)]
    pd.DataFrame(rows).to_csv(path, index=False)
    result = clv("run", "--transactions", str(path), "--account", "a", "--as-of", "2025-06-01",
                 "--out", str(tmp_path / "out"))
    assert_clean_failure(result, 5, "not eligible", "20 distinct buyers, needs 500", "--force")


def test_bad_settings_are_reported_with_file_and_field(tmp_path):
    config = tmp_path / "config"
    (config / "accounts").mkdir(parents=True)
    (config / "accounts" / "shop.yaml").write_text(
        "account_id: shop\ntimezone: Mars/Olympus\nmodel: {transaction_model: paretonbd}\ncontrol_group: {share: 0.7}\n"
    )
    result = clv("--config-dir", str(config), "eligibility", "--account", "shop")
    assert_clean_failure(result, 2, "shop.yaml", "timezone", "Mars/Olympus", "model.transaction_model",
                         "control_group.share")


def test_unknown_account_lists_the_configured_ones(tmp_path):
    config = tmp_path / "config"
    (config / "accounts").mkdir(parents=True)
    (config / "accounts" / "shop.yaml").write_text("account_id: shop\n")
    result = clv("--config-dir", str(config), "refit", "--account", "other")
    assert_clean_failure(result, 2, "account 'other' is not configured", "configured: shop")


def test_bad_as_of_is_rejected_by_the_parser(tmp_path):
    result = clv("refit", "--as-of", "2025-13-01")
    assert result.returncode == 2 and "YYYY-MM-DD" in result.stderr
