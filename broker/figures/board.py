"""Issue 14 item 3: the quarterly board pack's tables, from one consumer's released records.

Pure: a list of ``ConsumerRecord`` dicts and a quarter in, a ``Board`` out (count tables protected
by ``suppress.protect``, shares from the published counts only). No I/O, no clock.

**Periods are by event date, never release time.** A released record carries no exact date (the
agreements generalise it), so a record's quarter comes from the event's own generalised date
field that its agreement releases (``PERIOD_FIELDS``: the police offence week, the A&E arrival week
or month). An ISO week belongs to the quarter holding its Thursday (the ISO rule for years), so a
week is never split; a record with no such field, or outside the quarter, is excluded and counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from broker.figures.rules import RuleBook
from broker.figures.specs import SPECS, Quarter, Spec, period_of
from broker.figures.suppress import METHOD, DisclosureReport, Release, SharedMargin, protect
from broker.figures.table import CountTable, PublishedTable
from schemas.events.common import DISTRICT_NAMES

NOT_KNOWN = "Not known"
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
DAY_PARTS = ("night", "morning", "afternoon", "evening")
DAY_PART_HOURS = {"night": "00-06", "morning": "06-12", "afternoon": "12-18", "evening": "18-24"}
AGE_BANDS = ("0-10", "11-17", "18-24", "25-34", "35-49", "50-64", "65+", "not_known")
SEXES = ("female", "male", "other", "not_known")
RulesChoice = Literal["partnership", "source"]


@dataclass(frozen=True, slots=True)
class Share:
    name: str
    label: str
    numerator: int | None
    denominator: int | None
    note: str | None

    @property
    def percent(self) -> float | None:
        if self.numerator is None or not self.denominator:
            return None
        return round(100 * self.numerator / self.denominator, 1)

    def to_json(self) -> dict[str, object]:
        return {
            "share": self.name,
            "label": self.label,
            "numerator": "[c]" if self.numerator is None else self.numerator,
            "denominator": "[c]" if self.denominator is None else self.denominator,
            "percent": self.percent,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class Section:
    event_type: str
    title: str
    period_field: str
    table_names: tuple[str, ...]
    shares: tuple[Share, ...]


@dataclass(frozen=True, slots=True)
class Board:
    consumer: str
    quarter: Quarter
    rules: RulesChoice
    sections: tuple[Section, ...]
    release: Release
    captions: Mapping[str, str]
    included: int
    excluded: Mapping[str, int] = field(default_factory=dict)
    # "figures": rebuilt from figures releases (a figures-only consumer's), not from records
    built_from: Literal["records", "figures"] = "records"
    # Built from figures: the disclosure check as released (``DisclosureReport.public_json``).
    released_report: Mapping[str, Any] | None = None

    def report_doc(self) -> Mapping[str, Any]:
        """The disclosure check as published with the tables."""
        return self.released_report if self.released_report is not None else self.release.report.public_json()

    def totals(self) -> dict[str, int | None]:
        """Each section's events as published (its first table's grand total; None: suppressed)."""
        out: dict[str, int | None] = {}
        for s in self.sections:
            t = self.table(s.table_names[0])
            out[s.event_type] = t.values[t.n_rows][t.n_cols]
        return out

    def table(self, name: str) -> PublishedTable:
        return self.release.table(name)


def _get(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if value is None or value == "":
        return NOT_KNOWN
    if isinstance(value, bool):
        return "Yes" if value else "No"
    return str(value)


def _ordered(seen: Iterable[str], preferred: Sequence[str]) -> tuple[str, ...]:
    s = set(seen)
    head = [p for p in preferred if p in s]
    rest = sorted(x for x in s if x not in preferred and x != NOT_KNOWN)
    return (*head, *rest, *([NOT_KNOWN] if NOT_KNOWN in s else []))


def district_label(code: str) -> str:
    name = DISTRICT_NAMES.get(code)
    return f"{name} ({code})" if name else code


def _one_way(name: str, title: str, values: Sequence[str], labels: Sequence[str], source: str) -> CountTable:
    c = Counter(values)
    return CountTable.one_way_table(name, title, labels, [c[x] for x in labels], sources=(source,))


def _two_way(
    name: str, row_title: str, col_title: str, pairs: Sequence[tuple[str, str]], rows: Sequence[str],
    cols: Sequence[str], source: str,
) -> CountTable:  # fmt: skip
    c = Counter(pairs)
    return CountTable(
        name=name,
        row_title=row_title,
        col_title=col_title,
        rows=tuple(rows),
        cols=tuple(cols),
        counts=tuple(tuple(c[(r, k)] for k in cols) for r in rows),
        sources=(source,),
    )


NTE_LABEL = "Fri/Sat 18:00-06:00 peak"
NTE_SLOTS = {("Friday", "evening"), ("Saturday", "evening"), ("Saturday", "night"), ("Sunday", "night")}


def nte_cells(t: PublishedTable) -> list[tuple[str, str]]:
    """The day x time cells in the Friday/Saturday 18:00-06:00 peak (by day part or by hour)."""
    out = []
    for r in t.rows:
        for c in t.cols:
            part = DAY_PARTS[int(c) // 6] if c.isdigit() else c
            if (r, part) in NTE_SLOTS:
                out.append((r, c))
    return out


def _share(name: str, label: str, t: PublishedTable, cells: Sequence[str] | Sequence[tuple[str, str]]) -> Share:
    """numerator: the sum of the published ``cells`` (a one-way table's columns, or a two-way
    table's (row, col) pairs); denominator: the table's grand total, as published. Never a true count."""
    parts: list[int | None] = []
    for cell in cells:
        if isinstance(cell, tuple):
            r, c = cell
            parts.append(t.values[t.rows.index(r)][t.cols.index(c)])
        else:
            parts.append(t.values[0][t.cols.index(cell)] if cell in t.cols else 0)
    num = None if any(v is None for v in parts) else sum(v for v in parts if v is not None)
    den = t.values[t.n_rows][t.n_cols]
    note = None
    if num is None or den is None:
        which = "numerator" if num is None else "denominator"
        note = f"not shown: its {which} is suppressed [c], and a share would give it away"
    return Share(name, label, num if den is not None else None, den, note)


def build_board(
    records: Iterable[Mapping[str, Any]],
    quarter: Quarter,
    *,
    consumer: str = "",
    rules: RulesChoice = "partnership",
    trend_quarters: int = 4,
    rounding_base: int | None = None,
) -> Board:
    """The board's tables for ``quarter``, protected; the trend is over the quarters present.
    ``rounding_base``: shown figures rounded to it (after suppression; an agreement's ``round_to``)."""
    by_type: dict[str, list[tuple[Quarter, Mapping[str, Any], str]]] = {}
    excluded: Counter[str] = Counter()
    for rec in records:
        if "data" not in rec:
            excluded["notice (withdrawn or deleted)"] += 1
            continue
        event_type = str(rec.get("event_type") or "")
        spec = SPECS.get(event_type)
        if spec is None:
            excluded[f"event type not in the board pack: {event_type or 'unknown'}"] += 1
            continue
        data: Mapping[str, Any] = rec["data"]
        found = next(((f, period_of(data[f])) for f in spec.period if f in data), None)
        if found is None or found[1] is None:
            excluded[f"{event_type}: no event date released"] += 1
            continue
        by_type.setdefault(event_type, []).append((found[1], data, found[0]))

    tables: list[CountTable] = []
    links: list[SharedMargin] = []
    captions: dict[str, str] = {}
    pending: list[tuple[str, Spec, str, tuple[str, ...]]] = []
    included = 0
    for event_type in [name for name in SPECS if name in by_type]:  # police first, as the Board reads them
        spec = SPECS[event_type]
        rows = by_type[event_type]
        here = [d for q, d, _ in rows if q == quarter]
        outside = len(rows) - len(here)
        if outside:
            excluded[f"{event_type}: event date outside {quarter}"] += outside
        if not here:
            continue
        included += len(here)
        period_field = Counter(f for q, _, f in rows if q == quarter).most_common(1)[0][0]
        src = "partnership" if rules == "partnership" else spec.source
        p = event_type
        own: list[CountTable] = []
        whats = [_get(d, spec.what) for d in here]
        own.append(_one_way(f"{p}.what", spec.what_title, whats, _ordered(whats, ()), src))
        captions[f"{p}.what"] = f"What: {spec.what_title.lower()}"
        if spec.knife != spec.what:  # else the share is read off the "what" table: one count, one table
            knives = ["Yes" if d.get(spec.knife) == spec.knife_value else "No" for d in here]
            own.append(_one_way(f"{p}.knife", "Knife or sharp instrument involved", knives, ("Yes", "No"), src))
            captions[f"{p}.knife"] = "What: knife or sharp instrument involved"
        has_when = any(spec.day in d for d in here) and any(spec.hour in d or spec.day_part in d for d in here)
        if any(spec.nte in d for d in here) and not has_when:  # else read off the day x time table
            ntes = [_get(d, spec.nte) for d in here]
            own.append(
                _one_way(f"{p}.nte", "In the Fri/Sat 18:00-06:00 peak", ntes, _ordered(ntes, ("Yes", "No")), src)
            )
            captions[f"{p}.nte"] = "When: in the Friday/Saturday 18:00-06:00 night-time economy peak"
        districts = [_get(d, spec.district) for d in here]
        codes = _ordered(districts, tuple(DISTRICT_NAMES))
        own.append(_one_way(f"{p}.where", "District", [district_label(x) for x in districts],
                            [district_label(x) for x in codes], src))  # fmt: skip
        captions[f"{p}.where"] = "Where: district (name and ONS GSS code)"
        for t in own[1:]:
            links.append(SharedMargin(own[0].name, "rows", t.name, "rows"))
        two: list[CountTable] = []
        second = spec.hour if any(spec.hour in d for d in here) else spec.day_part
        if has_when:
            pairs = [(_get(d, spec.day), _get(d, second)) for d in here]
            cols = (
                _ordered((b for _, b in pairs), tuple(str(h) for h in range(24)))
                if second == spec.hour
                else _ordered((b for _, b in pairs), DAY_PARTS)
            )
            col_title = "Hour" if second == spec.hour else "Time of day"
            two.append(_two_way(f"{p}.when", "Day of week", col_title, pairs,
                                _ordered((a for a, _ in pairs), DAYS), cols, src))  # fmt: skip
            captions[f"{p}.when"] = f"When: day of week by {col_title.lower()}"
        for w in spec.who:
            pairs = [(_get(d, w.age), _get(d, w.sex)) for d in here]
            name = f"{p}.who.{w.label.lower()}"
            two.append(_two_way(name, "Age band", "Sex", pairs, _ordered((a for a, _ in pairs), AGE_BANDS),
                                _ordered((b for _, b in pairs), SEXES), src))  # fmt: skip
            captions[name] = f"Who: {w.label.lower()} by age band and sex"
        seen = sorted({q for q, _, _ in rows if q <= quarter})[-trend_quarters:]
        trend_counts = Counter(q for q, _, _ in rows)
        trend = CountTable.one_way_table(f"{p}.trend", "Quarter (event date)", [str(q) for q in seen],
                                         [trend_counts[q] for q in seen], sources=(src,))  # fmt: skip
        captions[f"{p}.trend"] = "Trend: the quarters present in the records, to this one"
        group = (*own, *two, trend)
        tables.extend(group)
        pending.append((event_type, spec, period_field, tuple(t.name for t in group)))

    book = RuleBook()
    if rounding_base is not None:
        book = RuleBook({k: replace(r, rounding_base=rounding_base) for k, r in book.by_source.items()})
    release = protect(tables, book, links=links) if tables else Release(tables=(), report=_empty_report())
    sections = []
    for event_type, spec, period_field, names in pending:
        knife = f"{event_type}.knife" if f"{event_type}.knife" in names else f"{event_type}.what"
        knife_col = "Yes" if knife.endswith(".knife") else str(spec.knife_value)
        shares = [_share("knife", "Knife or sharp instrument involved", release.table(knife), [knife_col])]
        if f"{event_type}.nte" in names:
            shares.append(_share("nte_peak", NTE_LABEL, release.table(f"{event_type}.nte"), ["Yes"]))
        elif f"{event_type}.when" in names:
            when = release.table(f"{event_type}.when")
            shares.append(_share("nte_peak", NTE_LABEL, when, nte_cells(when)))
        sections.append(Section(event_type, spec.title, period_field, names, tuple(shares)))
    return Board(
        consumer=consumer,
        quarter=quarter,
        rules=rules,
        sections=tuple(sections),
        release=release,
        captions=captions,
        included=included,
        excluded=dict(sorted(excluded.items())),
    )


def _empty_report() -> DisclosureReport:
    return DisclosureReport(method=METHOD, rules=(), cells=(), lp_solves=0)


# --- a released figures document back into a Board (the pack of a figures-only consumer) -----------


def _count(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def table_from_json(doc: Mapping[str, Any], rounding_base: int | None = None) -> PublishedTable:
    """A ``PublishedTable.to_json`` document back into the table (``"[c]"`` -> suppressed)."""
    name = str(doc["table"])
    if "rows" not in doc:  # one-way: one row of cells, its total; the column totals repeat the cells
        cols = tuple(str(c) for c in doc["cells"])
        cells = tuple(_count(doc["cells"][c]) for c in cols)
        line = (*cells, _count(doc["total"]))
        return PublishedTable(name, "", str(doc["title"]), ("All",), cols, (line, line), True, rounding_base)
    rows = tuple(str(r) for r in doc["rows"])
    cols = tuple(str(c) for c in doc["cols"])
    values = [
        (*(_count(v) for v in line), _count(total)) for line, total in zip(doc["cells"], doc["row_totals"], strict=True)
    ]
    values.append((*(_count(v) for v in doc["col_totals"]), _count(doc["total"])))
    return PublishedTable(name, str(doc["row_title"]), str(doc["col_title"]), rows, cols, tuple(values), False,
                          rounding_base)  # fmt: skip


def board_from_json(doc: Mapping[str, Any], consumer: str = "") -> Board:
    """A figures release (``schemas.messages.ConsumerFigures``) as a Board, to render the pack."""
    report: Mapping[str, Any] = doc["disclosure_check"]
    bases = {str(t): r.get("rounding_base") for t, r in dict(report.get("rules", {})).items()}
    tables: list[PublishedTable] = []
    captions: dict[str, str] = {}
    sections = []
    for s in doc["sections"]:
        names = []
        for t in s["tables"]:
            table = table_from_json(t, bases.get(str(t["table"])))
            tables.append(table)
            captions[table.name] = str(t.get("caption", table.name))
            names.append(table.name)
        shares = tuple(
            Share(
                str(sh["share"]), str(sh["label"]), _count(sh["numerator"]), _count(sh["denominator"]), sh.get("note")
            )
            for sh in s.get("shares", ())
        )
        sections.append(Section(str(s["event_type"]), str(s["title"]), str(s["period_field"]), tuple(names), shares))
    rules = str(doc.get("rules", "source"))
    return Board(
        consumer=consumer or str(doc.get("consumer", "")),
        quarter=Quarter.parse(str(doc["period"])),
        rules="partnership" if rules == "partnership" else "source",
        sections=tuple(sections),
        release=Release(tables=tuple(tables), report=_empty_report()),
        captions=captions,
        included=sum(v for v in (_count(doc.get("counted")),) if v is not None),
        built_from="figures",
        released_report=report,
    )


def board_from_figures(docs: Sequence[Mapping[str, Any]], consumer: str = "") -> Board:
    """One quarter's figures releases (one per figures flow: police, A&E) as one Board, each
    section protected as it was released (the releases share no margin: different events)."""
    boards = [board_from_json(doc, consumer) for doc in docs]
    if not boards:
        raise ValueError("no figures")
    quarters = {b.quarter for b in boards}
    if len(quarters) != 1:
        raise ValueError(f"figures of several quarters: {sorted(map(str, quarters))}")
    order = {name: i for i, name in enumerate(SPECS)}
    boards.sort(key=lambda b: min((order.get(s.event_type, 99) for s in b.sections), default=99))
    reports = [b.report_doc() for b in boards]
    report = {
        "method": reports[0].get("method"),
        "rules": {k: v for rep in reports for k, v in dict(rep.get("rules", {})).items()},
        "suppressed": sum(int(rep.get("suppressed", 0)) for rep in reports),
        "cells": [c for rep in reports for c in rep.get("cells", ())],
        "lp_solves": sum(int(rep.get("lp_solves", 0)) for rep in reports),
        "protected": all(bool(rep.get("protected")) for rep in reports),
    }
    return Board(
        consumer=boards[0].consumer,
        quarter=boards[0].quarter,
        rules=boards[0].rules,
        sections=tuple(s for b in boards for s in b.sections),
        release=Release(tables=tuple(t for b in boards for t in b.release.tables), report=_empty_report()),
        captions={k: v for b in boards for k, v in b.captions.items()},
        included=sum(b.included for b in boards),
        built_from="figures",
        released_report=report,
    )
