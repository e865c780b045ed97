"""Time this project's whole pipeline against pymc-marketing, lifetimes and a DuckDB floor.

Every pipeline runs as its own process on the same simulated transactions file, one after
the other, and is timed from the outside: wall seconds from start to exit (measured by this
driver; interpreter start and imports included), CPU seconds (user + system) and peak
resident memory from the kernel's accounting of the finished process, read by
``/usr/bin/time -f %M`` (apt package ``time``; a small ``os.wait4`` wrapper where it is
missing). Peak RSS is ``ru_maxrss``: the largest single process of the pipeline's tree.

Pipelines
---------
this project    ``clv --json run --transactions FILE --account bench --as-of D --out DIR
                --model M --force``: read and validate the file, features, holdout
                backtest (one extra fit), fit, quality gate, scores, segments and the
                25-column Datamodel CSV.
pymc-marketing  ``benchmarks/reference_pymc_marketing.py``: pandas + ``rfm_summary`` +
                ``BetaGeoModel`` / ``ParetoNBDModel`` and ``GammaGammaModel`` MAP fits +
                P-Alive, expected purchases and CLV for every buyer, to Parquet.
lifetimes       ``benchmarks/reference_lifetimes.py`` (BG/NBD only: lifetimes'
                ``ParetoNBDFitter`` is far too slow): ``summary_data_from_transaction_data``
                + ``BetaGeoFitter`` and ``GammaGammaFitter`` maximum-likelihood fits + the
                same predictions. Skipped, with the reason, when lifetimes is not installed
                (``pip install -r requirements-bench.txt``).
floor           ``benchmarks/floor.py``: one DuckDB scan and group-by of the file to a CSV
                of per-buyer count, first/last date and sum. Nothing can beat it.

Runs
----
BG/NBD at every ``--sizes`` (buyers): the four pipelines. Pareto/NBD at every
``--pareto-sizes``: this project, pymc-marketing and the floor (pymc-marketing's Pareto/NBD
fit, on every buyer, is the slowest step of all: ~95 s of the reference's ~115 s at 1
million buyers on a 2-core machine, growing with the buyers; hence its own, smaller
default). Sizes above ``--reference-max-buyers``, and ``--ten-million``, run
this project and the floor only.

Data: the project's simulator (``clv_jobs.sample_data``, the BG/NBD or Pareto/NBD process
with Gamma-Gamma spend, no bad rows), every first purchase within 700 days before the
as-of date (inside the default 24-month window), orders on or after the as-of date left
out, generated in chunks of 500,000 buyers (unique customer ids across chunks) and written
once per process, size and seed to ``WORKDIR/data/*.parquet`` (``order_id, customer_id,
order_ts`` timestamp, ``amount``); an existing file is reused. 1 million buyers are about
2.4 million orders (BG/NBD process; 2.6 million for Pareto/NBD), 10 million about 24 million.

Before timing, each pytensor-based pipeline runs once on a tiny file (``--no-warmup`` to
skip), so that no timed run pays pytensor's one-off C compilation (its cache in
``~/.pytensor``). Before each comparison the file is read once so every pipeline finds it in
the page cache.

Agreement (checked for each reference that ran; ``--tolerance``, default 2 %)
----------------------------------------------------------------------------
* parameters: each fitted parameter of the reference (lifetimes' ``r, alpha, a, b`` and
  ``p, q, v`` map one to one) within the tolerance of this project's, relative;
* CLV: a seeded random sample of ``--sample`` buyers (default 1,000); the relative
  difference per buyer must be within the tolerance for every one (the worst and the share
  within are reported). lifetimes' own ``customer_lifetime_value`` counts a month as 30
  days (360-day horizon) where pymc-marketing and the project use 30.4375 (365.25 days):
  the check uses lifetimes' expected spend over 365.25 days and reports its own 360-day
  CLV beside it;
* also reported, not checked: the model inputs (frequency, recency, T, monetary value)
  identical for every buyer, P-Alive and expected purchases on the sample.
lifetimes fits maximum likelihood, the others MAP with pymc-marketing's default priors:
their difference shrinks with the number of buyers (tens of % on Gamma-Gamma's p and v at a
few thousand buyers, a few % at 100,000; ``--lifetimes-tolerance`` sets lifetimes' own).

Output: progress lines as each pipeline starts and finishes, then the table (pipeline,
buyers, orders, wall and CPU seconds, peak RSS, each reference's time and memory relative to
this project, this project relative to the floor, the load average at each start), the
agreement, and issue 6's targets (each at the size it names, :data:`TARGETS`: met, not met,
or not measured when the run does not include that size), also appended as a dated section
(machine, versions, git commit) to ``--results`` (default ``benchmarks/results.md``).

Exit status: 0 everything ran and agreed; 1 an agreement check failed; 2 a pipeline failed
(its log's last lines are printed; logs are in ``WORKDIR/runs/``).

Examples::

    make bench                                   # --sizes 1000000,5000000 --pareto-sizes 5000000
    make bench BENCH_ARGS="--sizes 100000 --pareto-sizes 100000"
    .venv/bin/python benchmarks/bench.py --sizes 1000000 --pareto-sizes 0 --ten-million
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "benchmarks"

DEFAULT_SIZES = "1000000,5000000"
DEFAULT_PARETO_SIZES = "5000000"
TEN_MILLION = 10_000_000
DEFAULT_REFERENCE_MAX = 5_000_000
DEFAULT_AS_OF = dt.date(2025, 6, 1)
HISTORY_DAYS = 700
CHUNK_BUYERS = 500_000
WARMUP_BUYERS = 2_000

PROJECT = "this project"
PYMC = "pymc-marketing"
LIFETIMES = "lifetimes"
FLOOR = "floor"
REFERENCES = (PYMC, LIFETIMES)
PIPELINE_LABELS = {
    PROJECT: "this project (clv run)",
    PYMC: "pymc-marketing",
    LIFETIMES: "lifetimes",
    FLOOR: "floor (DuckDB scan + group-by)",
}
MODEL_LABELS = {"bg_nbd": "BG/NBD", "pareto_nbd": "Pareto/NBD"}

PARQUET_SCHEMA = pa.schema([
    ("order_id", pa.string()),
    ("customer_id", pa.string()),
    ("order_ts", pa.timestamp("us")),
    ("amount", pa.float64()),
])

LIBRARIES = ("pymc-marketing", "pymc", "pytensor", "lifetimes", "duckdb", "pandas", "numpy", "scipy", "pyarrow")


def log(message: str) -> None:
    """Print one progress line, time-stamped, at once."""
    print(f"[{dt.datetime.now():%H:%M:%S}] {message}", flush=True)


# --- data ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One transactions file and what it holds."""

    path: Path
    process: str
    buyers: int
    orders: int


def _parse_sizes(text: str) -> list[int]:
    """``"1000000,5e6"`` -> ``[1000000, 5000000]``; empty, ``0`` or ``none``: no size."""
    sizes = []
    for part in text.replace("_", "").split(","):
        part = part.strip().lower()
        if part in ("", "0", "none"):
            continue
        value = float(part)
        if value < 1 or value != int(value):
            raise argparse.ArgumentTypeError(f"{part!r} is not a number of buyers")
        sizes.append(int(value))
    return sorted(set(sizes))


def _chunk_transactions(process: str, buyers: int, chunk: int, seed: int, as_of: dt.date) -> pa.Table:
    """One chunk of simulated buyers: clean orders before the as-of date, unique ids."""
    from clv_jobs.sample_data import SampleAccount, simulate_account

    account = SampleAccount(f"bench-{process}-{chunk}", n_buyers=buyers, history_days=HISTORY_DAYS, seed=seed,
                            bad_rows=False, process=process)
    tx = simulate_account(account, as_of).transactions
    tx = tx.loc[tx["order_ts"] < as_of.isoformat(), ["order_id", "customer_id", "order_ts", "amount"]]
    # Customer ids c<9 digits> restart in every chunk: the chunk number makes them unique.
    tx["customer_id"] = f"c{chunk:03d}" + tx["customer_id"].str.slice(1)
    tx["order_ts"] = pd.to_datetime(tx["order_ts"], format="%Y-%m-%d %H:%M:%S")
    return pa.Table.from_pandas(tx, schema=PARQUET_SCHEMA, preserve_index=False)


def dataset(workdir: Path, process: str, buyers: int, seed: int, as_of: dt.date) -> Dataset:
    """The transactions file of a process and size, generated once (reused if present).

    Parameters
    ----------
    workdir : pathlib.Path
        The bench's work folder; files go to ``workdir/data``.
    process : {"bg_nbd", "pareto_nbd"}
        The simulated purchase process.
    buyers : int
        Number of buyers.
    seed : int
        Simulation seed.
    as_of : datetime.date
        Every order is before this date.

    Returns
    -------
    Dataset
        The file and its counts.
    """
    stem = f"transactions_{process}_{buyers}_seed{seed}_{as_of:%Y%m%d}"
    path = workdir / "data" / f"{stem}.parquet"
    info_path = path.with_suffix(".json")
    if path.exists() and info_path.exists():
        info = json.loads(info_path.read_text())
        log(f"data: reusing {path.name} ({info['buyers']:,} buyers, {info['orders']:,} orders)")
        return Dataset(path, process, info["buyers"], info["orders"])
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    chunks = -(-buyers // CHUNK_BUYERS)
    log(f"data: generating {buyers:,} buyers ({process} process) in {chunks} chunk(s) -> {path.name}")
    partial = path.with_suffix(".parquet.partial")
    orders = 0
    last_order = None
    with pq.ParquetWriter(partial, PARQUET_SCHEMA) as writer:
        for chunk in range(chunks):
            size = min(CHUNK_BUYERS, buyers - chunk * CHUNK_BUYERS)
            table = _chunk_transactions(process, size, chunk, seed, as_of)
            writer.write_table(table, row_group_size=1_000_000)
            orders += table.num_rows
            chunk_last = pc.max(table["order_ts"]).as_py()
            last_order = chunk_last if last_order is None else max(last_order, chunk_last)
            if chunks > 1:
                log(f"data:   chunk {chunk + 1}/{chunks}: {size:,} buyers, {table.num_rows:,} orders")
            del table
    partial.replace(path)
    info = {"process": process, "buyers": buyers, "orders": orders, "seed": seed, "as_of": as_of.isoformat(),
            "history_days": HISTORY_DAYS, "last_order": str(last_order), "bytes": path.stat().st_size,
            "seconds": round(time.perf_counter() - started, 1)}
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    log(f"data: {buyers:,} buyers, {orders:,} orders (last {last_order}) written in {info['seconds']:.0f} s, "
        f"{info['bytes'] / 2**20:.0f} MiB")
    return Dataset(path, process, buyers, orders)


def _warm_page_cache(path: Path) -> None:
    """Read the file once so that every pipeline finds it in the page cache."""
    with open(path, "rb") as handle:
        while handle.read(1 << 24):
            pass


# --- running a pipeline ----------------------------------------------------------------


@dataclasses.dataclass
class Result:
    """One pipeline run (or why it did not run)."""

    model: str
    pipeline: str
    buyers: int
    orders: int
    status: str = "ok"  # ok, failed, skipped
    reason: str = ""
    wall: float = float("nan")
    cpu: float = float("nan")
    rss_gib: float = float("nan")
    load: float = float("nan")
    outdir: Path | None = None
    log_path: Path | None = None


#: GNU time: runs the pipeline as its own child and reports that child's rusage.
TIME = Path("/usr/bin/time")

#: Where GNU time is missing: a small Python process does the same with ``os.wait4``.
_WRAPPER = """\
import os, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
child.returncode = code = os.waitstatus_to_exitcode(status)
with open(sys.argv[1], "w") as out:
    out.write(f"{usage.ru_maxrss} {usage.ru_utime} {usage.ru_stime}\\n")
sys.exit(code if code >= 0 else 128 - code)
"""


def measure(argv: list[str], log_path: Path) -> tuple[int, float, float, float]:
    """Run a command as a child process; its output goes to ``log_path``.

    The command runs under ``/usr/bin/time`` (or a small Python stand-in), not straight
    from this process: Linux carries the high-water RSS of the process that forks into the
    child's ``ru_maxrss``, so a child forked from this driver (which holds the previous
    comparison's scores) would report at least the driver's memory.

    Returns
    -------
    tuple
        Exit code, wall seconds (measured here), CPU seconds (user + system) and peak RSS
        in GiB of the command (the largest process of its tree, ``ru_maxrss``).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    usage_path = log_path.with_suffix(".rusage")
    usage_path.unlink(missing_ok=True)
    if TIME.exists():
        wrapped = [str(TIME), "-f", "%M %U %S", "-o", str(usage_path), *argv]
    else:
        wrapped = [sys.executable, "-c", _WRAPPER, str(usage_path), *argv]
    with open(log_path, "wb") as output:
        started = time.perf_counter()
        # A wide COLUMNS keeps the project's (rich) log lines unwrapped, so its stage lines can be read back.
        code = subprocess.run(wrapped, stdout=output, stderr=subprocess.STDOUT, cwd=ROOT,
                              env={**os.environ, "COLUMNS": "250"}).returncode
        wall = time.perf_counter() - started
    try:
        # GNU time writes "Command exited with non-zero status N" first when the command fails.
        maxrss_kib, user, system = usage_path.read_text().strip().splitlines()[-1].split()
        return code, wall, float(user) + float(system), int(maxrss_kib) / 2**20
    except (OSError, IndexError, ValueError):
        return code, wall, float("nan"), float("nan")


def _clv_command() -> list[str]:
    clv = Path(sys.executable).parent / "clv"
    if clv.exists():
        return [str(clv)]
    return [sys.executable, "-m", "clv_jobs.cli"]


def command(pipeline: str, data: Dataset, model: str, as_of: dt.date, outdir: Path) -> list[str]:
    """The command line of one pipeline on one file."""
    day = as_of.isoformat()
    if pipeline == PROJECT:
        return [*_clv_command(), "--json", "run", "--transactions", str(data.path), "--account", "bench",
                "--as-of", day, "--out", str(outdir), "--model", model, "--force"]
    if pipeline == PYMC:
        return [sys.executable, str(BENCH_DIR / "reference_pymc_marketing.py"), str(data.path), day, str(outdir),
                "--model", model]
    if pipeline == LIFETIMES:
        return [sys.executable, str(BENCH_DIR / "reference_lifetimes.py"), str(data.path), day, str(outdir)]
    if pipeline == FLOOR:
        return [sys.executable, str(BENCH_DIR / "floor.py"), str(data.path), day, str(outdir / "buyers.csv")]
    raise ValueError(pipeline)


def lifetimes_unavailable() -> str | None:
    """Why the lifetimes reference cannot run here (``None``: it can)."""
    probe = subprocess.run([sys.executable, "-c", "import lifetimes"], capture_output=True, text=True)
    if probe.returncode == 0:
        return None
    lines = (probe.stderr or probe.stdout).strip().splitlines()
    last = lines[-1] if lines else f"exit code {probe.returncode}"
    if "No module named 'lifetimes'" in last:
        return "lifetimes is not installed: pip install -r requirements-bench.txt"
    return f"lifetimes does not import ({last}); pip install -r requirements-bench.txt"


def run_pipeline(pipeline: str, data: Dataset, model: str, as_of: dt.date, rundir: Path) -> Result:
    """Run and time one pipeline; print its start and finish."""
    outdir = rundir / pipeline.replace(" ", "_")
    if outdir.exists():
        shutil.rmtree(outdir)  # a fresh run every time: the project would otherwise find its run stored
    log_path = rundir / f"{pipeline.replace(' ', '_')}.log"
    result = Result(model, pipeline, data.buyers, data.orders, outdir=outdir, log_path=log_path)
    result.load = os.getloadavg()[0]
    log(f"{MODEL_LABELS[model]} {data.buyers:,} buyers: {pipeline} started (load {result.load:.2f})")
    code, result.wall, result.cpu, result.rss_gib = measure(command(pipeline, data, model, as_of, outdir), log_path)
    if code != 0:
        result.status, result.reason = "failed", f"exit code {code}, log {log_path}"
        tail = log_path.read_text(errors="replace").strip().splitlines()[-20:]
        log(f"{MODEL_LABELS[model]} {data.buyers:,} buyers: {pipeline} FAILED (exit code {code}); last lines of "
            f"{log_path}:\n    " + "\n    ".join(tail))
    else:
        log(f"{MODEL_LABELS[model]} {data.buyers:,} buyers: {pipeline} finished in {result.wall:.1f} s "
            f"(CPU {result.cpu:.1f} s, peak RSS {result.rss_gib:.2f} GiB)")
    return result


def warm_up(workdir: Path, models: list[str], pipelines: set[str], seed: int, as_of: dt.date) -> None:
    """Run each pytensor-based pipeline once on a tiny file, untimed (fills pytensor's cache)."""
    for model in models:
        data = dataset(workdir, model, WARMUP_BUYERS, seed, as_of)
        for pipeline in (PROJECT, PYMC):
            if pipeline not in pipelines:
                continue
            rundir = workdir / "runs" / "warmup" / model
            outdir = rundir / pipeline.replace(" ", "_")
            shutil.rmtree(outdir, ignore_errors=True)
            log(f"warm-up: {pipeline}, {MODEL_LABELS[model]}, {WARMUP_BUYERS:,} buyers (untimed)")
            log_path = rundir / f"{pipeline.replace(' ', '_')}.log"
            code, *_ = measure(command(pipeline, data, model, as_of, outdir), log_path)
            if code != 0:
                log(f"warm-up: {pipeline} failed (exit code {code}), see {log_path}")


# --- agreement -------------------------------------------------------------------------


def _one(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if not found:
        raise FileNotFoundError(f"no {pattern} under {folder}")
    return found[-1]


def project_outputs(outdir: Path) -> tuple[dict, pd.DataFrame, dict]:
    """Fitted parameters, scores and stage seconds of this project's run, from its store."""
    model = json.loads(_one(outdir, "store/**/model.json").read_text())
    scores = pd.read_parquet(_one(outdir, "store/**/scores.parquet"),
                             columns=["customer_id", "frequency", "recency", "T", "monetary_value",
                                      "p_alive", "expected_purchases", "clv"])
    return model["parameters"], scores, model.get("stage_seconds", {})


def _stage_note(model: str, buyers: int, pipeline: str, seconds: dict[str, float]) -> str:
    """One line of the results' "Stages" list: ``BG/NBD 1,000,000: <pipeline> stages a 1.0 s, …``."""
    return (f"{MODEL_LABELS[model]} {buyers:,}: {pipeline} stages "
            + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))


def project_log_stages(log_path: Path) -> dict[str, float]:
    """The project's stage seconds from its log lines ``bench: <stage> done in <s> s``."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return {}
    return {name.strip(): float(seconds) for name, seconds in
            re.findall(r"bench: ([^\n]+?) done in ([0-9.]+) s", text)}


def reference_outputs(outdir: Path) -> tuple[dict, pd.DataFrame, dict]:
    """A reference's parameters, predictions and stage seconds."""
    info = json.loads((outdir / "parameters.json").read_text())
    return info["parameters"], pd.read_parquet(outdir / "predictions.parquet"), info.get("stage_seconds", {})


def _relative(reference: np.ndarray, project: np.ndarray) -> np.ndarray:
    """|reference - project| / |project| (0 where both are 0)."""
    reference = np.asarray(reference, dtype=float)
    project = np.asarray(project, dtype=float)
    diff = np.abs(reference - project)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(diff == 0, 0.0, diff / np.abs(project))


@dataclasses.dataclass
class Agreement:
    """One reference against this project at one size."""

    model: str
    buyers: int
    reference: str
    parameters: dict[str, tuple[float, float, float]]  # name -> (project, reference, relative diff)
    inputs_identical: float  # share of the project's buyers with identical model inputs
    buyers_missing: int
    clv_worst: float
    clv_within: float
    sample: int
    p_alive_worst: float
    purchases_worst: float
    tolerance: float
    extra: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def parameters_ok(self) -> bool:
        """Every parameter within the tolerance."""
        return all(diff <= self.tolerance for _, _, diff in self.parameters.values())

    @property
    def clv_ok(self) -> bool:
        """Every sampled buyer's CLV within the tolerance."""
        return self.clv_worst <= self.tolerance

    @property
    def passed(self) -> bool:
        """Parameters and CLV agree."""
        return self.parameters_ok and self.clv_ok and self.buyers_missing == 0


def compare(model: str, buyers: int, reference: str, project: tuple, other: tuple, sample_size: int, seed: int,
            tolerance: float) -> Agreement:
    """Check a reference's parameters and CLV against this project's."""
    project_params, scores, _ = project
    ref_params, predictions, _ = other
    parameters = {}
    for group in (model, "gamma_gamma"):
        for name, value in project_params[group].items():
            ref_value = ref_params[group][name]
            parameters[name] = (value, ref_value, float(_relative([ref_value], [value])[0]))

    both = scores.merge(predictions, on="customer_id", how="left", suffixes=("", "_ref"), indicator=True)
    missing = int((both["_merge"] != "both").sum())
    keys = ["frequency", "recency", "T", "monetary_value"]
    same = np.ones(len(both), dtype=bool)
    for key in keys:
        same &= np.isclose(both[key].to_numpy(float), both[f"{key}_ref"].to_numpy(float), rtol=1e-9, atol=1e-9)
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(both), size=min(sample_size, len(both)), replace=False)
    picked = both.iloc[np.sort(rows)]
    clv = _relative(picked["clv_ref"], picked["clv"])
    extra = {}
    if "clv_lifetimes" in picked:
        own = _relative(picked["clv_lifetimes"], picked["clv"])
        extra = {"clv_360d_worst": float(np.nanmax(own)), "clv_360d_within": float(np.mean(own <= tolerance))}
    return Agreement(
        model, buyers, reference, parameters,
        inputs_identical=float(same.mean()), buyers_missing=missing,
        clv_worst=float(np.nanmax(clv)) if np.isfinite(clv).all() else float("inf"),
        clv_within=float(np.mean(clv <= tolerance)), sample=len(picked),
        p_alive_worst=float(np.nanmax(_relative(picked["p_alive_ref"], picked["p_alive"]))),
        purchases_worst=float(np.nanmax(_relative(picked["expected_purchases_ref"], picked["expected_purchases"]))),
        tolerance=tolerance, extra=extra,
    )


# --- report ----------------------------------------------------------------------------


def _ratio(value: float, base: float, slower: str = "slower", faster: str = "faster") -> str:
    if not (np.isfinite(value) and np.isfinite(base)) or value <= 0 or base <= 0:
        return "—"
    ratio, word = (value / base, slower) if value >= base else (base / value, faster)
    return f"{ratio:.2f}x {word}" if ratio < 1.1 else f"{ratio:.1f}x {word}"


def table(results: list[Result]) -> str:
    """The Markdown table of every run, with the ratios."""
    header = ("| model | pipeline | buyers | orders | wall s | CPU s | peak RSS GiB | time vs this project "
              "| RSS vs this project | load at start |")
    lines = [header, "|---|---|--:|--:|--:|--:|--:|---|---|--:|"]
    for result in results:
        project = next((r for r in results if r.model == result.model and r.buyers == result.buyers
                        and r.pipeline == PROJECT and r.status == "ok"), None)
        time_ratio = rss_ratio = "—"
        if result.status == "ok" and project is not None and result.pipeline != PROJECT:
            if result.pipeline == FLOOR:
                time_ratio = f"this project = {project.wall / result.wall:.1f}x the floor"
                rss_ratio = f"this project = {project.rss_gib / result.rss_gib:.1f}x the floor"
            else:
                time_ratio = f"{result.pipeline} {_ratio(result.wall, project.wall)}"
                rss_ratio = _ratio(result.rss_gib, project.rss_gib, "more", "less")
        if result.status == "ok":
            figures = f"{result.wall:.1f} | {result.cpu:.1f} | {result.rss_gib:.2f}"
            load = f"{result.load:.2f}"
        else:
            figures = f"{result.status}: {result.reason} | | "
            load = "" if result.status == "skipped" else f"{result.load:.2f}"
        lines.append(f"| {MODEL_LABELS[result.model]} | {PIPELINE_LABELS[result.pipeline]} | {result.buyers:,} "
                     f"| {result.orders:,} | {figures} | {time_ratio} | {rss_ratio} | {load} |")
    return "\n".join(lines)


#: Issue 6's speed and memory targets, each at the size it names: (model, buyers, kind, bound).
#: ``faster``: the faster reference's wall seconds over this project's, at least ``bound``;
#: ``pymc``: pymc-marketing's alone; ``floor``: this project's over the floor's, at most
#: ``bound``; ``memory``: this project's peak RSS over the leaner reference's, at most
#: ``bound``; ``completes``: this project ran.
TARGETS = (
    ("bg_nbd", 5_000_000, "faster", 10.0),
    ("bg_nbd", 5_000_000, "floor", 3.0),
    ("bg_nbd", 5_000_000, "memory", 0.5),
    ("pareto_nbd", 5_000_000, "pymc", 10.0),
    ("bg_nbd", 1_000_000, "faster", 5.0),
    ("bg_nbd", TEN_MILLION, "completes", None),
)

_TARGET_ASKED = {
    "faster": "≥ {bound:g}x faster than the faster reference",
    "pymc": "≥ {bound:g}x faster than pymc-marketing",
    "floor": "≤ {bound:g}x the floor's time",
    "memory": "peak RSS ≤ {bound:g} x the leaner reference's",
    "completes": "completes",
}


def _target(results: list[Result], model: str, buyers: int, kind: str, bound: float | None) -> tuple[str, str]:
    """What one target's runs measured, and whether it is met (``yes``, ``no`` or why it cannot say)."""
    def ok_run(pipeline: str) -> Result | None:
        return next((r for r in results if (r.model, r.buyers, r.pipeline) == (model, buyers, pipeline)
                     and r.status == "ok"), None)

    project = ok_run(PROJECT)
    if project is None:
        return "this project did not run at this size", "not measured"
    if kind == "completes":
        return f"{project.wall:.1f} s, {project.rss_gib:.2f} GiB", "yes"
    if kind == "floor":
        floor = ok_run(FLOOR)
        if floor is None:
            return "the floor did not run", "not measured"
        ratio = project.wall / floor.wall
        return f"{ratio:.1f}x ({project.wall:.1f} s against {floor.wall:.1f} s)", "yes" if ratio <= bound else "no"
    references = [r for r in (ok_run(PYMC), ok_run(LIFETIMES) if kind != "pymc" else None) if r is not None]
    if not references:
        return "no reference ran", "not measured"
    if kind == "memory":
        leaner = min(references, key=lambda r: r.rss_gib)
        ratio = project.rss_gib / leaner.rss_gib
        return (f"{ratio:.2f} x ({project.rss_gib:.2f} GiB against {leaner.pipeline} {leaner.rss_gib:.2f})",
                "yes" if ratio <= bound else "no")
    faster = min(references, key=lambda r: r.wall)
    ratio = faster.wall / project.wall
    return (f"{ratio:.1f}x ({faster.pipeline} {faster.wall:.1f} s against {project.wall:.1f} s)",
            "yes" if ratio >= bound else "no")


def targets_text(results: list[Result]) -> str:
    """The Markdown table of issue 6's targets: what each asks, what this run measured, whether it is met."""
    lines = ["| target | model | buyers | measured | met |", "|---|---|--:|---|---|"]
    for model, buyers, kind, bound in TARGETS:
        measured, met = _target(results, model, buyers, kind, bound)
        lines.append(f"| {_TARGET_ASKED[kind].format(bound=bound or 0)} | {MODEL_LABELS[model]} | {buyers:,} "
                     f"| {measured} | {met} |")
    return "\n".join(lines)


def _pct(value: float) -> str:
    return f"{100 * value:.3g} %" if np.isfinite(value) else "inf"


LIFETIMES_NOTE = (
    "lifetimes fits maximum likelihood; this project and pymc-marketing fit MAP under pymc-marketing's default "
    "priors (BG/NBD: r ~ Weibull(2, 1), alpha ~ Weibull(2, 10), ...; Gamma-Gamma: p, q ~ Weibull(2, 1), "
    "v ~ Weibull(2, 10)). The priors' pull shrinks about as 1 / buyers; Gamma-Gamma's p and v, which trade off "
    "along a ridge of the likelihood, move most (tens of % at a few thousand buyers, a few % at 100,000) while the "
    "CLV moves much less."
)


def agreement_text(agreements: list[Agreement]) -> str:
    """The agreement section: one block per comparison."""
    if not agreements:
        return "No reference ran to completion: no agreement was checked."
    lines = []
    for key in sorted({(a.model, a.buyers) for a in agreements}):
        group = [a for a in agreements if (a.model, a.buyers) == key]
        model, buyers = key
        names = list(group[0].parameters)
        lines.append(f"**{MODEL_LABELS[model]}, {buyers:,} buyers**: fitted parameters (relative difference "
                     f"to this project)")
        lines.append("")
        lines.append("| parameter | this project | " + " | ".join(a.reference for a in group) + " |")
        lines.append("|---|--:|" + "--:|" * len(group))
        for name in names:
            cells = [f"{a.parameters[name][1]:.6g} ({_pct(a.parameters[name][2])})" for a in group]
            lines.append(f"| {name} | {group[0].parameters[name][0]:.6g} | " + " | ".join(cells) + " |")
        lines.append("")
        for a in group:
            verdict = "PASS" if a.passed else "FAIL"
            tolerance = _pct(a.tolerance)
            lines.append(
                f"- {a.reference}: **{verdict}** (tolerance {tolerance}) — parameters "
                f"{'within' if a.parameters_ok else 'NOT within'} {tolerance} (worst "
                f"{_pct(max(d for _, _, d in a.parameters.values()))}); CLV of "
                f"{a.sample:,} random buyers: worst {_pct(a.clv_worst)}, {_pct(a.clv_within)} within "
                f"{tolerance}; model inputs identical for {_pct(a.inputs_identical)} of the buyers"
                + (f", {a.buyers_missing:,} buyers missing" if a.buyers_missing else "")
                + f"; P-Alive worst {_pct(a.p_alive_worst)}, expected purchases worst {_pct(a.purchases_worst)}"
                + (f"; lifetimes' own customer_lifetime_value (30-day months, 360 days): worst "
                   f"{_pct(a.extra['clv_360d_worst'])}, {_pct(a.extra['clv_360d_within'])} within (not checked)"
                   if a.extra else "")
            )
        lines.append("")
    if any(a.reference == LIFETIMES for a in agreements):
        lines.append(LIFETIMES_NOTE)
    return "\n".join(lines).rstrip()


def machine() -> str:
    """One paragraph: CPUs, memory, CPU model, Python, library versions, git commit."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    versions = []
    for name in LIBRARIES:
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name} not installed")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = [line[3:] for line in subprocess.run(["git", "status", "--porcelain"], cwd=ROOT,
                                                     capture_output=True, text=True).stdout.splitlines()]
        if dirty:
            shown = ", ".join(dirty[:12]) + (f" and {len(dirty) - 12} more" if len(dirty) > 12 else "")
            commit += f" with uncommitted changes ({shown})"
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return (f"Machine: {os.cpu_count()} CPUs (nproc {_nproc()}), {memory} RAM, {cpu}; "
            f"{platform.system()} {platform.release()}. Python {platform.python_version()}; "
            f"{', '.join(versions)}. Git commit {commit}.")


def _nproc() -> str:
    try:
        return subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def write_results(path: Path, argv: list[str], body: str) -> None:
    """Append a dated section to the results file (created with a title if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    with open(path, "a", encoding="utf-8") as handle:
        if new:
            handle.write("# Benchmark results\n\nAppended by `make bench` (`benchmarks/bench.py`), newest last. "
                         "See `benchmarks/README.md`.\n")
        handle.write(f"\n## {stamp}: `benchmarks/bench.py {' '.join(argv)}`\n\n{body}\n")


# --- main ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring, printed by ``--help``)."""
    parser = argparse.ArgumentParser(prog="bench.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=_parse_sizes, default=_parse_sizes(DEFAULT_SIZES), metavar="N[,N...]",
                        help=f"BG/NBD comparison sizes, in buyers (default {DEFAULT_SIZES}; 0: none).")
    parser.add_argument("--pareto-sizes", type=_parse_sizes, default=_parse_sizes(DEFAULT_PARETO_SIZES),
                        metavar="N[,N...]",
                        help=f"Pareto/NBD comparison sizes (default {DEFAULT_PARETO_SIZES}; 0: no Pareto/NBD run).")
    parser.add_argument("--ten-million", action="store_true",
                        help=f"Also run this project and the floor on {TEN_MILLION:,} buyers (BG/NBD, ~27 million "
                             "orders): time and peak memory, no reference.")
    parser.add_argument("--reference-max-buyers", type=int, default=DEFAULT_REFERENCE_MAX, metavar="N",
                        help=f"Above this many buyers only this project and the floor run (default "
                             f"{DEFAULT_REFERENCE_MAX:,}).")
    parser.add_argument("--skip", action="append", choices=REFERENCES, default=[],
                        help="Do not run this reference (repeatable).")
    parser.add_argument("--workdir", type=Path, default=BENCH_DIR / "out",
                        help="Data files, run outputs and logs (default benchmarks/out, git-ignored).")
    parser.add_argument("--results", type=Path, default=BENCH_DIR / "results.md",
                        help="Markdown file the dated section is appended to (default benchmarks/results.md).")
    parser.add_argument("--no-results", action="store_true", help="Do not write the results file.")
    parser.add_argument("--as-of", type=dt.date.fromisoformat, default=DEFAULT_AS_OF, metavar="YYYY-MM-DD",
                        help=f"As-of date of the simulation and of every run (default {DEFAULT_AS_OF}).")
    parser.add_argument("--seed", type=int, default=1, help="Simulation and sampling seed (default 1).")
    parser.add_argument("--sample", type=int, default=1000, metavar="N",
                        help="Buyers whose CLV is compared (default 1,000).")
    parser.add_argument("--tolerance", type=float, default=0.02,
                        help="Largest relative difference of a parameter or a buyer's CLV (default 0.02).")
    parser.add_argument("--lifetimes-tolerance", type=float, default=None, metavar="TOLERANCE",
                        help="The same, for lifetimes only (default: --tolerance). lifetimes fits maximum "
                             "likelihood, the others MAP under pymc-marketing's default priors: at a few thousand "
                             "buyers their parameters differ by tens of %%, so a smoke run loosens this one.")
    parser.add_argument("--no-warmup", action="store_true",
                        help="Skip the untimed warm-up runs (pytensor's compilation then counts in the first run).")
    return parser.parse_args(argv)


def plan(args: argparse.Namespace) -> list[tuple[str, int, list[str], dict[str, str]]]:
    """Every comparison: model, buyers, pipelines to run, and the skipped ones with the reason."""
    comparisons = []
    lifetimes_reason = lifetimes_unavailable() if LIFETIMES not in args.skip else None
    runs = [("bg_nbd", n) for n in args.sizes] + [("pareto_nbd", n) for n in args.pareto_sizes]
    if args.ten_million and ("bg_nbd", TEN_MILLION) not in runs:
        runs.append(("bg_nbd", TEN_MILLION))
    for model, buyers in runs:
        pipelines = [PROJECT]
        skipped = {}
        for reference in REFERENCES:
            if reference in args.skip:
                skipped[reference] = "--skip"
            elif args.ten_million and buyers == TEN_MILLION:
                skipped[reference] = "--ten-million: this project and the floor only"
            elif buyers > args.reference_max_buyers:
                skipped[reference] = f"above --reference-max-buyers ({args.reference_max_buyers:,})"
            elif reference == LIFETIMES and model == "pareto_nbd":
                skipped[reference] = "lifetimes' ParetoNBDFitter is too slow at these sizes"
            elif reference == LIFETIMES and lifetimes_reason:
                skipped[reference] = lifetimes_reason
            else:
                pipelines.append(reference)
        pipelines.append(FLOOR)
        comparisons.append((model, buyers, pipelines, skipped))
    return comparisons


def _outputs(result, read):
    """``read(result.outdir)``, or None with the result marked failed when the outputs are unreadable."""
    try:
        return read(result.outdir)
    except (OSError, KeyError, ValueError) as exc:
        result.status, result.reason = "failed", f"outputs unreadable: {exc}"
        return None


def main(argv: list[str] | None = None) -> int:
    """Generate the data, run every comparison, print and append the report; the exit status."""
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw_argv)
    args.workdir = args.workdir.resolve()
    comparisons = plan(args)
    if not comparisons:
        log("nothing to run: --sizes and --pareto-sizes are empty")
        return 0
    started = time.perf_counter()
    load_start = os.getloadavg()
    log(f"bench: {len(comparisons)} comparison(s), work dir {args.workdir}")
    for model, buyers, pipelines, skipped in comparisons:
        log(f"plan: {MODEL_LABELS[model]} {buyers:,} buyers: {', '.join(pipelines)}"
            + "".join(f"; {name} skipped ({why})" for name, why in skipped.items()))

    datasets = {(model, buyers): dataset(args.workdir, model, buyers, args.seed, args.as_of)
                for model, buyers, _, _ in comparisons}
    if not args.no_warmup:
        used = {p for _, _, pipelines, _ in comparisons for p in pipelines}
        warm_up(args.workdir, sorted({m for m, _, _, _ in comparisons}), used, args.seed, args.as_of)

    results: list[Result] = []
    agreements: list[Agreement] = []
    stage_notes: list[str] = []
    for model, buyers, _pipelines, skipped in comparisons:
        data = datasets[(model, buyers)]
        rundir = args.workdir / "runs" / f"{model}_{buyers}"
        _warm_page_cache(data.path)
        ran = {}
        for pipeline in (PROJECT, PYMC, LIFETIMES, FLOOR):
            if pipeline in skipped:
                results.append(Result(model, pipeline, data.buyers, data.orders, status="skipped",
                                      reason=skipped[pipeline]))
                continue
            result = run_pipeline(pipeline, data, model, args.as_of, rundir)
            results.append(result)
            ran[pipeline] = result
        project = ran[PROJECT]
        if project.status != "ok":
            continue
        project_out = _outputs(project, project_outputs)
        if project_out is None:
            continue
        seconds = project_log_stages(project.log_path) or project_out[2]
        if seconds:
            stage_notes.append(_stage_note(model, buyers, "this project's", seconds))
        for reference in REFERENCES:
            result = ran.get(reference)
            if result is None or result.status != "ok":
                continue
            other = _outputs(result, reference_outputs)
            if other is None:
                continue
            if other[2]:
                stage_notes.append(_stage_note(model, buyers, reference, other[2]))
            tolerance = args.tolerance
            if reference == LIFETIMES and args.lifetimes_tolerance is not None:
                tolerance = args.lifetimes_tolerance
            agreement = compare(model, buyers, reference, project_out, other, args.sample, args.seed, tolerance)
            agreements.append(agreement)
            log(f"{MODEL_LABELS[model]} {buyers:,} buyers: agreement {reference}: "
                f"{'PASS' if agreement.passed else 'FAIL'} (parameters worst "
                f"{_pct(max(d for _, _, d in agreement.parameters.values()))}, CLV worst {_pct(agreement.clv_worst)})")

    failed = [r for r in results if r.status == "failed"]
    disagree = [a for a in agreements if not a.passed]
    sizes_note = "; ".join(
        f"{MODEL_LABELS[m]} at {n:,} buyers: {', '.join(p)}"
        + "".join(f" ({name} skipped: {why})" for name, why in s.items())
        for m, n, p, s in comparisons)
    load_end = os.getloadavg()
    body = "\n\n".join([
        machine() + f" Load average (1, 5, 15 min) at the start {', '.join(f'{x:.2f}' for x in load_start)}, "
        f"at the end {', '.join(f'{x:.2f}' for x in load_end)}.",
        f"Runs: {sizes_note}.",
        table(results),
        "Each figure is of a whole process, start to exit: wall seconds measured by the driver, CPU seconds "
        f"(user + system) and peak RSS by {'/usr/bin/time' if TIME.exists() else 'an os.wait4 wrapper'} (peak RSS "
        "is the largest single process of the pipeline's tree). The pipelines run one after the other; other "
        "work on the machine shows in the load average at each start.",
        "### Agreement\n\n" + agreement_text(agreements),
        "### Targets (issue 6)\n\n" + targets_text(results) + "\n\nA target is measured only when this run "
        "includes its size; the ratios are of whole processes as in the table above.",
        "### Stages\n\n" + ("\n".join(f"- {note}" for note in stage_notes) or "none recorded"),
        ("**Result: " + ("; ".join(
            ([f"{len(failed)} pipeline(s) FAILED: " + ", ".join(f"{r.pipeline} ({MODEL_LABELS[r.model]} "
                                                              f"{r.buyers:,})" for r in failed)] if failed else [])
            + (["agreement FAILED for " + ", ".join(f"{a.reference} ({MODEL_LABELS[a.model]} {a.buyers:,})"
                                                     for a in disagree)] if disagree else []))
         or (f"every pipeline ran, {len(agreements)} agreement check(s) passed" if agreements
             else "every pipeline ran; no reference ran, so no agreement was checked")) + "**"),
        f"Total bench time {time.perf_counter() - started:.0f} s.",
    ])
    print("\n" + body + "\n", flush=True)
    if not args.no_results:
        write_results(args.results, raw_argv, body)
        log(f"results appended to {args.results}")
    if failed:
        return 2
    if disagree:
        log("AGREEMENT FAILED: " + ", ".join(f"{a.reference} ({MODEL_LABELS[a.model]} {a.buyers:,})"
                                             for a in disagree))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
