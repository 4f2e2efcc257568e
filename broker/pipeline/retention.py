"""The retention flow: records past their agreement's retention period are deleted, each purge
audited in the same transaction as the deletion (ICO code: secure deletion, and being able to
show it).

    1 read up to 1,000 expired records ─► 2 group them by consumer and agreement
      ─► 3 one ``purged`` entry per group + the deletions: one commit ─► repeat until none left
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

from broker.audit import entries
from broker.logs import get_logger
from broker.ports.store import CommitUnit, Store
from schemas.envelope import format_time

log = get_logger("sv_broker.retention")

PAGE = 1000


async def purge_quarantine(store: Store, now: datetime, retention: timedelta) -> int:
    """Delete every quarantined message refused more than ``retention`` ago, each page of them
    audited (``quarantine_purged``, counts by reason) in the commit that deletes it; returns how many.

    Threat: quarantine holds what partners sent and the broker refused (bodies only where a person
    needs them to diagnose, and never identifier-like: ``broker.stages.outcome.keep_body``); kept
    for ever, even that becomes a store of other people's data without a purpose (UK GDPR art.
    5(1)(e), storage limitation)."""
    before = now - retention
    stamp = format_time(before)
    total = 0
    while True:
        rows = await store.expired_quarantine(before, PAGE)
        if not rows:
            return total
        reasons = Counter(row.reason for row in rows)
        draft = entries.quarantine_purged(reasons, stamp, retention.days)
        await store.commit(CommitUnit(drafts=[draft], purge_quarantine=[r.id for r in rows]))
        total += len(rows)
        log.info("quarantine_purged", count=len(rows))


async def purge_expired(store: Store, now: datetime) -> int:
    """Delete every expired record; returns how many."""
    total = 0
    while True:
        rows = await store.expired(now, PAGE)
        if not rows:
            return total
        groups: dict[tuple[str, str], list[str]] = {}
        for row in rows:
            groups.setdefault((row.consumer, row.agreement_id), []).append(row.record_id)
        drafts = [entries.purged(consumer, agreement, ids) for (consumer, agreement), ids in sorted(groups.items())]
        await store.commit(CommitUnit(drafts=drafts, purge=[r.record_id for r in rows]))
        total += len(rows)
        log.info("records_purged", count=len(rows))


async def purge_held(store: Store, now: datetime) -> int:
    """Delete every held event whose hold time ended (``expires_at`` <= ``now``), unreleased: per
    page, one ``held_purged`` entry per agreement (counts by reason, no ids of people) in the
    commit that deletes them; returns how many.

    Threat: an agreement that is never renewed would otherwise keep its partners' whole events,
    sealed but kept, for ever (UK GDPR art. 5(1)(e), storage limitation); its ``[hold]`` said how
    long (``days``, never beyond its retention)."""
    stamp = format_time(now)
    total = 0
    while True:
        rows = await store.expired_held(now, PAGE)
        if not rows:
            return total
        by_agreement: dict[str, Counter[str]] = {}
        for row in rows:
            by_agreement.setdefault(row.agreement_id, Counter())[row.reason] += 1
        drafts = [entries.held_purged(agreement, reasons, stamp) for agreement, reasons in sorted(by_agreement.items())]
        await store.commit(CommitUnit(drafts=drafts, unhold=[row.id for row in rows]))
        total += len(rows)
        log.info("held_purged", count=len(rows))
