"""Issue 14's must-show: attack the published tables and recover nothing.

The attacker here is written from the published numbers alone (it never calls the suppression
code): for every suppressed entry it solves min and max by linear programming (integrality
relaxed; for a two-way table's constraints, which are totally unimodular, the bounds are integral
anyway) subject to every published equality: cells add to their row and column totals, totals to
the grand total, linked tables share totals, a year-to-date table is the sum of its quarters, and
earlier quarters' published figures. No suppressed cell may come out narrower than the rule's
protection; it prints its counts.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import pytest
from scipy.optimize import linprog

from broker.figures.rules import DFE, NHS_DIGITAL, PARTNERSHIP, DisclosureRule, RuleBook, Why
from broker.figures.suppress import Cumulative, Prior, SharedMargin, UnderProtected, primary_only, protect
from broker.figures.table import CountTable, PublishedTable

Key = tuple[str, int, int]
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
DISTRICTS = (
    "Amber Valley", "Bolsover", "Chesterfield", "Derby", "Derbyshire Dales",
    "Erewash", "High Peak", "North East Derbyshire", "South Derbyshire", "Derby City Centre",
)  # fmt: skip
OFFENCES = ("Homicide", "GBH", "ABH", "Knife possession", "Robbery", "Weapon threat", "Sexual assault", "Other")
AGES = ("0-10", "11-14", "15-17", "18-21", "22-25", "26+")


@dataclass
class Tally:
    tables: int = 0
    cells: int = 0
    recoveries: int = 0
    under: int = 0


def published_constraints(
    tables: list[PublishedTable], links: list[tuple[str, ...]]
) -> tuple[list[list[tuple[Key, float]]], dict[Key, int]]:
    """Every equality an outsider can write down from the published tables and their stated links."""
    known: dict[Key, int] = {}
    cons: list[list[tuple[Key, float]]] = []
    by = {t.name: t for t in tables}
    for t in tables:
        n, m = t.n_rows, t.n_cols
        for r in range(n + 1):
            for c in range(m + 1):
                v = t.values[r][c]
                if v is not None:
                    known[(t.name, r, c)] = v
        cons.extend([*(((t.name, r, c), 1.0) for c in range(m)), ((t.name, r, m), -1.0)] for r in range(n + 1))
        cons.extend([*(((t.name, r, c), 1.0) for r in range(n)), ((t.name, n, c), -1.0)] for c in range(m + 1))
    for link in links:
        if link[0] == "sum":
            total, *parts = link[1:]
            t = by[total]
            for r in range(t.n_rows + 1):
                for c in range(t.n_cols + 1):
                    cons.append([((total, r, c), 1.0), *(((p, r, c), -1.0) for p in parts)])
        else:
            _, a, axis_a, b, axis_b = link
            ea, eb = axis(by[a], axis_a), axis(by[b], axis_b)
            cons.extend([((a, *x), 1.0), ((b, *y), -1.0)] for x, y in zip(ea, eb, strict=True))
    return cons, known


def axis(t: PublishedTable, which: str) -> list[tuple[int, int]]:
    if which == "rows":
        return [(i, t.n_cols) for i in range(t.n_rows + 1)]
    return [(t.n_rows, j) for j in range(t.n_cols + 1)]


def attack(tables: list[PublishedTable], links: list[tuple[str, ...]] = ()) -> dict[Key, tuple[float, float]]:  # type: ignore[assignment]
    cons, known = published_constraints(tables, list(links))
    unknown = sorted(
        {k for con in cons for k, _ in con if k not in known}
        | {(t.name, r, c) for t in tables for r, c in t.suppressed}
    )
    index = {k: i for i, k in enumerate(unknown)}
    a = np.zeros((len(cons), len(unknown)))
    b = np.zeros(len(cons))
    for i, con in enumerate(cons):
        for k, coef in con:
            if k in known:
                b[i] -= coef * known[k]
            else:
                a[i, index[k]] += coef
    out: dict[Key, tuple[float, float]] = {}
    for t in tables:
        for r, c in t.suppressed:
            key = (t.name, r, c)
            obj = np.zeros(len(unknown))
            obj[index[key]] = 1.0
            lo = linprog(obj, A_eq=a, b_eq=b, bounds=(0, None), method="highs")
            hi = linprog(-obj, A_eq=a, b_eq=b, bounds=(0, None), method="highs")
            assert lo.status == 0, lo.message
            out[key] = (float(lo.fun), math.inf if hi.status == 3 else float(-hi.fun))
    return out


def requirement(rule: DisclosureRule, value: int, largest: int | None) -> tuple[int, int, int] | None:
    """The rule's protection for a primary entry (upper, lower, width), recomputed here from the rule."""
    why = rule.primary(value, largest)
    if why is None:
        return None
    p = rule.protection(value, why)
    return p.upper, p.lower, p.width


def audit(truth: list[CountTable], published: list[PublishedTable], rules: dict[str, DisclosureRule],
          tally: Tally, links: list[tuple[str, ...]] = ()) -> None:  # type: ignore[assignment]  # fmt: skip
    intervals = attack(published, list(links))
    tally.tables += len(published)
    by = {t.name: t for t in truth}
    for (name, r, c), (lo, hi) in intervals.items():
        t = by[name]
        v = t.extended()[r][c]
        tally.cells += 1
        if hi - lo < 1e-6:
            tally.recoveries += 1
        cell = r < t.n_rows and c < t.n_cols
        largest = t.largest[r][c] if cell and t.largest is not None else None
        need = requirement(rules[name], v, largest)
        if need is None:
            continue
        upper, lower, width = need
        if hi < v + upper - 1e-6 or lo > v - lower + 1e-6 or hi - lo < width - 1e-6:
            tally.under += 1


def poisson(rng: random.Random, mean: float) -> int:
    # Knuth's method: small means, as the tables are (11 of 26 cells 2 or fewer)
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def random_counts(rng: random.Random, n: int, m: int) -> tuple[tuple[int, ...], ...]:
    means = [rng.choice((0.3, 1.0, 2.0, 4.0, 9.0, 25.0)) for _ in range(n)]
    return tuple(tuple(poisson(rng, means[i] * rng.choice((0.2, 1.0, 1.0, 3.0))) for _ in range(m)) for i in range(n))


def generated(rng: random.Random, k: int) -> CountTable:
    shape = k % 3
    if shape == 0:
        counts = random_counts(rng, 10, 8)
        largest = tuple(tuple(rng.randint(0, v) if v else 0 for v in row) for row in counts)
        return CountTable(f"q{k}", "district", "offence group", DISTRICTS, OFFENCES, counts, largest=largest)
    if shape == 1:
        return CountTable(f"q{k}", "day", "hour", DAYS, tuple(f"{h:02d}" for h in range(24)), random_counts(rng, 7, 24))
    return CountTable(f"q{k}", "age band", "sex", AGES, ("Female", "Male"), random_counts(rng, 6, 2),
                      sources=(rng.choice(("police", "dfe", "health")),))  # fmt: skip


BOOK = RuleBook()


def rules_of(*tables: CountTable) -> dict[str, DisclosureRule]:
    return {t.name: BOOK.for_sources(t.sources) for t in tables}


def test_two_hundred_generated_quarters_give_nothing_away() -> None:
    rng = random.Random(20240614)
    tally = Tally()
    small = total = 0
    for k in range(200):
        t = generated(rng, k)
        small += sum(1 for row in t.counts for v in row if 0 < v <= 2)
        total += t.n_rows * t.n_cols
        release = protect([t])
        assert release.report.protected
        audit([t], list(release.tables), rules_of(t), tally)
    print(f"\ngenerated: tables attacked {tally.tables}, cells attacked {tally.cells}, "
          f"recoveries {tally.recoveries}, under-protected {tally.under} ({small}/{total} cells were 1-2)")  # fmt: skip
    assert tally.tables == 200
    assert tally.cells > 1000
    assert tally.recoveries == 0
    assert tally.under == 0


def test_primary_only_suppression_is_broken_by_the_same_attacker() -> None:
    rng = random.Random(7)
    tally = Tally()
    for k in range(30):
        t = generated(rng, k)
        audit([t], list(primary_only([t])), rules_of(t), tally)
    print(f"\nprimary only: tables {tally.tables}, cells {tally.cells}, recoveries {tally.recoveries}, "
          f"under-protected {tally.under}")  # fmt: skip
    assert tally.recoveries > 0
    assert tally.under > 0


def awkward_cases() -> list[tuple[str, list[CountTable], list[Prior], list[object], list[tuple[str, ...]]]]:
    cases: list[tuple[str, list[CountTable], list[Prior], list[object], list[tuple[str, ...]]]] = []
    three = ("A", "B", "C")
    one_nonzero = CountTable("one-nonzero", "district", "offence", three, three, ((0, 2, 0), (5, 9, 7), (6, 8, 10)))
    cases.append(("one non-zero cell in a row", [one_nonzero], [], [], []))
    total_is_cell = CountTable(
        "total-is-cell", "district", "offence", three, three, ((3, 0, 0), (12, 9, 6), (8, 7, 11))
    )
    cases.append(("a total equal to one cell", [total_is_cell], [], [], []))
    all_small = CountTable("all-small", "district", "offence", ("A", "B"), ("X", "Y"), ((1, 0), (1, 1)))
    cases.append(("all-small table", [all_small], [], [], []))
    one_col = CountTable("one-col", "district", "count", three, ("All",), ((2,), (15,), (20,)))
    cases.append(("a one-column table", [one_col], [], [], []))
    one_way = CountTable.one_way_table("one-way", "offence", OFFENCES[:4], (1, 30, 12, 9))
    cases.append(("a one-way table", [one_way], [], [], []))
    single = CountTable("single", "district", "offence", ("A",), ("X",), ((3,),))
    cases.append(("a one-cell table", [single], [], [], []))
    # two quarters: Q1 published earlier; now Q2 and the year to date (Q1 + Q2)
    q1 = CountTable("Q1", "district", "offence", three, three, ((1, 6, 9), (7, 8, 12), (10, 5, 9)))
    q2 = CountTable("Q2", "district", "offence", three, three, ((6, 7, 8), (9, 1, 11), (12, 6, 5)))
    ytd = CountTable(
        "YTD", "district", "offence", three, three,
        tuple(tuple(a + b for a, b in zip(r1, r2, strict=True)) for r1, r2 in zip(q1.counts, q2.counts, strict=True)),
    )  # fmt: skip
    q1_release = protect([q1])
    prior = [Prior(q1, q1_release.table("Q1"))]
    cases.append(("quarters differencing: Q1 earlier, Q2 and YTD now", [q2, ytd], prior,
                  [Cumulative("YTD", ("Q1", "Q2"))], [("sum", "YTD", "Q1", "Q2")]))  # fmt: skip
    # the same counts by district x offence and by district x age: shared district totals
    da = CountTable("by-offence", "district", "offence", three, ("GBH", "ABH"), ((2, 10), (8, 9), (11, 14)))
    db = CountTable("by-age", "district", "age", three, ("11-17", "18-25"), ((6, 6), (1, 16), (13, 12)))
    cases.append(("linked tables sharing totals", [da, db], [], [SharedMargin("by-offence", "rows", "by-age", "rows")],
                  [("margin", "by-offence", "rows", "by-age", "rows")]))  # fmt: skip
    # last quarter linked by a shared grand total only (the same incidents counted two ways)
    last = CountTable.one_way_table("last-by-sex", "sex", ("Female", "Male"), (2, 40))
    last_release = protect([last])
    now = CountTable.one_way_table("now-by-age", "age", ("11-17", "18-25"), (3, 39))
    earlier = [Prior(last, last_release.table("last-by-sex"))]
    cases.append(("linked to last quarter's table by a shared total", [now], earlier,
                  [SharedMargin("last-by-sex", "rows", "now-by-age", "rows")],
                  [("margin", "last-by-sex", "rows", "now-by-age", "rows")]))  # fmt: skip
    return cases


@pytest.mark.parametrize("case", awkward_cases(), ids=lambda c: c[0])
def test_awkward_quarters_give_nothing_away(
    case: tuple[str, list[CountTable], list[Prior], list[object], list[tuple[str, ...]]],
) -> None:
    _, tables, prior, links, attacker_links = case
    release = protect(tables, links=links, prior=prior)  # type: ignore[arg-type]
    published = [*release.tables, *(p.published for p in prior)]
    truth = [*tables, *(p.table for p in prior)]
    tally = Tally()
    audit(truth, published, rules_of(*truth), tally, attacker_links)
    print(f"\n{case[0]}: tables {tally.tables}, cells {tally.cells}, recoveries {tally.recoveries}, "
          f"under-protected {tally.under}")  # fmt: skip
    assert tally.cells > 0
    assert tally.recoveries == 0
    assert tally.under == 0


def test_differencing_breaks_a_release_that_ignores_the_earlier_quarter() -> None:
    """The YTD - Q1 attack is real: protecting Q2 and YTD without Q1 in view leaks Q1's suppressed cell."""
    _, tables, prior, _, attacker_links = next(c for c in awkward_cases() if c[0].startswith("quarters"))
    blind = protect(tables)  # no links, no earlier release: each table protected on its own
    tally = Tally()
    truth = [*tables, *(p.table for p in prior)]
    audit(truth, [*blind.tables, *(p.published for p in prior)], rules_of(*truth), tally, attacker_links)
    assert tally.recoveries + tally.under > 0


def test_the_report_names_every_suppressed_cell_and_why() -> None:
    t = CountTable("q", "district", "offence", ("A", "B", "C"), ("X", "Y", "Z"), ((0, 2, 0), (5, 9, 7), (6, 8, 10)))
    release = protect([t])
    report = release.report.to_json()
    published = release.table("q")
    assert len(report["cells"]) == len(published.suppressed)  # type: ignore[arg-type]
    first = report["cells"][0]  # type: ignore[index]
    assert first["why"] == str(Why.THRESHOLD)
    assert first["kind"] == "primary"
    assert any(c["kind"] == "secondary" and c["complementary_to"] for c in report["cells"])  # type: ignore[attr-defined]
    assert report["protected"] is True
    assert "[c]" in published.to_csv()
    assert published.to_json()["footnotes"]


def test_an_impossible_release_is_refused_not_published() -> None:
    # an earlier release that suppressed one cell and nothing else already gives it away: nothing
    # the current release does can repair that, so protect() raises rather than report "protected"
    q1 = CountTable("Q1", "d", "o", ("A", "B"), ("X", "Y"), ((1, 5), (5, 5)))
    q1_pub = PublishedTable("Q1", "d", "o", ("A", "B"), ("X", "Y"), ((None, 5, 6), (5, 5, 10), (6, 10, 16)))
    q2 = CountTable("Q2", "d", "o", ("A", "B"), ("X", "Y"), ((9, 9), (9, 9)))
    with pytest.raises(UnderProtected):
        protect([q2], prior=[Prior(q1, q1_pub)])


def test_thresholds_per_source() -> None:
    assert DFE.primary(2, None) is Why.THRESHOLD
    assert DFE.primary(3, None) is None
    assert NHS_DIGITAL.primary(7, None) is Why.THRESHOLD
    assert NHS_DIGITAL.primary(8, None) is None
    assert PARTNERSHIP.primary(4, None) is Why.THRESHOLD
    assert PARTNERSHIP.primary(5, None) is None
    assert BOOK.for_sources(("police", "health")).threshold == 7
    with pytest.raises(ValueError, match="no disclosure rule"):
        BOOK.for_sources(("unknown",))


def test_zeros_are_shown_unless_the_rule_says_otherwise() -> None:
    assert PARTNERSHIP.primary(0, None) is None
    strict = DisclosureRule("strict", threshold=4, protection_width=4, suppress_zeros=True)
    assert strict.primary(0, None) is Why.ZERO


def test_dominance() -> None:
    assert PARTNERSHIP.primary(20, 18) is Why.DOMINANCE  # one premises: 90% > 85%
    assert PARTNERSHIP.primary(20, 17) is None  # 85% is not more than 85%
    assert PARTNERSHIP.primary(20, None) is None  # contributors unknown: no dominance check
    t = CountTable("q", "d", "o", ("A", "B"), ("X", "Y"), ((20, 30), (25, 40)), largest=((19, 3), (4, 5)))
    release = protect([t])
    assert release.table("q").values[0][0] is None
    assert release.report.cells[0].why is Why.DOMINANCE


def test_rounding_after_suppression() -> None:
    five = DisclosureRule("five", threshold=2, protection_width=2, rounding_base=5)
    assert [five.round(v) for v in (0, 2, 3, 7, 8, 12, 13)] == [0, 0, 5, 5, 10, 10, 15]
    counts = ((1, 13, 22), (7, 8, 31), (12, 14, 9))
    t = CountTable("q", "d", "o", ("A", "B", "C"), ("X", "Y", "Z"), counts, sources=("r",))
    release = protect([t], RuleBook({"r": five}))
    values = release.table("q").values
    assert values[0][0] is None  # suppressed first ...
    shown = [(v, t.extended()[r][c]) for r, row in enumerate(values) for c, v in enumerate(row) if v is not None]
    assert shown
    assert all(v == five.round(true) and v % 5 == 0 for v, true in shown)  # ... then what is shown is rounded
    assert any("rounded" in note for note in release.table("q").footnotes())
