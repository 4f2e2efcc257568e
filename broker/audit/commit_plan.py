"""What one group commit writes: the store contract's rules, pure, applied by every backend.

A backend (SQLite, PostgreSQL) opens its write transaction, takes its write lock (SQLite's
``BEGIN IMMEDIATE``; PostgreSQL's chain-head row ``FOR UPDATE``), reads three things under it:

1. the chain head (sequence, hash, time of the last entry),
2. which of the units' record ids were already audited as released,
3. which of the units' message ids are already held, and for which content,

and hands them with the queued units to :func:`plan_commit`. The plan says, row by row, what to
write; the backend writes it and commits. Because the reads happen under the lock, every process
on every host that shares the store sees the previous commit's rows: the chain cannot fork, a
record id is audited as released once ever, and of two copies of a message id with different
content, the first committed wins (the rules below, in one place, tested once for both backends).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from broker.audit.chain import Draft, Kind, seal
from broker.audit.columns import columns_of
from broker.ports.store import (
    NOT_SEEN,
    AuditRow,
    Checkpoint,
    CommitUnit,
    ContributionChange,
    CountedRow,
    EndedSession,
    FiguresPending,
    FiguresRow,
    Head,
    HeldItem,
    LineageUpdate,
    Lost,
    QuarantineItem,
    ReplayKey,
    Seen,
    StoredRecord,
)
from broker.stages.replay import ReplayState
from schemas.envelope import format_time, parse_time

NONE_LOST: Lost = frozenset()


@dataclass(frozen=True, slots=True)
class SeenRow:
    source: str
    message_id: str
    state: ReplayState
    content_sha256: str | None


@dataclass(frozen=True, slots=True)
class HoldingRow:
    record_id: str
    source: str
    lineage: str
    consumer: str
    agreement_id: str
    event_type: str
    revision: int
    withdrawn: bool
    expires_at: str


@dataclass(slots=True)
class CommitPlan:
    """Everything to write, in order; ``lost`` is per unit, in the units' order."""

    lost: list[Lost]
    head: Head
    at: str  # the commit's sealing time (RFC 3339): every entry's ``at``, and new replay rows' first-seen
    audit: list[AuditRow] = field(default_factory=list)
    releases: list[tuple[str, int]] = field(default_factory=list)  # (record id, audit seq)
    audit_records: list[tuple[int, str]] = field(default_factory=list)  # (seq, record id) of many-record entries
    seen: list[SeenRow] = field(default_factory=list)  # one row per key, folded (see ``_fold_seen``)
    records: list[StoredRecord] = field(default_factory=list)
    lineages: list[LineageUpdate] = field(default_factory=list)  # one per record, its highest revision
    holdings: list[HoldingRow] = field(default_factory=list)  # one per record id, its highest revision
    quarantine: list[QuarantineItem] = field(default_factory=list)
    purge: list[str] = field(default_factory=list)
    purge_quarantine: list[int] = field(default_factory=list)
    purge_seen: list[ReplayKey] = field(default_factory=list)
    purge_notices_before: str | None = None
    notices_until: str | None = None
    checkpoints: list[Checkpoint] = field(default_factory=list)
    held: list[HeldItem] = field(default_factory=list)  # rows to insert (once per id: the store ignores a repeat)
    unhold: list[str] = field(default_factory=list)  # held ids to delete
    end_sessions: list[EndedSession] = field(default_factory=list)  # console sessions signed out
    contributions: list[ContributionChange] = field(default_factory=list)  # in order (``apply_replaced``)
    figures: list[FiguresRow] = field(default_factory=list)
    figures_done: list[tuple[str, int]] = field(default_factory=list)
    purge_contributions_before: str | None = None
    purge_figures_before: str | None = None


def claim_keys(units: Iterable[CommitUnit]) -> list[ReplayKey]:
    """The message ids whose held content the backend must read under its lock."""
    return list(dict.fromkeys(key for unit in units for key, seen in unit.seen if seen.content_sha256))


def once_key(draft: Draft) -> str | None:
    """The key under which an entry is written at most once ever, or None (any number of times).

    A release of a record's revision 1 is keyed by its record id (as every store has always
    held it); a later revision's by ``<record id>@r<n>`` and a withdrawal notice's by
    ``<record id>@w<n>``: a redelivered correction is audited once, and each revision once."""
    record_id = draft.attrs.get("record_id")
    if not isinstance(record_id, str):
        return None
    revision = draft.attrs.get("revision", 1)
    if draft.kind is Kind.RELEASED:
        return record_id if revision == 1 else f"{record_id}@r{revision}"
    if draft.kind is Kind.WITHDRAWN:
        return f"{record_id}@w{revision}"
    if draft.kind is Kind.COUNTED:
        return f"{record_id}@c{revision}"
    if draft.kind is Kind.FIGURES_RELEASED:
        return f"{record_id}@r{revision}"
    return None


ExistingContribution = tuple[str, str, str | None, str, str | None]
"""(record id, agreement id, figures id, flow id, period) of a stored contribution."""


def replaced(
    change: ContributionChange, existing: Sequence[ExistingContribution]
) -> tuple[list[str], list[FiguresPending]]:
    """For a later revision or a withdrawal: the record's contributions to delete before its new
    ones are written, and the figures quarters that lose them (pending: recounted, re-released)."""
    if not change.replaces:
        return [], []
    gone = [row for row in existing if row[1] not in change.keep_agreements and change.only_agreement in (None, row[1])]
    pending = [
        FiguresPending(fid, agreement, flow, period)
        for _, agreement, fid, flow, period in gone
        if fid is not None and period is not None
    ]
    return [row[0] for row in gone], pending


def pending_of(rows: Iterable[CountedRow]) -> list[FiguresPending]:
    """The figures quarters these new contributions are counted in."""
    return [
        FiguresPending(r.figures_id, r.agreement_id, r.flow_id, r.period)
        for r in rows
        if r.figures_id is not None and r.period is not None
    ]


def contribution_steps(
    changes: Sequence[ContributionChange],
) -> list[tuple[ContributionChange | None, list[CountedRow]]]:
    """The changes as write steps, in order: a replacing change alone (its deletions, then its
    rows), and each run of first revisions as one multi-row upsert (one row per record id, the
    last: a statement's upsert may touch a row once)."""
    steps: list[tuple[ContributionChange | None, list[CountedRow]]] = []
    run: dict[str, CountedRow] = {}
    for change in changes:
        if change.replaces:
            if run:
                steps.append((None, list(run.values())))
                run = {}
            steps.append((change, list(change.rows)))
        else:
            run.update((r.record_id, r) for r in change.rows)
    if run:
        steps.append((None, list(run.values())))
    return steps


def released_ids(units: Iterable[CommitUnit]) -> list[str]:
    """The once-keys (``once_key``) whose earlier entry the backend must look up under its lock."""
    out = (once_key(draft) for unit in units for draft in unit.drafts)
    return list(dict.fromkeys(key for key in out if key is not None))


def claims(units: Sequence[CommitUnit], held: Mapping[ReplayKey, Seen]) -> list[Lost]:
    """Per unit, the message ids already held for different content.

    Threat: a partner (or an attacker holding its key) reuses a message id for other content and
    the two copies reach two broker processes (or hosts) at once. Each process's replay guard read
    "not seen", so both would release, under the same record ids, while the audit (one "released"
    entry per record id) would show only the first. The claim is settled here, under the store's
    write lock: the first content written wins; a later unit with other content for that id
    loses it and releases nothing."""
    content = {key: seen.content_sha256 for key, seen in held.items() if seen.content_sha256}
    out: list[Lost] = []
    for unit in units:
        lost, mine = set(), set()  # a unit's own first content for an id is its claim
        for key, seen in unit.seen:
            if not seen.content_sha256 or key in mine:
                continue
            prior = content.setdefault(key, seen.content_sha256)
            if prior == seen.content_sha256:
                mine.add(key)
            else:
                lost.add(key)
        out.append(frozenset(lost) if lost else NONE_LOST)
    return out


def _fold_seen(rows: Iterable[SeenRow]) -> list[SeenRow]:
    """One row per key, as if each row were upserted in order with the store's rule: a key already
    ``done`` keeps its state, and the first content hash recorded for a key is kept (a resend
    cannot overwrite it). The backend applies the same rule once more against the stored row."""
    out: dict[ReplayKey, SeenRow] = {}
    for row in rows:
        key = (row.source, row.message_id)
        prior = out.get(key)
        if prior is None:
            out[key] = row
        elif prior.state is not ReplayState.DONE:
            out[key] = SeenRow(row.source, row.message_id, row.state, prior.content_sha256 or row.content_sha256)
    return list(out.values())


def _fold_lineages(updates: Iterable[LineageUpdate]) -> tuple[list[LineageUpdate], list[HoldingRow]]:
    """One row per record and one per record id, the highest revision winning (PostgreSQL's
    upsert may touch a row once per statement; the store's own rule, revisions only go forward,
    is applied again against the stored rows)."""
    lineages: dict[tuple[str, str], LineageUpdate] = {}
    holdings: dict[str, HoldingRow] = {}
    for update in updates:
        key = (update.source, update.lineage)
        prior = lineages.get(key)
        # A record still at revision 1 needs no lineage row (its holdings say all): no extra
        # write per message on the hot path.
        if update.revision > 1 and (prior is None or update.revision >= prior.revision):
            lineages[key] = update
        for held in update.holdings:
            row = HoldingRow(
                held.record_id,
                update.source,
                update.lineage,
                held.consumer,
                held.agreement_id,
                update.event_type,
                held.revision,
                held.withdrawn,
                format_time(held.expires_at),
            )
            before = holdings.get(held.record_id)
            if before is None or row.revision >= before.revision:
                holdings[held.record_id] = row
    return list(lineages.values()), list(holdings.values())


def seal_time(now: datetime, head: Head) -> datetime:
    """Entries' times never go backwards along the chain, whichever host's clock sealed them
    (hosts' clocks differ by milliseconds; an audit query by time must not miss an entry that
    sits between two later ones)."""
    if head.at is None:
        return now
    last = parse_time(head.at)
    return last if last > now else now


def plan_commit(
    units: Sequence[CommitUnit],
    *,
    head: Head,
    released: Iterable[str],
    held: Mapping[ReplayKey, Seen],
    now: datetime,
) -> CommitPlan:
    """The rows one transaction writes for ``units``, given what the store held under its lock."""
    at = seal_time(now, head)
    lost = claims(units, held)
    plan = CommitPlan(lost=lost, head=head, at=format_time(at))
    already = set(released)
    seq, prev = head.seq, head.hash
    seen_rows: list[SeenRow] = []
    for unit, unit_lost in zip(units, lost, strict=True):
        plan.quarantine.extend(unit.quarantine)
        plan.purge.extend(unit.purge)
        plan.purge_quarantine.extend(unit.purge_quarantine)
        plan.purge_seen.extend(unit.purge_seen)
        if unit.notices_until is not None:
            plan.notices_until = max(plan.notices_until or "", unit.notices_until)
        if unit.purge_notices_before is not None:
            plan.purge_notices_before = max(plan.purge_notices_before or "", unit.purge_notices_before)
        plan.checkpoints.extend(unit.checkpoints)
        for (source, message_id), seen in unit.seen:
            if (source, message_id) not in unit_lost:
                seen_rows.append(SeenRow(source, message_id, seen.state, seen.content_sha256))
        plan.records.extend(rec for rec in unit.records if (rec.source, rec.message_id) not in unit_lost)
        plan.lineages.extend(lin for lin in unit.lineages if (lin.source, lin.message_id) not in unit_lost)
        # A message whose claim was lost is refused (replayed): nothing of it is held either.
        plan.held.extend(h for h in unit.held if (h.source, h.message_id) not in unit_lost)
        plan.unhold.extend(unit.unhold)
        plan.end_sessions.extend(unit.end_sessions)
        plan.contributions.extend(c for c in unit.contributions if (c.source, c.message_id) not in unit_lost)
        plan.figures.extend(unit.figures)
        plan.figures_done.extend(unit.figures_done)
        for name in ("purge_contributions_before", "purge_figures_before"):
            stamp = getattr(unit, name)
            if stamp is not None:
                setattr(plan, name, max(getattr(plan, name) or "", stamp))
        for draft in unit.drafts:
            attrs = draft.attrs
            if (
                unit_lost
                and draft.kind is not Kind.RECEIVED
                and (attrs.get("source"), attrs.get("message_id")) in unit_lost
            ):
                continue  # the caller records this message's outcome again (rejected)
            key = once_key(draft)
            if key is not None:
                # A redelivered message's releases are audited once: record ids already released
                # (earlier, on any host, or earlier in this very commit) get no second entry.
                if key in already:
                    continue
                already.add(key)
                plan.releases.append((key, seq + 1))
            seq += 1
            entry = seal(draft, seq=seq, prev=prev, at=at)
            plan.audit.append(indexed_row(seq, entry.body, entry.hash))
            prev = entry.hash
            # Entries about many records (reads, purges) are indexed per record, so an IG lead's
            # per-record trace finds them.
            plan.audit_records.extend((seq, rid) for rid in plan.audit[-1].record_ids)
    plan.seen = _fold_seen(seen_rows)
    plan.lineages, plan.holdings = _fold_lineages(plan.lineages)
    if plan.audit:
        plan.head = Head(seq, prev, plan.audit[-1].at)
    return plan


def indexed_row(seq: int, body: bytes, entry_hash: str) -> AuditRow:
    """The row to store for a sealed entry: its columns are ``columns_of`` its canonical body, the
    same function verification recomputes them with (so what is written and what is checked
    cannot drift; the body is parsed back rather than trusted to equal the attributes)."""
    cols = columns_of(json.loads(body))
    if cols.at is None or cols.kind is None:  # ``seal`` always writes both
        raise ValueError(f"audit entry #{seq} has no time or kind")
    return AuditRow(
        seq,
        cols.at,
        cols.kind,
        cols.message_id,
        cols.source,
        cols.consumer,
        cols.agreement_id,
        cols.record_id,
        body,
        entry_hash,
        cols.record_ids,
    )


def replay_view(keys: Sequence[ReplayKey], found: Mapping[ReplayKey, Seen]) -> dict[ReplayKey, Seen]:
    """Every asked key, ``NOT_SEEN`` where the store holds nothing."""
    return {key: found.get(key, NOT_SEEN) for key in keys}


__all__ = [
    "NONE_LOST",
    "CommitPlan",
    "HoldingRow",
    "SeenRow",
    "claim_keys",
    "claims",
    "indexed_row",
    "once_key",
    "plan_commit",
    "released_ids",
    "replay_view",
    "seal_time",
]
