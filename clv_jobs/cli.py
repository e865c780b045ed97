"""``clv``: the CLV jobs from a terminal, for debugging, backfills and first trials.

Every command prints a short summary (``--json`` for machines); bad input and bad
settings end with one clear message and a non-zero exit code, not a traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table
from rich_argparse import RawDescriptionRichHelpFormatter

from clv_jobs.asof import parse_as_of
from clv_jobs.errors import ClvError

EXIT_CODES = """\
exit codes:
  0 success            2 invalid settings     3 invalid input (file, columns, quarantine limit)
  4 model failure      5 account not eligible 6 delivery failed      1 other error
"""

DESCRIPTION = """\
Customer Lifetime Value jobs: per-account Buy-Till-You-Die models (pymc-marketing) and the
25-column Datamodel CSV for CRM automations (see README.md and SPEC).

Start with `clv demo` (sample accounts, no server needed), then `clv run` on your own file.
Configured accounts live in a config folder (--config-dir, $CLV_CONFIG_DIR, or ./config):
clv.yaml for the project, accounts/<id>.yaml per account.
"""

# Wide enough for the summary tables when the output is a file or a CI log, not a terminal.
console = Console(stderr=False, width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)


def _as_of(text: str) -> dt.date:
    try:
        return parse_as_of(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_as_of(parser: argparse.ArgumentParser, default_help: str = "today (UTC)") -> None:
    parser.add_argument(
        "--as-of", type=_as_of, default=None, metavar="YYYY-MM-DD",
        help=f"The run sees every order before this date, 00:00 in the account's time zone "
             f"(a past date is a backfill). Default: {default_help}.",
    )


def _add_accounts(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--account", action="append", dest="accounts", metavar="ID",
        help="A configured account id; repeat for several. Default: every configured account.",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; every command and option has its help text."""
    parser = argparse.ArgumentParser(
        prog="clv", description=DESCRIPTION, epilog=EXIT_CODES,
        formatter_class=RawDescriptionRichHelpFormatter,
    )
    parser.add_argument("--config-dir", metavar="DIR",
                        help="Config folder (clv.yaml, accounts/*.yaml). Default: $CLV_CONFIG_DIR or ./config.")
    parser.add_argument("--json", action="store_true", help="Print results as JSON instead of tables.")
    parser.add_argument("-q", "--quiet", action="store_true", help="Only warnings and errors on stderr.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help_text, description=description,
                                   formatter_class=RawDescriptionRichHelpFormatter, epilog=EXIT_CODES)

    demo = command(
        "demo", "Simulate sample accounts and run every job on them.",
        "Create a sample warehouse (DuckDB) and config in WORKDIR, then run eligibility, refit "
        "and export for every sample account as of a fixed date, and print a summary: "
        "shop_new (not eligible yet), shop_small (3,000 buyers), shop_large (200,000 buyers). "
        "Files land in WORKDIR/outbox; run artifacts in WORKDIR/store.",
    )
    demo.add_argument("--workdir", default="demo", metavar="DIR", help="Folder to create (default: ./demo).")
    demo.add_argument("--skip-large", action="store_true",
                      help="Leave out the 200,000-buyer account (a quicker look).")
    demo.add_argument("--no-run", action="store_true",
                      help="Only create the warehouse and config (for example for the local Airflow).")

    run = command(
        "run", "Run the whole pipeline on your own transactions file, no config needed.",
        "Validate, check eligibility, fit, score and write the Datamodel for one account from "
        "CSV or Parquet files, with SPEC's default settings. Transactions need the columns "
        "order_id, customer_id, order_ts, amount (optional: account_id, status, ingested_at); "
        "contacts: customer_id, contact_id, email, email_opt_in. OUT receives the Datamodel, "
        "its manifest and a store/ folder with the run's scores, model and quarantine.",
    )
    run.add_argument("--transactions", required=True, metavar="FILE", help="Transactions CSV/Parquet (globs allowed).")
    run.add_argument("--contacts", metavar="FILE", help="Contacts CSV/Parquet (emails, opt-in). Optional.")
    run.add_argument("--account", required=True, metavar="ID",
                     help="Account id (used in file names; filters the file if it has an account_id column).")
    run.add_argument("--as-of", type=_as_of, required=True, metavar="YYYY-MM-DD",
                     help="The run sees every order before this date (00:00, --timezone).")
    run.add_argument("--out", required=True, metavar="DIR", help="Output folder.")
    run.add_argument("--model", choices=["pareto_nbd", "bg_nbd", "mbg_nbd", "auto"], default="pareto_nbd",
                     help="Transaction model (default: pareto_nbd); auto: the best of the three on the "
                          "holdout backtest.")
    run.add_argument("--fit-method", choices=["map", "mcmc"], default="map",
                     help="map (default): maximum a posteriori, seconds; mcmc: the full posterior (NUTS, "
                          "minutes), adding CLV P10/P50/P90 and P-Alive P10/P90 to the scores.")
    run.add_argument("--timezone", default="UTC", help="Account time zone, IANA name (default: UTC).")
    run.add_argument("--force", action="store_true", help="Fit even if the account is not eligible.")

    eligibility = command(
        "eligibility", "Daily eligibility check; first scores for newly eligible accounts.",
        "Check each account (>= 4 months of history, >= 500 buyers, a buyer with >= 3 purchases, "
        "or the account's own thresholds), record the result in the store, and activate an "
        "account the first time it passes: it then gets its first refit and export at once.",
    )
    _add_accounts(eligibility)
    _add_as_of(eligibility)
    eligibility.add_argument("--no-first-refit", action="store_true",
                             help="Only record activation; do not refit newly activated accounts now.")

    refit = command(
        "refit", "Refit models and rescore every buyer; publish the run.",
        "Monthly job: validate, backtest the account's model on the last holdout_days (90) of "
        "history beside a naive baseline, fit the transaction and spend models, pass them through "
        "the quality gate, score every buyer of the history window, write the Datamodel and "
        "publish the run to the store (the previous run stays current until this one is complete). "
        "A refit that fails the gate is not published as the new model: every buyer is rescored "
        "with the previous model and the run is flagged (status published_with_previous_model). "
        "Does not deliver: see export.",
    )
    _add_accounts(refit)
    _add_as_of(refit)
    refit.add_argument("--force", action="store_true", help="Refit even if the account is not eligible.")

    export = command(
        "export", "Deliver a published Datamodel to the account's destinations.",
        "Copy the Datamodel of a published run to every destination of the account (temporary "
        "name, rename, then <file>.manifest.json last). Repeating it is harmless.",
    )
    _add_accounts(export)
    _add_as_of(export, "the latest published run")

    command("accounts", "List configured accounts and their state.",
            "One line per configured account: enabled, model, activation date, latest run.")
    return parser


def _setup_logging(quiet: bool) -> None:
    handler = RichHandler(console=err_console, show_path=False, markup=False, rich_tracebacks=False)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s", force=True)
    logging.getLogger("clv_jobs").setLevel(logging.WARNING if quiet else logging.INFO)


def _print(args, rows: list[dict], columns: list[str], title: str) -> None:
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    console.print(table)


def _cell(value) -> str:
    """Table text of a JSON value: counts by segment id as ``id:count``, lists joined."""
    if value is None:
        return ""
    if isinstance(value, dict):
        return " ".join(f"{k}:{v}" for k, v in sorted(value.items(), key=lambda kv: int(kv[0])))
    if isinstance(value, list):
        return "; ".join(map(str, value))
    return str(value)


def _project(args):
    from clv_jobs.settings import load_project

    return load_project(args.config_dir)


def _account_ids(project, requested: list[str] | None) -> list[str]:
    ids = requested or sorted(a for a, s in project.accounts.items() if s.enabled)
    for account_id in ids:
        project.account(account_id)  # unknown ids fail before any work
    return ids


def _cmd_demo(args) -> int:
    from clv_jobs.demo import DEMO_AS_OF, run_demo
    from clv_jobs.sample_data import SAMPLE_ACCOUNTS

    accounts = [a for a in SAMPLE_ACCOUNTS if not (args.skip_large and a.account_id == "shop_large")]
    if args.no_run:
        from clv_jobs.demo import create_project

        console.print(f"Sample project created: {create_project(args.workdir, DEMO_AS_OF, accounts)}")
        return 0
    rows = run_demo(args.workdir, DEMO_AS_OF, accounts)
    table_rows = [row | {"file": Path(row["file"]).name if row["file"] else None} for row in rows]
    _print(args, rows if args.json else table_rows,
           ["account", "eligible", "buyers", "fit_seconds", "segments", "file", "reasons"],
           f"clv demo as of {DEMO_AS_OF} (segment id:count)")
    if not args.json:
        workdir = Path(args.workdir).resolve()
        console.print(f"Files: {workdir / 'outbox'}\nRuns:  {workdir / 'store'}\n"
                      f"Next:  clv --config-dir {workdir / 'config'} accounts")
    return 0


def _cmd_run(args) -> int:
    from clv_jobs import pipeline
    from clv_jobs.settings import FilesSource, Project, ProjectSettings, parse_account

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    source = FilesSource(type="files", transactions=str(Path(args.transactions).resolve()),
                         contacts=str(Path(args.contacts).resolve()) if args.contacts else None)
    account = parse_account({
        "account_id": args.account, "timezone": args.timezone,
        "model": {"transaction_model": args.model, "fit_method": args.fit_method},
        "datamodel": {"destinations": [{"type": "local", "path": str(out)}]},
    }, origin="clv run options")
    project = Project(out, ProjectSettings(store=str(out / "store"), source=source), {account.account_id: account})
    summary = pipeline.refit(project, account.account_id, args.as_of, force=args.force)
    delivered = pipeline.export(project, account.account_id, args.as_of)
    rows = [_refit_row(summary) | {"file": delivered["deliveries"][0]["path"]}]
    _print(args, rows if args.json else [_refit_display(row) for row in rows],
           ["account", "as_of", "buyers", "model", "fit_seconds", "segments", "quarantined", *BACKTEST_COLUMNS,
            "file"], "clv run")
    _flag_kept_models(args, rows)
    return 0


#: The refit table's backtest and gate columns (``--json`` has the whole dicts).
BACKTEST_COLUMNS = ["purchase MAE (naive)", "agg. error", "P-Alive AUC", "gate"]


def _refit_row(summary: dict) -> dict:
    return {
        "account": summary["account"], "as_of": summary["as_of"], "buyers": summary["buyers"],
        "model": summary["model"], "fit_seconds": summary["fit_seconds"],
        "segments": summary["segments"],
        "quarantined": summary["validation"]["rows_quarantined"],
        "run_id": summary["run_id"],
        "status": summary.get("status", "published"),
        "model_version": summary.get("model_version"),
        "backtest": summary.get("backtest"),
        "model_choice": summary.get("model_choice"),
        "gate": summary.get("gate"),
    }


def _number(value, pattern: str) -> str:
    return "–" if value is None else format(value, pattern)


def _refit_display(row: dict) -> dict:
    """A refit row for the table: the backtest's headline numbers and the gate's verdict."""
    shown = dict(row)
    backtest = row.get("backtest") or {}
    if "skipped" in backtest:
        shown |= {"purchase MAE (naive)": f"skipped: {backtest['skipped']}"}
    elif backtest:
        model, naive = backtest["model"], backtest["naive"]
        shown |= {
            "purchase MAE (naive)":
                f"{_number(model['purchases_mae'], '.3f')} ({_number(naive['purchases_mae'], '.3f')})",
            "agg. error": f"{_number(model['purchases_error_pct'], '+.1f')} %",
            "P-Alive AUC": _number(model["p_alive_auc"], ".3f"),
        }
    choice = row.get("model_choice") or {}
    if choice.get("by") not in (None, "account setting"):
        shown["model"] = f"{row['model']} (auto)"
    gate = row.get("gate") or {}
    if row.get("status") == "published_with_previous_model":
        shown["gate"] = "FAILED: previous model kept"
    else:
        shown["gate"] = {True: "passed", False: "FAILED", None: "off"}[gate.get("passed")] if gate else ""
    for key in ("backtest", "model_choice"):
        shown.pop(key, None)
    return shown


def _flag_kept_models(args, rows: list[dict]) -> None:
    """A visible flag under the table for every account that kept its previous model."""
    if args.json:
        return
    for row in rows:
        if row.get("status") == "published_with_previous_model":
            console.print(
                f"[bold yellow]WARNING[/] {row['account']}: the refit failed the quality gate; every buyer was "
                f"rescored with the previous model {row['model_version']} (run status "
                f"published_with_previous_model): {'; '.join(row['gate']['reasons'])}",
                markup=True, highlight=False)


def _cmd_eligibility(args) -> int:
    from clv_jobs import pipeline

    project = _project(args)
    as_of = args.as_of or parse_as_of(None)
    rows = []
    for account_id in _account_ids(project, args.accounts):
        check = pipeline.check_eligibility(project, account_id, as_of)
        if check["newly_activated"] and not args.no_first_refit:
            # SPEC: an account activated today gets its first scores today.
            pipeline.refit(project, account_id, as_of)
            pipeline.export(project, account_id, as_of)
            check["first_refit"] = "done"
        rows.append(check)
    _print(args, rows, ["account", "as_of", "eligible", "buyers", "first_purchase", "max_purchases",
                        "newly_activated", "lapsed", "first_refit", "reasons"], "eligibility")
    return 0


def _cmd_refit(args) -> int:
    from clv_jobs import pipeline

    project = _project(args)
    as_of = args.as_of or parse_as_of(None)
    rows = [_refit_row(pipeline.refit(project, a, as_of, force=args.force))
            for a in _account_ids(project, args.accounts)]
    _print(args, rows if args.json else [_refit_display(row) for row in rows],
           ["account", "as_of", "buyers", "model", "fit_seconds", "segments", "quarantined", *BACKTEST_COLUMNS,
            "run_id"], "refit")
    _flag_kept_models(args, rows)
    return 0


def _cmd_export(args) -> int:
    from clv_jobs import pipeline

    project = _project(args)
    rows = []
    for account_id in _account_ids(project, args.accounts):
        result = pipeline.export(project, account_id, args.as_of)
        rows.append(result | {"destinations": ", ".join(d["path"] for d in result["deliveries"])})
    _print(args, rows, ["account", "as_of", "run_id", "file", "rows", "destinations"], "export")
    return 0


def _cmd_accounts(args) -> int:
    from clv_jobs.store import Store

    project = _project(args)
    store = Store(project.store_uri)
    rows = []
    for account_id, settings in sorted(project.accounts.items()):
        activation = store.activation(account_id) or {}
        latest = store.latest_run(account_id) or {}
        rows.append({"account": account_id, "enabled": settings.enabled,
                     "model": settings.model.transaction_model, "timezone": settings.timezone,
                     "activated_on": activation.get("activated_on"), "latest_run": latest.get("run_id")})
    _print(args, rows, ["account", "enabled", "model", "timezone", "activated_on", "latest_run"],
           f"accounts in {project.config_dir}")
    return 0


COMMANDS = {"demo": _cmd_demo, "run": _cmd_run, "eligibility": _cmd_eligibility, "refit": _cmd_refit,
            "export": _cmd_export, "accounts": _cmd_accounts}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``clv`` command."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.quiet)
    try:
        return COMMANDS[args.command](args)
    except ClvError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
        return exc.exit_code
    except KeyboardInterrupt:
        err_console.print("interrupted: nothing was published by the unfinished step")
        return 130


if __name__ == "__main__":
    sys.exit(main())
