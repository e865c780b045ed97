"""Tests for clv_jobs.datamodel: the 25-column CSV as SFMC and other importers read it,
asserted on the raw bytes (SPEC "Data out" and "CSV format")."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import hashlib
import io
import re

import numpy as np
import pandas as pd
import pytest

from clv_jobs import datamodel as datamodel_module
from clv_jobs.datamodel import COLUMNS, EXTRA_COLUMNS, datamodel_query, file_digest, write_datamodel
from clv_jobs.segments import SCORE_LABELS, SEGMENT_LABELS
from clv_jobs.sources import connect

SPEC_COLUMNS = [
    "CustomerId", "Email", "ContactId", "LTV_VALUE", "REC_VALUE", "FREQ_VALUE", "MON_VALUE",
    "CLV_SEGMENT", "ID_CLV_SEGMENT", "CLV_SCORE", "ID_CLV_SCORE", "DAYS_BTW_PURCHASE",
    "TICKET_AVG", "FIRST_TICKET_DATE", "LAST_TICKET_DATE", "LST90DAYS_REVENUE",
    "LST180DAYS_REVENUE", "LST360DAYS_REVENUE", "LST90DAYS_FREQ", "LST180DAYS_FREQ",
    "LST360DAYS_FREQ", "CG_SEGMENT", "CLV_EVOLUTION", "DIFF_TBP_RECENCY", "EMAIL_COMMUNICATIONS",
]

# Rows deliberately out of CustomerId order; "c,1" and 'q"2' need RFC 4180 quoting.
SCORES = pd.DataFrame({
    "customer_id": ["c3", "c,1", "B9", 'q"2', "a0"],
    "clv": [12.344, -0.001, 1000.0, 250.5, 0.0],
    "rec_value": [10.04, 0.0, 30.0, 400.26, 5.0],
    "freq_value": [3, 1, 2, 4, 1],
    "mon_value": [100.0, 5.5, 20.0, 1234567.891, 7.0],
    "segment_id": [5, 9, 7, 11, 8],
    "score_id": [3, 1, 5, 4, 2],
    "days_btw_purchase": [5.0, np.nan, 20.0, 30.25, np.nan],
    "first_ts": [dt.datetime(2024, 7, 1, 10, 0, 0), dt.datetime(2024, 1, 1, 23, 30, 0),
                 dt.datetime(2024, 3, 31, 0, 59, 59), dt.datetime(2022, 6, 15, 12, 0, 0),
                 dt.datetime(2025, 5, 20, 8, 15, 30)],
    "last_ts": [dt.datetime(2024, 7, 1, 22, 30, 0), dt.datetime(2024, 1, 1, 23, 30, 0),
                dt.datetime(2024, 3, 31, 1, 0, 0), dt.datetime(2024, 4, 27, 0, 0, 0),
                dt.datetime(2025, 5, 20, 8, 15, 30)],
    "lst90_revenue": [1.0, 0.0, 2.005, 0.0, 7.0],
    "lst180_revenue": [11.0, 0.0, 2.5, 0.0, 7.0],
    "lst360_revenue": [111.0, 5.5, 20.0, 0.0, 7.0],
    "lst90_freq": [1, 0, 1, 0, 1],
    "lst180_freq": [2, 0, 1, 0, 1],
    "lst360_freq": [3, 1, 2, 0, 1],
    "control_group": ["CONTROL", "TARGET", "TARGET", "TARGET", "CONTROL"],
    "evolution": ["new", "up", "down", "equal", "new"],
    "p_alive": [0.5, 0.1, 0.9, 0.0, 1.0],
    "churn": [0.5, 0.9, 0.1, 1.0, 0.0],
    "expected_purchases": [1.0, 0.1, 2.0, 0.0, 0.5],
    "model": ["pareto_nbd"] * 5,
})

# Fake addresses only (example.com); a99 has a contact but no purchase: not in the file.
CONTACTS = [
    ("c3", "K3", "c3@example.com", True),
    ("c,1", "K1", 'first "one", @example.com', False),
    ("B9", "K9", None, None),
    ("a99", "K99", "a99@example.com", True),
]


@pytest.fixture
def con():
    session = connect()
    session.execute(
        "CREATE TEMP TABLE contacts (customer_id VARCHAR, contact_id VARCHAR, email VARCHAR, "
        "email_opt_in BOOLEAN)"
    )
    session.executemany("INSERT INTO contacts VALUES (?, ?, ?, ?)", CONTACTS)
    yield session
    session.close()


def write(con, tmp_path, name="dm.csv", **kwargs) -> tuple[bytes, dict]:
    target = tmp_path / name
    result = write_datamodel(con, SCORES, target, **kwargs)
    return target.read_bytes(), result


def parse(raw: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(raw.decode("utf-8"), newline="")))


def by_id(raw: bytes) -> dict[str, dict[str, str]]:
    return {row["CustomerId"]: row for row in parse(raw)}


# -- format ----------------------------------------------------------------------------------
def test_columns_constant_is_the_spec_list():
    assert list(COLUMNS) == SPEC_COLUMNS
    assert set(EXTRA_COLUMNS) == {"P_ALIVE", "CHURN", "EXPECTED_PURCHASES", "MODEL"}


def test_utf8_no_bom_and_exact_header(con, tmp_path):
    raw, _ = write(con, tmp_path)
    assert not raw.startswith(b"\xef\xbb\xbf")
    raw.decode("utf-8")  # strict
    header = raw.split(b"\n", 1)[0].rstrip(b"\r")
    assert header == ",".join(SPEC_COLUMNS).encode()


def test_one_row_per_scored_customer_sorted_by_customer_id(con, tmp_path):
    raw, result = write(con, tmp_path)
    ids = [row["CustomerId"] for row in parse(raw)]
    assert ids == sorted(SCORES["customer_id"])  # byte order: "B9" before "a0"
    assert result["rows"] == len(ids) == 5
    assert "a99" not in ids


def test_every_row_has_25_fields(con, tmp_path):
    raw, _ = write(con, tmp_path)
    rows = list(csv.reader(io.StringIO(raw.decode(), newline="")))
    assert {len(row) for row in rows} == {25}


def test_money_two_decimals_days_one_decimal_integers_plain(con, tmp_path):
    rows = by_id(write(con, tmp_path)[0])
    money = ["LTV_VALUE", "MON_VALUE", "TICKET_AVG", "LST90DAYS_REVENUE", "LST180DAYS_REVENUE",
             "LST360DAYS_REVENUE"]
    days = ["REC_VALUE", "DAYS_BTW_PURCHASE", "DIFF_TBP_RECENCY"]
    ints = ["FREQ_VALUE", "LST90DAYS_FREQ", "LST180DAYS_FREQ", "LST360DAYS_FREQ",
            "ID_CLV_SEGMENT", "ID_CLV_SCORE"]
    for row in rows.values():
        for name in money:
            assert re.fullmatch(r"-?\d+\.\d{2}", row[name]), (name, row[name])
        for name in days:
            assert row[name] == "" or re.fullmatch(r"-?\d+\.\d", row[name]), (name, row[name])
        for name in ints:
            assert re.fullmatch(r"\d+", row[name]), (name, row[name])
    c3, b9, q2 = rows["c3"], rows["B9"], rows['q"2']
    assert (c3["LTV_VALUE"], c3["MON_VALUE"], c3["TICKET_AVG"]) == ("12.34", "100.00", "33.33")
    assert (c3["REC_VALUE"], c3["DAYS_BTW_PURCHASE"], c3["FREQ_VALUE"]) == ("10.0", "5.0", "3")
    assert (c3["LST90DAYS_FREQ"], c3["LST180DAYS_FREQ"], c3["LST360DAYS_FREQ"]) == ("1", "2", "3")
    assert (c3["LST180DAYS_REVENUE"], c3["LST360DAYS_REVENUE"]) == ("11.00", "111.00")
    assert b9["LTV_VALUE"] == "1000.00"
    # No thousands separator, no exponent.
    assert q2["MON_VALUE"] == "1234567.89"
    assert q2["TICKET_AVG"] == "308641.97"
    assert q2["REC_VALUE"] == "400.3"


def test_no_negative_zero(con, tmp_path):
    raw, _ = write(con, tmp_path)
    assert b"-0.0" not in raw
    assert by_id(raw)["c,1"]["LTV_VALUE"] == "0.00"  # -0.001 rounds to 0.00, not -0.00


def test_negative_zero_after_rounding_days(con, tmp_path):
    scores = SCORES.assign(rec_value=[5.04, 0.0, -0.01, 30.26, 5.0],
                           days_btw_purchase=[5.0, np.nan, 0.0, 30.25, np.nan])
    write_datamodel(con, scores, tmp_path / "dm.csv")
    raw = (tmp_path / "dm.csv").read_bytes()
    assert b"-0.0" not in raw
    rows = by_id(raw)
    assert rows["c3"]["DIFF_TBP_RECENCY"] == "0.0"  # 5.0 - 5.04
    assert rows["B9"]["REC_VALUE"] == "0.0"
    assert rows['q"2']["DIFF_TBP_RECENCY"] == "0.0"  # 30.25 - 30.26


def test_diff_tbp_recency_keeps_its_sign(con, tmp_path):
    rows = by_id(write(con, tmp_path)[0])
    assert rows["c3"]["DIFF_TBP_RECENCY"] == "-5.0"  # 5 - 10.04
    assert rows["B9"]["DIFF_TBP_RECENCY"] == "-10.0"
    assert rows['q"2']["DIFF_TBP_RECENCY"] == "-370.0"  # 30.25 - 400.26 = -370.01


def test_empty_fields_for_one_purchase_and_unknown_contact(con, tmp_path):
    raw, _ = write(con, tmp_path)
    rows = by_id(raw)
    for one_purchase in ("c,1", "a0"):
        assert rows[one_purchase]["DAYS_BTW_PURCHASE"] == ""
        assert rows[one_purchase]["DIFF_TBP_RECENCY"] == ""
    # B9: contact without email; a0 and q"2: no contact row at all.
    assert (rows["B9"]["Email"], rows["B9"]["ContactId"]) == ("", "K9")
    for unknown in ("a0", 'q"2'):
        assert (rows[unknown]["Email"], rows[unknown]["ContactId"]) == ("", "")
    # Null is an empty field, not a quoted empty string.
    a0_line = next(line for line in raw.decode().splitlines() if line.startswith("a0,"))
    assert a0_line.startswith("a0,,,")
    assert '""' not in a0_line


def test_booleans_true_false(con, tmp_path):
    rows = by_id(write(con, tmp_path)[0])
    assert rows["c3"]["EMAIL_COMMUNICATIONS"] == "true"
    assert rows["c,1"]["EMAIL_COMMUNICATIONS"] == "false"
    assert rows["B9"]["EMAIL_COMMUNICATIONS"] == "false"  # unknown consent is no consent
    assert rows["a0"]["EMAIL_COMMUNICATIONS"] == "false"  # no contact at all


def test_group_evolution_and_ids_as_given(con, tmp_path):
    rows = by_id(write(con, tmp_path)[0])
    for _, expected in SCORES.iterrows():
        row = rows[expected["customer_id"]]
        assert row["CG_SEGMENT"] == expected["control_group"]
        assert row["CLV_EVOLUTION"] == expected["evolution"]
        assert row["ID_CLV_SEGMENT"] == str(expected["segment_id"])
        assert row["ID_CLV_SCORE"] == str(expected["score_id"])


def test_timestamps_utc_by_default(con, tmp_path):
    rows = by_id(write(con, tmp_path)[0])
    assert rows["c3"]["FIRST_TICKET_DATE"] == "2024-07-01 10:00:00"
    assert rows["c3"]["LAST_TICKET_DATE"] == "2024-07-01 22:30:00"
    assert rows["a0"]["FIRST_TICKET_DATE"] == "2025-05-20 08:15:30"


def test_timestamps_in_account_time_zone(con, tmp_path):
    rows = by_id(write(con, tmp_path, timezone="Europe/Madrid")[0])
    # Summer: +2 h, crossing midnight into the next day.
    assert rows["c3"]["FIRST_TICKET_DATE"] == "2024-07-01 12:00:00"
    assert rows["c3"]["LAST_TICKET_DATE"] == "2024-07-02 00:30:00"
    # Winter: +1 h, crossing into a new year.
    assert rows["c,1"]["FIRST_TICKET_DATE"] == "2024-01-02 00:30:00"
    # The spring-forward instant (2024-03-31 01:00 UTC): one second before is still +1 h.
    assert rows["B9"]["FIRST_TICKET_DATE"] == "2024-03-31 01:59:59"
    assert rows["B9"]["LAST_TICKET_DATE"] == "2024-03-31 03:00:00"
    for row in rows.values():
        for name in ("FIRST_TICKET_DATE", "LAST_TICKET_DATE"):
            assert re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", row[name])


def test_timestamps_west_of_utc(con, tmp_path):
    rows = by_id(write(con, tmp_path, timezone="America/New_York")[0])
    assert rows["c3"]["FIRST_TICKET_DATE"] == "2024-07-01 06:00:00"
    assert rows["c,1"]["FIRST_TICKET_DATE"] == "2024-01-01 18:30:00"


def test_timestamps_with_microseconds_and_ns_dtype(con, tmp_path):
    scores = SCORES.copy()
    scores["first_ts"] = pd.to_datetime(scores["first_ts"]).astype("datetime64[ns]") + pd.Timedelta(
        microseconds=999_999)
    write_datamodel(con, scores, tmp_path / "dm.csv", timezone="Europe/Madrid")
    rows = by_id((tmp_path / "dm.csv").read_bytes())
    assert rows["c3"]["FIRST_TICKET_DATE"] == "2024-07-01 12:00:00"  # truncated, not rounded


def test_rfc4180_quoting_of_commas_and_quotes(con, tmp_path):
    raw, _ = write(con, tmp_path)
    text = raw.decode()
    assert '\n"c,1","first ""one"", @example.com",K1,' in text
    assert '\n"q""2",,,' in text
    # Fields without special characters are not quoted.
    assert "\nc3,c3@example.com,K3,12.34," in text
    rows = by_id(raw)
    assert rows["c,1"]["Email"] == 'first "one", @example.com'
    assert 'q"2' in rows


@pytest.mark.parametrize("locale", ["es", "en", "fr"])
def test_labels_per_locale(con, tmp_path, locale):
    rows = by_id(write(con, tmp_path, locale=locale)[0])
    for _, expected in SCORES.iterrows():
        row = rows[expected["customer_id"]]
        assert row["CLV_SEGMENT"] == SEGMENT_LABELS[locale][expected["segment_id"]]
        assert row["CLV_SCORE"] == SCORE_LABELS[locale][expected["score_id"]]


def test_spanish_labels_are_the_default(con, tmp_path):
    rows = by_id(write(con, tmp_path)[0])
    assert rows["c3"]["CLV_SEGMENT"] == "Repetidor de Valor"
    assert rows["c3"]["CLV_SCORE"] == "Medio"
    assert rows['q"2']["CLV_SEGMENT"] == "Inactivo"


def test_all_labels_render(con, tmp_path):
    # Every segment and score id, in every locale (catches a label with a quote breaking SQL).
    n = 11
    scores = pd.concat([SCORES.iloc[[0]]] * n, ignore_index=True)
    scores["customer_id"] = [f"id{i:02d}" for i in range(n)]
    scores["segment_id"] = np.arange(1, n + 1)
    scores["score_id"] = np.arange(n) % 5 + 1
    for locale in ("es", "en", "fr"):
        write_datamodel(con, scores, tmp_path / f"{locale}.csv", locale=locale)
        rows = parse((tmp_path / f"{locale}.csv").read_bytes())
        expected = [SEGMENT_LABELS[locale][i] for i in range(1, n + 1)]
        assert [r["CLV_SEGMENT"] for r in rows] == expected
        assert [r["CLV_SCORE"] for r in rows] == [SCORE_LABELS[locale][i % 5 + 1] for i in range(n)]


def test_extra_columns_after_the_25(con, tmp_path):
    raw, _ = write(con, tmp_path, extra_columns=["P_ALIVE", "MODEL", "CHURN", "EXPECTED_PURCHASES"])
    header = next(csv.reader(io.StringIO(raw.decode())))
    assert header == SPEC_COLUMNS + ["P_ALIVE", "MODEL", "CHURN", "EXPECTED_PURCHASES"]
    rows = by_id(raw)
    assert rows["c3"]["P_ALIVE"] == "0.500000"
    assert rows["c3"]["CHURN"] == "0.500000"
    assert rows["c3"]["EXPECTED_PURCHASES"] == "1.0000"
    assert rows["c3"]["MODEL"] == "pareto_nbd"
    assert rows['q"2']["P_ALIVE"] == "0.000000"
    assert b"-0.0" not in raw


def test_query_text_has_25_columns_in_order():
    query = datamodel_query("en")
    positions = [query.index(f'AS "{name}"') for name in SPEC_COLUMNS]
    assert positions == sorted(positions)


# -- determinism and the returned digest --------------------------------------------------------
def test_two_writes_byte_identical(con, tmp_path):
    first, r1 = write(con, tmp_path, "one.csv", timezone="Europe/Madrid", locale="fr")
    second, r2 = write(con, tmp_path, "two.csv", timezone="Europe/Madrid", locale="fr")
    assert first == second
    assert r1 == r2


def test_input_row_order_does_not_matter(con, tmp_path):
    first, _ = write(con, tmp_path, "one.csv")
    shuffled = SCORES.sample(frac=1.0, random_state=7).reset_index(drop=True)
    write_datamodel(con, shuffled, tmp_path / "two.csv")
    assert (tmp_path / "two.csv").read_bytes() == first


def test_returned_rows_bytes_sha256_match_the_file(con, tmp_path):
    raw, result = write(con, tmp_path)
    assert result == {"rows": 5, "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    assert file_digest(tmp_path / "dm.csv") == {"bytes": len(raw),
                                                 "sha256": hashlib.sha256(raw).hexdigest()}


def test_gzip_deterministic_and_decompresses_to_the_csv(con, tmp_path):
    plain, _ = write(con, tmp_path, "dm.csv")
    first, r1 = write(con, tmp_path, "one.csv.gz", compress=True)
    second, r2 = write(con, tmp_path, "two.csv.gz", compress=True)
    assert first[:2] == b"\x1f\x8b"
    assert first == second
    assert r1 == r2 == {"rows": 5, "bytes": len(first), "sha256": hashlib.sha256(first).hexdigest()}
    assert gzip.decompress(first) == plain
    # No file name and no time in the gzip header (FLG = 0, MTIME = 0).
    assert first[3] == 0
    assert first[4:8] == b"\x00\x00\x00\x00"


@pytest.mark.parametrize("compress", [False, True])
def test_a_file_written_in_slices_is_the_file_of_one_slice(con, tmp_path, monkeypatch, compress):
    """Written slice by slice (two rows each), the file has one header and the bytes, digest
    and row count of the file written at once."""
    name = "dm.csv.gz" if compress else "dm.csv"
    whole, whole_result = write(con, tmp_path / "whole", name, compress=compress)
    monkeypatch.setattr(datamodel_module, "SLICE_ROWS", 2)
    sliced, sliced_result = write(con, tmp_path / "sliced", name, compress=compress)
    assert sliced == whole and sliced_result == whole_result
    assert sliced_result == {"rows": 5, "bytes": len(sliced), "sha256": hashlib.sha256(sliced).hexdigest()}
    text = gzip.decompress(sliced) if compress else sliced
    assert text.count(b"CustomerId,") == 1 and len(parse(text)) == 5
    assert sorted(p.name for p in (tmp_path / "sliced").iterdir()) == [name]


# -- staging -------------------------------------------------------------------------------------
def test_no_partial_file_left_and_target_replaced(con, tmp_path):
    target = tmp_path / "out" / "dm.csv"
    target.parent.mkdir()
    target.write_bytes(b"old content\n")
    write_datamodel(con, SCORES, target)
    write_datamodel(con, SCORES, tmp_path / "out" / "dm.csv.gz", compress=True)
    assert sorted(p.name for p in target.parent.iterdir()) == ["dm.csv", "dm.csv.gz"]
    assert target.read_bytes().startswith(b"CustomerId,")


def test_creates_missing_parent_folders(con, tmp_path):
    target = tmp_path / "a" / "b" / "dm.csv"
    write_datamodel(con, SCORES, target)
    assert target.exists()


@pytest.mark.parametrize("compress", [False, True])
def test_failed_write_leaves_old_file_and_no_partial(con, tmp_path, monkeypatch, compress):
    target = tmp_path / ("dm.csv.gz" if compress else "dm.csv")
    target.write_bytes(b"old content\n")

    def broken_replace(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(datamodel_module.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_datamodel(con, SCORES, target, compress=compress)
    assert target.read_bytes() == b"old content\n"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_failed_compression_leaves_no_partial(con, tmp_path, monkeypatch):
    def broken_copy(*args, **kwargs):
        raise OSError("no space left on device")

    monkeypatch.setattr(datamodel_module.shutil, "copyfileobj", broken_copy)
    with pytest.raises(OSError, match="no space"):
        write_datamodel(con, SCORES, tmp_path / "dm.csv.gz", compress=True)
    assert list(tmp_path.iterdir()) == []


def test_failed_query_leaves_no_partial_and_session_usable(con, tmp_path):
    with pytest.raises(Exception, match="(?i)time ?zone"):
        write_datamodel(con, SCORES, tmp_path / "dm.csv", timezone="Mars/Olympus")
    assert list(tmp_path.iterdir()) == []
    # The scores view was dropped: the next write in the same session works.
    write_datamodel(con, SCORES, tmp_path / "dm.csv")
    assert (tmp_path / "dm.csv").exists()


def test_empty_scores_write_header_only(con, tmp_path):
    result = write_datamodel(con, SCORES.iloc[:0], tmp_path / "dm.csv")
    raw = (tmp_path / "dm.csv").read_bytes()
    assert raw.rstrip(b"\r\n") == ",".join(SPEC_COLUMNS).encode()
    assert result["rows"] == 0


@pytest.mark.parametrize("name", ["clv_o'brien_20250601.csv", "clv datamodel é.csv.gz"])
def test_file_names_the_template_allows(con, tmp_path, name):
    # The template validator accepts quotes and spaces: the write must too.
    compress = name.endswith(".gz")
    result = write_datamodel(con, SCORES, tmp_path / name, compress=compress)
    raw = (tmp_path / name).read_bytes()
    assert result["sha256"] == hashlib.sha256(raw).hexdigest()
    assert (gzip.decompress(raw) if compress else raw).startswith(b"CustomerId,Email,")
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_fixed_decimals_print_as_printf_does_on_every_range():
    """The DECIMAL formatting of money and days gives printf's digits, huge values included."""
    import duckdb

    from clv_jobs.datamodel import _fixed

    rng = np.random.default_rng(5)
    values = np.concatenate([rng.gamma(1.0, 100.0, 20_000) * rng.choice([1, -1], 20_000),
                             np.round(rng.uniform(-50, 50, 5_000), 3),  # exact halves of a cent
                             rng.uniform(1e9, 1e11, 5_000), rng.uniform(1e11, 1e16, 1_000),
                             [0.0, -0.0, -0.004, 0.005, 2.675, 1.005, 999999999999999.9, 1e15, -3e17, 1e300]])
    con = duckdb.connect()
    con.register("v", pd.DataFrame({"x": values}))
    rows = con.execute(f"""SELECT {_fixed("x", 2)}, printf('%.2f', round(x, 2) + 0.0),
                                  {_fixed("x", 1)}, printf('%.1f', round(x, 1) + 0.0) FROM v""").fetchall()
    assert [(money, days) for money, _, days, _ in rows] == [(money, days) for _, money, _, days in rows]
    assert not any(money.startswith("-0.00") for money, _, _, _ in rows)


@pytest.mark.parametrize("huge", [3e17, -2.5e11, np.inf])
def test_a_huge_value_is_printed_as_printf_does_and_the_rest_of_the_file_is_unchanged(con, tmp_path, huge):
    """Money and days are written as DECIMAL numbers, unless some value is too large for them."""
    normal, _ = write(con, tmp_path, "normal.csv")
    write_datamodel(con, SCORES.assign(clv=[12.344, -0.001, 1000.0, huge, 0.0]), tmp_path / "huge.csv")
    rows, huge_rows = by_id(normal), by_id((tmp_path / "huge.csv").read_bytes())
    assert huge_rows['q"2']['LTV_VALUE'] == f"{huge:.2f}"
    assert huge_rows['q"2'] | {"LTV_VALUE": None} == rows['q"2'] | {"LTV_VALUE": None}
    assert {k: v for k, v in huge_rows.items() if k != 'q"2'} == {k: v for k, v in rows.items() if k != 'q"2'}


def test_large_values_are_found_in_every_fixed_decimal_field(con):
    con.register("scores", SCORES)
    assert not datamodel_module.has_large_values(con)
    for column, value in [("mon_value", 2e11), ("rec_value", -1e12), ("lst360_revenue", -np.inf),
                          ("days_btw_purchase", np.inf)]:
        con.register("scores", SCORES.assign(**{column: [value] + [1.0] * 4}))
        assert datamodel_module.has_large_values(con), column
    con.unregister("scores")
