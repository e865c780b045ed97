"""The bench's table of issue 6's targets, from the runs' figures."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench", ROOT / "benchmarks" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench", None)


def _runs(bench, model, buyers, **walls_and_rss):
    return [bench.Result(model, pipeline, buyers, 1, wall=wall, rss_gib=rss)
            for pipeline, (wall, rss) in walls_and_rss.items()]


def _rows(text: str) -> dict[tuple[str, str, str], tuple[str, str]]:
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines()[2:]]
    return {(row[1], row[2], row[0]): (row[3], row[4]) for row in rows}


def test_each_target_is_measured_against_the_runs_it_names(bench):
    results = (
        _runs(bench, "bg_nbd", 5_000_000, **{bench.PROJECT: (8.0, 1.9), bench.PYMC: (90.0, 5.0),
                                              bench.LIFETIMES: (170.0, 4.0), bench.FLOOR: (3.0, 1.0)})
        + _runs(bench, "bg_nbd", 1_000_000, **{bench.PROJECT: (5.0, 0.9), bench.PYMC: (20.0, 1.5),
                                                bench.LIFETIMES: (30.0, 1.0)})
        + _runs(bench, "pareto_nbd", 5_000_000, **{bench.PROJECT: (30.0, 2.0), bench.PYMC: (600.0, 9.0)})
    )
    rows = _rows(bench.targets_text(results))
    # 90 / 8 = 11.2x the faster reference (pymc-marketing), 8 / 3 = 2.7x the floor, 1.9 / 4.0 of lifetimes'.
    assert rows[("BG/NBD", "5,000,000", "≥ 10x faster than the faster reference")] == (
        "11.2x (pymc-marketing 90.0 s against 8.0 s)", "yes")
    assert rows[("BG/NBD", "5,000,000", "≤ 3x the floor's time")][1] == "yes"
    assert rows[("BG/NBD", "5,000,000", "peak RSS ≤ 0.5 x the leaner reference's")] == (
        "0.47 x (1.90 GiB against lifetimes 4.00)", "yes")
    assert rows[("Pareto/NBD", "5,000,000", "≥ 10x faster than pymc-marketing")][1] == "yes"
    # 20 / 5 = 4x: short of 5x.
    assert rows[("BG/NBD", "1,000,000", "≥ 5x faster than the faster reference")] == (
        "4.0x (pymc-marketing 20.0 s against 5.0 s)", "no")
    assert rows[("BG/NBD", "10,000,000", "completes")] == ("this project did not run at this size", "not measured")


def test_a_failed_or_missing_run_is_not_counted(bench):
    results = _runs(bench, "bg_nbd", 5_000_000, **{bench.PROJECT: (20.0, 2.5), bench.LIFETIMES: (170.0, 4.0)})
    results.append(bench.Result("bg_nbd", bench.PYMC, 5_000_000, 1, status="failed", reason="killed"))
    results.append(bench.Result("bg_nbd", bench.PROJECT, 10_000_000, 1, status="failed", reason="out of memory"))
    rows = _rows(bench.targets_text(results))
    # Only lifetimes ran: it is the faster and the leaner reference; no floor ran.
    assert rows[("BG/NBD", "5,000,000", "≥ 10x faster than the faster reference")] == (
        "8.5x (lifetimes 170.0 s against 20.0 s)", "no")
    assert rows[("BG/NBD", "5,000,000", "peak RSS ≤ 0.5 x the leaner reference's")][1] == "no"
    assert rows[("BG/NBD", "5,000,000", "≤ 3x the floor's time")] == ("the floor did not run", "not measured")
    assert rows[("BG/NBD", "10,000,000", "completes")][1] == "not measured"
