"""Tests for clv_jobs.segments: SPEC "Segments" rules (one test per rule, first match wins),
CLV_SCORE quintiles, the hashed control group and CLV_EVOLUTION."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from clv_jobs.segments import (
    SCORE_LABELS,
    SEGMENT_LABELS,
    assign_control_group,
    assign_scores,
    assign_segments,
    control_buckets,
    evolution,
)
from clv_jobs.settings import SegmentSettings

# -- segments ---------------------------------------------------------------------------
# A fixed background of 99 one-time buyers with LTV 1..99 (all segment 9), plus the customer
# under test. With the customer's LTV in {10, 60, 90, 1000} the cut-offs over the 100 values
# are q50 ~ 50.5, q80 ~ 80.2 and q99 ~ 98-108, so the four LTVs read "low" (< q50),
# "value" (q50..q80), "vip" (q80..q99) and "top" (>= q99).
LOW, VALUE, VIP, TOP = 10.0, 60.0, 90.0, 1000.0
BACKGROUND = dict(
    freq=np.ones(99), rec=np.full(99, 10.0), tbp=np.full(99, np.nan),
    tenure=np.full(99, 400.0), ltv=np.arange(1.0, 100.0), p_alive=np.full(99, 0.9),
)
# A healthy, old, one-time, low-value customer: the one every test starts from.
DEFAULT = dict(freq=1, rec=10.0, tbp=np.nan, tenure=400.0, ltv=LOW, p_alive=0.9)


def segment_of(settings: SegmentSettings | None = None, **customer) -> int:
    """Segment id of one customer added to BACKGROUND."""
    values = DEFAULT | customer
    columns = {
        name: np.append(BACKGROUND[name], values[name])
        for name in ("freq", "rec", "tbp", "tenure", "ltv", "p_alive")
    }
    result = assign_segments(**columns, settings=settings)
    assert (result[:-1] == 9).all() or settings is not None
    return int(result[-1])


def test_background_is_low_value_mass():
    result = assign_segments(**BACKGROUND)
    assert result.tolist() == [9] * 99
    assert result.dtype.kind == "i"


def test_rule_11_inactive_wins_over_everything():
    # Would be Top Outlier, Recent, Loyal at Risk...: REC > 365 decides first.
    assert segment_of(freq=10, rec=366, tbp=5, tenure=30, ltv=TOP, p_alive=0.01) == 11
    assert segment_of(freq=1, rec=400, ltv=LOW) == 11
    assert segment_of(freq=10, rec=365, tbp=100, ltv=TOP) == 1  # 365 is not > 365


def test_rule_1_top_outlier_needs_two_purchases_and_q99():
    # Recent, hibernating and loyal-at-risk at the same time: Top Outlier comes first.
    assert segment_of(freq=2, rec=200, tbp=300, tenure=30, ltv=TOP, p_alive=0.1) == 1
    assert segment_of(freq=5, rec=10, tbp=30, ltv=TOP) == 1
    # One purchase: never an outlier, whatever the LTV.
    assert segment_of(freq=1, ltv=TOP) == 9
    # Below q99 (98.01 with 90 in the data): a VIP, not an outlier.
    assert segment_of(freq=5, rec=10, tbp=30, ltv=VIP) == 2


def test_rule_8_recent_customer_by_tenure():
    # Loyal, at risk and hibernating-looking, but tenure <= 90 comes first.
    assert segment_of(freq=5, rec=200, tbp=10, tenure=60, ltv=LOW, p_alive=0.1) == 8
    assert segment_of(freq=1, tenure=90) == 8
    assert segment_of(freq=1, tenure=90.01) == 9


def test_rule_10_hibernator_needs_long_recency_and_low_value():
    # Loyal at risk too: hibernator comes first.
    assert segment_of(freq=5, rec=181, tbp=10, ltv=LOW, p_alive=0.1) == 10
    assert segment_of(freq=1, rec=200, ltv=LOW) == 10
    assert segment_of(freq=1, rec=180, ltv=LOW) == 9  # 180 is not > 180
    # Value at or above q50: not a hibernator.
    assert segment_of(freq=2, rec=200, tbp=300, ltv=VALUE) == 5
    assert segment_of(freq=1, rec=200, ltv=VALUE) == 9


def test_rule_4_loyal_at_risk_by_p_alive_or_recency_vs_tbp():
    # VIP value, but at risk (P < 0.5): Loyal at Risk comes before Loyal VIP.
    assert segment_of(freq=4, rec=10, tbp=30, ltv=VIP, p_alive=0.49) == 4
    assert segment_of(freq=4, rec=10, tbp=30, ltv=LOW, p_alive=0.49) == 4
    # P fine but REC > 1.5 x TBP.
    assert segment_of(freq=4, rec=31, tbp=20, ltv=LOW, p_alive=0.9) == 4
    # Exactly 1.5 x TBP and P = 0.5: not at risk.
    assert segment_of(freq=4, rec=30, tbp=20, ltv=LOW, p_alive=0.5) == 3


def test_rule_2_loyal_vip():
    assert segment_of(freq=4, rec=10, tbp=30, ltv=VIP) == 2
    assert segment_of(freq=3, rec=10, tbp=30, ltv=VIP) == 5  # F < 4: a value repeater


def test_rule_3_notable_loyal():
    assert segment_of(freq=4, rec=10, tbp=30, ltv=LOW) == 3
    assert segment_of(freq=4, rec=10, tbp=30, ltv=VALUE) == 3  # below q80


def test_rule_6_value_repeater_at_risk():
    assert segment_of(freq=2, rec=10, tbp=30, ltv=VALUE, p_alive=0.4) == 6
    assert segment_of(freq=3, rec=50, tbp=30, ltv=VIP, p_alive=0.9) == 6  # 50 > 45


def test_rule_5_value_repeater():
    assert segment_of(freq=2, rec=10, tbp=30, ltv=VALUE) == 5
    assert segment_of(freq=3, rec=45, tbp=30, ltv=VIP) == 5  # 45 is not > 1.5 x 30


def test_rule_7_low_value_repeater_at_risk_or_not():
    assert segment_of(freq=2, rec=10, tbp=30, ltv=LOW) == 7
    assert segment_of(freq=3, rec=100, tbp=30, ltv=LOW, p_alive=0.1) == 7


def test_rule_9_everyone_else():
    assert segment_of(freq=1, ltv=VIP) == 9
    # One purchase has no TBP: at risk only through P, and it still is mass.
    assert segment_of(freq=1, ltv=VALUE, p_alive=0.1) == 9


def test_value_cutoffs_ignore_inactive_customers():
    # Ten active repeaters with LTV 10..100: q50 = 55, q99 = 99.1.
    active = dict(
        freq=np.full(10, 2.0), rec=np.full(10, 10.0), tbp=np.full(10, 30.0),
        tenure=np.full(10, 400.0), ltv=np.arange(10.0, 101.0, 10.0), p_alive=np.full(10, 0.9),
    )
    alone = assign_segments(**active)
    assert alone.tolist() == [7, 7, 7, 7, 7, 5, 5, 5, 5, 1]

    def with_inactive(ltv: float) -> np.ndarray:
        inactive = dict(freq=np.full(10, 2.0), rec=np.full(10, 400.0), tbp=np.full(10, 30.0),
                        tenure=np.full(10, 900.0), ltv=np.full(10, ltv), p_alive=np.full(10, 0.9))
        return assign_segments(**{k: np.concatenate([active[k], inactive[k]]) for k in active})

    # Ten inactive at LTV 0 would pull q50 down to 5 (every active one a "value" repeater)...
    low = with_inactive(0.0)
    assert low[10:].tolist() == [11] * 10
    assert low[:10].tolist() == alone.tolist()
    # ...and ten inactive at a huge LTV would push q99 out of reach of the top active one.
    high = with_inactive(1e6)
    assert high[10:].tolist() == [11] * 10
    assert high[:10].tolist() == alone.tolist()


def test_everyone_inactive():
    result = assign_segments([1, 5], [400, 500], [np.nan, 20], [400, 900], [1.0, 2.0], [0.1, 0.9])
    assert result.tolist() == [11, 11]


def test_empty_input():
    assert assign_segments([], [], [], [], [], []).tolist() == []


def test_accepts_pandas_series():
    frame = pd.DataFrame({"f": [2, 1], "r": [10.0, 400.0], "t": [30.0, np.nan],
                          "n": [400.0, 500.0], "l": [5.0, 1.0], "p": [0.9, 0.9]})
    result = assign_segments(frame.f, frame.r, frame.t, frame.n, frame.l, frame.p)
    assert result.tolist() == [1, 11]  # alone among the active ones: its LTV is q99


def test_custom_thresholds():
    s = SegmentSettings(
        inactive_days=200, recent_days=30, hibernator_days=100, loyal_min_purchases=6,
        repeat_min_purchases=3, top_quantile=0.999, vip_quantile=0.95, value_quantile=0.7,
        at_risk_p_alive=0.3, at_risk_tbp_factor=3.0,
    )
    assert segment_of(s, freq=1, rec=201) == 11
    assert segment_of(s, freq=1, rec=199) == 10  # not yet inactive: a hibernator
    assert segment_of(s, freq=1, rec=101, ltv=LOW) == 10  # hibernator after 100 days
    assert segment_of(s, freq=1, tenure=60) == 9  # not recent after 30 days
    assert segment_of(s, freq=1, tenure=30) == 8
    assert segment_of(s, freq=2, rec=10, tbp=30, ltv=VALUE) == 9  # needs 3 purchases
    assert segment_of(s, freq=3, rec=10, tbp=30, ltv=VALUE) == 7  # below q70 = 69.3
    assert segment_of(s, freq=3, rec=10, tbp=30, ltv=80.0) == 5
    assert segment_of(s, freq=3, rec=10, tbp=30, ltv=80.0, p_alive=0.4) == 5  # 0.4 >= 0.3
    assert segment_of(s, freq=3, rec=10, tbp=30, ltv=80.0, p_alive=0.2) == 6
    assert segment_of(s, freq=3, rec=80, tbp=30, ltv=80.0) == 5  # 80 <= 3 x 30
    assert segment_of(s, freq=3, rec=91, tbp=30, ltv=80.0) == 6
    assert segment_of(s, freq=5, rec=10, tbp=30, ltv=VIP) == 5  # loyal needs 6
    assert segment_of(s, freq=6, rec=10, tbp=30, ltv=VIP) == 3  # VIP needs q95 = 94.05
    assert segment_of(s, freq=6, rec=10, tbp=30, ltv=98.0) == 2
    assert segment_of(s, freq=6, rec=10, tbp=30, ltv=99.5) == 1  # q99.9 of 1..99 + 99.5


@pytest.mark.parametrize("invalid", [
    dict(top_quantile=1.0), dict(at_risk_p_alive=1.5), dict(loyal_min_purchases=1),
    dict(inactive_days=0),
])
def test_segment_settings_reject_nonsense(invalid):
    with pytest.raises(ValueError):
        SegmentSettings(**invalid)


# -- labels -------------------------------------------------------------------------------
SPEC_ES = {
    1: "Outlier Superior", 2: "VIP Leal", 3: "Leal Notable", 4: "Leal en Riesgo",
    5: "Repetidor de Valor", 6: "Repetidor de Valor en Riesgo", 7: "Repetidor de Bajo Valor",
    8: "Cliente Reciente", 9: "Masa de Bajo Valor", 10: "Hibernador", 11: "Inactivo",
}
SPEC_EN = {
    1: "Top Outlier", 2: "Loyal VIP", 3: "Notable Loyal", 4: "Loyal at Risk",
    5: "Value Repeater", 6: "Value Repeater at Risk", 7: "Low-Value Repeater",
    8: "Recent Customer", 9: "Low-Value Mass", 10: "Hibernator", 11: "Inactive",
}


@pytest.mark.parametrize("locale", ["es", "en", "fr"])
def test_labels_complete_and_distinct(locale):
    segments = SEGMENT_LABELS[locale]
    assert set(segments) == set(range(1, 12))
    assert all(isinstance(v, str) and v.strip() == v and v for v in segments.values())
    assert len(set(segments.values())) == 11
    scores = SCORE_LABELS[locale]
    assert set(scores) == set(range(1, 6))
    assert all(isinstance(v, str) and v.strip() == v and v for v in scores.values())
    assert len(set(scores.values())) == 5


def test_labels_match_spec():
    assert SEGMENT_LABELS["es"] == SPEC_ES
    assert SEGMENT_LABELS["en"] == SPEC_EN
    order = [5, 4, 3, 2, 1]
    es = ["Muy alto", "Alto", "Medio", "Bajo", "Muy bajo"]
    en = ["Very high", "High", "Medium", "Low", "Very low"]
    assert [SCORE_LABELS["es"][i] for i in order] == es
    assert [SCORE_LABELS["en"][i] for i in order] == en
    assert set(SEGMENT_LABELS) == set(SCORE_LABELS) == {"es", "en", "fr"}


# -- CLV score quintiles ---------------------------------------------------------------------
def test_scores_are_quintiles_on_continuous_ltv():
    ltv = np.random.default_rng(1).gamma(0.7, 80.0, size=100_000)
    scores = assign_scores(ltv)
    shares = np.bincount(scores, minlength=6)[1:] / ltv.size
    np.testing.assert_allclose(shares, 0.2, atol=0.002)
    # "5" is the top 20 %: every "5" beats every "4", and so on.
    for low, high in zip(range(1, 5), range(2, 6), strict=False):
        assert ltv[scores == low].max() <= ltv[scores == high].min()
    assert scores[np.argmax(ltv)] == 5
    assert scores[np.argmin(ltv)] == 1


def test_scores_small_exact():
    assert assign_scores([1, 2, 3, 4, 5]).tolist() == [1, 2, 3, 4, 5]
    assert assign_scores(np.arange(10.0, 0.0, -1.0)).tolist() == [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]


def test_scores_ties_share_a_score():
    ltv = np.array([0.0] * 50 + [10.0] * 30 + list(range(20, 40)))
    scores = assign_scores(ltv)
    for value in np.unique(ltv):
        assert len(set(scores[ltv == value])) == 1
    assert scores[ltv == 0.0][0] == 1
    assert set(assign_scores(np.full(7, 3.0))) == {1}
    # Order of the rows does not matter.
    order = np.random.default_rng(2).permutation(ltv.size)
    np.testing.assert_array_equal(assign_scores(ltv[order]), scores[order])


def test_scores_empty_and_single():
    assert assign_scores([]).tolist() == []
    assert assign_scores([42.0]).tolist() == [1]


# -- control group -------------------------------------------------------------------------
def reference_buckets(customer_ids, salt: str) -> np.ndarray:
    return np.array([
        int(hashlib.md5(f"{salt}:{cid}".encode()).hexdigest()[:8], 16) / 16**8
        for cid in customer_ids
    ])


@pytest.fixture(scope="module")
def many_ids() -> pd.Series:
    return pd.Series([f"cust-{i:06d}" for i in range(100_000)])


def test_buckets_equal_python_md5_reference():
    ids = pd.Series(["a", "B", "123", "x,y", 'q"q', "ñandú", "", "cust-000001"])
    for salt in ("acme", "", "sälz:1"):
        np.testing.assert_allclose(control_buckets(ids, salt), reference_buckets(ids, salt),
                                   rtol=0, atol=1e-12)


def test_buckets_reference_on_many_ids(many_ids):
    buckets = control_buckets(many_ids, "acme")
    np.testing.assert_allclose(buckets, reference_buckets(many_ids, "acme"), rtol=0, atol=1e-12)
    assert ((buckets >= 0) & (buckets < 1)).all()


def test_buckets_of_integer_ids_hash_their_text():
    ids = pd.Series([7, 12345])
    np.testing.assert_allclose(control_buckets(ids, "s"), reference_buckets(["7", "12345"], "s"))


@pytest.mark.parametrize("share", [0.10, 0.0, 0.5])
def test_control_share(many_ids, share):
    groups = assign_control_group(many_ids, "acme", share)
    assert set(groups) <= {"CONTROL", "TARGET"}
    control = (groups == "CONTROL").mean()
    assert abs(control - share) < 0.01
    if share == 0.0:
        assert control == 0.0


def test_control_group_stable_across_calls_and_independent_of_others(many_ids):
    first = assign_control_group(many_ids, "acme", 0.1)
    again = assign_control_group(many_ids, "acme", 0.1)
    np.testing.assert_array_equal(first, again)
    # A subset, shuffled, gets the same groups as in the full call.
    pick = np.random.default_rng(3).choice(many_ids.size, size=500, replace=False)
    subset = assign_control_group(many_ids.iloc[pick].reset_index(drop=True), "acme", 0.1)
    np.testing.assert_array_equal(subset, first[pick])
    # One customer alone too.
    assert assign_control_group(many_ids.iloc[[pick[0]]], "acme", 0.1)[0] == first[pick[0]]


def test_changing_salt_reshuffles(many_ids):
    a = assign_control_group(many_ids, "acme", 0.1) == "CONTROL"
    b = assign_control_group(many_ids, "acme-2025", 0.1) == "CONTROL"
    assert abs(b.mean() - 0.1) < 0.01
    # Independent draws: about 10 % of the old control group stays in control.
    overlap = (a & b).sum() / a.sum()
    assert 0.07 < overlap < 0.13


def test_control_group_growing_share_only_adds_customers(many_ids):
    small = assign_control_group(many_ids, "acme", 0.05) == "CONTROL"
    large = assign_control_group(many_ids, "acme", 0.10) == "CONTROL"
    assert (large | ~small).all()


def test_control_group_empty():
    assert assign_control_group(pd.Series([], dtype="string"), "acme", 0.1).tolist() == []


# -- evolution -------------------------------------------------------------------------------
def test_evolution_up_down_equal_new():
    current = np.array([1, 5, 7, 3, 11])
    previous = np.array([3, 5, 2, np.nan, 11])
    assert evolution(current, previous).tolist() == ["up", "equal", "down", "new", "equal"]


def test_evolution_all_new_and_empty():
    assert evolution([9, 1], [np.nan, np.nan]).tolist() == ["new", "new"]
    assert evolution([], []).tolist() == []


def test_evolution_accepts_pandas_with_mapped_previous():
    current = pd.Series([2, 9, 4], index=["a", "b", "c"])
    previous = pd.Series(["a", "b", "c"]).map({"a": 4, "c": 1}).to_numpy(dtype=float)
    assert evolution(current, previous).tolist() == ["up", "new", "down"]
