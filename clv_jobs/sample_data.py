"""Synthetic purchase data for demos, tests and benchmarks.

Accounts are simulated from the generative stories the CLV models assume, so a fit
on the sample data should recover the parameters it was generated with:

* purchases: the BG/NBD process (Fader, Hardie & Lee 2005, "Counting Your Customers the
  Easy Way: An Alternative to the Pareto/NBD Model"), the default, or the Pareto/NBD
  process (Schmittlein, Morrison & Colombo 1987, "Counting Your Customers: Who Are They
  and What Will They Do Next?"): ``SampleAccount(process="pareto_nbd")``;
* spend per order: the Gamma-Gamma model (Fader, Hardie & Lee 2005, "RFM and CLV: Using
  Iso-Value Curves for Customer Base Analysis").

On top of the clean process the generator adds what real extracts contain (see SPEC.md,
"Data in"): orders dated on or after the as-of date (they belong to later runs), contacts
without purchases, anonymous contacts, merged contacts, and a few bad rows of every kind
the pipeline must quarantine.

Everything is vectorised with numpy (no per-customer Python loop) and seeded: the same
account and as-of date always give identical frames.
"""

from __future__ import annotations

import datetime
import os
import uuid
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

__all__ = [
    "BAD_ROW_KINDS",
    "PROCESSES",
    "SAMPLE_ACCOUNTS",
    "SampleAccount",
    "SampleData",
    "simulate_account",
    "write_warehouse",
]

#: Kinds of deliberately bad transaction rows injected when ``bad_rows=True``.
BAD_ROW_KINDS: tuple[str, ...] = (
    "missing_customer_id",
    "unparseable_timestamp",
    "future_timestamp",
    "negative_amount",
    "non_finite_amount",
    "cancelled_status",
    "duplicate_order_id",
)

_SECONDS_PER_DAY = 86_400

#: Purchase processes :func:`simulate_account` can draw from.
PROCESSES: tuple[str, ...] = ("bg_nbd", "pareto_nbd")

# Shares of the extras. Bad rows: ~0.05 % of the orders per kind (at least 2), i.e. about
# 0.35 % in total for 7 kinds, well under the default 1 % quarantine limit.
_BAD_SHARE_PER_KIND = 0.0005
_MIN_BAD_PER_KIND = 2
_LATE_SHARE = 0.02
_LATE_MAX_DAYS = 30
_NON_BUYER_SHARE = 0.10
_ANONYMOUS_SHARE = 0.05
_OPT_IN_SHARE = 0.70
_MERGED_SHARE = 0.01

# Values an ingestion tool may load into a text column without complaint.
_UNPARSEABLE_TS = ("{year}-13-45 99:00", "not a date", "{year}-02-30 10:00:00")


@dataclass(frozen=True)
class SampleAccount:
    """Parameters of one simulated account.

    Parameters
    ----------
    account_id : str
        Account (shop, tenant) identifier.
    n_buyers : int
        Number of customers with at least one purchase before the as-of date.
    history_days : int
        Customers' first purchases are spread uniformly over
        ``[as_of - history_days, as_of)``.
    r, alpha : float
        Purchase-rate heterogeneity (both processes): ``lambda ~ Gamma(shape=r, rate=alpha)``,
        with ``lambda`` in purchases per **day** (the defaults are CDNOW-like:
        r = 0.24, alpha = 4.4 weeks).
    a, b : float
        BG/NBD dropout heterogeneity: ``p ~ Beta(a, b)`` (``process="bg_nbd"`` only).
    p, q, v : float
        Gamma-Gamma spend: ``nu ~ Gamma(shape=q, rate=v)`` per customer and each order
        amount ``~ Gamma(shape=p, rate=nu)``; mean order amount ``p * v / (q - 1)``.
    seed : int
        Random seed. It is combined with ``account_id``, so two accounts with the same
        seed still get different customers.
    bad_rows : bool
        Inject a few bad rows of each kind in :data:`BAD_ROW_KINDS`.
    process : {"bg_nbd", "pareto_nbd"}
        The purchase process. ``bg_nbd`` (default): after each repeat purchase the
        customer drops out with probability ``p``. ``pareto_nbd``: each customer lives an
        exponential lifetime ``tau ~ Exponential(mu)`` from the first purchase, whatever
        the purchases, and buys at rate ``lambda`` while alive.
    s, beta : float
        Pareto/NBD dropout heterogeneity: ``mu ~ Gamma(shape=s, rate=beta)``, ``mu`` per
        **day** (``process="pareto_nbd"`` only; the defaults are CDNOW-like, s = 0.61 and
        beta = 11.7 weeks).
    """

    account_id: str
    n_buyers: int
    history_days: int
    r: float = 0.25
    alpha: float = 4.0 * 7
    a: float = 0.8
    b: float = 2.4
    p: float = 6.0
    q: float = 3.8
    v: float = 15.0
    seed: int = 0
    bad_rows: bool = True
    process: Literal["bg_nbd", "pareto_nbd"] = "bg_nbd"
    s: float = 0.6
    beta: float = 12.0 * 7

    def __post_init__(self) -> None:
        if self.process not in PROCESSES:
            raise ValueError(
                f"SampleAccount.process must be one of {', '.join(PROCESSES)}, got {self.process!r}"
            )
        if not self.account_id:
            raise ValueError("SampleAccount.account_id must not be empty")
        if self.n_buyers < 1:
            raise ValueError(f"SampleAccount.n_buyers must be >= 1, got {self.n_buyers}")
        if self.history_days < 1:
            raise ValueError(
                f"SampleAccount.history_days must be >= 1, got {self.history_days}"
            )
        for name in ("r", "alpha", "a", "b", "p", "q", "v", "s", "beta"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(
                    f"SampleAccount.{name} must be finite and > 0, got {value}"
                )


#: Demo accounts. ``shop_new`` is deliberately not eligible yet (SPEC: first purchase at
#: least 4 months back and at least 500 buyers). It has no bad rows: 2 rows of each kind
#: would be ~4 % of its ~400 orders and fail the 1 % quarantine limit, hiding the
#: "not eligible" outcome it is there to show.
SAMPLE_ACCOUNTS: tuple[SampleAccount, ...] = (
    SampleAccount("shop_new", n_buyers=300, history_days=60, seed=1, bad_rows=False),
    SampleAccount("shop_small", n_buyers=3_000, history_days=900, seed=2),
    SampleAccount("shop_large", n_buyers=200_000, history_days=900, seed=3),
)


@dataclass(frozen=True, eq=False)
class SampleData:
    """Simulated data of one account.

    Attributes
    ----------
    transactions : pandas.DataFrame
        ``account_id, order_id, customer_id, order_ts, amount, status, currency,
        ingested_at``; one row per order as an ingestion tool would load it. ``order_ts``
        is a **string** ``"YYYY-MM-DD HH:MM:SS"`` (naive UTC) so that unparseable values
        can be carried; ``ingested_at`` is a naive UTC timestamp; ``amount`` a float
        (may be negative, NaN or inf in bad rows); ``customer_id`` may be missing in
        bad rows.
    contacts : pandas.DataFrame
        ``account_id, customer_id, contact_id, email, email_opt_in, merged_into,
        merged_at``; one row per customer, buyers and non-buyers.
    truth : pandas.DataFrame
        The latent per-buyer parameters: ``customer_id, lam`` (purchases per day),
        ``p_dropout`` (BG/NBD; ``mu``, the dropout rate per day, for Pareto/NBD),
        ``alive_at_as_of, first_purchase_ts, p_spend`` (Gamma-Gamma shape),
        ``nu_spend`` (per-customer Gamma-Gamma rate), ``mean_spend`` (``p / nu``). Only
        real buyers, no rows for bad-row artefacts.
    """

    transactions: pd.DataFrame
    contacts: pd.DataFrame
    truth: pd.DataFrame


def _account_tag(account_id: str) -> str:
    # Short, stable, collision-resistant tag: keeps order ids unique across accounts
    # without making them as long as the account id.
    return f"{zlib.crc32(account_id.encode('utf-8')):08x}"


def _ids(prefix: str, numbers: np.ndarray, width: int = 9) -> np.ndarray:
    """Vectorised ``f"{prefix}{n:0{width}d}"`` (numpy string ufuncs, no Python loop)."""
    digits = np.strings.zfill(np.asarray(numbers, dtype=np.int64).astype(np.str_), width)
    return np.strings.add(prefix, digits)


def _format_ts(seconds: np.ndarray) -> np.ndarray:
    """Epoch seconds -> ``"YYYY-MM-DD HH:MM:SS"`` strings."""
    iso = np.datetime_as_string(np.asarray(seconds, dtype="datetime64[s]"), unit="s")
    return np.strings.replace(iso, "T", " ")


def _to_datetime(seconds: np.ndarray) -> np.ndarray:
    return np.asarray(seconds, dtype="datetime64[s]").astype("datetime64[us]")


def _as_of_seconds(as_of: datetime.date) -> int:
    if isinstance(as_of, datetime.datetime):
        if as_of.time() != datetime.time(0) or as_of.tzinfo is not None:
            raise ValueError(f"as_of must be a date (or a naive midnight), got {as_of!r}")
        as_of = as_of.date()
    if not isinstance(as_of, datetime.date):
        raise TypeError(f"as_of must be a datetime.date, got {type(as_of).__name__}")
    return int(np.datetime64(as_of, "s").astype(np.int64))


def _simulate_bgnbd(
    rng: np.random.Generator, lam: np.ndarray, p_drop: np.ndarray, first: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Repeat purchases of the BG/NBD process, in rounds.

    Time is in days relative to the as-of instant (0); ``first`` < 0 are the first
    purchases. Every round all still-active customers draw their next purchase, so the
    number of rounds is the largest purchase count, not the number of customers.

    Returns
    -------
    cust, t : numpy.ndarray
        Customer index and time of each repeat purchase before 0.
    alive : numpy.ndarray of bool
        Customer has not dropped out by time 0.
    next_t : numpy.ndarray
        Time of the first purchase at or after 0 for customers alive at 0 (inf for the
        others): the orders that belong to later runs.
    """
    n = lam.size
    alive = np.ones(n, dtype=bool)
    next_t = np.full(n, np.inf)
    # Gamma(0.25) can underflow to exactly 0; a tiny rate means "never buys again".
    scale = 1.0 / np.maximum(lam, 1e-300)
    active = np.arange(n)
    cur = first.copy()
    cust_parts: list[np.ndarray] = []
    t_parts: list[np.ndarray] = []
    while active.size:
        t = cur[active] + rng.exponential(scale[active])
        beyond = t >= 0.0
        next_t[active[beyond]] = t[beyond]
        active, t = active[~beyond], t[~beyond]
        cust_parts.append(active)
        t_parts.append(t)
        cur[active] = t
        # BG/NBD: dropout happens right after a *repeat* purchase (geometric over repeat
        # transactions), never after the first one; that is what makes P-Alive = 1 for
        # buyers without a repeat purchase and what the closed-form E[X(t)] assumes.
        dies = rng.random(active.size) < p_drop[active]
        alive[active[dies]] = False
        active = active[~dies]
    cust = np.concatenate(cust_parts) if cust_parts else np.empty(0, dtype=np.int64)
    t = np.concatenate(t_parts) if t_parts else np.empty(0)
    return cust, t, alive, next_t


def _simulate_pareto_nbd(
    rng: np.random.Generator, lam: np.ndarray, mu: np.ndarray, first: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Repeat purchases of the Pareto/NBD process, in rounds (as :func:`_simulate_bgnbd`).

    Each customer's lifetime, ``tau ~ Exponential(mu)``, starts at the first purchase;
    while alive the customer buys as a Poisson process of rate ``lam``. Same returns as
    :func:`_simulate_bgnbd`: ``alive`` is "lifetime not over at 0", ``next_t`` the first
    purchase at or after 0 for customers who make one before dying (inf otherwise).
    """
    n = lam.size
    # Gamma(s) can underflow to exactly 0 too: a tiny rate means "never drops out".
    death = first + rng.exponential(1.0 / np.maximum(mu, 1e-300))
    alive = death > 0.0
    next_t = np.full(n, np.inf)
    scale = 1.0 / np.maximum(lam, 1e-300)
    active = np.arange(n)
    cur = first.copy()
    cust_parts: list[np.ndarray] = []
    t_parts: list[np.ndarray] = []
    while active.size:
        t = cur[active] + rng.exponential(scale[active])
        lives = t < death[active]  # a purchase after the end of the lifetime never happens
        active, t = active[lives], t[lives]
        beyond = t >= 0.0
        next_t[active[beyond]] = t[beyond]
        active, t = active[~beyond], t[~beyond]
        cust_parts.append(active)
        t_parts.append(t)
        cur[active] = t
    cust = np.concatenate(cust_parts) if cust_parts else np.empty(0, dtype=np.int64)
    t = np.concatenate(t_parts) if t_parts else np.empty(0)
    return cust, t, alive, next_t


def simulate_account(account: SampleAccount, as_of: datetime.date) -> SampleData:
    """Simulate one account's transactions and contacts as of a date.

    Parameters
    ----------
    account : SampleAccount
        Size, history length, model parameters and seed.
    as_of : datetime.date
        The as-of date D. Buyers' purchases before D 00:00 (UTC) follow the account's
        process (BG/NBD or Pareto/NBD) and Gamma-Gamma exactly; about 2 % extra orders fall in ``[D, D + 30 days)``
        (orders of later runs, not errors).

    Returns
    -------
    SampleData
        ``transactions``, ``contacts`` and the latent ``truth`` per buyer.

    Notes
    -----
    * Customer ids ``c000001234``, contact ids ``k000001234``, order ids
      ``o<8-hex account tag><9 digits>`` numbered in ``order_ts`` order; zero padded so
      string order is numeric order.
    * ``ingested_at`` is D 01:00 for rows dated before D (the load the run reads); for
      orders dated on or after D it is 01:00 of the day after the order (a later nightly
      load), so no legitimate order is later than the moment it was loaded.
    * Bad rows (``bad_rows=True``), ``k = max(2, round(0.0005 * orders))`` of each kind in
      :data:`BAD_ROW_KINDS`: extra orders of existing buyers (or with no customer id), so
      quarantining them leaves exactly the simulated process. Duplicates are exact copies
      of good rows. Non-finite amounts alternate NaN and inf.
    * Contacts: every buyer plus ~10 % customers without purchases; 5 % anonymous
      (no contact id, no email, no opt-in); ~70 % of the others opted in to email; 1 %
      merged into another customer (``merged_at`` on the day before D). Emails are fake
      ``user<n>@example.com`` addresses.
    """
    as_of_s = _as_of_seconds(as_of)
    entropy = [int(account.seed), zlib.crc32(account.account_id.encode("utf-8"))]
    rng = np.random.default_rng(np.random.SeedSequence(entropy))
    n = account.n_buyers
    tag = _account_tag(account.account_id)

    # --- latent parameters and the purchase process (days relative to D 00:00) -------
    lam = rng.gamma(account.r, 1.0 / account.alpha, n)
    if account.process == "pareto_nbd":
        dropout = ("mu", rng.gamma(account.s, 1.0 / account.beta, n))
    else:  # the default keeps its random stream: same seed, same data as before
        dropout = ("p_dropout", rng.beta(account.a, account.b, n))
    nu = rng.gamma(account.q, 1.0 / account.v, n)
    first = rng.uniform(-float(account.history_days), 0.0, n)
    simulate = _simulate_pareto_nbd if account.process == "pareto_nbd" else _simulate_bgnbd
    rep_cust, rep_t, alive, next_t = simulate(rng, lam, dropout[1], first)

    # Seconds, floored: t < 0 stays strictly before D 00:00, t >= 0 stays on/after it.
    first_s = as_of_s + np.floor(first * _SECONDS_PER_DAY).astype(np.int64)
    rep_s = as_of_s + np.floor(rep_t * _SECONDS_PER_DAY).astype(np.int64)
    good_cust = np.concatenate([np.arange(n), rep_cust])
    good_s = np.concatenate([first_s, rep_s])

    # Later runs' orders: the process's own next purchase of customers alive at D,
    # thinned to ~2 % of the orders so the share does not depend on the parameters.
    candidates = np.flatnonzero(next_t < _LATE_MAX_DAYS)
    n_late = min(candidates.size, int(round(_LATE_SHARE * good_s.size)))
    late_cust = np.sort(rng.choice(candidates, size=n_late, replace=False))
    late_s = as_of_s + np.floor(next_t[late_cust] * _SECONDS_PER_DAY).astype(np.int64)

    # --- bad rows ---------------------------------------------------------------------
    k = max(_MIN_BAD_PER_KIND, int(round(_BAD_SHARE_PER_KIND * good_s.size)))
    k = k if account.bad_rows else 0
    start_s = as_of_s - account.history_days * _SECONDS_PER_DAY
    # Six kinds that are extra orders; kind index 0..5 in BAD_ROW_KINDS order.
    bad_kind = np.repeat(np.arange(6), k)
    nb = bad_kind.size
    bad_cust = rng.integers(0, n, nb)
    bad_cust[bad_kind == 0] = -1  # missing customer id
    bad_s = rng.integers(start_s, as_of_s, nb)
    future = bad_kind == 2
    year_2099 = int(np.datetime64("2099-01-01", "s").astype(np.int64))
    bad_s[future] = year_2099 + rng.integers(0, 364 * _SECONDS_PER_DAY, int(future.sum()))

    # --- assemble all orders, numbered in time order -------------------------------
    n_good, n_late = good_s.size, late_s.size
    cust = np.concatenate([good_cust, late_cust, bad_cust])
    ts_s = np.concatenate([good_s, late_s, bad_s])
    spend_of = np.where(cust >= 0, cust, rng.integers(0, n, cust.size))
    amount = np.round(rng.gamma(account.p, 1.0 / nu[spend_of]), 2)
    amount = np.maximum(amount, 0.01)
    kind = np.concatenate([np.full(n_good + n_late, -1), bad_kind])
    amount[kind == 3] = -amount[kind == 3]
    nonfinite = np.flatnonzero(kind == 4)
    amount[nonfinite] = np.where(np.arange(nonfinite.size) % 2 == 0, np.nan, np.inf)
    status = np.where(kind == 5, "cancelled", "completed")
    # Loaded at D 01:00; later runs' orders by the nightly load after their day.
    ingested_s = np.full(cust.size, as_of_s + 3600, dtype=np.int64)
    late_rows = slice(n_good, n_good + n_late)
    ingested_s[late_rows] = (
        ts_s[late_rows] // _SECONDS_PER_DAY + 1
    ) * _SECONDS_PER_DAY + 3600

    ts_str = _format_ts(ts_s)  # <U19: every bad value below fits
    unparseable = np.flatnonzero(kind == 1)
    year = as_of.year
    ts_str[unparseable] = [
        _UNPARSEABLE_TS[i % len(_UNPARSEABLE_TS)].format(year=year)
        for i in range(unparseable.size)
    ]

    order = np.lexsort((cust, ts_s))  # time order; ties broken by customer
    order_no = np.empty(cust.size, dtype=np.int64)
    order_no[order] = np.arange(1, cust.size + 1)

    # Duplicates: exact copies of good rows placed right after their originals.
    dup_src = (
        rng.choice(n_good, size=k, replace=False) if k else np.empty(0, dtype=np.int64)
    )
    rows = np.concatenate([np.arange(cust.size), dup_src])
    rows = rows[np.argsort(order_no[rows], kind="stable")]

    # --- customers and contacts -----------------------------------------------------
    n_contacts = n + int(round(_NON_BUYER_SHARE * n))
    cust_no = rng.permutation(n_contacts) + 1  # buyers first, then non-buyers
    cust_id = _ids("c", cust_no)
    contact_no = rng.permutation(n_contacts) + 1

    row_cust = cust[rows]
    customer_id = pd.Series(cust_id[np.maximum(row_cust, 0)], dtype="str")
    customer_id[row_cust < 0] = None
    transactions = pd.DataFrame(
        {
            "account_id": pd.Series(np.full(rows.size, account.account_id), dtype="str"),
            "order_id": pd.Series(_ids("o" + tag, order_no[rows]), dtype="str"),
            "customer_id": customer_id,
            "order_ts": pd.Series(ts_str[rows], dtype="str"),
            "amount": amount[rows],
            "status": pd.Series(status[rows], dtype="str"),
            "currency": pd.Series(np.full(rows.size, "EUR"), dtype="str"),
            "ingested_at": _to_datetime(ingested_s[rows]),
        }
    )

    anonymous = np.zeros(n_contacts, dtype=bool)
    n_anonymous = int(round(_ANONYMOUS_SHARE * n_contacts))
    anonymous[rng.choice(n_contacts, n_anonymous, replace=False)] = True
    opt_in = (rng.random(n_contacts) < _OPT_IN_SHARE) & ~anonymous
    contact_id = pd.Series(_ids("k", contact_no), dtype="str")
    email = pd.Series(
        np.strings.add(np.strings.add("user", contact_no.astype(np.str_)), "@example.com"),
        dtype="str",
    )
    contact_id[anonymous] = None
    email[anonymous] = None
    # Merges: an absorbed contact points at a survivor that is not itself absorbed.
    n_merged = int(round(_MERGED_SHARE * n_contacts))
    merged = np.zeros(n_contacts, dtype=bool)
    merged_idx = rng.choice(n_contacts, n_merged, replace=False)
    merged[merged_idx] = True
    survivors = rng.choice(np.flatnonzero(~merged), n_merged, replace=True)
    merged_into = pd.Series(np.full(n_contacts, None, dtype=object), dtype="str")
    merged_into.iloc[merged_idx] = cust_id[survivors]
    merged_at = np.full(n_contacts, np.datetime64("NaT"), dtype="datetime64[us]")
    merged_at[merged_idx] = _to_datetime(
        as_of_s - _SECONDS_PER_DAY + rng.integers(0, _SECONDS_PER_DAY, n_merged)
    )
    contacts = (
        pd.DataFrame(
            {
                "account_id": pd.Series(
                    np.full(n_contacts, account.account_id), dtype="str"
                ),
                "customer_id": pd.Series(cust_id, dtype="str"),
                "contact_id": contact_id,
                "email": email,
                "email_opt_in": opt_in,
                "merged_into": merged_into,
                "merged_at": merged_at,
            }
        )
        .sort_values("customer_id", kind="stable")
        .reset_index(drop=True)
    )

    truth = (
        pd.DataFrame(
            {
                "customer_id": pd.Series(cust_id[:n], dtype="str"),
                "lam": lam,
                dropout[0]: dropout[1],
                "alive_at_as_of": alive,
                "first_purchase_ts": _to_datetime(first_s),
                "p_spend": np.full(n, float(account.p)),
                "nu_spend": nu,
                "mean_spend": account.p / nu,
            }
        )
        .sort_values("customer_id", kind="stable")
        .reset_index(drop=True)
    )
    return SampleData(transactions=transactions, contacts=contacts, truth=truth)


_TRANSACTIONS_SCHEMA = pa.schema(
    [
        ("account_id", pa.string()),
        ("order_id", pa.string()),
        ("customer_id", pa.string()),
        ("order_ts", pa.string()),
        ("amount", pa.float64()),
        ("status", pa.string()),
        ("currency", pa.string()),
        ("ingested_at", pa.timestamp("us")),
    ]
)
_CONTACTS_SCHEMA = pa.schema(
    [
        ("account_id", pa.string()),
        ("customer_id", pa.string()),
        ("contact_id", pa.string()),
        ("email", pa.string()),
        ("email_opt_in", pa.bool_()),
        ("merged_into", pa.string()),
        ("merged_at", pa.timestamp("us")),
    ]
)
_DDL = """
CREATE TABLE transactions (
    account_id VARCHAR, order_id VARCHAR, customer_id VARCHAR, order_ts VARCHAR,
    amount DOUBLE, status VARCHAR, currency VARCHAR, ingested_at TIMESTAMP
);
CREATE TABLE contacts (
    account_id VARCHAR, customer_id VARCHAR, contact_id VARCHAR, email VARCHAR,
    email_opt_in BOOLEAN, merged_into VARCHAR, merged_at TIMESTAMP
);
"""


def _arrow(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    columns = []
    for field in schema:
        values = frame[field.name]
        if pa.types.is_floating(field.type):
            # from_pandas=False keeps NaN a NaN (a non-finite amount), not a NULL.
            columns.append(pa.array(values.to_numpy(), type=field.type, from_pandas=False))
        else:
            columns.append(pa.array(values, type=field.type, from_pandas=True))
    return pa.Table.from_arrays(columns, schema=schema)


def _remove(path: Path) -> None:
    for candidate in (path, path.with_name(path.name + ".wal")):
        candidate.unlink(missing_ok=True)


def write_warehouse(path: str | os.PathLike[str], samples: Iterable[SampleData]) -> Path:
    """Write sample accounts into an embedded DuckDB warehouse.

    Creates (or replaces) a DuckDB file with two tables holding all accounts together:

    * ``transactions(account_id VARCHAR, order_id VARCHAR, customer_id VARCHAR,
      order_ts VARCHAR, amount DOUBLE, status VARCHAR, currency VARCHAR,
      ingested_at TIMESTAMP)``;
    * ``contacts(account_id VARCHAR, customer_id VARCHAR, contact_id VARCHAR,
      email VARCHAR, email_opt_in BOOLEAN, merged_into VARCHAR, merged_at TIMESTAMP)``.

    ``order_ts`` is deliberately VARCHAR (``"YYYY-MM-DD HH:MM:SS"``, naive UTC): it is the
    raw value as an ingestion tool loads it, so unparseable timestamps survive for the
    pipeline to quarantine. Other timestamps are naive UTC. Non-finite amounts are
    stored as IEEE NaN/inf, not NULL.

    Parameters
    ----------
    path : str or os.PathLike
        Target file; parent directories are created.
    samples : iterable of SampleData
        Accounts to write; consumed once, one at a time (a generator keeps only one
        account in memory).

    Returns
    -------
    pathlib.Path
        The written file.

    Notes
    -----
    The file is built under a temporary name in the same directory and moved into place
    with :func:`os.replace`, so readers see either the old or the new warehouse, never a
    partial one.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Unique per writer, in the target's directory so os.replace stays a rename.
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    _remove(tmp)
    try:
        con = duckdb.connect(str(tmp))
        try:
            con.execute(_DDL)
            for sample in samples:
                con.register("tx_in", _arrow(sample.transactions, _TRANSACTIONS_SCHEMA))
                con.register("ct_in", _arrow(sample.contacts, _CONTACTS_SCHEMA))
                con.execute("INSERT INTO transactions SELECT * FROM tx_in")
                con.execute("INSERT INTO contacts SELECT * FROM ct_in")
                con.unregister("tx_in")
                con.unregister("ct_in")
            con.execute("CHECKPOINT")
        finally:
            con.close()
        # A leftover WAL of the old file would be replayed onto the new one.
        target.with_name(target.name + ".wal").unlink(missing_ok=True)
        os.replace(tmp, target)
    except BaseException:
        _remove(tmp)
        raise
    return target
