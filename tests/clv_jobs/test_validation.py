"""Tests for clv_jobs.validation: every raw row ends in exactly one place (clean, later,
quarantined with its reason and source row, or duplicate), and the quarantine limit."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clv_jobs.asof import cutoff_utc
from clv_jobs.errors import InputError, QuarantineLimitError
from clv_jobs.settings import FilesSource
from clv_jobs.sources import connect, load_account
from clv_jobs.validation import REASONS, quarantined_rows, require_rows, validate_transactions

AS_OF = dt.date(2025, 6, 1)
CUTOFF = cutoff_utc(AS_OF, "UTC")  # 2025-06-01 00:00 UTC
READ_AT = dt.datetime(2025, 6, 15, 12, 0)


def _row(order_id: str, /, **overrides) -> dict:
    row = {
        "order_id": order_id,
        "customer_id": "c1",
        "order_ts": "2025-05-01 10:00:00",
        "amount": 10.0,
        "status": "paid",
        "ingested_at": None,
    }
    return row | overrides


def _good(n: int, start: int = 1, **overrides) -> list[dict]:
    return [_row(f"g{i}", customer_id=f"c{i}", **overrides) for i in range(start, start + n)]


def _load(tmp_path: Path, rows: list[dict], columns: list[str] | None = None):
    """Write ``rows`` as the account's CSV (pandas) and load it into a fresh session."""
    frame = pd.DataFrame(rows)
    if columns is not None:
        frame = frame[columns]
    path = tmp_path / "transactions.csv"
    frame.to_csv(path, index=False)
    con = connect()
    loaded = load_account(con, FilesSource(type="files", transactions=str(path)), "acc")
    return con, loaded


def _validate(con, limit: float = 1.0, cutoff: dt.datetime = CUTOFF, account: str = "acc"):
    return validate_transactions(con, account, "transactions.csv", cutoff, limit, read_at=READ_AT)


def _clean(con) -> pd.DataFrame:
    return con.execute("SELECT * FROM transactions ORDER BY order_id").df()


def _accounted_for(report) -> bool:
    return (
        report.rows_clean + report.rows_later + report.rows_quarantined + report.duplicates
        == report.rows_read
    )


# --- each quarantine reason ---------------------------------------------------------------

BAD_ROWS = [
    ("missing_customer_id", {"customer_id": None}),
    ("missing_customer_id", {"customer_id": "   "}),
    ("missing_order_id", {"order_id": None}),
    ("missing_order_id", {"order_id": "  "}),
    ("missing_order_id", {"order_id": "\u00a0\u3000"}),  # Unicode spaces, which trim() removes too
    ("unparseable_timestamp", {"order_ts": "yesterday"}),
    ("unparseable_timestamp", {"order_ts": "2025-02-30 10:00:00"}),
    ("unparseable_timestamp", {"order_ts": None}),
    ("future_timestamp", {"order_ts": "2025-06-20 10:00:00"}),  # after read_at
    ("future_timestamp", {"order_ts": "2025-05-01 10:00:00", "ingested_at": "2025-05-01 09:59:59"}),
    ("invalid_amount", {"amount": None}),
    ("invalid_amount", {"amount": np.nan}),
    ("invalid_amount", {"amount": "NaN"}),
    ("invalid_amount", {"amount": np.inf}),
    ("invalid_amount", {"amount": -np.inf}),
    ("invalid_amount", {"amount": -0.01}),
    ("invalid_amount", {"amount": 1e15}),
    ("invalid_amount", {"amount": "12,50"}),
    ("cancelled", {"status": "cancelled"}),
    ("cancelled", {"status": " Canceled "}),
    ("cancelled", {"status": "VOID"}),
]
BAD_IDS = [
    "customer-null",
    "customer-blank",
    "order-null",
    "order-blank",
    "order-unicode-spaces",
    "ts-text",
    "ts-feb-30",
    "ts-null",
    "ts-after-read-at",
    "ts-after-ingested-at",
    "amount-null",
    "amount-nan",
    "amount-nan-text",
    "amount-inf",
    "amount-minus-inf",
    "amount-negative",
    "amount-absurd",
    "amount-comma",
    "status-cancelled",
    "status-canceled-padded",
    "status-void",
]


@pytest.mark.parametrize(("reason", "bad"), BAD_ROWS, ids=BAD_IDS)
def test_bad_row_is_quarantined_with_its_reason_and_source_row(tmp_path, reason, bad):
    con, _ = _load(tmp_path, [_row("o1"), _row("o2", **bad), _row("o3")])
    report = _validate(con)

    assert report.quarantined == {reason: 1}
    assert report.examples == {reason: [2]}
    assert (report.rows_read, report.rows_clean, report.rows_later, report.duplicates) == (
        3,
        2,
        0,
        0,
    )
    quarantine = quarantined_rows(con)
    assert quarantine[["source_row", "reason"]].to_dict("records") == [
        {"source_row": 2, "reason": reason}
    ]
    assert "o2" not in set(_clean(con)["order_id"])


def test_ids_with_text_after_leading_spaces_or_tabs_are_kept(tmp_path):
    """Only a null or blank id is missing: one that merely starts with a space or a tab is an id."""
    rows = [_row("o1", customer_id=" c1"), _row("\to2", customer_id="\tc2"), _row("o3", customer_id="\u00a0c3")]
    con, _ = _load(tmp_path, rows)
    report = _validate(con)
    assert (report.rows_clean, report.quarantined) == (3, {})


def test_quarantined_row_is_kept_as_read(tmp_path):
    con, _ = _load(tmp_path, [_row("o1"), _row("o2", order_ts="31/12/2024 10:00", amount="abc")])
    _validate(con)
    kept = quarantined_rows(con).iloc[0]
    assert (kept["order_id"], kept["customer_id"], kept["order_ts"], kept["amount"]) == (
        "o2",
        "c1",
        "31/12/2024 10:00",
        "abc",
    )


def test_first_applicable_reason_wins_in_reasons_order(tmp_path):
    con, _ = _load(
        tmp_path, [_row("o1", customer_id=None, order_ts="nope", amount=-1, status="cancelled")]
    )
    assert _validate(con).quarantined == {"missing_customer_id": 1}
    assert list(REASONS) == [
        "missing_customer_id",
        "missing_order_id",
        "unparseable_timestamp",
        "future_timestamp",
        "invalid_amount",
        "cancelled",
    ]


def test_zero_amount_and_other_statuses_are_clean(tmp_path):
    con, _ = _load(
        tmp_path,
        [_row("o1", amount=0.0), _row("o2", status="refund_requested"), _row("o3", status=None)],
    )
    report = _validate(con)
    assert report.quarantined == {} and report.rows_clean == 3


def test_source_without_optional_columns_validates(tmp_path):
    rows = [_row("o1"), _row("o2", amount=-5)]
    con, _ = _load(tmp_path, rows, columns=["order_id", "customer_id", "order_ts", "amount"])
    report = _validate(con)
    assert (report.rows_clean, report.quarantined) == (1, {"invalid_amount": 1})


def test_typed_raw_table_quarantines_non_finite_doubles():
    """Parquet or warehouse sources arrive typed, not as text."""
    con = connect()
    con.execute(
        """
        CREATE TEMP TABLE raw_transactions AS
        SELECT * FROM (VALUES
            (1, 'o1', 'c1', TIMESTAMP '2025-05-01 10:00', 10.0::DOUBLE, NULL, NULL, NULL),
            (2, 'o2', 'c1', TIMESTAMP '2025-05-02 10:00', 'nan'::DOUBLE, NULL, NULL, NULL),
            (3, 'o3', 'c1', TIMESTAMP '2025-05-03 10:00', 'inf'::DOUBLE, NULL, NULL, NULL),
            (4, 'o4', 'c1', TIMESTAMP '2025-06-01 00:00', 10.0::DOUBLE, NULL, NULL, NULL)
        ) t(source_row, order_id, customer_id, order_ts, amount, status, currency, ingested_at)
        """
    )
    report = _validate(con)
    assert report.quarantined == {"invalid_amount": 2}
    assert report.examples == {"invalid_amount": [2, 3]}
    assert (report.rows_clean, report.rows_later) == (1, 1)


# --- later rows: not errors ---------------------------------------------------------------


def test_good_row_on_or_after_cutoff_is_later_not_quarantined(tmp_path):
    rows = [
        _row("o1", order_ts="2025-05-31 23:59:59"),
        _row("o2", order_ts="2025-06-01 00:00:00"),
        _row("o3", order_ts="2025-06-10 08:00:00"),
    ]
    con, _ = _load(tmp_path, rows)
    report = _validate(con)
    assert (report.rows_clean, report.rows_later, report.quarantined) == (1, 2, {})
    assert list(_clean(con)["order_id"]) == ["o1"]
    assert quarantined_rows(con).empty


def test_cutoff_is_local_midnight_of_the_account_time_zone(tmp_path):
    # Europe/Madrid in June is UTC+2: the as-of instant is 2025-05-31 22:00 UTC.
    rows = [
        _row("o1", order_ts="2025-05-31T23:59:00+02:00"),
        _row("o2", order_ts="2025-05-31 22:00:00"),
    ]
    con, _ = _load(tmp_path, rows)
    report = _validate(con, cutoff=cutoff_utc(AS_OF, "Europe/Madrid"))
    assert (report.rows_clean, report.rows_later) == (1, 1)
    assert list(_clean(con)["order_id"]) == ["o1"]


# --- time zones in timestamps -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "utc"),
    [
        ("2024-01-01T10:00:00+02:00", dt.datetime(2024, 1, 1, 8, 0)),
        ("2024-01-01 10:00:00-05:00", dt.datetime(2024, 1, 1, 15, 0)),
        ("2024-01-01T10:00:00Z", dt.datetime(2024, 1, 1, 10, 0)),
        ("2024-01-01 10:00:00", dt.datetime(2024, 1, 1, 10, 0)),
        ("2024-01-01", dt.datetime(2024, 1, 1, 0, 0)),
    ],
    ids=["plus-2", "minus-5", "zulu", "naive-is-utc", "date-only"],
)
def test_timestamptz_text_is_converted_to_naive_utc(tmp_path, text, utc):
    con, _ = _load(tmp_path, [_row("o1", order_ts=text)])
    _validate(con)
    assert _clean(con)["order_ts"].iloc[0].to_pydatetime() == utc


def test_ingested_at_with_offset_is_compared_in_utc(tmp_path):
    # 10:30+02:00 is 08:30 UTC: an order at 09:00 UTC was not yet made when read.
    rows = [
        _row("o1", order_ts="2025-05-01 09:00:00", ingested_at="2025-05-01T10:30:00+02:00"),
        _row("o2", order_ts="2025-05-01 08:00:00", ingested_at="2025-05-01T10:30:00+02:00"),
    ]
    con, _ = _load(tmp_path, rows)
    report = _validate(con)
    assert report.examples == {"future_timestamp": [1]}
    assert list(_clean(con)["order_id"]) == ["o2"]


# --- duplicates and accounting ------------------------------------------------------------


def test_duplicate_order_id_counts_once_keeping_the_first_row(tmp_path):
    rows = [
        _row("o1", amount=10.0),
        _row("o2"),
        _row("o1", amount=99.0, order_ts="2025-05-02 10:00:00"),
        _row("o1", amount=7.0),
    ]
    con, _ = _load(tmp_path, rows)
    report = _validate(con)
    assert (report.rows_read, report.rows_clean, report.duplicates) == (4, 2, 2)
    clean = _clean(con)
    assert clean["order_id"].tolist() == ["o1", "o2"]
    assert clean.loc[clean["order_id"] == "o1", "amount"].item() == 10.0
    assert _accounted_for(report)


def test_order_ids_sharing_a_hash_are_told_apart(tmp_path, monkeypatch):
    """The duplicate search groups the ids' hashes first: with a hash that most ids share
    (their length), the clean orders are exactly those of the real hash."""
    import clv_jobs.validation as validation

    rows = [_row("o1", amount=10.0), _row("o2", customer_id="c2"), _row("o1", amount=99.0),
            _row("o3", customer_id="c3"), _row("o10", customer_id="c4"), _row("o10", customer_id="c5"),
            _row("o4", customer_id="c6", amount=-1.0), _row("o4", customer_id="c7")] + _good(30)
    results = []
    for order_id_hash in (validation.ORDER_ID_HASH, "length(order_id)"):
        monkeypatch.setattr(validation, "ORDER_ID_HASH", order_id_hash)
        con, _ = _load(tmp_path, rows)
        report = _validate(con)
        results.append((report.as_dict(), con.execute("SELECT * FROM transactions").df()))
        con.close()
    (report, clean), (weak_report, weak_clean) = results
    assert report == weak_report and report["duplicates"] == 2
    pd.testing.assert_frame_equal(clean, weak_clean)
    # The first copy of each repeated id is kept, in source order; o4's clean copy is its only one.
    assert clean["order_id"].tolist()[:5] == ["o1", "o2", "o3", "o10", "o4"]
    assert clean["customer_id"].tolist()[:5] == ["c1", "c2", "c3", "c4", "c7"]
    assert clean["amount"].tolist()[0] == 10.0


def test_every_row_is_accounted_for(tmp_path):
    rows = (
        [
            _row("o1"),
            _row("o1"),
            _row("o2", order_ts="2025-06-14 00:00:00"),
            _row("o3", order_ts="2025-06-02 00:00:00"),
        ]
        + [_row(f"b{i}", **bad) for i, (_, bad) in enumerate(BAD_ROWS)]
        + _good(20)
    )
    con, loaded = _load(tmp_path, rows)
    report = _validate(con)
    assert report.rows_read == loaded["transactions"] == len(rows)
    assert report.rows_later == 2
    assert report.duplicates == 1
    assert report.rows_quarantined == len(BAD_ROWS)
    assert (
        report.quarantined == pd.Series([reason for reason, _ in BAD_ROWS]).value_counts().to_dict()
    )
    assert report.rows_clean == 21
    assert _accounted_for(report)
    assert len(quarantined_rows(con)) == report.rows_quarantined


def test_report_as_dict_is_json_safe(tmp_path):
    con, _ = _load(tmp_path, [_row("o1"), _row("o2", amount=-1)])
    summary = json.loads(json.dumps(_validate(con).as_dict()))
    assert summary["rows_quarantined"] == 1
    assert summary["quarantine_share"] == 0.5
    assert summary["quarantined"] == {"invalid_amount": 1}


# --- the quarantine limit -----------------------------------------------------------------


def test_quarantine_above_limit_raises_naming_account_reasons_counts_and_rows(tmp_path):
    rows = _good(96) + [
        _row("x1", amount=-1),
        _row("x2", customer_id=None),
        _row("x3", amount=np.nan),
        _row("x4", amount="bad"),
        _row("x5", amount=-3),
    ]
    con, _ = _load(tmp_path, rows)
    with pytest.raises(QuarantineLimitError) as info:
        _validate(con, limit=0.01, account="shop_a")
    message = str(info.value)
    assert message.startswith(
        "account shop_a: 5 of 101 rows of transactions.csv quarantined "
        "(4.95%, limit 1.00%); nothing was published."
    )
    assert "missing_customer_id (customer id is missing): 1 (rows 98)" in message
    assert (
        "invalid_amount (amount is missing, not a number, infinite, negative or 10^15 or more): 4 "
        "(rows 97, 99, 100, …)"
    ) in message
    assert isinstance(info.value, InputError)


def test_quarantine_exactly_at_limit_passes(tmp_path):
    con, _ = _load(tmp_path, _good(99) + [_row("x1", status="cancelled")])
    report = _validate(con, limit=0.01)
    assert report.quarantine_share == 0.01
    assert report.rows_clean == 99


def test_quarantine_one_row_above_limit_fails(tmp_path):
    con, _ = _load(
        tmp_path, _good(98) + [_row("x1", status="cancelled"), _row("x2", status="void")]
    )
    with pytest.raises(
        QuarantineLimitError, match=r"^account acc: 2 of 100 rows .*cancelled \(order status"
    ):
        _validate(con, limit=0.01)


def test_later_rows_do_not_count_in_the_quarantine_share(tmp_path):
    rows = (
        _good(99) + [_row("x1", amount=-1)] + _good(50, start=200, order_ts="2025-06-05 10:00:00")
    )
    con, _ = _load(tmp_path, rows)
    report = _validate(con, limit=0.01)
    assert (report.rows_later, report.quarantine_share) == (50, 0.01)


def test_limit_error_never_shows_row_contents(tmp_path):
    """Customer ids may be emails; the message points at rows, never at their values."""
    rows = [_row(f"o{i}", customer_id=f"person{i}@example.com", amount=-1) for i in range(3)]
    con, _ = _load(tmp_path, rows + _good(3))
    with pytest.raises(QuarantineLimitError) as info:
        _validate(con, limit=0.01)
    # A bool, so a failure never prints the message (and the emails) itself.
    leaks = "@" in str(info.value) or "person" in str(info.value)
    assert not leaks, "the quarantine error shows row contents"


# --- require_rows -------------------------------------------------------------------------


def test_require_rows_raises_input_error_when_nothing_clean(tmp_path):
    con, _ = _load(tmp_path, [_row("o1", order_ts="2025-06-02 00:00:00")])
    report = _validate(con)
    with pytest.raises(
        InputError,
        match=r"^account acc: no usable orders before the as-of date in "
        r"transactions\.csv \(1 rows read, 1 dated later, 0 quarantined\)",
    ):
        require_rows(report)


def test_cancelled_copy_of_an_order_cancels_every_copy(tmp_path):
    rows = _good(3) + [_row("g2", customer_id="c2", status="cancelled")]
    con, _ = _load(tmp_path, rows)
    report = _validate(con)
    assert report.quarantined == {"cancelled": 2}
    assert report.examples["cancelled"] == [2, 4]
    assert list(_clean(con)["order_id"]) == ["g1", "g3"]
    assert _accounted_for(report)


def test_source_rows_count_every_account_of_a_shared_file(tmp_path):
    rows = [_row("x1") | {"account_id": "other"}, _row("x2") | {"account_id": "other"},
            _row("a1") | {"account_id": "acc"}, _row("a2", amount=-5) | {"account_id": "acc"}]
    con, loaded = _load(tmp_path, rows)
    report = _validate(con)
    assert loaded["transactions"] == 2
    assert report.examples == {"invalid_amount": [4]}  # the file's 4th data row


@pytest.mark.parametrize("files", [1, 2])
def test_parquet_rows_keep_their_file_row_number_and_typed_timestamps_need_no_parsing(tmp_path, files):
    """A typed Parquet file: bad rows are named by their data row, duplicates keep the first copy."""
    rows = _good(6) + [_row("dup", customer_id="c1", amount=1.0), _row("dup", customer_id="c2", amount=2.0),
                       _row("neg", amount=-5.0), _row("late", order_ts="2025-06-05 00:00:00")]
    frame = pd.DataFrame(rows).drop(columns=["ingested_at"])
    frame["order_ts"] = pd.to_datetime(frame["order_ts"]).astype("datetime64[ms]")  # not microseconds
    halves = [frame] if files == 1 else [frame.iloc[:5], frame.iloc[5:]]
    for i, part in enumerate(halves):
        part.to_parquet(tmp_path / f"orders_{i}.parquet", index=False)
    pattern = str(tmp_path / ("orders_0.parquet" if files == 1 else "orders_*.parquet"))
    con = connect()
    load_account(con, FilesSource(type="files", transactions=pattern), "acc")
    report = _validate(con)
    assert report.quarantined == {"invalid_amount": 1} and report.examples == {"invalid_amount": [9]}
    assert (report.rows_read, report.rows_clean, report.rows_later, report.duplicates) == (10, 7, 1, 1)
    clean = _clean(con)
    assert clean.loc[clean["order_id"] == "dup", "amount"].tolist() == [1.0]  # the first copy (row 7)
    assert clean["order_ts"].min() == pd.Timestamp("2025-05-01 10:00:00")
    # One file is read through a view, several are copied into a table: the quarantine keeps the
    # row as read either way, and neither is left behind.
    quarantined = quarantined_rows(con)
    assert quarantined[["source_row", "order_id", "amount", "reason"]].values.tolist() == [
        [9, "neg", "-5.0", "invalid_amount"]]
    left = con.execute("SELECT (SELECT count(*) FROM duckdb_views() WHERE view_name = 'raw_transactions') "
                       "+ (SELECT count(*) FROM duckdb_tables() WHERE table_name = 'raw_transactions')").fetchall()
    assert left == [(0,)]


def test_a_parquet_file_changed_while_being_read_fails_the_run(tmp_path):
    """Validation reads one Parquet file twice (through a view): a new version of it in between is an error."""
    from clv_jobs.sources import check_unchanged

    path = tmp_path / "orders.parquet"
    pd.DataFrame(_good(6)).to_parquet(path, index=False)
    con = connect()
    loaded = load_account(con, FilesSource(type="files", transactions=str(path)), "acc")
    _validate(con)
    check_unchanged(loaded, "acc")  # the same file: no error

    pd.DataFrame(_good(7)).to_parquet(path, index=False)  # a longer file under the same name
    with pytest.raises(InputError, match=r"account acc: file .*orders\.parquet changed while it was being read"):
        check_unchanged(loaded, "acc")
