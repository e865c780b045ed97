"""Tests for clv_jobs.sample_data: shape, bad rows, and that the data follow BG/NBD and
Gamma-Gamma (checked against the closed-form expectations)."""

from __future__ import annotations

import datetime
import time

import duckdb
import numpy as np
import pandas as pd
import pytest
from scipy.special import hyp2f1

from clv_jobs.sample_data import (
    SAMPLE_ACCOUNTS,
    SampleAccount,
    SampleData,
    simulate_account,
    write_warehouse,
)

AS_OF = datetime.date(2025, 6, 1)
AS_OF_TS = pd.Timestamp(AS_OF)
TS_FORMAT = "%Y-%m-%d %H:%M:%S"

TX_COLUMNS = [
    "account_id", "order_id", "customer_id", "order_ts", "amount", "status", "currency",
    "ingested_at",
]
CONTACT_COLUMNS = [
    "account_id", "customer_id", "contact_id", "email", "email_opt_in", "merged_into",
    "merged_at",
]
TRUTH_COLUMNS = [
    "customer_id", "lam", "p_dropout", "alive_at_as_of", "first_purchase_ts", "p_spend",
    "nu_spend", "mean_spend",
]


def _account(n_buyers: int = 2_000, seed: int = 7, **kw) -> SampleAccount:
    return SampleAccount("test_shop", n_buyers=n_buyers, history_days=900, seed=seed, **kw)


@pytest.fixture(scope="module")
def sample() -> SampleData:
    return simulate_account(_account(), AS_OF)


def _parsed_ts(tx: pd.DataFrame) -> pd.Series:
    return pd.to_datetime(tx["order_ts"], format=TS_FORMAT, errors="coerce")


def _bad_masks(tx: pd.DataFrame) -> dict[str, pd.Series]:
    """The SPEC's quarantine rules, re-derived independently of the generator."""
    ts = _parsed_ts(tx)
    amount = tx["amount"].to_numpy()
    return {
        "missing_customer_id": tx["customer_id"].isna(),
        "unparseable_timestamp": ts.isna(),
        "future_timestamp": ts > tx["ingested_at"],
        "negative_amount": pd.Series(amount < 0, index=tx.index),
        "non_finite_amount": pd.Series(~np.isfinite(amount), index=tx.index),
        "cancelled_status": tx["status"].eq("cancelled"),
        "duplicate_order_id": tx["order_id"].duplicated(keep="first"),
    }


def _clean_before_as_of(tx: pd.DataFrame) -> pd.DataFrame:
    masks = _bad_masks(tx)
    bad = np.logical_or.reduce([m.to_numpy() for m in masks.values()])
    clean = tx.loc[~bad].copy()
    clean["ts"] = _parsed_ts(clean)
    return clean.loc[clean["ts"] < AS_OF_TS]


def test_deterministic_for_same_seed(sample: SampleData) -> None:
    again = simulate_account(_account(), AS_OF)
    pd.testing.assert_frame_equal(sample.transactions, again.transactions)
    pd.testing.assert_frame_equal(sample.contacts, again.contacts)
    pd.testing.assert_frame_equal(sample.truth, again.truth)


def test_other_seed_or_account_differs(sample: SampleData) -> None:
    other_seed = simulate_account(_account(seed=8), AS_OF)
    assert not sample.truth["lam"].equals(other_seed.truth["lam"])
    other_account = simulate_account(
        SampleAccount("other_shop", n_buyers=2_000, history_days=900, seed=7), AS_OF
    )
    assert not sample.truth["lam"].equals(other_account.truth["lam"])


def test_columns_and_types(sample: SampleData) -> None:
    tx, contacts, truth = sample.transactions, sample.contacts, sample.truth
    assert list(tx.columns) == TX_COLUMNS
    assert list(contacts.columns) == CONTACT_COLUMNS
    assert list(truth.columns) == TRUTH_COLUMNS
    for col in ("account_id", "order_id", "customer_id", "order_ts", "status", "currency"):
        assert pd.api.types.is_string_dtype(tx[col]), col
    assert tx["amount"].dtype == np.float64
    assert pd.api.types.is_datetime64_dtype(tx["ingested_at"])
    assert tx["ingested_at"].dt.tz is None
    assert contacts["email_opt_in"].dtype == bool
    assert pd.api.types.is_datetime64_dtype(contacts["merged_at"])
    assert pd.api.types.is_datetime64_dtype(truth["first_purchase_ts"])
    assert set(tx["account_id"]) == {"test_shop"}
    assert set(tx["currency"]) == {"EUR"}
    assert set(tx["status"]) == {"completed", "cancelled"}
    # Ids: zero padded so string order is numeric order.
    assert tx["order_id"].str.fullmatch(r"o[0-9a-f]{8}\d{9}").all()
    assert tx["customer_id"].dropna().str.fullmatch(r"c\d{9}").all()
    assert contacts["contact_id"].dropna().str.fullmatch(r"k\d{9}").all()
    assert tx["order_id"].is_monotonic_increasing


def test_buyer_count_and_truth_lists_only_real_buyers(sample: SampleData) -> None:
    tx, truth = sample.transactions, sample.truth
    assert len(truth) == 2_000
    assert truth["customer_id"].is_unique
    clean = _clean_before_as_of(tx)
    assert clean["customer_id"].nunique() == 2_000
    # Every customer id in the transactions (bad rows included) is a real buyer.
    assert set(tx["customer_id"].dropna()) == set(truth["customer_id"])
    # The truth's first purchase is the first clean order.
    first = clean.groupby("customer_id")["ts"].min()
    pd.testing.assert_series_equal(
        first.sort_index().astype("datetime64[us]"),
        truth.set_index("customer_id")["first_purchase_ts"].sort_index(),
        check_names=False,
        check_index_type=False,
    )


def test_order_timestamps(sample: SampleData) -> None:
    tx = sample.transactions
    masks = _bad_masks(tx)
    bad = np.logical_or.reduce([m.to_numpy() for m in masks.values()])
    good = tx.loc[~bad]
    ts = _parsed_ts(good)
    assert ts.notna().all()
    # Strictly before D 00:00, to the second, except the deliberate later-run orders.
    start = AS_OF_TS - pd.Timedelta(days=900)
    before = ts < AS_OF_TS
    assert (ts[before] >= start).all()
    late = good.loc[~before]
    late_ts = ts[~before]
    assert len(late) > 0
    assert (late_ts < AS_OF_TS + pd.Timedelta(days=30)).all()
    assert 0.01 <= len(late) / len(good) <= 0.03  # ~2 %
    # A later-run order is never later than the load that brought it.
    assert (late_ts <= late["ingested_at"]).all()
    assert (good.loc[before, "ingested_at"] == AS_OF_TS + pd.Timedelta(hours=1)).all()
    assert good["order_ts"].str.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d").all()


def test_bad_rows_present_and_rare(sample: SampleData) -> None:
    tx = sample.transactions
    masks = _bad_masks(tx)
    for kind, mask in masks.items():
        assert mask.sum() >= 2, kind
    bad = np.logical_or.reduce([m.to_numpy() for m in masks.values()])
    assert bad.sum() / len(tx) < 0.01
    amount = tx["amount"]
    assert amount.isna().sum() >= 1 and np.isinf(amount).sum() >= 1
    # Duplicates are exact copies of existing rows.
    dup_ids = tx.loc[masks["duplicate_order_id"], "order_id"]
    copies = tx[tx["order_id"].isin(dup_ids)]
    assert len(copies.drop_duplicates()) == len(dup_ids)
    # Future rows are the year-2099 kind, not the later-run orders.
    assert (_parsed_ts(tx[masks["future_timestamp"]]).dt.year == 2099).all()


def test_no_bad_rows_when_disabled() -> None:
    tx = simulate_account(_account(n_buyers=500, bad_rows=False), AS_OF).transactions
    masks = _bad_masks(tx)
    assert all(m.sum() == 0 for m in masks.values())


def test_contacts(sample: SampleData) -> None:
    contacts, truth = sample.contacts, sample.truth
    assert contacts["customer_id"].is_unique
    assert set(truth["customer_id"]) <= set(contacts["customer_id"])
    n_non_buyers = len(contacts) - len(truth)
    assert n_non_buyers == pytest.approx(0.10 * len(truth), rel=0.05)
    anonymous = contacts["contact_id"].isna()
    assert anonymous.mean() == pytest.approx(0.05, abs=0.01)
    assert contacts.loc[anonymous, "email"].isna().all()
    assert contacts.loc[~anonymous, "email"].notna().all()
    emails = contacts["email"].dropna()
    assert emails.str.fullmatch(r"user\d+@example\.com").all()  # fake domain only
    assert emails.is_unique
    assert contacts["email_opt_in"].mean() == pytest.approx(0.70 * 0.95, abs=0.05)
    assert not contacts.loc[anonymous, "email_opt_in"].any()
    merged = contacts["merged_into"].notna()
    assert merged.mean() == pytest.approx(0.01, abs=0.005)
    assert (contacts["merged_at"].notna() == merged).all()
    day_before = AS_OF_TS - pd.Timedelta(days=1)
    assert (contacts.loc[merged, "merged_at"].dt.normalize() == day_before).all()
    survivors = contacts.loc[merged, "merged_into"]
    assert survivors.isin(contacts["customer_id"]).all()
    assert not survivors.isin(contacts.loc[merged, "customer_id"]).any()


def _bgnbd_expected_repeats(
    t: np.ndarray, r: float, alpha: float, a: float, b: float
) -> np.ndarray:
    """Closed-form BG/NBD E[X(t)]: expected repeat purchases in (0, t] after the first."""
    z = t / (alpha + t)
    tail = (alpha / (alpha + t)) ** r * hyp2f1(r, b, a + b - 1, z)
    return (a + b - 1) / (a - 1) * (1 - tail)


def test_repeat_frequency_matches_bgnbd() -> None:
    # Larger than the other tests (still < 1 s) so the tolerance can be tight.
    account = _account(n_buyers=20_000, seed=11)
    data = simulate_account(account, AS_OF)
    clean = _clean_before_as_of(data.transactions)
    per_customer = clean.groupby("customer_id")["ts"].agg(["min", "size"])
    repeats = per_customer["size"].to_numpy() - 1
    t = (AS_OF_TS - per_customer["min"]).dt.total_seconds().to_numpy() / 86_400
    expected = _bgnbd_expected_repeats(t, account.r, account.alpha, account.a, account.b)
    # Over 60 seeds the relative error had sd 1.9 % and max 6.2 % (heavy tails); 8 %
    # is robust, while a wrong process falls outside: dropout also after the first
    # purchase (MBG/NBD-like) gives -16 %, a rate per week instead of per day far more.
    assert repeats.mean() == pytest.approx(expected.mean(), rel=0.08)
    # BG/NBD: buyers without a repeat purchase never dropped out.
    truth = data.truth.set_index("customer_id")
    no_repeat = per_customer.index[repeats == 0]
    assert truth.loc[no_repeat, "alive_at_as_of"].all()


def test_mean_order_amount_matches_gamma_gamma() -> None:
    account = _account(n_buyers=20_000, seed=12)
    clean = _clean_before_as_of(simulate_account(account, AS_OF).transactions)
    expected = account.p * account.v / (account.q - 1)  # E[p / nu], nu ~ Gamma(q, v)
    # Over 60 seeds: relative error sd 0.9 %, max 2.6 %. Mistaking E[nu] for the
    # mean (p * v / q) would be -26 %.
    assert clean["amount"].mean() == pytest.approx(expected, rel=0.05)
    assert clean["amount"].min() >= 0.01
    assert (clean["amount"].round(2) == clean["amount"]).all()


def test_write_warehouse_round_trip(tmp_path) -> None:
    samples = [
        simulate_account(_account(n_buyers=600, seed=1), AS_OF),
        simulate_account(SampleAccount("shop_b", n_buyers=700, history_days=400), AS_OF),
    ]
    target = tmp_path / "wh" / "warehouse.duckdb"
    target.parent.mkdir()
    target.write_bytes(b"old content to be replaced")
    assert write_warehouse(target, iter(samples)) == target
    assert sorted(p.name for p in target.parent.iterdir()) == ["warehouse.duckdb"]
    with duckdb.connect(str(target), read_only=True) as con:
        types = {
            (table, col): typ
            for table, col, typ in con.execute(
                "SELECT table_name, column_name, data_type FROM information_schema.columns"
            ).fetchall()
        }
        text = ("account_id", "order_id", "customer_id", "order_ts", "status", "currency")
        for name in text:
            assert types["transactions", name] == "VARCHAR"
        assert types["transactions", "amount"] == "DOUBLE"
        assert types["transactions", "ingested_at"] == "TIMESTAMP"
        for name in ("account_id", "customer_id", "contact_id", "email", "merged_into"):
            assert types["contacts", name] == "VARCHAR"
        assert types["contacts", "email_opt_in"] == "BOOLEAN"
        assert types["contacts", "merged_at"] == "TIMESTAMP"
        for table in ("transactions", "contacts"):
            counts = dict(
                con.execute(
                    f"SELECT account_id, count(*) FROM {table} GROUP BY ALL"
                ).fetchall()
            )
            assert counts == {
                "test_shop": len(getattr(samples[0], table)),
                "shop_b": len(getattr(samples[1], table)),
            }
        # Bad values survive the load: raw text timestamps, NaN (not NULL), NULL ids.
        nan, inf, null_amount, null_customer, bad_ts = con.execute(
            """SELECT count(*) FILTER (isnan(amount)),
                      count(*) FILTER (isinf(amount)),
                      count(*) FILTER (amount IS NULL),
                      count(*) FILTER (customer_id IS NULL),
                      count(*) FILTER (try_strptime(order_ts, '%Y-%m-%d %H:%M:%S') IS NULL)
               FROM transactions"""
        ).fetchone()
        assert nan >= 2 and inf >= 2 and null_amount == 0
        assert null_customer >= 4 and bad_ts >= 4
        back = con.execute(
            "SELECT * FROM transactions WHERE account_id = 'test_shop' ORDER BY rowid"
        ).df()
    expected = samples[0].transactions
    assert back["order_id"].tolist() == expected["order_id"].tolist()
    assert back["order_ts"].tolist() == expected["order_ts"].tolist()
    np.testing.assert_array_equal(
        back["ingested_at"].to_numpy("datetime64[us]"),
        expected["ingested_at"].to_numpy("datetime64[us]"),
    )


def test_sample_accounts() -> None:
    by_id = {acc.account_id: acc for acc in SAMPLE_ACCOUNTS}
    assert list(by_id) == ["shop_new", "shop_small", "shop_large"]
    assert (by_id["shop_new"].n_buyers, by_id["shop_new"].history_days) == (300, 60)
    sizes = {k: (acc.n_buyers, acc.history_days) for k, acc in by_id.items()}
    assert sizes["shop_small"] == (3_000, 900)
    assert sizes["shop_large"] == (200_000, 900)
    new = simulate_account(by_id["shop_new"], AS_OF)
    ts = _parsed_ts(new.transactions)
    # Not eligible: history shorter than 4 months, fewer than 500 buyers.
    assert ts.min() >= AS_OF_TS - pd.Timedelta(days=60)
    assert new.truth.shape[0] == 300


def test_invalid_account_rejected() -> None:
    with pytest.raises(ValueError, match="n_buyers"):
        SampleAccount("x", n_buyers=0, history_days=10)
    with pytest.raises(ValueError, match="alpha"):
        SampleAccount("x", n_buyers=1, history_days=10, alpha=-1.0)


def test_shop_large_timing(capsys) -> None:
    large = next(acc for acc in SAMPLE_ACCOUNTS if acc.account_id == "shop_large")
    start = time.perf_counter()
    data = simulate_account(large, AS_OF)
    seconds = time.perf_counter() - start
    with capsys.disabled():
        print(
            f"\nshop_large: {large.n_buyers} buyers, {len(data.transactions)} rows "
            f"simulated in {seconds:.2f} s"
        )
    assert len(data.truth) == large.n_buyers
