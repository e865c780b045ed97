"""Tests for clv_jobs.store on ``s3://`` against a real S3 endpoint (moto in server mode).

The endpoint is a separate ``python -m moto.server`` process on a free loopback port,
started once for the module and terminated at the end, even when a test fails. The
store only sees it through the environment (AWS_ENDPOINT_URL and AWS_* credentials), as
workers on other machines would see MinIO, Ceph or AWS itself.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from clv_jobs import pipeline
from clv_jobs.errors import ConfigError
from clv_jobs.sample_data import SampleAccount, simulate_account, write_warehouse
from clv_jobs.settings import load_project
from clv_jobs.store import Store
from tests.moto_server import free_port, moto_s3_server

boto3 = pytest.importorskip("boto3", reason="boto3 is needed to set up the S3 test bucket")
pytest.importorskip("moto.server", reason="moto[server] is needed for an S3 endpoint on loopback")

BUCKET = "clv-store-test"
ACCOUNT = "acme"
D1, D2, D3 = dt.date(2025, 4, 1), dt.date(2025, 5, 1), dt.date(2025, 6, 1)
SECRET = "test-secret-never-logged"


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """A moto S3 server on 127.0.0.1:<free port>, the bucket, and the AWS_* environment."""
    with moto_s3_server(tmp_path_factory.mktemp("moto")) as endpoint:
        with pytest.MonkeyPatch.context() as env:
            for name in ("AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
                env.delenv(name, raising=False)
            env.setenv("AWS_ACCESS_KEY_ID", "testing")
            env.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
            env.setenv("AWS_DEFAULT_REGION", "us-east-1")
            env.setenv("AWS_ENDPOINT_URL", endpoint)
            # Neither boto3 here nor the store may pick anything up from the developer's ~/.aws.
            env.setenv("AWS_CONFIG_FILE", os.devnull)
            env.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
            yield endpoint


@pytest.fixture
def s3(s3_endpoint):
    return boto3.client("s3", endpoint_url=s3_endpoint)


@pytest.fixture
def prefix(request) -> str:
    """A key prefix of the test's own, so tests share the bucket but not their objects."""
    return f"t/{request.node.name}"


@pytest.fixture
def store(s3_endpoint, prefix) -> Store:
    return Store(f"s3://{BUCKET}/{prefix}")


def keys(s3, prefix: str) -> list[str]:
    """Every object key under a prefix (relative to it), as S3 itself lists them."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{prefix}/")
    return sorted(item["Key"].removeprefix(f"{prefix}/") for page in pages for item in page.get("Contents", []))


def get(s3, key: str) -> bytes:
    return s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def write_run(store: Store, as_of: dt.date, run_id: str, publish: bool = True) -> dict:
    """Write a run's files aside, then (optionally) publish it, as the pipeline does."""
    store.write_parquet(store.run_path(ACCOUNT, as_of, run_id, "scores.parquet"),
                        pd.DataFrame({"customer_id": ["a"], "segment_id": [1]}))
    store.write_json(store.run_path(ACCOUNT, as_of, run_id, "summary.json"), {"run_id": run_id})
    pointer = {"as_of": as_of.isoformat(), "run_id": run_id, "model_version": f"m@{run_id}"}
    if publish:
        store.publish_run(ACCOUNT, as_of, pointer)
    return pointer


# -- construction and configuration -----------------------------------------------------------
def test_s3_root_and_paths(store, prefix):
    assert not store.is_local
    assert store.root == f"{BUCKET}/{prefix}"
    assert store.run_path(ACCOUNT, D1, "r1", "x.json") == f"{BUCKET}/{prefix}/acme/runs/2025-04-01/r1/x.json"
    assert Store(f"s3://{BUCKET}/{prefix}/").root == store.root
    assert Store(f"s3://{BUCKET}").root == BUCKET
    assert SECRET not in repr(store)


def test_missing_bucket_is_a_clear_config_error(s3_endpoint):
    with pytest.raises(ConfigError, match="store bucket 'no-such-bucket' does not exist") as error:
        Store("s3://no-such-bucket/clv")
    assert SECRET not in str(error.value)


def test_missing_credentials_name_the_variables(s3_endpoint, monkeypatch):
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ConfigError, match="set AWS_SECRET_ACCESS_KEY in the environment"):
        Store(f"s3://{BUCKET}/clv")


def test_options_in_the_uri_are_refused(s3_endpoint):
    with pytest.raises(ConfigError, match="options in the URI are not supported") as error:
        Store(f"s3://{BUCKET}/clv?access_key=AKIA&secret_key={SECRET}")
    assert SECRET not in str(error.value)


def test_service_specific_endpoint_wins(s3_endpoint, monkeypatch, prefix, s3):
    # AWS SDK convention: AWS_ENDPOINT_URL_S3 overrides AWS_ENDPOINT_URL; no region set at all.
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    store = Store(f"s3://{BUCKET}/{prefix}")
    store.write_json(store.path("a.json"), {"x": 1})
    assert json.loads(get(s3, f"{prefix}/a.json")) == {"x": 1}


def test_unreachable_endpoint_is_a_clear_config_error(s3_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ConfigError, match=f"store bucket '{BUCKET}' cannot be reached") as error:
        Store(f"s3://{BUCKET}/clv")
    assert SECRET not in str(error.value)


# -- bytes / json / parquet / files ------------------------------------------------------------
def test_bytes_roundtrip_without_folder_objects(store, s3, prefix):
    path = store.path("a", "b", "c.bin")
    store.write_bytes(path, b"\x00\x01hello")
    assert store.read_bytes(path) == b"\x00\x01hello"
    assert get(s3, f"{prefix}/a/b/c.bin") == b"\x00\x01hello"
    assert store.exists(path)
    assert store.exists(store.path("a", "b"))  # a prefix with objects below counts as a folder
    assert not store.exists(store.path("a", "nope"))
    assert keys(s3, prefix) == ["a/b/c.bin"]  # no "a/" or "a/b/" marker objects


def test_write_bytes_replaces_whole_content_in_single_puts(store, s3, prefix):
    path = store.path("x.bin")
    store.write_bytes(path, b"a" * 100_000)
    store.write_bytes(path, b"short")
    assert store.read_bytes(path) == b"short"
    store.write_bytes(path, b"")
    assert store.read_bytes(path) == b""
    assert keys(s3, prefix) == ["x.bin"]
    assert "Uploads" not in s3.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix)


def test_failed_write_keeps_old_content(store, s3, prefix):
    # pyarrow's S3 stream uploads what it holds when closed, even on an exception: the
    # store must not open one for data it cannot write.
    path = store.path("f.json")
    store.write_bytes(path, b"old")
    with pytest.raises(TypeError):
        store.write_bytes(path, "not bytes")  # type: ignore[arg-type]
    assert get(s3, f"{prefix}/f.json") == b"old"


def test_json_roundtrip_and_missing(store):
    path = store.path("a.json")
    payload = {"b": 1, "a": [1, 2], "when": dt.date(2025, 6, 1), "nested": {"z": None, "y": "é"}}
    store.write_json(path, payload)
    first = store.read_bytes(path)
    store.write_json(path, dict(reversed(list(payload.items()))))
    assert store.read_bytes(path) == first
    assert store.read_json(path) == {"a": [1, 2], "b": 1, "nested": {"y": "é", "z": None}, "when": "2025-06-01"}
    assert store.read_json(store.path("missing.json")) is None


def test_parquet_roundtrip(store, s3, prefix):
    frame = pd.DataFrame({
        "customer_id": ["a", "b", "c"],
        "segment_id": np.array([1, 11, 9], dtype="int64"),
        "clv": [1.5, np.nan, 0.0],
        "first_ts": pd.to_datetime(["2024-01-01 10:00:00", "2024-02-01 00:00:00", "2025-05-31 23:59:59"]),
    })
    path = store.path(ACCOUNT, "x", "scores.parquet")
    store.write_parquet(path, frame)
    assert get(s3, f"{prefix}/acme/x/scores.parquet")[:4] == b"PAR1"
    pd.testing.assert_frame_equal(store.read_parquet(path), frame, check_dtype=False)
    assert store.read_parquet(path, columns=["segment_id"]).columns.tolist() == ["segment_id"]


def test_upload_download(store, s3, prefix, tmp_path):
    local = tmp_path / "local.csv"
    local.write_bytes(b"a,b\n1,2\n" * 1000)
    store.upload(str(local), store.path(ACCOUNT, "deep", "f.csv"))
    assert get(s3, f"{prefix}/acme/deep/f.csv") == local.read_bytes()
    out = tmp_path / "out.csv"
    store.download(store.path(ACCOUNT, "deep", "f.csv"), str(out))
    assert out.read_bytes() == local.read_bytes()
    assert keys(s3, prefix) == ["acme/deep/f.csv"]


def test_list_dirs_from_object_keys(store, s3, prefix):
    assert store.list_dirs(store.path("nothing")) == []
    for name in ("b", "a", "c"):
        store.write_bytes(store.path("top", name, "deeper", "f"), b"")
    store.write_bytes(store.path("top", "file.json"), b"{}")
    # A folder marker made by another tool (S3 console, `aws s3api put-object --key x/`) is harmless.
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/top/", Body=b"")
    assert store.list_dirs(store.path("top")) == ["a", "b", "c"]
    assert store.list_dirs(store.path("top", "a")) == ["deeper"]


def test_list_files_and_remove(store, s3, prefix):
    for name in ("x.json", "work/a.parquet", "work/deep/b.parquet"):
        store.write_bytes(store.path("run", name), b"1")
    store.write_bytes(store.path("other", "keep.json"), b"1")
    assert store.list_files(store.path("run")) == ["x.json"]
    assert store.list_files(store.path("nothing")) == []
    store.remove(store.path("run", "work"))
    store.remove(store.path("run", "missing"))  # nothing to do, no error
    assert not store.exists(store.path("run", "work"))
    assert [key for key in keys(s3, prefix) if not key.endswith("/")] == ["other/keep.json", "run/x.json"]
    assert store.list_dirs(store.path()) == ["other", "run"]
    assert store.list_files(store.path("run")) == ["x.json"]


# -- runs -------------------------------------------------------------------------------------
def test_publish_sets_pointers_and_previous_run(store, s3, prefix):
    assert store.latest_run(ACCOUNT) is None
    assert store.previous_run(ACCOUNT, D3) is None
    p1 = write_run(store, D1, "r1")
    assert store.run_for(ACCOUNT, D1) == p1 == store.latest_run(ACCOUNT)
    p3 = write_run(store, D3, "r3")
    assert store.latest_run(ACCOUNT) == p3
    backfill = write_run(store, D2, "r2")  # a backfill never moves current.json back
    assert store.latest_run(ACCOUNT) == p3
    assert json.loads(get(s3, f"{prefix}/acme/current.json"))["run_id"] == "r3"
    assert store.previous_run(ACCOUNT, D1) is None
    assert store.previous_run(ACCOUNT, D2) == p1
    assert store.previous_run(ACCOUNT, D3) == backfill
    assert store.previous_run(ACCOUNT, dt.date(2030, 1, 1)) == p3
    assert store.previous_run("other", D3) is None


def test_unpublished_run_is_never_current(store):
    published = write_run(store, D1, "r1")
    write_run(store, D2, "r2-killed", publish=False)  # killed before its pointers moved
    assert store.exists(store.run_path(ACCOUNT, D2, "r2-killed", "summary.json"))
    assert store.run_for(ACCOUNT, D2) is None
    assert store.latest_run(ACCOUNT) == published
    assert store.previous_run(ACCOUNT, D3) == published


# -- eligibility and activation ---------------------------------------------------------------
def test_eligibility_records_and_activation(store, s3, prefix):
    assert store.last_eligibility(ACCOUNT, D3) is None
    store.record_eligibility(ACCOUNT, D1, {"eligible": False, "buyers": 10})
    store.record_eligibility(ACCOUNT, D3, {"eligible": True, "buyers": 900})
    store.record_eligibility(ACCOUNT, D2, {"eligible": True, "buyers": 600})
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/acme/eligibility/notes.txt", Body=b"x")
    assert store.last_eligibility(ACCOUNT, D1 - dt.timedelta(days=1)) is None
    assert store.last_eligibility(ACCOUNT, D2 - dt.timedelta(days=1))["buyers"] == 10
    assert store.last_eligibility(ACCOUNT, D2)["buyers"] == 600
    assert store.last_eligibility(ACCOUNT, dt.date(2030, 1, 1))["buyers"] == 900
    assert store.activation(ACCOUNT) is None
    store.activate(ACCOUNT, D2)
    store.activate(ACCOUNT, D1)
    assert store.activation(ACCOUNT) == {"activated_on": "2025-05-01"}
    assert json.loads(get(s3, f"{prefix}/acme/activation.json")) == {"activated_on": "2025-05-01"}


# -- the pipeline on S3 -----------------------------------------------------------------------
@pytest.mark.slow
def test_monthly_runs_publish_to_s3_and_the_next_reads_evolution_from_there(s3_endpoint, s3, tmp_path):
    """The Airflow issue's test: workers on different machines share each account's runs."""
    as_of, previous_month = dt.date(2025, 6, 1), dt.date(2025, 5, 1)
    root = tmp_path / "project"
    write_warehouse(root / "warehouse.duckdb",
                    [simulate_account(SampleAccount("shop", n_buyers=1_500, history_days=800, seed=21), as_of)])
    config = root / "config"
    (config / "accounts").mkdir(parents=True)
    (config / "clv.yaml").write_text(yaml.safe_dump(
        {"store": f"s3://{BUCKET}/clv", "source": {"type": "duckdb", "path": "../warehouse.duckdb"}}))
    (config / "accounts" / "shop.yaml").write_text(yaml.safe_dump(
        {"account_id": "shop", "datamodel": {"destinations": [{"type": "local", "path": "../outbox"}]}}))
    project = load_project(config)

    check = pipeline.check_eligibility(project, "shop", previous_month)
    assert check["eligible"] and check["newly_activated"]
    first = pipeline.refit(project, "shop", previous_month)
    second = pipeline.refit(project, "shop", as_of)

    objects = keys(s3, "clv/shop")
    for summary in (first, second):
        run = f"runs/{summary['as_of']}/{summary['run_id']}"
        for name in ("scores.parquet", "quarantine.parquet", "model.json", "summary.json",
                     summary["datamodel"]["file"]):
            assert f"{run}/{name}" in objects
        assert f"runs/{summary['as_of']}/CURRENT.json" in objects
    assert {"activation.json", "eligibility/2025-05-01.json", "current.json"} <= set(objects)
    assert not [key for key in objects if "/work/" in key]  # intermediates removed on publication
    # The only folder markers are the ones pyarrow leaves in a run folder when work/ is deleted.
    markers = {key for key in objects if key.endswith("/")}
    assert markers <= {f"runs/{summary['as_of']}/{summary['run_id']}/" for summary in (first, second)}
    assert json.loads(get(s3, "clv/shop/current.json"))["run_id"] == second["run_id"]

    stored = json.loads(get(s3, f"clv/shop/runs/2025-06-01/{second['run_id']}/summary.json"))
    assert stored["previous_run"] == second["previous_run"] == first["run_id"]
    assert first["evolution"] == {"new": first["buyers"]}
    assert {"up", "down", "equal"} <= set(second["evolution"])

    exported = pipeline.export(project, "shop")
    assert exported["run_id"] == second["run_id"]
    delivered = Path(exported["deliveries"][0]["path"])
    assert delivered.parent == root / "outbox" and delivered.name == "clv_datamodel_shop_20250601.csv"
    published = get(s3, f"clv/shop/runs/2025-06-01/{second['run_id']}/{second['datamodel']['file']}")
    digest = hashlib.sha256(delivered.read_bytes()).hexdigest()
    assert digest == hashlib.sha256(published).hexdigest() == second["datamodel"]["sha256"]
    manifest = json.loads((root / "outbox" / f"{delivered.name}.manifest.json").read_text())
    assert manifest["sha256"] == digest and manifest["rows"] == second["buyers"]
