"""``clv demo``: a sample project that runs end to end on this machine, no server needed.

It writes into one folder::

    <workdir>/warehouse.duckdb        # the embedded default source (sample accounts)
    <workdir>/config/clv.yaml         # project settings: store and source
    <workdir>/config/accounts/*.yaml  # one per sample account
    <workdir>/store/                  # every run's artifacts
    <workdir>/outbox/                 # the delivered Datamodel files and manifests
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path

import yaml

from clv_jobs import pipeline
from clv_jobs.sample_data import SAMPLE_ACCOUNTS, simulate_account, write_warehouse
from clv_jobs.settings import load_project

log = logging.getLogger("clv_jobs")

#: The demo's fixed as-of date, so two demo runs give the same files.
DEMO_AS_OF = dt.date(2025, 6, 1)


def create_project(workdir: str | Path, as_of: dt.date = DEMO_AS_OF, accounts=SAMPLE_ACCOUNTS) -> Path:
    """Simulate the sample accounts into a warehouse and write their config; return the config folder."""
    workdir = Path(workdir).resolve()
    config_dir = workdir / "config"
    (config_dir / "accounts").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    write_warehouse(workdir / "warehouse.duckdb", (simulate_account(a, as_of) for a in accounts))
    log.info("demo: sample warehouse %s written in %.1f s", workdir / "warehouse.duckdb",
             time.perf_counter() - started)
    (config_dir / "clv.yaml").write_text(
        "# Project settings (see README, 'Settings reference').\n"
        + yaml.safe_dump({"store": "../store", "source": {"type": "duckdb", "path": "../warehouse.duckdb"}},
                         sort_keys=False)
    )
    for account in accounts:
        settings = {
            "account_id": account.account_id,
            "timezone": "Europe/Madrid",
            "labels_locale": "es",
            "datamodel": {"destinations": [{"type": "local", "path": "../outbox"}]},
        }
        (config_dir / "accounts" / f"{account.account_id}.yaml").write_text(
            yaml.safe_dump(settings, sort_keys=False)
        )
    return config_dir


def run_demo(workdir: str | Path, as_of: dt.date = DEMO_AS_OF, accounts=SAMPLE_ACCOUNTS) -> list[dict]:
    """Create the sample project, then eligibility → refit → export for every account.

    Returns
    -------
    list of dict
        One row per account: eligibility, buyers, fit seconds, segment counts, file.
    """
    project = load_project(create_project(workdir, as_of, accounts))
    rows = []
    for account_id in sorted(project.accounts):
        check = pipeline.check_eligibility(project, account_id, as_of)
        row = {"account": account_id, "eligible": check["eligible"], "buyers": check["buyers"],
               "reasons": check["reasons"], "fit_seconds": None, "segments": {}, "file": None}
        if check["eligible"]:
            summary = pipeline.refit(project, account_id, as_of)
            delivered = pipeline.export(project, account_id, as_of)
            row |= {
                "buyers": summary["buyers"],
                "fit_seconds": summary["fit_seconds"],
                "segments": summary["segments"],
                "file": delivered["deliveries"][0]["path"] if delivered["deliveries"] else None,
                "total_clv": summary["total_clv"],
            }
        rows.append(row)
    return rows
