"""Airflow-style connections without Airflow: lookup order and both forms."""

from __future__ import annotations

import json

import pytest

from clv_jobs.connections import lookup_connection, parse_connection
from clv_jobs.errors import ConfigError


def test_uri_form_is_percent_decoded_with_extras():
    conn = parse_connection("drop", "sftp://clv:p%40ss@mc123.ftp.example.com:2222/?host_key=ssh-ed25519+AAAA")
    assert (conn.conn_type, conn.host, conn.port, conn.login, conn.password) == (
        "sftp", "mc123.ftp.example.com", 2222, "clv", "p@ss")
    assert conn.extra == {"host_key": "ssh-ed25519 AAAA"}
    assert "p@ss" not in repr(conn)


def test_json_form_and_extra_as_text():
    conn = parse_connection("s3", json.dumps({"conn_type": "aws", "login": "AKIA", "password": "secret",
                                              "extra": json.dumps({"endpoint_url": "http://127.0.0.1:9"})}))
    assert conn.conn_type == "aws" and conn.extra == {"endpoint_url": "http://127.0.0.1:9"}


@pytest.mark.parametrize("value", ['{"conn_type": "sftp", "port": "twenty"}', "not a uri", "sftp://h:99999999"],
                         ids=["json_bad_port", "neither_form", "uri_bad_port"])
def test_bad_values_are_config_errors_that_do_not_quote_them(value):
    with pytest.raises(ConfigError) as error:
        parse_connection("x", value, "$AIRFLOW_CONN_X")
    assert value not in str(error.value)


def test_lookup_order_resolver_then_airflow_env_then_clv_env(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_DROP", "sftp://from-airflow-env")
    monkeypatch.setenv("CLV_CONN_DROP", "sftp://from-clv-env")
    assert lookup_connection("drop", lambda _: "sftp://from-resolver").host == "from-resolver"
    assert lookup_connection("drop", lambda _: None).host == "from-airflow-env"
    monkeypatch.delenv("AIRFLOW_CONN_DROP")
    assert lookup_connection("drop").host == "from-clv-env"


def test_missing_connection_says_where_it_looked(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_NOPE", raising=False)
    monkeypatch.delenv("CLV_CONN_NOPE", raising=False)
    with pytest.raises(ConfigError, match=r"connection 'nope' not found \(looked in \$AIRFLOW_CONN_NOPE, "
                                          r"\$CLV_CONN_NOPE\)"):
        lookup_connection("nope")
