"""Project and per-account settings, validated at load time.

A project is a config folder::

    config/
      clv.yaml              # project: where the store is, the default data source
      accounts/<id>.yaml    # one file per account; every key optional but account_id

Every number of SPEC.md is a setting here with SPEC's default. Unknown keys are errors
(a typo must not silently fall back to a default). Credentials never live here: sources
and destinations name connections or environment variables instead.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import re
import string
import zoneinfo
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from clv_jobs.errors import ConfigError

ACCOUNT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"

#: Airflow schedule presets accepted besides a five-field cron expression.
_CRON_PRESETS = ("@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly", "@annually")

#: The environment variable naming the config folder (``clv --config-dir`` overrides it).
CONFIG_DIR_ENV = "CLV_CONFIG_DIR"


@functools.cache
def _iana_time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EligibilitySettings(_Strict):
    """SPEC "Daily eligibility check" thresholds."""

    min_months: Annotated[int, Field(ge=0, le=120)] = 4
    min_buyers: Annotated[int, Field(ge=1)] = 500
    min_max_purchases: Annotated[int, Field(ge=1)] = 3


class McmcSettings(_Strict):
    """Full-posterior fit (``fit_method: mcmc``)."""

    sampler: Literal["nutpie", "pymc"] = "nutpie"
    chains: Annotated[int, Field(ge=1, le=16)] = 2
    draws: Annotated[int, Field(ge=100, le=20_000)] = 1000
    tune: Annotated[int, Field(ge=100, le=20_000)] = 1000
    #: Posterior draws used for the per-customer CLV and P-Alive intervals.
    predictive_draws: Annotated[int, Field(ge=50, le=5_000)] = 400
    seed: int = 0


class QualityGateSettings(_Strict):
    """What a refit must pass to be published (else the previous model rescores the account)."""

    enabled: bool = True
    #: Largest tolerated relative worsening of the backtest's per-customer purchase MAE vs
    #: the previous published model (0.10 = 10 % worse).
    max_backtest_degradation: Annotated[float, Field(ge=0)] = 0.10
    #: Bayesian fits: largest r_hat and smallest bulk ESS of every parameter.
    max_r_hat: Annotated[float, Field(gt=1)] = 1.01
    min_ess: Annotated[float, Field(ge=0)] = 400
    #: A parameter this close (relative) to the optimiser's bounds counts as "at its bounds".
    bound_tolerance: Annotated[float, Field(gt=0, lt=1)] = 1e-6


class ModelSettings(_Strict):
    """Transaction and spend models (SPEC "Model")."""

    #: ``auto`` fits the three and keeps the best on the holdout backtest (and says why).
    transaction_model: Literal["pareto_nbd", "bg_nbd", "mbg_nbd", "auto"] = "pareto_nbd"
    fit_method: Literal["map", "mcmc"] = "map"
    mcmc: McmcSettings = McmcSettings()
    #: Holdout of the backtest run with every refit: the last N days before the as-of date.
    holdout_days: Annotated[int, Field(ge=7, le=730)] = 90
    #: Calibration buyers the backtest fits and scores at most: a larger account is
    #: backtested on a seeded random sample of this many (``null``: every buyer).
    backtest_max_buyers: Annotated[int, Field(ge=10_000)] | None = 250_000
    gate: QualityGateSettings = QualityGateSettings()
    #: ``default``: pymc-marketing's weakly informative priors; ``flat``: maximum likelihood.
    priors: Literal["default", "flat"] = "default"
    horizon_months: Annotated[int, Field(ge=1, le=120)] = 12
    #: Monthly discount rate of the CLV (pymc-marketing's convention).
    discount_rate: Annotated[float, Field(ge=0, lt=1)] = 0.0
    #: Time unit of recency and T handed to the models: days or weeks.
    time_unit: Literal["D", "W"] = "D"


class SegmentSettings(_Strict):
    """SPEC "Segments" thresholds: days, purchase counts, LTV quantiles, at-risk rule."""

    inactive_days: Annotated[float, Field(gt=0)] = 365
    recent_days: Annotated[float, Field(ge=0)] = 90
    hibernator_days: Annotated[float, Field(gt=0)] = 180
    loyal_min_purchases: Annotated[int, Field(ge=2)] = 4
    repeat_min_purchases: Annotated[int, Field(ge=2)] = 2
    top_quantile: Annotated[float, Field(gt=0, lt=1)] = 0.99
    vip_quantile: Annotated[float, Field(gt=0, lt=1)] = 0.80
    value_quantile: Annotated[float, Field(gt=0, lt=1)] = 0.50
    at_risk_p_alive: Annotated[float, Field(ge=0, le=1)] = 0.5
    at_risk_tbp_factor: Annotated[float, Field(gt=0)] = 1.5


class ControlGroupSettings(_Strict):
    """SPEC "Control group": a stable hashed share of the contacts."""

    share: Annotated[float, Field(ge=0, le=0.5)] = 0.10
    #: Changing the salt reshuffles the groups; empty means "the account id".
    salt: str = ""


class LocalDestination(_Strict):
    """Deliver to a folder on this machine (or a mounted share)."""

    type: Literal["local"]
    path: str


class SftpDestination(_Strict):
    """An sFTP drop, e.g. Salesforce Marketing Cloud Enhanced FTP.

    Login, password or private key, and the pinned host key live in the connection
    (``conn_id``), never here; ``host``/``port`` override the connection's when set.
    """

    type: Literal["sftp"]
    conn_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,250}$")]
    path: str = "/Import"
    host: str | None = None
    port: Annotated[int, Field(ge=1, le=65535)] | None = None


class S3Destination(_Strict):
    """An S3 bucket (or any S3-compatible store: ``endpoint_url``)."""

    type: Literal["s3"]
    bucket: Annotated[str, Field(min_length=3, max_length=63)]
    prefix: str = ""
    #: Credentials from this Airflow connection (aws type), else the environment.
    conn_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,250}$")] | None = None
    endpoint_url: str | None = None


class PostgresDestination(_Strict):
    """A PostgreSQL table with the Datamodel's shape (``sql/datamodel_clv.sql``)."""

    type: Literal["postgres"]
    conn_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,250}$")]
    table: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")] = "datamodel_clv"


Destination = Annotated[
    LocalDestination | SftpDestination | S3Destination | PostgresDestination, Field(discriminator="type")
]

EXTRA_COLUMNS = ("P_ALIVE", "CHURN", "EXPECTED_PURCHASES", "MODEL")


class DatamodelSettings(_Strict):
    """The 25-column CSV: file name, compression, extra columns, where it goes."""

    enabled: bool = True
    file_name_template: str = "clv_datamodel_{account}_{yyyymmdd}.csv"
    gzip: bool = False
    extra_columns: list[Literal["P_ALIVE", "CHURN", "EXPECTED_PURCHASES", "MODEL"]] = []
    destinations: list[Destination] = []

    @field_validator("file_name_template")
    @classmethod
    def _template_names_known_fields(cls, value: str) -> str:
        # Parse as str.format does, so every template that loads also formats at run time
        # (unbalanced braces, "{account!r}", "{yyyymmdd:%Y}" would otherwise fail mid-run).
        try:
            parsed = list(string.Formatter().parse(value))
        except ValueError as exc:
            raise ValueError(
                f"not a valid template ({exc}); write a literal brace as {{{{ or }}}}"
            ) from None
        fields = {field for _, field, _, _ in parsed if field is not None}
        unknown = fields - {"account", "yyyymmdd", "yyyy", "mm", "dd"}
        if unknown:
            raise ValueError(
                f"unknown placeholder(s) {sorted(unknown)}; use {{account}}, {{yyyymmdd}}, "
                "{yyyy}, {mm}, {dd}"
            )
        if any(spec or conversion for _, field, spec, conversion in parsed if field is not None):
            raise ValueError(
                "placeholders take no format spec or conversion "
                "(write {yyyymmdd}, not {yyyymmdd:%Y})"
            )
        if "/" in value or "\\" in value or value.strip() in ("", ".", ".."):
            raise ValueError("must be a plain file name (no folders)")
        return value


class DuckDBSource(_Strict):
    """The embedded default: a DuckDB file with ``transactions`` and ``contacts`` tables."""

    type: Literal["duckdb"] = "duckdb"
    path: str = "warehouse.duckdb"


class FilesSource(_Strict):
    """A user's own CSV or Parquet files (one or both tables; globs allowed)."""

    type: Literal["files"]
    transactions: str
    contacts: str | None = None


#: Airflow's own rule for connection ids (letters, digits, ``_``, ``.``, ``-``).
CONN_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,250}$"


class PostgresSource(_Strict):
    """A PostgreSQL warehouse reached through an Airflow connection, queries in ``sql/``.

    ``conn_id`` names the connection, never its credentials: at run time it is looked up
    as ``$AIRFLOW_CONN_<CONN_ID>`` (Airflow's URI or JSON form), then ``$CLV_CONN_<CONN_ID>``
    (see :func:`clv_jobs.sources.resolve_connection`). A query is an absolute path, a path
    relative to the config folder, or else a file of the repository's ``sql/`` folder.
    """

    type: Literal["postgres"]
    conn_id: Annotated[str, Field(pattern=CONN_ID_PATTERN)]
    transactions_query: Annotated[str, Field(min_length=1)] = "transactions.sql"
    contacts_query: Annotated[str, Field(min_length=1)] = "contacts.sql"


Source = Annotated[DuckDBSource | FilesSource | PostgresSource, Field(discriminator="type")]


class AccountSettings(_Strict):
    """Everything that can differ between two accounts (SPEC "Per-account settings")."""

    account_id: Annotated[str, Field(pattern=ACCOUNT_ID_PATTERN)]
    enabled: bool = True
    timezone: str = "UTC"
    history_window_months: Annotated[int, Field(ge=1, le=240)] = 24
    #: When the monthly refit runs (cron, UTC); the DAG reads it.
    schedule: str = "0 3 1 * *"
    eligibility: EligibilitySettings = EligibilitySettings()
    model: ModelSettings = ModelSettings()
    segments: SegmentSettings = SegmentSettings()
    labels_locale: Literal["es", "en", "fr"] = "es"
    control_group: ControlGroupSettings = ControlGroupSettings()
    rescore_on_purchase: bool = False
    rescore_on_merge: bool = False
    datamodel: DatamodelSettings = DatamodelSettings()
    #: Highest tolerated share of quarantined rows before a run fails (0.01 = 1 %).
    quarantine_limit: Annotated[float, Field(ge=0, le=1)] = 0.01
    #: Where this account's data is read; ``None`` means the project's default source.
    source: Source | None = None

    @field_validator("schedule")
    @classmethod
    def _cron_shaped(cls, value: str) -> str:
        # Only the shape: a typo must fail at load time, not when the DAG is parsed.
        fields = value.split()
        cron = len(fields) == 5 and all(re.fullmatch(r"[\w*/,?#-]+", field) for field in fields)
        if not (cron or value in _CRON_PRESETS):
            raise ValueError(
                "not a cron expression: five fields 'min hour day month weekday' "
                f"(e.g. '0 3 1 * *') or one of {', '.join(_CRON_PRESETS)}"
            )
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        # The IANA list, not ZoneInfo(value): that also opens folders ("Europe" raises
        # IsADirectoryError) and host files (posixrules, right/UTC) DuckDB does not know;
        # "localtime" is the host's zone, not the account's.
        if value == "localtime" or value not in _iana_time_zones():
            raise ValueError(
                f"unknown time zone {value!r} (use an IANA name such as 'Europe/Madrid')"
            )
        return value

    @property
    def control_group_salt(self) -> str:
        """The salt actually hashed: the account id unless one is set."""
        return self.control_group.salt or self.account_id

    def datamodel_file_name(self, as_of: dt.date) -> str:
        """File name of the Datamodel for ``as_of`` (``.gz`` appended when gzipped)."""
        name = self.datamodel.file_name_template.format(
            account=self.account_id,
            yyyymmdd=as_of.strftime("%Y%m%d"),
            yyyy=f"{as_of:%Y}",
            mm=f"{as_of:%m}",
            dd=f"{as_of:%d}",
        )
        return name + ".gz" if self.datamodel.gzip else name


class ProjectSettings(_Strict):
    """Settings shared by all accounts of a deployment (``config/clv.yaml``)."""

    #: Store root: a folder path or URI (``file://…``; ``s3://…`` in the Airflow stack).
    store: str = "store"
    #: Default source for accounts that name none.
    source: Source = DuckDBSource()


class Project:
    """A loaded config folder: project settings plus every account's settings.

    Relative paths in the settings are resolved against the config folder, so a project
    can be moved as a whole.
    """

    def __init__(self, config_dir: Path, settings: ProjectSettings, accounts: dict[str, AccountSettings]):
        self.config_dir = config_dir
        self.settings = settings
        self.accounts = accounts
        #: How a source's ``conn_id`` becomes a connection URI besides the environment
        #: (``None``: environment only). The DAGs set Airflow's connection lookup here.
        self.connection_resolver: Callable[[str], str | None] | None = None

    def resolve(self, path_or_uri: str) -> str:
        """Resolve a relative path against the config folder; URIs are left alone."""
        if "://" in path_or_uri:
            return path_or_uri
        path = Path(os.path.expanduser(path_or_uri))
        return str(path if path.is_absolute() else (self.config_dir / path).resolve())

    @property
    def store_uri(self) -> str:
        """The store root, resolved."""
        return self.resolve(self.settings.store)

    def account(self, account_id: str) -> AccountSettings:
        """Settings of one account, or a ConfigError listing the known ones."""
        try:
            return self.accounts[account_id]
        except KeyError:
            known = ", ".join(sorted(self.accounts)) or "none"
            raise ConfigError(
                f"account {account_id!r} is not configured in {self.config_dir / 'accounts'} "
                f"(configured: {known})"
            ) from None

    def source_for(self, account: AccountSettings) -> DuckDBSource | FilesSource | PostgresSource:
        """The account's source with its paths resolved.

        A PostgreSQL query given as a relative path is taken from the config folder when
        the file is there, else left relative: it names a file of the repository's ``sql/``.
        """
        source = account.source or self.settings.source
        if isinstance(source, DuckDBSource):
            return source.model_copy(update={"path": self.resolve(source.path)})
        if isinstance(source, PostgresSource):
            return source.model_copy(
                update={
                    name: self._resolve_query(getattr(source, name))
                    for name in ("transactions_query", "contacts_query")
                }
            )
        return source.model_copy(
            update={
                "transactions": self.resolve(source.transactions),
                "contacts": self.resolve(source.contacts) if source.contacts else None,
            }
        )

    def _resolve_query(self, query: str) -> str:
        """A query path: absolute as given, else the config folder's file if there is one."""
        path = Path(os.path.expanduser(query))
        if path.is_absolute():
            return str(path)
        in_config = self.config_dir / path
        return str(in_config.resolve()) if in_config.is_file() else query


def _describe(error: ValidationError) -> str:
    """One line per problem: ``field.path: message (got value)``."""
    lines = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "union_tag_not_found":
            message = "needs a 'type' key (source: duckdb, files or postgres; destination: local)"
        elif problem["type"] == "extra_forbidden":
            message = "unknown setting (check the spelling; see README 'Settings reference')"
        got = problem.get("input")
        shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        lines.append(f"  {where}: {message}{shown}")
    return "\n".join(lines)


def _read_yaml(path: Path) -> dict:
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(content).__name__}")
    return content


def parse_account(data: dict, origin: str = "<settings>") -> AccountSettings:
    """Validate one account's settings, raising ConfigError naming ``origin`` and each field."""
    try:
        return AccountSettings.model_validate(data)
    except ValidationError as exc:
        account = data.get("account_id", "?") if isinstance(data, dict) else "?"
        raise ConfigError(f"{origin}: invalid settings for account {account!r}:\n{_describe(exc)}") from None


def load_project(config_dir: str | Path | None = None) -> Project:
    """Load ``clv.yaml`` and ``accounts/*.yaml`` from the config folder.

    Parameters
    ----------
    config_dir : str or Path, optional
        The folder; defaults to ``$CLV_CONFIG_DIR``, then ``./config``.

    Raises
    ------
    ConfigError
        The folder is missing, or any file is invalid (all problems of that file listed).
    """
    folder = Path(config_dir or os.environ.get(CONFIG_DIR_ENV) or "config").resolve()
    if not folder.is_dir():
        raise ConfigError(
            f"config folder {folder} does not exist (set --config-dir or ${CONFIG_DIR_ENV}; "
            "`clv demo` creates a sample one)"
        )
    project_file = folder / "clv.yaml"
    project_data = _read_yaml(project_file) if project_file.exists() else {}
    try:
        project_settings = ProjectSettings.model_validate(project_data)
    except ValidationError as exc:
        raise ConfigError(f"{project_file}: invalid project settings:\n{_describe(exc)}") from None

    accounts: dict[str, AccountSettings] = {}
    for path in sorted((folder / "accounts").glob("*.y*ml")):
        account = parse_account(_read_yaml(path), origin=str(path))
        if account.account_id != path.stem:
            raise ConfigError(
                f"{path}: account_id {account.account_id!r} does not match the file name "
                f"(expected {path.stem!r})"
            )
        # a.yaml beside a.yml: one would silently replace the other.
        if account.account_id in accounts:
            raise ConfigError(
                f"{path}: account {account.account_id!r} is configured twice "
                f"in {folder / 'accounts'}"
            )
        accounts[account.account_id] = account
    return Project(folder, project_settings, accounts)
