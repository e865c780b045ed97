"""Tests for clv_jobs.store on a local root: atomic writes, run publication (CURRENT.json,
current.json), backfills, unpublished runs, eligibility records and activation."""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clv_jobs import store as store_module
from clv_jobs.store import Store

ACCOUNT = "acme"
D1, D2, D3 = dt.date(2025, 4, 1), dt.date(2025, 5, 1), dt.date(2025, 6, 1)


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(str(tmp_path / "store"))


def partials(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".partial")]


def write_run(store: Store, as_of: dt.date, run_id: str, publish: bool = True) -> dict:
    """Write a run's files aside, then (optionally) publish it, as the pipeline does."""
    store.write_parquet(store.run_path(ACCOUNT, as_of, run_id, "scores.parquet"),
                        pd.DataFrame({"customer_id": ["a"], "segment_id": [1]}))
    store.write_json(store.run_path(ACCOUNT, as_of, run_id, "summary.json"), {"run_id": run_id})
    pointer = {"as_of": as_of.isoformat(), "run_id": run_id, "model_version": f"m@{run_id}"}
    if publish:
        store.publish_run(ACCOUNT, as_of, pointer)
    return pointer


# -- construction and paths -------------------------------------------------------------------
def test_local_root_is_absolute_and_paths_join(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = Store("relative/root")
    assert store.is_local
    assert store.root == str(tmp_path / "relative" / "root")
    assert store.path("a", "b.json") == f"{store.root}/a/b.json"
    assert store.run_path(ACCOUNT, D1, "r1") == f"{store.root}/acme/runs/2025-04-01/r1"
    run = f"{store.root}/acme/runs/2025-04-01/r1"
    assert store.run_path(ACCOUNT, D1, "r1", "x.json") == f"{run}/x.json"
    assert "relative/root" in repr(store)


def test_file_uri_root(tmp_path):
    store = Store(f"file://{tmp_path}/s")
    assert store.is_local
    store.write_json(store.path("a.json"), {"x": 1})
    assert json.loads((tmp_path / "s" / "a.json").read_text()) == {"x": 1}


# -- bytes / json / parquet ------------------------------------------------------------------
def test_bytes_roundtrip_and_parents_created(store, tmp_path):
    path = store.path("a", "b", "c.bin")
    store.write_bytes(path, b"\x00\x01hello")
    assert store.read_bytes(path) == b"\x00\x01hello"
    assert store.exists(path)
    assert store.exists(store.path("a", "b"))
    assert not store.exists(store.path("a", "nope"))
    assert partials(tmp_path) == []


def test_write_bytes_replaces_whole_content(store, tmp_path):
    path = store.path("x.bin")
    store.write_bytes(path, b"a" * 10_000)
    store.write_bytes(path, b"short")
    assert store.read_bytes(path) == b"short"
    store.write_bytes(path, b"")
    assert store.read_bytes(path) == b""
    assert os.listdir(tmp_path / "store") == ["x.bin"]


def test_write_bytes_renames_into_place(store, monkeypatch):
    # The final name only ever appears through one rename of a complete staging file.
    path = store.path("f.bin")
    store.write_bytes(path, b"old")
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        src, dst = Path(src), Path(dst)
        seen.append((src.name, dst.name, src.read_bytes(), dst.read_bytes()))
        real_replace(src, dst)

    monkeypatch.setattr(store_module.os, "replace", spy)
    store.write_bytes(path, b"new content")
    [(src, dst, staged, before)] = seen
    assert src.startswith(".f.bin.") and src.endswith(".partial")
    assert dst == "f.bin"
    assert staged == b"new content"
    assert before == b"old"  # readers saw the old content until the rename


def test_concurrent_readers_see_old_or_new(store):
    path = store.path("f.bin")
    old, new = b"o" * 200_000, b"n" * 300_000
    store.write_bytes(path, old)
    stop = threading.Event()
    bad = []

    def reader():
        while not stop.is_set():
            data = store.read_bytes(path)
            if data not in (old, new):
                bad.append(len(data))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(30):
            store.write_bytes(path, new if i % 2 == 0 else old)
    finally:
        stop.set()
        thread.join()
    assert bad == []


def test_failed_write_keeps_old_content_and_no_partial(store, tmp_path):
    path = store.path("f.json")
    store.write_bytes(path, b"old")
    with pytest.raises(TypeError):
        store.write_bytes(path, "not bytes")  # type: ignore[arg-type]
    assert store.read_bytes(path) == b"old"
    assert partials(tmp_path) == []


def test_json_roundtrip_stable_bytes(store):
    path = store.path("a.json")
    payload = {"b": 1, "a": [1, 2], "when": dt.date(2025, 6, 1), "nested": {"z": None, "y": "é"}}
    store.write_json(path, payload)
    first = store.read_bytes(path)
    store.write_json(path, dict(reversed(list(payload.items()))))
    assert store.read_bytes(path) == first  # key-sorted: same bytes for the same content
    assert first.endswith(b"\n")
    assert store.read_json(path) == {"a": [1, 2], "b": 1, "nested": {"y": "é", "z": None},
                                     "when": "2025-06-01"}


def test_read_json_missing_is_none(store):
    assert store.read_json(store.path("missing.json")) is None


def test_parquet_roundtrip(store, tmp_path):
    frame = pd.DataFrame({
        "customer_id": ["a", "b", "c"],
        "segment_id": np.array([1, 11, 9], dtype="int64"),
        "clv": [1.5, np.nan, 0.0],
        "first_ts": pd.to_datetime(
            ["2024-01-01 10:00:00", "2024-02-01 00:00:00", "2025-05-31 23:59:59"]),
    })
    path = store.path(ACCOUNT, "x", "scores.parquet")
    store.write_parquet(path, frame)
    assert store.read_bytes(path)[:4] == b"PAR1"
    back = store.read_parquet(path)
    pd.testing.assert_frame_equal(back, frame, check_dtype=False)
    assert store.read_parquet(path, columns=["segment_id"]).columns.tolist() == ["segment_id"]
    assert partials(tmp_path) == []


def test_upload_download(store, tmp_path):
    local = tmp_path / "local.csv"
    local.write_bytes(b"a,b\n1,2\n")
    store.upload(str(local), store.path(ACCOUNT, "deep", "f.csv"))
    out = tmp_path / "out.csv"
    store.download(store.path(ACCOUNT, "deep", "f.csv"), str(out))
    assert out.read_bytes() == b"a,b\n1,2\n"


def test_list_dirs(store):
    assert store.list_dirs(store.path("nothing")) == []
    for name in ("b", "a", "c"):
        store.write_bytes(store.path("top", name, "f"), b"")
    store.write_bytes(store.path("top", "file.json"), b"{}")
    assert store.list_dirs(store.path("top")) == ["a", "b", "c"]


# -- runs -------------------------------------------------------------------------------------
def test_nothing_published(store):
    assert store.latest_run(ACCOUNT) is None
    assert store.run_for(ACCOUNT, D1) is None
    assert store.previous_run(ACCOUNT, D3) is None


def test_publish_sets_current_of_the_day_and_latest(store, tmp_path):
    pointer = write_run(store, D1, "r1")
    assert store.run_for(ACCOUNT, D1) == pointer
    assert store.latest_run(ACCOUNT) == pointer
    assert (tmp_path / "store" / ACCOUNT / "runs" / "2025-04-01" / "CURRENT.json").exists()
    assert (tmp_path / "store" / ACCOUNT / "current.json").exists()
    later = write_run(store, D2, "r2")
    assert store.latest_run(ACCOUNT) == later
    assert store.run_for(ACCOUNT, D1) == pointer
    assert partials(tmp_path) == []


def test_rerun_same_day_replaces_pointers(store):
    write_run(store, D2, "r2-a")
    again = write_run(store, D2, "r2-b")
    assert store.run_for(ACCOUNT, D2) == again
    assert store.latest_run(ACCOUNT) == again


def test_backfill_does_not_move_current_back(store):
    latest = write_run(store, D3, "r3")
    backfill = write_run(store, D1, "r1")
    assert store.latest_run(ACCOUNT) == latest
    assert store.run_for(ACCOUNT, D1) == backfill
    # The backfill is found as the previous run of later dates.
    assert store.previous_run(ACCOUNT, D2) == backfill
    assert store.previous_run(ACCOUNT, D3) == backfill


def test_previous_run_is_strictly_earlier_and_latest_of_those(store):
    p1 = write_run(store, D1, "r1")
    p2 = write_run(store, D2, "r2")
    p3 = write_run(store, D3, "r3")
    assert store.previous_run(ACCOUNT, D1) is None
    assert store.previous_run(ACCOUNT, D2) == p1
    assert store.previous_run(ACCOUNT, D2 + dt.timedelta(days=1)) == p2
    assert store.previous_run(ACCOUNT, D3) == p2  # not D3 itself
    assert store.previous_run(ACCOUNT, dt.date(2030, 1, 1)) == p3


def test_unpublished_run_is_ignored_and_never_current(store, tmp_path):
    published = write_run(store, D1, "r1")
    # A job killed after writing its files but before publishing.
    write_run(store, D2, "r2-killed", publish=False)
    killed = tmp_path / "store" / ACCOUNT / "runs" / "2025-05-01" / "r2-killed"
    assert (killed / "summary.json").exists()
    assert store.run_for(ACCOUNT, D2) is None
    assert store.latest_run(ACCOUNT) == published
    assert store.previous_run(ACCOUNT, D3) == published
    # Later publications never pick it up either.
    backfill = write_run(store, dt.date(2025, 3, 1), "r0")
    assert store.latest_run(ACCOUNT) == published
    later = write_run(store, D3, "r3")
    assert store.latest_run(ACCOUNT) == later
    assert store.previous_run(ACCOUNT, D3) == published
    assert store.previous_run(ACCOUNT, D1) == backfill


def test_killed_rerun_keeps_the_day_current_pointer(store):
    published = write_run(store, D2, "r2-a")
    write_run(store, D2, "r2-b-killed", publish=False)
    assert store.run_for(ACCOUNT, D2) == published
    assert store.latest_run(ACCOUNT) == published
    assert store.previous_run(ACCOUNT, D3) == published


def test_accounts_are_separate(store):
    write_run(store, D1, "r1")
    assert store.latest_run("other") is None
    assert store.previous_run("other", D3) is None


# -- eligibility and activation ---------------------------------------------------------------
def test_eligibility_records_and_last_eligibility(store):
    assert store.last_eligibility(ACCOUNT, D3) is None
    store.record_eligibility(ACCOUNT, D1, {"eligible": False, "buyers": 10})
    store.record_eligibility(ACCOUNT, D3, {"eligible": True, "buyers": 900})
    store.record_eligibility(ACCOUNT, D2, {"eligible": True, "buyers": 600})
    assert store.last_eligibility(ACCOUNT, D1 - dt.timedelta(days=1)) is None
    assert store.last_eligibility(ACCOUNT, D1) == {"eligible": False, "buyers": 10}
    assert store.last_eligibility(ACCOUNT, D2 - dt.timedelta(days=1))["buyers"] == 10
    assert store.last_eligibility(ACCOUNT, D2)["buyers"] == 600
    assert store.last_eligibility(ACCOUNT, dt.date(2030, 1, 1))["buyers"] == 900
    # Re-checking a day replaces its record.
    store.record_eligibility(ACCOUNT, D2, {"eligible": False, "buyers": 1})
    assert store.last_eligibility(ACCOUNT, D2)["buyers"] == 1
    assert store.last_eligibility("other", D3) is None


def test_last_eligibility_ignores_other_files(store, tmp_path):
    store.record_eligibility(ACCOUNT, D1, {"eligible": True})
    folder = tmp_path / "store" / ACCOUNT / "eligibility"
    (folder / "notes.txt").write_text("x")
    (folder / ".2025-04-02.json.abc.partial").write_text("{")
    assert store.last_eligibility(ACCOUNT, D3) == {"eligible": True}


def test_activate_keeps_the_first_date(store):
    assert store.activation(ACCOUNT) is None
    store.activate(ACCOUNT, D2)
    assert store.activation(ACCOUNT) == {"activated_on": "2025-05-01"}
    store.activate(ACCOUNT, D3)
    store.activate(ACCOUNT, D1)
    assert store.activation(ACCOUNT) == {"activated_on": "2025-05-01"}
    assert store.activation("other") is None


def test_failed_parquet_write_keeps_old_content_and_no_partial(store, tmp_path, monkeypatch):
    path = store.path(ACCOUNT, "x", "scores.parquet")
    store.write_parquet(path, pd.DataFrame({"customer_id": ["a"]}))
    unwritable = pa.table({"customer_id": ["b"], "gap": pa.array([(1, 2, 3)], pa.month_day_nano_interval())})
    with pytest.raises(pa.ArrowException):  # Parquet has no such type
        store.write_parquet(path, unwritable)
    real_write = pq.write_table

    def disk_full(table, where, **options):  # half a file written, then the disk is full
        real_write(table, where, **options)
        with open(where, "r+b") as half:
            half.truncate(10)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", disk_full)
    with pytest.raises(OSError, match="No space"):
        store.write_parquet(path, pd.DataFrame({"customer_id": ["c"]}))
    monkeypatch.undo()
    assert store.read_parquet(path)["customer_id"].tolist() == ["a"]
    assert partials(tmp_path) == []
