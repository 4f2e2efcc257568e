"""What the console's pages show, shaped from the store's answers (pure: no I/O, no clock).

The HTTP layer (``broker/console/web.py``) reads the store and hands the rows here; the
templates only lay out what these return. Every value shown comes from an audit entry's *body*
(the hashed bytes), never from an index column alone (``broker/ports/store.AuditRow``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from broker.ports.store import AuditRow, HeldRow, QuarantineRow

MAX_IDS_SHOWN = 5


def parse_day(raw: str | None, default: date) -> date:
    """A date field's value (``YYYY-MM-DD``, as ``<input type="date">`` sends), or ``default``.
    Raises ``ValueError`` for anything else (the page says which field)."""
    if raw is None or raw == "":
        return default
    if len(raw) != 10:
        raise ValueError(raw)
    return date.fromisoformat(raw)


def day_start(day: date) -> datetime:
    return datetime.combine(day, time(0), UTC)


def period(since: date, until: date) -> tuple[datetime, datetime]:
    """``[since 00:00, the day after until 00:00)`` in UTC: both days included."""
    return day_start(since), day_start(until + timedelta(days=1))


# -- the access log --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AccessRow:
    seq: int
    at: str
    sub: str
    role: str
    resource: str
    route: str
    consumer: str | None
    count: int | None
    record_ids: tuple[str, ...]
    details: str  # the filters or other details, as compact JSON (screened already by the audit)

    @property
    def ids_shown(self) -> str:
        shown = ", ".join(self.record_ids[:MAX_IDS_SHOWN])
        more = len(self.record_ids) - MAX_IDS_SHOWN
        return shown + (f" and {more} more" if more > 0 else "")


_KNOWN_KEYS = frozenset({"seq", "at", "kind", "prev", "sub", "role", "resource", "route", "consumer", "count"})


def access_row(row: AuditRow) -> AccessRow:
    doc: dict[str, Any] = json.loads(row.body)
    ids = doc.get("record_ids")
    record_ids = tuple(str(i) for i in ids) if isinstance(ids, list) else ()
    count = doc.get("count")
    rest = {k: v for k, v in doc.items() if k not in _KNOWN_KEYS and k != "record_ids"}
    consumer = doc.get("consumer")
    return AccessRow(
        seq=row.seq,
        at=str(doc.get("at", row.at)),
        sub=str(doc.get("sub", "")),
        role=str(doc.get("role", "")),
        resource=str(doc.get("resource", "")),
        route=str(doc.get("route", "")),
        consumer=consumer if isinstance(consumer, str) else None,
        count=count if isinstance(count, int) and not isinstance(count, bool) else None,
        record_ids=record_ids,
        details=json.dumps(rest, sort_keys=True, ensure_ascii=False) if rest else "",
    )


@dataclass(frozen=True, slots=True)
class AccessFilter:
    sub: str | None = None
    consumer: str | None = None
    agreement_consumers: frozenset[str] | None = None  # an agreement's consumers (its reads)
    agreement_id: str | None = None
    console_views: bool = False  # the console's own page views (resource console:*)

    def admits(self, row: AccessRow, agreement_in_body: str | None) -> bool:
        if self.sub and row.sub != self.sub:
            return False
        if self.consumer and row.consumer != self.consumer:
            return False
        if self.agreement_id is not None:
            named = agreement_in_body == self.agreement_id
            if not named and (self.agreement_consumers is None or row.consumer not in self.agreement_consumers):
                return False
        return self.console_views or not row.resource.startswith("console:")


def agreement_of(row: AuditRow) -> str | None:
    value = json.loads(row.body).get("agreement_id")
    return value if isinstance(value, str) else None


CSV_COLUMNS = ("seq", "at", "sub", "role", "resource", "route", "consumer", "count", "record_ids", "details")


def csv_values(row: AccessRow) -> list[object]:
    return [
        row.seq,
        row.at,
        row.sub,
        row.role,
        row.resource,
        row.route,
        row.consumer,
        row.count,
        " ".join(row.record_ids),
        row.details,
    ]


# -- counts over time (quarantine, held) ------------------------------------------------------------
def bucket(moment: datetime, by: str) -> str:
    day = moment.astimezone(UTC).date()
    if by == "week":
        monday = day - timedelta(days=day.weekday())
        return f"week of {monday.isoformat()}"
    return day.isoformat()


@dataclass(frozen=True, slots=True)
class CountRow:
    when: str
    party: str
    reason: str
    count: int


def counts_by(items: Iterable[tuple[datetime, str, str]], by: str) -> list[CountRow]:
    """(time, party, reason) -> one row per (bucket, party, reason), newest bucket first."""
    counter: Counter[tuple[str, str, str]] = Counter((bucket(at, by), party, reason) for at, party, reason in items)
    rows = [CountRow(w, p, r, n) for (w, p, r), n in counter.items()]
    rows.sort(key=lambda c: (c.when, c.party, c.reason))
    rows.sort(key=lambda c: c.when[-10:], reverse=True)
    return rows


def quarantine_counts(rows: Sequence[QuarantineRow], by: str) -> list[CountRow]:
    return counts_by(((r.item.at, r.item.source or "(not authenticated)", r.item.reason) for r in rows), by)


def held_counts(rows: Sequence[HeldRow], by: str) -> list[CountRow]:
    return counts_by(((r.held_at, f"{r.agreement_id} (from {r.source})", r.reason) for r in rows), by)


@dataclass
class HeldGroup:
    agreement_id: str
    rows: list[HeldRow] = field(default_factory=list)


def held_groups(rows: Sequence[HeldRow]) -> list[HeldGroup]:
    groups: dict[str, HeldGroup] = {}
    for row in rows:
        groups.setdefault(row.agreement_id, HeldGroup(row.agreement_id)).rows.append(row)
    return [groups[k] for k in sorted(groups)]


# -- a record's trace -------------------------------------------------------------------------------
STAGE = {
    "received": "received",
    "rejected": "refused",
    "duplicate": "duplicate",
    "withheld": "nothing released",
    "released": "released",
    "withdrawn": "withdrawn",
    "accessed": "read",
    "purged": "purged",
    "held": "held",
    "held_released": "held, released",
    "held_discarded": "held, discarded",
    "counted": "counted in figures",
    "figures_released": "figures released",
    "figures_withheld": "figures withheld",
}


@dataclass(frozen=True, slots=True)
class TraceStep:
    seq: int
    at: str
    kind: str
    stage: str  # the tag's words
    summary: str  # one sentence: who, under what, which fields


def _summary(doc: Mapping[str, Any]) -> str:
    kind = doc.get("kind")
    parts: list[str] = []
    if kind == "received":
        parts.append(f"from {doc.get('source')}, message {doc.get('message_id')}")
        if doc.get("revision"):
            parts.append(f"revision {doc.get('revision')}")
    elif kind in ("released", "withdrawn"):
        parts.append(f"to {doc.get('consumer')} under {doc.get('agreement_id')}")
        if doc.get("agreement_revision") is not None:
            parts.append(f"revision {doc.get('agreement_revision')} of the agreement")
        if doc.get("flow_id"):
            parts.append(f"flow {doc.get('flow_id')}")
        fields = doc.get("fields")
        if isinstance(fields, list):
            parts.append("fields: " + (", ".join(map(str, fields)) or "none"))
        if doc.get("record_id"):
            parts.append(f"record {doc.get('record_id')}")
    elif kind == "counted":
        consumers = ", ".join(map(str, doc.get("consumers") or []))
        parts.append(f"for {consumers} under {doc.get('agreement_id')}, flow {doc.get('flow_id')}")
        period = doc.get("period")
        parts.append(f"in {period} (by event date)" if period else "no event date: counted nowhere")
        fields = doc.get("fields")
        if isinstance(fields, list):
            parts.append("counted by: " + (", ".join(map(str, fields)) or "nothing"))
    elif kind in ("figures_released", "figures_withheld"):
        parts.append(f"{doc.get('period')} to {doc.get('consumer')} under {doc.get('agreement_id')}")
        if kind == "figures_released":
            parts.append(f"revision {doc.get('revision')}: {doc.get('counted')} events, {doc.get('suppressed')} "
                         "entries suppressed")  # fmt: skip
    elif kind == "accessed":
        parts.append(f"by {doc.get('sub')} ({doc.get('role')}) through {doc.get('route')}")
        if doc.get("consumer"):
            parts.append(f"feed of {doc.get('consumer')}")
    elif kind == "purged":
        parts.append(f"{doc.get('count')} record(s) of {doc.get('consumer')} under {doc.get('agreement_id')}")
    for key in ("reason", "message"):
        if isinstance(doc.get(key), str) and kind not in ("accessed",):
            parts.append(f"{key}: {doc.get(key)}")
    return "; ".join(parts) if parts else ""


def trace_steps(entries: Mapping[int, bytes]) -> list[TraceStep]:
    steps = []
    for seq in sorted(entries):
        doc: dict[str, Any] = json.loads(entries[seq])
        kind = str(doc.get("kind", ""))
        steps.append(
            TraceStep(seq, str(doc.get("at", "")), kind, STAGE.get(kind, kind.replace("_", " ")), _summary(doc))
        )
    return steps


@dataclass(frozen=True, slots=True)
class Recipient:
    consumer: str
    agreement_id: str
    agreement_revision: object
    fields: str
    record_id: str
    readers: tuple[str, ...]


def recipients(entries: Mapping[int, bytes]) -> list[Recipient]:
    """Who received the record (its releases) and who read each copy (the reads naming it)."""
    docs = [json.loads(entries[seq]) for seq in sorted(entries)]
    readers: dict[str, list[str]] = {}
    for doc in docs:
        if doc.get("kind") == "accessed":
            ids = doc.get("record_ids") if isinstance(doc.get("record_ids"), list) else [doc.get("record_id")]
            for rid in ids or ():
                who = f"{doc.get('sub')} ({doc.get('role')}) at {doc.get('at')}"
                readers.setdefault(str(rid), []).append(who)
    out = []
    for doc in docs:
        if doc.get("kind") == "released":
            rid = str(doc.get("record_id"))
            fields = doc.get("fields")
            out.append(
                Recipient(
                    consumer=str(doc.get("consumer")),
                    agreement_id=str(doc.get("agreement_id")),
                    agreement_revision=doc.get("agreement_revision"),
                    fields=", ".join(map(str, fields)) if isinstance(fields, list) else "",
                    record_id=rid,
                    readers=tuple(readers.get(rid, ())),
                )
            )
    return out
