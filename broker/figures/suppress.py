"""Primary then secondary suppression, checked against a linear-programming attacker.

The attacker knows every published entry of every table in the release and of the earlier
releases given as ``prior``, the additive structure of each table (cells add to row and column
totals, totals to the grand total) and the links between tables (``Cumulative``: a year-to-date
table is the entry-wise sum of its quarters; ``SharedMargin``: two tables of the same counts share
a vector of totals). For a suppressed entry it solves two linear programmes (minimise, maximise
the entry subject to all those equalities and non-negativity; integrality relaxed) and gets the
feasible interval [lo, hi]. ``rules.Protection`` says how wide that interval must be.

Method (README, "Disclosure control"): mark the primary entries; then, one sensitive entry at a
time in a fixed order, while its interval is too narrow, add the cheapest complementary
suppression that the attack shows to help: first the rectangles (hypercubes in two dimensions)
of the entry's own table, totals included, ranked by what a rectangle alone would guarantee and
by cost, mirrored into linked tables; if no rectangle is enough, widen step by step (the entry's
row and column, its table, every table). Suppressing more never narrows an interval, so an entry
once protected stays protected; a final audit of every sensitive entry, by the same attack, must
pass or ``protect`` raises ``UnderProtected``. Deterministic: fixed orders and tie-breaks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy.optimize import linprog

from broker.figures.rules import DisclosureRule, Protection, RuleBook, Why
from broker.figures.table import CountTable, Entry, PublishedTable, Value

METHOD = (
    "primary suppression by rule (threshold, dominance); secondary suppression by rectangles "
    "(2-D hypercubes, totals included) chosen by cost and checked by a linear-programming attack "
    "over every published table, total, link and earlier release; final audit by the same attack"
)
EPS = 1e-6
CANDIDATES_TRIED = 8
Axis = Literal["rows", "cols"]
Key = tuple[str, int, int]


@dataclass(frozen=True, slots=True)
class Cumulative:
    """Table ``total`` is, entry by entry, the sum of tables ``parts`` (all the same shape)."""

    total: str
    parts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SharedMargin:
    """Table ``a``'s row (or column) totals, grand total last, equal table ``b``'s."""

    a: str
    a_axis: Axis
    b: str
    b_axis: Axis


Link = Cumulative | SharedMargin


@dataclass(frozen=True, slots=True)
class Prior:
    """An earlier release: its true counts (to recheck its suppressed cells) and what was published."""

    table: CountTable
    published: PublishedTable


@dataclass(frozen=True, slots=True)
class CellCheck:
    table: str
    row: str
    col: str
    kind: Literal["primary", "secondary"]
    why: Why
    rule: str
    complementary_to: tuple[str, ...]
    lo: float
    hi: float
    earlier_release: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "table": self.table,
            "row": self.row,
            "col": self.col,
            "kind": self.kind,
            "why": str(self.why),
            "rule": self.rule,
            "complementary_to": list(self.complementary_to),
            "attacker_interval": [round(self.lo, 6), None if math.isinf(self.hi) else round(self.hi, 6)],
            "earlier_release": self.earlier_release,
        }


@dataclass(frozen=True, slots=True)
class DisclosureReport:
    """The output-checking report: every suppressed entry, why, and the attack's interval for it.

    It holds no true value and no per-cell protection level (which would give the value away);
    ``to_json`` is the IG lead's copy (which cells are primary, why, the attack's intervals),
    ``public_json`` what is released with the tables.
    """

    method: str
    rules: tuple[tuple[str, DisclosureRule], ...]
    cells: tuple[CellCheck, ...]
    lp_solves: int
    protected: bool = True

    def _rules_json(self, *, widths: bool) -> dict[str, dict[str, object]]:
        out: dict[str, dict[str, object]] = {}
        for table, r in self.rules:
            doc: dict[str, object] = {
                "rule": r.name,
                "suppress": f"1..{r.threshold}" + (" and 0" if r.suppress_zeros else ""),
                "dominance_pct": r.dominance_pct,
            }
            if widths:
                doc["protection_width"] = r.protection_width
            out[table] = doc | {"rounding_base": r.rounding_base}
        return out

    def to_json(self) -> dict[str, object]:
        return {
            "method": self.method,
            "rules": self._rules_json(widths=True),
            "protection": "attacker interval [lo, hi]: hi >= v + upper, lo <= v - lower, hi - lo >= width",
            "integrality": "relaxed (linear programming)",
            "cells": [c.to_json() for c in self.cells],
            "primary": sum(1 for c in self.cells if c.kind == "primary" and not c.earlier_release),
            "secondary": sum(1 for c in self.cells if c.kind == "secondary"),
            "lp_solves": self.lp_solves,
            "protected": self.protected,
        }

    def public_json(self) -> dict[str, object]:
        """What is published with the tables: the method, the rules, which entries are suppressed
        and that the attack found them protected; not which are small (primary) and which were
        suppressed to protect them (secondary), nor why, nor the attack's intervals.

        Threat: a cell labelled "primary, threshold" is known to be 1..threshold, exactly what
        upper protection is there to hide (and "zero" would give its value). The full report
        (``to_json``) is the IG lead's, in the audit entry of the release."""
        return {
            "method": self.method,
            "rules": self._rules_json(widths=False),
            "suppressed": len(self.cells),
            "cells": [{"table": c.table, "row": c.row, "col": c.col} for c in self.cells if not c.earlier_release],
            "lp_solves": self.lp_solves,
            "protected": self.protected,
        }


@dataclass(frozen=True, slots=True)
class Release:
    tables: tuple[PublishedTable, ...]
    report: DisclosureReport

    def table(self, name: str) -> PublishedTable:
        return next(t for t in self.tables if t.name == name)


class UnderProtected(Exception):
    """The rules cannot be met for this release: it must not be published as it stands."""


def _entries(t: CountTable) -> list[Entry]:
    return [(r, c) for r in range(t.n_rows + 1) for c in range(t.n_cols + 1)]


def _axis(t: CountTable, axis: Axis) -> list[Entry]:
    if axis == "rows":
        return [(i, t.n_cols) for i in range(t.n_rows + 1)]
    return [(t.n_rows, j) for j in range(t.n_cols + 1)]


def _shown(t: CountTable, e: Entry) -> bool:
    return not (t.one_way and e[0] == t.n_rows and e[1] != t.n_cols)


@dataclass
class _Attack:
    """The attacker's equalities over every entry (``Key``) of every table, current and prior."""

    value: dict[Key, int]
    constraints: list[list[tuple[Key, float]]]
    solves: int = 0
    _cache: dict[tuple[frozenset[Key], Key], tuple[float, float]] = field(default_factory=dict)

    def interval(self, suppressed: frozenset[Key], key: Key) -> tuple[float, float]:
        cached = self._cache.get((suppressed, key))
        if cached is not None:
            return cached
        rows = [con for con in self.constraints if any(k in suppressed for k, _ in con)]
        if not any(k == key for con in rows for k, _ in con):
            return (0.0, math.inf)
        variables = sorted({k for con in rows for k, _ in con if k in suppressed})
        index = {k: i for i, k in enumerate(variables)}
        a = np.zeros((len(rows), len(variables)))
        b = np.zeros(len(rows))
        for i, con in enumerate(rows):
            for k, coef in con:
                if k in suppressed:
                    a[i, index[k]] += coef
                else:
                    b[i] -= coef * self.value[k]
        objective = np.zeros(len(variables))
        objective[index[key]] = 1.0
        bounds = [(0.0, None)] * len(variables)
        low = linprog(objective, A_eq=a, b_eq=b, bounds=bounds, method="highs")
        high = linprog(-objective, A_eq=a, b_eq=b, bounds=bounds, method="highs")
        self.solves += 2
        if low.status != 0 or high.status not in (0, 3):
            raise UnderProtected(f"the attack's programme is infeasible for {key}: the tables do not add up")
        result = (float(low.fun), math.inf if high.status == 3 else float(-high.fun))
        self._cache[(suppressed, key)] = result
        return result


def _attack(tables: Sequence[CountTable], links: Sequence[Link]) -> _Attack:
    value: dict[Key, int] = {}
    constraints: list[list[tuple[Key, float]]] = []
    by_name = {t.name: t for t in tables}
    for t in tables:
        ext = t.extended()
        n, m = t.n_rows, t.n_cols
        for r, c in _entries(t):
            value[(t.name, r, c)] = ext[r][c]
        for r in range(n + 1):
            constraints.append([*(((t.name, r, c), 1.0) for c in range(m)), ((t.name, r, m), -1.0)])
        for c in range(m + 1):
            constraints.append([*(((t.name, r, c), 1.0) for r in range(n)), ((t.name, n, c), -1.0)])
    for link in links:
        if isinstance(link, Cumulative):
            total = by_name[link.total]
            for r, c in _entries(total):
                constraints.append([((link.total, r, c), 1.0), *(((p, r, c), -1.0) for p in link.parts)])
        else:
            ea, eb = _axis(by_name[link.a], link.a_axis), _axis(by_name[link.b], link.b_axis)
            constraints.extend([((link.a, *x), 1.0), ((link.b, *y), -1.0)] for x, y in zip(ea, eb, strict=True))
    return _Attack(value=value, constraints=constraints)


def _check_links(tables: dict[str, CountTable], links: Sequence[Link]) -> None:
    for link in links:
        names = (link.total, *link.parts) if isinstance(link, Cumulative) else (link.a, link.b)
        missing = [n for n in names if n not in tables]
        if missing:
            raise ValueError(f"link names unknown tables: {missing}")
        if isinstance(link, Cumulative):
            shape = (tables[link.total].n_rows, tables[link.total].n_cols)
            if any((tables[p].n_rows, tables[p].n_cols) != shape for p in link.parts):
                raise ValueError(f"cumulative table {link.total!r}: its parts are not its shape")
            ext = tables[link.total].extended()
            parts = [tables[p].extended() for p in link.parts]
            if any(ext[r][c] != sum(p[r][c] for p in parts) for r, c in _entries(tables[link.total])):
                raise ValueError(f"cumulative table {link.total!r} is not the sum of its parts")
        else:
            va = [tables[link.a].extended()[r][c] for r, c in _axis(tables[link.a], link.a_axis)]
            vb = [tables[link.b].extended()[r][c] for r, c in _axis(tables[link.b], link.b_axis)]
            if va != vb:
                raise ValueError(f"tables {link.a!r} and {link.b!r} do not share that margin")


class _Protector:
    def __init__(
        self, current: Sequence[CountTable], prior: Sequence[Prior], links: Sequence[Link], rules: RuleBook
    ) -> None:
        self.current = list(current)
        self.prior = list(prior)
        self.links = list(links)
        self.tables = {t.name: t for t in [*current, *(p.table for p in prior)]}
        if len(self.tables) != len(current) + len(prior):
            raise ValueError("table names must be unique across the release and the earlier releases")
        _check_links(self.tables, links)
        self.current_names = [t.name for t in current]
        self.rule = {name: rules.for_sources(t.sources) for name, t in self.tables.items()}
        self.attack = _attack(list(self.tables.values()), links)
        self.suppressed: set[Key] = set()
        self.sensitive: dict[Key, tuple[Why, Protection]] = {}
        self.complementary: dict[Key, list[Key]] = {}

    # primary suppression ------------------------------------------------------------------------
    def primary(self) -> None:
        for t in self.current:
            ext, rule = t.extended(), self.rule[t.name]
            for e in _entries(t):
                largest = None if t.is_total(e) or t.largest is None else t.largest[e[0]][e[1]]
                why = rule.primary(ext[e[0]][e[1]], largest)
                if why is not None:
                    self.suppressed.add((t.name, *e))
                    if _shown(t, e):
                        self.sensitive[(t.name, *e)] = (why, rule.protection(ext[e[0]][e[1]], why))
        for p in self.prior:
            t, ext, rule = p.table, p.table.extended(), self.rule[p.table.name]
            for e in p.published.suppressed:
                self.suppressed.add((t.name, *e))
                largest = None if t.is_total(e) or t.largest is None else t.largest[e[0]][e[1]]
                why = rule.primary(ext[e[0]][e[1]], largest)
                if why is not None:
                    self.sensitive[(t.name, *e)] = (why, rule.protection(ext[e[0]][e[1]], why))
            for e in _entries(t):
                shown = p.published.value(e)
                if shown is None:
                    self.suppressed.add((t.name, *e))
                elif _shown(t, e) and p.published.rounding_base is None and shown != ext[e[0]][e[1]]:
                    raise ValueError(f"earlier release {t.name!r}: published {e} is not its count")
        self._aliases()

    def _aliases(self) -> None:
        # a one-way table's column totals are its cells: suppressed together
        for t in self.current:
            if t.n_rows == 1:
                for j in range(t.n_cols + 1):
                    if (t.name, 0, j) in self.suppressed or (t.name, 1, j) in self.suppressed:
                        self.suppressed |= {(t.name, 0, j), (t.name, 1, j)}
            if t.n_cols == 1:
                for i in range(t.n_rows + 1):
                    if (t.name, i, 0) in self.suppressed or (t.name, i, 1) in self.suppressed:
                        self.suppressed |= {(t.name, i, 0), (t.name, i, 1)}

    # secondary suppression ----------------------------------------------------------------------
    def deficit(self, key: Key, extra: Iterable[Key] = ()) -> float:
        lo, hi = self.attack.interval(frozenset(self.suppressed | set(extra)), key)
        return self.sensitive[key][1].deficit(self.attack.value[key], lo, hi)

    def cost(self, key: Key) -> float:
        t = self.tables[key[0]]
        weight = 2.0 if t.is_total((key[1], key[2])) else 1.0
        return weight * (1.0 + self.attack.value[key])

    def rectangles(self, key: Key) -> list[frozenset[Key]]:
        name, r, c = key
        t = self.tables[name]
        n, m = t.n_rows, t.n_cols
        need = self.sensitive[key][1]
        value = self.attack.value

        def kappa(i: int, size: int) -> int:
            return -1 if i == size else 1

        ranked: list[tuple[int, float, int, int, frozenset[Key]]] = []
        for r2 in range(n + 1):
            for c2 in range(m + 1):
                if r2 == r or c2 == c:
                    continue
                a2, b2 = -kappa(r, n) * kappa(r2, n), -kappa(c, m) * kappa(c2, m)
                corners = {(name, r, c2): b2, (name, r2, c): a2, (name, r2, c2): a2 * b2}
                down = min([value[key], *(value[k] for k, s in corners.items() if s > 0)])
                ups = [value[k] for k, s in corners.items() if s < 0]
                up = min(ups) if ups else math.inf
                meets = up >= need.upper and down >= need.lower and up + down >= need.width
                new = [k for k in corners if k not in self.suppressed]
                ranked.append((0 if meets else 1, sum(self.cost(k) for k in new), r2, c2, frozenset(corners)))
        ranked.sort(key=lambda x: (x[0], x[1], x[2], x[3]))
        return [self.close(name, cand) for *_, cand in ranked]

    def close(self, name: str, cand: frozenset[Key]) -> frozenset[Key]:
        """Mirror a candidate into the current tables linked to ``name``."""
        out = set(cand)
        current = set(self.current_names)
        for link in self.links:
            if isinstance(link, Cumulative) and name in (link.total, *link.parts):
                for other in (link.total, *link.parts):
                    if other != name and other in current:
                        out |= {(other, r, c) for _, r, c in cand}
            elif isinstance(link, SharedMargin) and name in (link.a, link.b):
                mine, theirs, other = (
                    (link.a_axis, link.b_axis, link.b) if name == link.a else (link.b_axis, link.a_axis, link.a)
                )
                if other not in current:
                    continue
                here, there = _axis(self.tables[name], mine), _axis(self.tables[other], theirs)
                mapped = {(other, *there[here.index((r, c))]) for _, r, c in cand if (r, c) in here}
                out |= mapped
                out |= self.cheapest_rectangle(other, mapped)
        return frozenset(out)

    def cheapest_rectangle(self, name: str, keys: set[Key]) -> set[Key]:
        if not keys:
            return set()
        t = self.tables[name]
        anchor = min(keys)
        best: tuple[float, set[Key]] | None = None
        for r2 in range(t.n_rows + 1):
            for c2 in range(t.n_cols + 1):
                if r2 == anchor[1] or c2 == anchor[2]:
                    continue
                rect = {anchor, (name, anchor[1], c2), (name, r2, anchor[2]), (name, r2, c2)}
                if not keys <= rect:
                    continue
                cost = sum(self.cost(k) for k in rect if k not in self.suppressed)
                if best is None or cost < best[0]:
                    best = (cost, rect)
        return set() if best is None else best[1]

    def candidates(self, key: Key) -> list[frozenset[Key]]:
        name = key[0]
        found: list[frozenset[Key]] = []
        if name in self.current_names:
            found.extend(self.rectangles(key)[:CANDIDATES_TRIED])
        for link in self.links:
            if isinstance(link, Cumulative) and name in (link.total, *link.parts):
                mine = frozenset(k for k in self.suppressed if k[0] == name)
                found.append(self.close(name, mine))
        return [c for c in found if not c <= self.suppressed]

    def widen(self, key: Key) -> frozenset[Key]:
        name, r, c = key
        steps: list[set[Key]] = []
        if name in self.current_names:
            t = self.tables[name]
            steps.append({k for k in ((name, *e) for e in _entries(t)) if k[1] == r or k[2] == c})
            steps.append({(name, *e) for e in _entries(t)})
        steps.append({(t.name, *e) for t in self.current for e in _entries(t)})
        for step in steps:
            if not step <= self.suppressed:
                return frozenset(step)
        return frozenset()

    def protect_one(self, key: Key) -> None:
        deficit = self.deficit(key)
        while deficit > EPS:
            best: tuple[float, frozenset[Key]] | None = None
            for cand in self.candidates(key):
                d = self.deficit(key, cand)
                if best is None or d < best[0] - EPS:
                    best = (d, cand)
                if d <= EPS:
                    break
            chosen = best[1] if best is not None and best[0] < deficit - EPS else self.widen(key)
            if not chosen:
                raise UnderProtected(f"{key[0]} {self.tables[key[0]].label(key[1:])}: cannot be protected")
            for k in sorted(chosen - self.suppressed):
                self.complementary.setdefault(k, []).append(key)
            self.suppressed |= chosen
            self._aliases()
            deficit = self.deficit(key)

    def run(self) -> Release:
        self.primary()
        for key in sorted(self.sensitive, key=self._order):
            self.protect_one(key)
        return self.release()

    def _order(self, key: Key) -> tuple[int, int, int]:
        names = [*self.current_names, *(p.table.name for p in self.prior)]
        return (names.index(key[0]), key[1], key[2])

    # audit and output ---------------------------------------------------------------------------
    def release(self) -> Release:
        frozen = frozenset(self.suppressed)
        checks: list[CellCheck] = []
        under: list[str] = []
        prior_names = {p.table.name for p in self.prior}
        for key in sorted(frozen, key=self._order):
            t = self.tables[key[0]]
            entry: Entry = (key[1], key[2])
            if not _shown(t, entry):
                continue
            lo, hi = self.attack.interval(frozen, key)
            if key in self.sensitive:
                why, need = self.sensitive[key]
                if need.deficit(self.attack.value[key], lo, hi) > EPS:
                    under.append(f"{t.name} {t.label(entry)}")
                kind: Literal["primary", "secondary"] = "primary"
            elif key[0] in prior_names:
                continue
            else:
                why, kind = Why.COMPLEMENTARY, "secondary"
            row, col = t.label(entry)
            to = tuple(
                f"{k[0]}: {self.tables[k[0]].label((k[1], k[2]))[0]} / {self.tables[k[0]].label((k[1], k[2]))[1]}"
                for k in self.complementary.get(key, [])
            )
            checks.append(
                CellCheck(
                    table=t.name,
                    row=row,
                    col=col,
                    kind=kind,
                    why=why,
                    rule=self.rule[t.name].name,
                    complementary_to=to,
                    lo=lo,
                    hi=hi,
                    earlier_release=key[0] in prior_names,
                )
            )
        if under:
            raise UnderProtected(f"the audit found under-protected entries: {under}")
        report = DisclosureReport(
            method=METHOD,
            rules=tuple((t.name, self.rule[t.name]) for t in self.current),
            cells=tuple(checks),
            lp_solves=self.attack.solves,
        )
        return Release(tables=tuple(self.publish(t) for t in self.current), report=report)

    def publish(self, t: CountTable) -> PublishedTable:
        rule = self.rule[t.name]
        ext = t.extended()
        values: tuple[tuple[Value, ...], ...] = tuple(
            tuple(None if (t.name, r, c) in self.suppressed else rule.round(ext[r][c]) for c in range(t.n_cols + 1))
            for r in range(t.n_rows + 1)
        )
        return PublishedTable(
            name=t.name,
            row_title=t.row_title,
            col_title=t.col_title,
            rows=t.rows,
            cols=t.cols,
            values=values,
            one_way=t.one_way,
            rounding_base=rule.rounding_base,
        )


def protect(
    tables: Sequence[CountTable],
    rules: RuleBook | None = None,
    *,
    links: Sequence[Link] = (),
    prior: Sequence[Prior] = (),
) -> Release:
    """Suppress, audit and return the release; raise ``UnderProtected`` rather than under-protect."""
    return _Protector(tables, prior, links, rules or RuleBook()).run()


def primary_only(tables: Sequence[CountTable], rules: RuleBook | None = None) -> tuple[PublishedTable, ...]:
    """Primary suppression alone (no complementary cells, no audit): what NOT to publish; for tests."""
    protector = _Protector(tables, (), (), rules or RuleBook())
    protector.primary()
    return tuple(protector.publish(t) for t in tables)
