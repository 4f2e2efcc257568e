"""The quarterly figures for a year of the whole area, with suppression, beside a plain group-by.

Run: .venv/bin/pip install -e '.[dev,bench]' && .venv/bin/python bench/bench_figures.py
     [--scale 1 100] [--repeats 3] [--fresh] [--quick] [--police 10000] [--ae 3000] [--seed 2026]

What is measured: ``broker.figures.board.build_board`` (count tables, then ``suppress.protect``:
primary suppression, secondary suppression checked by the linear-programming attack, final
audit) for each of the four quarters of 2026, as the broker releases them (one run a quarter, each
from the consumer records held: every run reads the whole year's records, as
``sv-broker report quarterly`` does). Wall time per year and per quarter, the time inside
``protect``, LP solves and suppressed cells (``board.release.report``), and memory: the peak of
the allocations the call makes (tracemalloc, the records themselves excluded) and the peak RSS
growth during the call (Linux ``/proc/self/clear_refs`` + ``VmHWM``, after ``gc`` and
``malloc_trim``; elsewhere the ``ru_maxrss`` growth, a lower bound).

Baseline, in the same run on the same records: a plain pandas group-by (and polars, when
installed; it uses all cores, ``POLARS_MAX_THREADS``), per quarter from the records too: a frame of
the records' ``data``, the quarter of each record's event week, the quarter's rows, then one
``groupby(...).size()`` per table (the same tables, dimensions and labels as the board; no
suppression, no links, no attack). The ratio is broker / baseline. A cross-check then compares the
baseline's counts with the broker's own unsuppressed tables (captured where ``build_board`` hands
them to ``protect``) and every published cell with its true count: it prints "counts agree" or
exits 1. Exit 2 when pandas is not installed (``pip install -e '.[dev,bench]'``).

Records, realistically: synthetic events (``adapters.synthetic``, its strategy patterns) dated
over 2026 (ISO weeks 2026-W01..W53; the board puts a week in the quarter of its Thursday, so the
four quarters hold the whole year), decided by the real policy engine (``decide``) under the
sample agreements in ``policies/agreements`` at 2027-01-15 (in force, before review), and turned
into the consumer record bytes the broker stores (``schemas.messages.consumer_record``), read back
with ``json.loads`` as the report command reads its feed. "The whole area" is the records of the
two CSP consumers together: derby-csp-analysts (Derby) and derbyshire-csp-analysts (the eight
county districts) hold every police offence and every A&E assault between them, under the same
rule sets (the VRU's monthly A&E feed has other fields and no police, so it is left out).

Volume (1x), per year. DOMAIN.md and the strategy summary give no annual counts, so these are
estimates, which a deployment should replace (``--police``, ``--ae``):
  police recorded serious violence  10,000: Derbyshire Constabulary's year-end figures put
      violence with injury at 7,040 in 2016/17 (reported July 2017); recording rose after 2018
      (HMICFRS PEEL 2018: "33% more crime"), and robbery, possession of weapons and homicide come
      on top; about 1 in 100 of Derby and Derbyshire's ~1.06 million people a year;
  A&E assault attendances            3,000: Cardiff University's National Violence Surveillance
      Network estimates ~3.0-3.2 violence-related ED attendances a year per 1,000 residents of
      England and Wales (2018, 2019); ~1.06 million people give ~3,300, most of them at the two
      type 01 EDs that send ISTV: Royal Derby ~2,060 and Chesterfield Royal ~940 (the synthetic
      generator's 22:10 mix).
100x (1.3 million records a year) is a stress volume, not a real region: it is more than all the
police recorded serious violence and violence-related A&E attendance of England and Wales
together (roughly 0.7 and 0.18 million a year).

At 1x every event is generated and decided (about 80 us each). At larger scales the default is to
replicate the 1x records: a bootstrap resample (drawn with replacement; each copy read back from
its JSON with its own record id, so its dicts and strings are its own, as in a feed read from the
store: copies sharing the 1x strings took ~40% less time at 100x than fresh records did),
so counts vary as samples do but a combination absent at 1x stays absent; the figures measured
are the board's, not the engine's (bench_policy.py measures that). ``--fresh`` generates and
decides every event at every scale instead (100x: ~2 minutes more; ~5 GB of records either way).
Figures are for information only (tests never run benchmarks).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import platform
import random
import resource
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from unittest import mock

try:
    import pandas as pd
except ImportError:
    print(
        "bench_figures.py needs pandas for its baseline: .venv/bin/pip install -e '.[dev,bench]'",
        file=sys.stderr,
    )
    sys.exit(2)
try:
    import polars as pl

    HAVE_POLARS = True
except ImportError:
    HAVE_POLARS = False

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import broker.figures.board as board_module
from adapters.synthetic import SyntheticGenerator
from broker.figures.board import Board, Quarter, build_board
from broker.figures.rules import RuleBook
from broker.figures.suppress import Link, Prior, Release, protect
from broker.figures.table import CountTable
from broker.policy.engine import decide
from broker.policy.loader import load_policy, read_documents
from broker.policy.model import PolicySet
from broker.registry import load_registry
from broker.settings import REPO_POLICIES
from schemas.envelope import Envelope
from schemas.events import EventModel
from schemas.events.common import DISTRICT_NAMES
from schemas.messages import consumer_record

NOW = datetime(2027, 1, 15, 12, 0, tzinfo=UTC)  # the agreements are in force and not past review
YEAR = 2026
QUARTERS = tuple(Quarter(YEAR, q) for q in (1, 2, 3, 4))
CONSUMERS = ("derby-csp-analysts", "derbyshire-csp-analysts")
WHOLE_AREA = "derby-csp-analysts+derbyshire-csp-analysts"
AE_SITES = {"uhdb-royal-derby-ed": 22, "crh-chesterfield-ed": 10}  # the generator's mix

NOT_KNOWN = "Not known"
T = TypeVar("T")
Cells = dict[tuple[str, str], int]
Tables = dict[str, Cells]


@dataclass(frozen=True, slots=True)
class _Subject:
    """What ``decide`` reads of a message: its envelope and its validated event."""

    envelope: Envelope
    event: EventModel


# ---------------------------------------------------------------------------------------------
# the records


def load() -> PolicySet:
    registry = load_registry(REPO_POLICIES, REPO_POLICIES / "keys")
    documents, _ = read_documents(REPO_POLICIES)
    secrets = {str(d.doc["id"]): os.urandom(32) for d in documents}  # generated for this run only
    return load_policy(REPO_POLICIES, registry, secrets)


def events(seed: int, police: int, ae: int) -> Iterator[tuple[str, EventModel]]:
    gen = SyntheticGenerator(seed=seed, start=datetime(YEAR, 1, 1, tzinfo=UTC), days=365)
    for _ in range(police):
        r = gen.police_sv_offence("derbyshire-police")
        yield r.partner, r.event
    sites = list(AE_SITES)
    shares = [ae * AE_SITES[site] // sum(AE_SITES.values()) for site in sites]
    shares[0] += ae - sum(shares)
    for site, share in zip(sites, shares, strict=True):
        for _ in range(share):
            r = gen.ae_assault(site)
            yield r.partner, r.event


def minimised(policy: PolicySet, seed: int, police: int, ae: int) -> tuple[list[dict[str, Any]], int]:
    """The two CSP consumers' records, as their feeds hold them, and the number of events decided."""
    out: list[dict[str, Any]] = []
    shared: dict[str, Any] = {}
    n = 0
    for n, (partner, event) in enumerate(events(seed, police, ae), start=1):
        envelope = Envelope(
            id=f"bench-{seed}-{n:09d}",
            source=partner,
            type=event.EVENT_TYPE,
            version=event.VERSION,
            time=NOW,
            keyid="bench",
            signature="",
            data={},  # decide reads the validated event, never the envelope's data
            signed_bytes=b"",
        )
        for r in decide(_Subject(envelope, event), policy, NOW).releases:
            if r.consumer not in CONSUMERS:
                continue
            body = consumer_record(
                record_id=r.record_id,
                consumer=r.consumer,
                event_type=envelope.type,
                source=envelope.source,
                produced_at=envelope.time,
                agreement_id=r.agreement_id,
                agreement_revision=r.agreement_revision,
                flow_id=r.flow_id,
                purpose=r.purpose,
                lawful_basis=r.lawful_basis,
                retention_days=r.retention_days,
                data=r.record,
            )
            record: dict[str, Any] = json.loads(body)
            # one agreement block per flow (equal values), so 100x --fresh fits in memory
            record["agreement"] = shared.setdefault(r.flow_id, record["agreement"])
            out.append(record)
    return out, n


def replicate(records: Sequence[dict[str, Any]], scale: int, seed: int) -> list[dict[str, Any]]:
    """``scale`` times as many records: a bootstrap resample of ``records``, each copy read back from
    its JSON (so its own dicts and strings, laid out in memory as a feed read from the store)."""
    rng = random.Random(seed * 1000 + scale)
    bodies = [json.dumps(rec) for rec in records]
    out: list[dict[str, Any]] = []
    for i, n in enumerate(rng.choices(range(len(records)), k=len(records) * scale)):
        copy: dict[str, Any] = json.loads(bodies[n])
        copy["record_id"] = f"{copy['record_id']}-{i:x}"
        copy["agreement"] = records[n]["agreement"]  # shared, as minimised() shares it
        out.append(copy)
    return out


# ---------------------------------------------------------------------------------------------
# the broker's figures


@dataclass
class Watch:
    """Time spent in ``protect`` and the true tables it was given, while patched in."""

    seconds: float = 0.0
    tables: list[CountTable] = field(default_factory=list)
    keep: bool = False


@contextlib.contextmanager
def watching(watch: Watch) -> Iterator[Watch]:
    """``build_board`` calls ``protect`` once; time it (and, with ``keep``, capture its input)."""

    def timed(
        tables: Sequence[CountTable],
        rules: RuleBook | None = None,
        *,
        links: Sequence[Link] = (),
        prior: Sequence[Prior] = (),
    ) -> Release:
        if watch.keep:
            watch.tables.extend(tables)
        start = time.perf_counter()
        try:
            return protect(tables, rules, links=links, prior=prior)
        finally:
            watch.seconds += time.perf_counter() - start

    with mock.patch.object(board_module, "protect", timed):
        yield watch


def broker_quarter(records: Sequence[Mapping[str, Any]], quarter: Quarter) -> Board:
    return build_board(records, quarter, consumer=WHOLE_AREA)


# ---------------------------------------------------------------------------------------------
# the baselines: the same tables by a plain group-by, no suppression

# (event type) -> its event-week field and each table's columns (one: one-way, two: two-way);
# the board's dimensions (broker/figures/board.py SPECS) for the CSPs' records, written out again
POLICE = {
    "period": "offence_week",
    "what": ("offence_group",),
    "knife": ("knife",),
    "where": ("where",),
    "when": ("offence_day_of_week", "offence_day_part"),
    "who.victims": ("victim_age_band", "victim_sex"),
    "who.suspects": ("suspect_age_band", "suspect_sex"),
}
AE = {
    "period": "arrival_week",
    "what": ("assault_method",),
    "where": ("where",),
    "when": ("assault_day_of_week", "assault_day_part"),
    "who.patients": ("patient_age_band", "patient_sex"),
}
BASELINE: dict[str, dict[str, Any]] = {"police_sv_offence": POLICE, "ae_assault": AE}
KNIFE = "knife_involved"
LABELS = {code: f"{name} ({code})" for code, name in DISTRICT_NAMES.items()}


def quarter_of_week(week: str) -> str:
    """``2026-W27`` -> ``2026-Q3``: the quarter of the week's Thursday (the baseline's own)."""
    year, w = week.split("-W")
    thursday = date.fromisocalendar(int(year), int(w), 4)
    return f"{thursday.year}-Q{(thursday.month - 1) // 3 + 1}"


def _dims(spec: Mapping[str, Any]) -> list[tuple[str, tuple[str, ...]]]:
    return [(name, cols) for name, cols in spec.items() if name != "period"]


def _trend_keep(present: Sequence[str], quarter: Quarter) -> list[str]:
    return sorted(q for q in present if q <= str(quarter))[-4:]


@dataclass
class Split:
    frame: float = 0.0
    group: float = 0.0


def pandas_quarter(records: Sequence[Mapping[str, Any]], quarter: Quarter, split: Split) -> dict[str, Any]:
    """Series of counts per table: a frame of the records, the quarter's rows, ``groupby().size()``."""
    out: dict[str, Any] = {}
    for event_type, spec in BASELINE.items():
        start = time.perf_counter()
        df = pd.DataFrame([r["data"] for r in records if r.get("event_type") == event_type and "data" in r])
        period = spec["period"]
        df["quarter"] = df[period].map({w: quarter_of_week(w) for w in df[period].unique()})
        if KNIFE in df:
            df["knife"] = df[KNIFE].eq(True).map({True: "Yes", False: "No"})
        df["where"] = df["district"].fillna(NOT_KNOWN).replace(LABELS)
        for _, cols in _dims(spec):
            for c in cols:
                if c not in ("knife", "where"):
                    df[c] = df[c].fillna(NOT_KNOWN)
        split.frame += time.perf_counter() - start
        start = time.perf_counter()
        here = df[df["quarter"] == str(quarter)]
        if len(here):
            for name, cols in _dims(spec):
                out[f"{event_type}.{name}"] = here.groupby(list(cols)).size()
            trend = df.groupby("quarter").size()
            out[f"{event_type}.trend"] = trend[_trend_keep(list(trend.index), quarter)]
        split.group += time.perf_counter() - start
    return out


def pandas_cells(result: Mapping[str, Any]) -> Tables:
    tables: Tables = {}
    for name, series in result.items():
        cells: Cells = {}
        for key, value in series.items():
            row, col = key if isinstance(key, tuple) else ("All", key)
            cells[(str(row), str(col))] = int(value)
        tables[name] = cells
    return tables


def polars_quarter(records: Sequence[Mapping[str, Any]], quarter: Quarter, split: Split) -> dict[str, Any]:
    """The same in polars: a frame of the records, the quarter's rows, ``group_by().len()``."""
    out: dict[str, Any] = {}
    for event_type, spec in BASELINE.items():
        start = time.perf_counter()
        df = pl.from_dicts([r["data"] for r in records if r.get("event_type") == event_type and "data" in r])
        period = spec["period"]
        weeks = {w: quarter_of_week(w) for w in df[period].unique().to_list()}
        extra = [
            pl.col(period).replace_strict(weeks, return_dtype=pl.String).alias("quarter"),
            pl.col("district").fill_null(NOT_KNOWN).replace(LABELS).alias("where"),
        ]
        if KNIFE in df.columns:
            extra.append(pl.when(pl.col(KNIFE).eq(True)).then(pl.lit("Yes")).otherwise(pl.lit("No")).alias("knife"))
        plain = {c for _, cols in _dims(spec) for c in cols} - {"knife", "where"}
        extra.extend(pl.col(c).fill_null(NOT_KNOWN) for c in sorted(plain))
        df = df.with_columns(extra)
        split.frame += time.perf_counter() - start
        start = time.perf_counter()
        here = df.filter(pl.col("quarter") == str(quarter))
        if here.height:
            for name, cols in _dims(spec):
                out[f"{event_type}.{name}"] = here.group_by(list(cols)).len()
            trend = df.group_by("quarter").len()
            keep = _trend_keep(trend["quarter"].to_list(), quarter)
            out[f"{event_type}.trend"] = trend.filter(pl.col("quarter").is_in(keep))
        split.group += time.perf_counter() - start
    return out


def polars_cells(result: Mapping[str, Any]) -> Tables:
    tables: Tables = {}
    for name, frame in result.items():
        cells: Cells = {}
        for row in frame.iter_rows():
            *keys, count = row
            r, c = (keys[0], keys[1]) if len(keys) == 2 else ("All", keys[0])
            cells[(str(r), str(c))] = int(count)
        tables[name] = cells
    return tables


# ---------------------------------------------------------------------------------------------
# measuring


def _status_kb(name: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    return None


def _settle() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc: hand freed heap back, so RSS starts low


@contextlib.contextmanager
def rss_growth(out: list[float]) -> Iterator[None]:
    """Append the peak RSS growth (bytes) during the block."""
    _settle()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset VmHWM to the current RSS
        before, exact = _status_kb("VmRSS"), True
    except OSError:
        before, exact = None, False
    if before is None:
        exact = False
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        yield
    finally:
        peak = _status_kb("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out.append(max(0, (peak or 0) - before) * 1024.0)


def traced_peak(fn: Callable[[], T]) -> tuple[T, float]:
    """``fn()`` and the peak of what it allocated (bytes), by tracemalloc."""
    _settle()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = fn()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return result, float(peak)


@dataclass
class System:
    name: str
    quarter: Callable[[Sequence[Mapping[str, Any]], Quarter], tuple[Any, float]]
    year_s: list[float] = field(default_factory=list)
    quarter_s: dict[Quarter, list[float]] = field(default_factory=dict)
    extra_s: dict[Quarter, list[float]] = field(default_factory=dict)  # broker: in protect; else: frame
    rss: list[float] = field(default_factory=list)
    traced: float | None = None
    last: dict[Quarter, Any] = field(default_factory=dict)

    def year(self, records: Sequence[Mapping[str, Any]]) -> None:
        total = 0.0
        for q in QUARTERS:
            start = time.perf_counter()
            self.last[q], extra = self.quarter(records, q)
            took = time.perf_counter() - start
            total += took
            self.quarter_s.setdefault(q, []).append(took)
            self.extra_s.setdefault(q, []).append(extra)
        self.year_s.append(total)

    @property
    def median_year(self) -> float:
        return statistics.median(self.year_s)


def broker_system() -> System:
    def run(records: Sequence[Mapping[str, Any]], q: Quarter) -> tuple[Board, float]:
        with watching(Watch()) as watch:
            board = broker_quarter(records, q)
        return board, watch.seconds

    return System("broker", run)


def baseline_system(name: str, fn: Callable[[Sequence[Mapping[str, Any]], Quarter, Split], Any]) -> System:
    def run(records: Sequence[Mapping[str, Any]], q: Quarter) -> tuple[Any, float]:
        split = Split()
        result = fn(records, q, split)
        return result, split.frame

    return System(name, run)


# ---------------------------------------------------------------------------------------------
# the cross-check


def broker_true_cells(tables: Sequence[CountTable]) -> Tables:
    return {
        t.name: {(r, c): t.counts[i][j] for i, r in enumerate(t.rows) for j, c in enumerate(t.cols) if t.counts[i][j]}
        for t in tables
    }


def cross_check(
    records: Sequence[Mapping[str, Any]], baselines: Mapping[str, Mapping[Quarter, Tables]]
) -> tuple[list[str], int]:
    """Problems found (none: the counts agree) and the number of tables compared."""
    problems: list[str] = []
    compared = 0
    for q in QUARTERS:
        watch = Watch(keep=True)
        with watching(watch):
            board = broker_quarter(records, q)
        truth = broker_true_cells(watch.tables)
        for name, tables in baselines.items():
            got = tables[q]
            if set(got) != set(truth):
                problems.append(f"{q} {name}: tables {sorted(set(got) ^ set(truth))} in one only")
            for table, cells in truth.items():
                compared += 1
                if got.get(table) != cells:
                    problems.append(f"{q} {name}: {table} differs")
        for t in watch.tables:  # every published figure is its true count (the partnership rules round nothing)
            published = board.table(t.name)
            for i, row in enumerate(t.extended()):
                for j, v in enumerate(row):
                    shown = published.values[i][j]
                    if shown is not None and shown != v:
                        problems.append(f"{q} {t.name} ({i}, {j}): published {shown}, counted {v}")
    return problems, compared


# ---------------------------------------------------------------------------------------------
# the run


def mb(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 1e6:,.1f} MB"


def ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or not b else f"{a / b:.1f}x"


@dataclass
class ScaleResult:
    scale: int
    records: int
    systems: list[System]
    boards: dict[Quarter, Board]


def run_scale(
    scale: int, records: list[dict[str, Any]], how: str, repeats: int, use_polars: bool
) -> ScaleResult | None:
    police = sum(1 for r in records if r.get("event_type") == "police_sv_offence")
    print(f"\n== {scale}x: {len(records):,} records a year (police {police:,}, A&E {len(records) - police:,}); {how}")
    broker = broker_system()
    systems = [broker, baseline_system("pandas", pandas_quarter)]
    if use_polars:
        systems.append(baseline_system("polars", polars_quarter))
    for n in range(repeats):
        for s in systems:
            if n == 0:
                with rss_growth(s.rss):
                    s.year(records)
            else:
                _settle()
                s.year(records)
    boards: dict[Quarter, Board] = dict(broker.last)

    # memory: one more year each under tracemalloc (slower; its times are not reported)
    for s in systems:
        if s.name != "polars":  # polars allocates in Rust, out of tracemalloc's sight: RSS only
            _, s.traced = traced_peak(partial(s.year, records))
            for q in QUARTERS:  # drop the traced run's times
                s.quarter_s[q].pop()
                s.extra_s[q].pop()
            s.year_s.pop()

    print(
        "  quarter   records   tables   suppressed (primary + secondary)   LP solves   build_board   of which protect"
    )
    for q in QUARTERS:
        b = boards[q]
        cells = b.release.report.cells
        primary = sum(1 for c in cells if c.kind == "primary")
        split = f"{len(cells)} ({primary} + {len(cells) - primary})"
        print(
            f"  {q!s:8} {b.included:>9,} {len(b.release.tables):>8}   {split:<34} {b.release.report.lp_solves:>9}"
            f" {statistics.median(broker.quarter_s[q]):>11.3f} s {statistics.median(broker.extra_s[q]):>14.3f} s"
        )
    print(f"  a year of figures: 4 quarterly runs, each from all the year's records; median of {repeats}")
    print("            per year    per quarter   peak traced alloc   peak RSS growth")
    for s in systems:
        per_q = s.median_year / len(QUARTERS)
        note = ""
        if s.name != "broker":
            frame = statistics.median(sum(s.extra_s[q][i] for q in QUARTERS) for i in range(len(s.year_s)))
            note = f"  (frame building {frame:.3f} s of it)"
        print(f"  {s.name:8} {s.median_year:>9.3f} s {per_q:>11.3f} s {mb(s.traced):>19} {mb(max(s.rss)):>17}{note}")
    for s in systems[1:]:
        print(
            f"  ratio broker/{s.name}: time {ratio(broker.median_year, s.median_year)}, "
            f"traced alloc {ratio(broker.traced, s.traced)}, RSS growth {ratio(max(broker.rss), max(s.rss))}"
        )

    baselines: dict[str, dict[Quarter, Tables]] = {"pandas": {q: pandas_cells(systems[1].last[q]) for q in QUARTERS}}
    if use_polars:
        baselines["polars"] = {q: polars_cells(systems[2].last[q]) for q in QUARTERS}
    problems, compared = cross_check(records, baselines)
    if problems:
        print("  COUNTS DISAGREE:")
        for p in problems[:20]:
            print(f"    {p}")
        return None
    print(
        f"  counts agree: {' and '.join(baselines)} = the broker's unsuppressed tables "
        f"({compared // len(baselines)} tables over 4 quarters), and every published figure is its count"
    )
    return ScaleResult(scale, len(records), systems, boards)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--scale", type=int, nargs="+", help="volumes, in multiples of a real year (default: 1 100; --quick: 1 10)"
    )
    parser.add_argument("--repeats", type=int, help="timed years per system; the median (default: 3; --quick: 1)")
    parser.add_argument("--quick", action="store_true", help="a smaller run: scales 1 and 10, one repeat")
    parser.add_argument("--fresh", action="store_true", help="generate and decide every event at every scale")
    parser.add_argument("--no-polars", action="store_true", help="pandas baseline only")
    parser.add_argument("--police", type=int, default=10_000, help="police offences a year at 1x (%(default)s)")
    parser.add_argument("--ae", type=int, default=3_000, help="A&E assault attendances a year at 1x (%(default)s)")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    scales: list[int] = args.scale or ([1, 10] if args.quick else [1, 100])
    repeats: int = args.repeats or (1 if args.quick else 3)
    use_polars = HAVE_POLARS and not args.no_polars

    versions = f"pandas {pd.__version__}"
    if use_polars:
        versions += f", polars {pl.__version__} ({pl.thread_pool_size()} threads)"
    elif not HAVE_POLARS:
        versions += "; polars not installed: pandas baseline only"
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; {versions}")
    print(
        f"{YEAR}, quarters by event date; the records of {' + '.join(CONSUMERS)} (the whole area); "
        f"1x = {args.police:,} police + {args.ae:,} A&E events a year; seed {args.seed}"
    )

    policy = load()
    start = time.perf_counter()
    base, decided = minimised(policy, args.seed, args.police, args.ae)
    base_s = time.perf_counter() - start
    results: list[ScaleResult] = []
    for scale in scales:
        if scale == 1:
            records, how = base, f"{decided:,} events generated and decided in {base_s:.1f} s"
        elif args.fresh:
            start = time.perf_counter()
            records, decided_n = minimised(policy, args.seed + scale, args.police * scale, args.ae * scale)
            how = f"{decided_n:,} events generated and decided in {time.perf_counter() - start:.1f} s"
        else:
            start = time.perf_counter()
            records = replicate(base, scale, args.seed)
            how = f"the 1x records resampled {scale}x in {time.perf_counter() - start:.1f} s (--fresh to decide them)"
        result = run_scale(scale, records, how, repeats, use_polars)
        if result is None:
            return 1
        results.append(result)
        del records

    print("\nsummary (a year = 4 quarterly boards; time median; memory: peak traced alloc / peak RSS growth)")
    for r in results:
        broker = r.systems[0]
        cells = sum(len(b.release.report.cells) for b in r.boards.values())
        solves = sum(b.release.report.lp_solves for b in r.boards.values())
        line = (
            f"  {r.scale:>4}x {r.records:>10,} records: broker {broker.median_year:.2f} s, "
            f"{mb(broker.traced)} / {mb(max(broker.rss))}, {cells} cells suppressed, {solves} LP solves"
        )
        for s in r.systems[1:]:
            line += f"; {s.name} {s.median_year:.2f} s ({ratio(broker.median_year, s.median_year)})"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
