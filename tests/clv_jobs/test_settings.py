"""Tests for clv_jobs.settings: SPEC defaults, load-time errors naming file and field,
and loading a config folder (clv.yaml + accounts/*.yaml)."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
import yaml

from clv_jobs.errors import ConfigError
from clv_jobs.settings import (
    CONFIG_DIR_ENV,
    AccountSettings,
    DuckDBSource,
    FilesSource,
    load_project,
    parse_account,
)

AS_OF = dt.date(2025, 6, 1)


def _write(path: Path, data: dict | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A config folder with a project file and two accounts."""
    folder = tmp_path / "config"
    _write(
        folder / "clv.yaml",
        {"store": "../store", "source": {"type": "duckdb", "path": "wh.duckdb"}},
    )
    _write(folder / "accounts" / "shop_a.yaml", {"account_id": "shop_a"})
    _write(
        folder / "accounts" / "shop_b.yml",
        {
            "account_id": "shop_b",
            "timezone": "Europe/Madrid",
            "source": {
                "type": "files",
                "transactions": "data/tx_*.csv",
                "contacts": "data/contacts.csv",
            },
        },
    )
    return folder


# --- SPEC defaults -----------------------------------------------------------------------


def test_defaults_equal_spec_values():
    account = AccountSettings(account_id="shop")
    assert account.enabled is True
    assert account.timezone == "UTC"
    assert account.history_window_months == 24
    assert (
        account.eligibility.min_months,
        account.eligibility.min_buyers,
        account.eligibility.min_max_purchases,
    ) == (4, 500, 3)
    assert account.model.transaction_model == "pareto_nbd"
    assert account.model.fit_method == "map"
    assert account.model.horizon_months == 12
    assert account.model.discount_rate == 0.0
    assert account.control_group.share == 0.10
    assert account.quarantine_limit == 0.01
    assert account.labels_locale == "es"
    assert account.rescore_on_purchase is False and account.rescore_on_merge is False
    assert account.datamodel.enabled is True
    assert account.datamodel.gzip is False
    assert account.datamodel.file_name_template == "clv_datamodel_{account}_{yyyymmdd}.csv"
    assert account.source is None


def test_segment_defaults_equal_spec_table():
    segments = AccountSettings(account_id="shop").segments
    assert (segments.inactive_days, segments.recent_days, segments.hibernator_days) == (
        365,
        90,
        180,
    )
    assert (segments.loyal_min_purchases, segments.repeat_min_purchases) == (4, 2)
    assert (segments.top_quantile, segments.vip_quantile, segments.value_quantile) == (
        0.99,
        0.80,
        0.50,
    )
    assert (segments.at_risk_p_alive, segments.at_risk_tbp_factor) == (0.5, 1.5)


def test_control_group_salt_defaults_to_account_id_until_set():
    assert AccountSettings(account_id="shop").control_group_salt == "shop"
    assert (
        parse_account({"account_id": "shop", "control_group": {"salt": "s2"}}).control_group_salt
        == "s2"
    )


@pytest.mark.parametrize("model", ["pareto_nbd", "bg_nbd", "mbg_nbd"])
def test_spec_transaction_models_are_accepted(model):
    account = parse_account({"account_id": "shop", "model": {"transaction_model": model}})
    assert account.model.transaction_model == model


@pytest.mark.parametrize("share", [0.0, 0.5])
def test_control_share_spec_bounds_are_accepted(share):
    assert (
        parse_account({"account_id": "shop", "control_group": {"share": share}}).control_group.share
        == share
    )


# --- invalid values: ConfigError naming the origin and the field -------------------------


@pytest.mark.parametrize(
    ("data", "field", "detail"),
    [
        (
            {"account_id": "shop", "histroy_window_months": 12},
            "histroy_window_months",
            "unknown setting",
        ),
        ({"account_id": "shop", "model": {"horizon": 6}}, r"model\.horizon", "unknown setting"),
        (
            {"account_id": "shop", "timezone": "Mars/Olympus"},
            "timezone",
            "unknown time zone 'Mars/Olympus'",
        ),
        ({"account_id": "shop", "timezone": "Europe"}, "timezone", "unknown time zone 'Europe'"),
        (
            {"account_id": "shop", "timezone": "localtime"},
            "timezone",
            "unknown time zone 'localtime'",
        ),
        ({"account_id": "shop", "control_group": {"share": 0.6}}, r"control_group\.share", "0.5"),
        (
            {"account_id": "shop", "model": {"transaction_model": "weibull"}},
            r"model\.transaction_model",
            "'pareto_nbd', 'bg_nbd', 'mbg_nbd' or 'auto'",
        ),
        (
            {
                "account_id": "shop",
                "datamodel": {"file_name_template": "clv_{acount}_{yyyymmdd}.csv"},
            },
            r"datamodel\.file_name_template",
            r"unknown placeholder\(s\) \['acount'\]",
        ),
        (
            {"account_id": "shop", "quarantine_limit": 1.5},
            "quarantine_limit",
            "less than or equal to 1",
        ),
        (
            {"account_id": "shop", "eligibility": {"min_buyers": 0}},
            r"eligibility\.min_buyers",
            "greater than",
        ),
        ({"account_id": "shop", "labels_locale": "de"}, "labels_locale", "'es', 'en' or 'fr'"),
        ({"account_id": "shop", "schedule": "every month"}, "schedule", "not a cron expression"),
        ({"account_id": "bad id!"}, "account_id", "should match pattern"),
    ],
    ids=[
        "unknown-key-typo",
        "nested-unknown-key",
        "bad-time-zone",
        "time-zone-folder",
        "host-localtime",
        "control-share-0.6",
        "unknown-model",
        "template-placeholder-typo",
        "quarantine-above-1",
        "zero-min-buyers",
        "unknown-locale",
        "bad-cron",
        "bad-account-id",
    ],
)
def test_invalid_value_raises_config_error_naming_origin_and_field(data, field, detail):
    with pytest.raises(ConfigError, match=r"^accounts/shop\.yaml: invalid settings") as info:
        parse_account(data, origin="accounts/shop.yaml")
    message = str(info.value)
    assert re.search(rf"\n  {field}: .*{detail}", message), message


def test_all_problems_of_one_file_are_listed():
    with pytest.raises(ConfigError) as info:
        parse_account(
            {"account_id": "shop", "timezone": "Nowhere", "control_group": {"share": 0.9}}, "x.yaml"
        )
    assert "timezone:" in str(info.value) and "control_group.share:" in str(info.value)


@pytest.mark.parametrize(
    "template",
    [
        "{account",
        "x}.csv",
        "{yyyymmdd:%Y}.csv",
        "{account!r}.csv",
        "{account.upper}.csv",
        "{}.csv",
        "..",
        "out/{account}.csv",
        "out\\{account}.csv",
        " ",
    ],
    ids=[
        "unclosed-brace",
        "stray-brace",
        "format-spec",
        "conversion",
        "attribute",
        "positional",
        "dot-dot",
        "folder",
        "backslash-folder",
        "blank",
    ],
)
def test_template_that_cannot_make_a_plain_file_name_is_rejected_at_load(template):
    with pytest.raises(ConfigError, match=r"datamodel\.file_name_template: "):
        parse_account(
            {"account_id": "shop", "datamodel": {"file_name_template": template}}, "a.yaml"
        )


@pytest.mark.parametrize("schedule", ["0 3 1 * *", "@monthly", "*/15 0-6 1,15 JAN MON-FRI"])
def test_cron_shaped_schedules_are_accepted(schedule):
    assert parse_account({"account_id": "shop", "schedule": schedule}).schedule == schedule


# --- datamodel_file_name ------------------------------------------------------------------


def test_datamodel_file_name_default_template_equals_spec_example():
    assert (
        AccountSettings(account_id="shop").datamodel_file_name(AS_OF)
        == "clv_datamodel_shop_20250601.csv"
    )


def test_datamodel_file_name_gzip_appends_gz_suffix():
    account = parse_account({"account_id": "shop", "datamodel": {"gzip": True}})
    assert account.datamodel_file_name(AS_OF) == "clv_datamodel_shop_20250601.csv.gz"


def test_datamodel_file_name_custom_template_fills_every_placeholder():
    account = parse_account(
        {
            "account_id": "shop",
            "datamodel": {
                "file_name_template": "{{clv}}_{account}_{yyyy}-{mm}-{dd}_{yyyymmdd}.csv"
            },
        }
    )
    assert account.datamodel_file_name(dt.date(2025, 1, 9)) == "{clv}_shop_2025-01-09_20250109.csv"


# --- load_project -------------------------------------------------------------------------


def test_load_project_reads_project_and_every_account(config_dir):
    project = load_project(config_dir)
    assert sorted(project.accounts) == ["shop_a", "shop_b"]
    assert project.account("shop_b").timezone == "Europe/Madrid"
    assert project.account("shop_a") == AccountSettings(account_id="shop_a")


def test_load_project_resolves_relative_paths_against_config_folder(
    config_dir, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path.parent)  # the working folder must not matter
    project = load_project(config_dir)
    assert project.store_uri == str((tmp_path / "store").resolve())
    default = project.source_for(project.account("shop_a"))
    assert default == DuckDBSource(path=str((config_dir / "wh.duckdb").resolve()))
    own = project.source_for(project.account("shop_b"))
    assert own == FilesSource(
        type="files",
        transactions=str((config_dir / "data" / "tx_*.csv").resolve()),
        contacts=str((config_dir / "data" / "contacts.csv").resolve()),
    )


def test_resolve_leaves_absolute_paths_and_uris_alone(config_dir, tmp_path):
    project = load_project(config_dir)
    assert project.resolve("s3://bucket/store") == "s3://bucket/store"
    assert project.resolve(str(tmp_path / "abs.duckdb")) == str(tmp_path / "abs.duckdb")


def test_load_project_without_clv_yaml_uses_project_defaults(tmp_path):
    _write(tmp_path / "accounts" / "shop.yaml", {"account_id": "shop"})
    project = load_project(tmp_path)
    assert project.store_uri == str((tmp_path / "store").resolve())
    assert project.source_for(project.account("shop")).path == str(
        (tmp_path / "warehouse.duckdb").resolve()
    )


def test_load_project_reads_folder_from_environment(config_dir, monkeypatch):
    monkeypatch.setenv(CONFIG_DIR_ENV, str(config_dir))
    assert sorted(load_project().accounts) == ["shop_a", "shop_b"]


def test_load_project_missing_folder_raises_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"config folder .*nope does not exist"):
        load_project(tmp_path / "nope")


def test_account_id_not_matching_file_name_raises_config_error(config_dir):
    path = _write(config_dir / "accounts" / "shop_c.yaml", {"account_id": "shop_z"})
    with pytest.raises(
        ConfigError,
        match=rf"^{re.escape(str(path))}: account_id 'shop_z' does not match the file name "
        r"\(expected 'shop_c'\)",
    ):
        load_project(config_dir)


def test_same_account_in_yaml_and_yml_raises_config_error(config_dir):
    _write(
        config_dir / "accounts" / "shop_a.yml", {"account_id": "shop_a", "timezone": "Europe/Paris"}
    )
    with pytest.raises(ConfigError, match=r"account 'shop_a' is configured twice"):
        load_project(config_dir)


def test_invalid_account_file_error_names_the_file_and_field(config_dir):
    path = _write(
        config_dir / "accounts" / "shop_c.yaml", {"account_id": "shop_c", "timezone": "Madrid"}
    )
    with pytest.raises(
        ConfigError,
        match=rf"^{re.escape(str(path))}: invalid settings for account 'shop_c':\n  timezone: ",
    ):
        load_project(config_dir)


def test_invalid_project_file_error_names_the_file_and_field(config_dir):
    _write(config_dir / "clv.yaml", {"store": "s", "sources": {}})
    with pytest.raises(
        ConfigError,
        match=rf"^{re.escape(str(config_dir / 'clv.yaml'))}: invalid project settings:\n"
        r"  sources: ",
    ):
        load_project(config_dir)


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("account_id: [unclosed", "not valid YAML"),
        ("- a\n- b\n", "expected a mapping of settings, got list"),
    ],
    ids=["broken-yaml", "list-not-mapping"],
)
def test_unreadable_account_file_raises_config_error_naming_it(config_dir, text, detail):
    path = _write(config_dir / "accounts" / "shop_c.yaml", text)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: {detail}"):
        load_project(config_dir)


def test_unknown_account_lists_configured_ones(config_dir):
    with pytest.raises(
        ConfigError, match=r"account 'shop_x' is not configured .*\(configured: shop_a, shop_b\)"
    ):
        load_project(config_dir).account("shop_x")
