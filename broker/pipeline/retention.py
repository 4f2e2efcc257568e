"""The retention flow: records past their agreement's retention period are deleted, each purge
audited in the same transaction as the deletion (ICO code: secure deletion, and being able to
show it), and each consumer that holds one is told, so its own copy follows.

    1 read up to 1,000 expired holdings (what each consumer was sent, in either mode)
      ─► 2 a deletion notice per record its consumer still holds (not one withdrawn before)
      ─► 3 RabbitMQ: the notices published, confirmed (embedded: they join the feed in step 4)
      ─► 4 one ``purged`` entry per consumer and agreement + the deletions: one commit ─► repeat

Notices go out before the commit that deletes: if the commit fails, the next run sends them
again (a notice is idempotent: the consumer deletes what it has already deleted); the other order
could delete and crash before telling anyone. A notice holds no personal data.

Replay-guard rows and quarantine have their own retention (``purge_replay_guard``,
``purge_quarantine``); held events theirs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import TypeVar

from broker.audit import entries
from broker.logs import get_logger
from broker.ports.delivery import Deliverable, Delivery
from broker.ports.store import CommitUnit, Expired, ExpiredQuarantine, HeldRow, ReplayKey, Store, StoredRecord
from broker.stages.freshness import FreshnessWindow
from schemas.envelope import format_time
from schemas.errors import Reason
from schemas.messages import consumer_notice

log = get_logger("sv_broker.retention")

PAGE = 1000
# How long a deletion notice stays in an embedded consumer's feed (it names a record id, nothing
# else): long enough for a consumer that reads monthly to see it.
NOTICE_RETENTION = timedelta(days=90)
# Replay-guard rows are kept this much beyond the freshness window (hosts' clocks differ).
REPLAY_MARGIN = timedelta(days=1)


T = TypeVar("T")


async def _in_pages(
    store: Store,
    read: Callable[[], Awaitable[Sequence[T]]],
    unit_for: Callable[[Sequence[T]], CommitUnit],
    event: str,
) -> int:
    """The loop every purge runs: read a page of what expired, delete it in the commit that audits
    it, until nothing is left; returns how many went."""
    total = 0
    while rows := await read():
        await store.commit(unit_for(rows))
        total += len(rows)
        log.info(event, count=len(rows))
    return total


async def purge_quarantine(store: Store, now: datetime, retention: timedelta) -> int:
    """Delete every quarantined message refused more than ``retention`` ago, each page of them
    audited (``quarantine_purged``, counts by reason) in the commit that deletes it; returns how many.

    Threat: quarantine holds what partners sent and the broker refused (bodies only where a person
    needs them to diagnose, and never identifier-like: ``broker.stages.outcome.keep_body``); kept
    for ever, even that becomes a store of other people's data without a purpose (UK GDPR art.
    5(1)(e), storage limitation)."""
    before = now - retention
    stamp = format_time(before)

    def unit(rows: Sequence[ExpiredQuarantine]) -> CommitUnit:
        draft = entries.quarantine_purged(Counter(row.reason for row in rows), stamp, retention.days)
        return CommitUnit(drafts=[draft], purge_quarantine=[r.id for r in rows])

    return await _in_pages(store, lambda: store.expired_quarantine(before, PAGE), unit, "quarantine_purged")


def deletion_notice(row: Expired, now: datetime) -> StoredRecord:
    """The notice a consumer gets when the broker purges a record it holds (pure). Dated by the end
    of the record's retention, not the purge's run: sent again after a failed commit, it is the
    same bytes."""
    body = consumer_notice(
        notice="deleted",
        record_id=row.record_id,
        consumer=row.consumer,
        agreement_id=row.agreement_id,
        revision=row.revision,
        reason=Reason.RETENTION_EXPIRED.value,
        at=row.expires_at or now,
    )
    return StoredRecord(
        record_id=row.record_id,
        consumer=row.consumer,
        agreement_id=row.agreement_id,
        agreement_revision=0,
        event_type=row.event_type,
        source=row.source,
        message_id="",
        released_at=now,
        expires_at=now + NOTICE_RETENTION,
        body=body,
        revision=row.revision,
        kind="deleted",
    )


async def purge_expired(store: Store, now: datetime, delivery: Delivery) -> int:
    """Delete every expired record, telling each consumer that holds one; returns how many."""
    total = 0
    while True:
        rows = await store.expired(now, PAGE)
        if not rows:
            break
        notices = [deletion_notice(row, now) for row in rows if not row.withdrawn]
        batch = Deliverable(now, notices=notices)
        durable = delivery.with_audit(batch)
        if not durable.complete:
            await delivery.deliver(batch)  # confirmed before the deletion is committed
        groups: dict[tuple[str, str], list[str]] = {}
        told: Counter[tuple[str, str]] = Counter((n.consumer, n.agreement_id) for n in notices)
        for row in rows:
            groups.setdefault((row.consumer, row.agreement_id), []).append(row.record_id)
        drafts = [
            entries.purged(consumer, agreement, ids, told[(consumer, agreement)])
            for (consumer, agreement), ids in sorted(groups.items())
        ]
        unit = CommitUnit(
            drafts=drafts,
            purge=[r.record_id for r in rows],
            records=list(durable.records),
            notices_until=format_time(now + NOTICE_RETENTION),
        )
        await store.commit(unit)
        total += len(rows)
        log.info("records_purged", count=len(rows), notified=len(notices))
    # Notices in embedded feeds past their own retention (a withdrawal's, with its record's; a
    # deletion's, 90 days after it): no entry (they hold nothing but a record id, its purge audited).
    await store.commit(CommitUnit(purge_notices_before=format_time(now)))
    return total


async def purge_replay_guard(store: Store, now: datetime, window: FreshnessWindow) -> int:
    """Forget the ids of messages that left nothing behind, once the freshness window refuses any
    byte-identical copy: first seen before now - max_age - max_future (minus a day for hosts'
    clocks). Kept for ever, the replay guard would grow by a row per message for the life of the
    partnership.

    Not every id: an adapter re-signs a resend with a fresh time, which passes freshness. So a
    message that released records is remembered for as long as its records' holdings (kept as
    tombstones after retention), and the one that brought a record to its current revision too
    (``sql.EXPIRED_SEEN``): a resend of either stays a duplicate. A message every agreement refused
    is forgotten: a resend is decided again, and released only if an agreement now allows it (and
    then audited like any release). One still in progress is kept for its redelivery."""
    stamp = format_time(now - window.max_age - window.max_future - REPLAY_MARGIN)

    def unit(keys: Sequence[ReplayKey]) -> CommitUnit:
        return CommitUnit(drafts=[entries.replay_guard_purged(len(keys), stamp)], purge_seen=list(keys))

    return await _in_pages(store, lambda: store.expired_seen(stamp, PAGE), unit, "replay_guard_purged")


async def purge_held(store: Store, now: datetime) -> int:
    """Delete every held event whose hold time ended (``expires_at`` <= ``now``), unreleased: per
    page, one ``held_purged`` entry per agreement (counts by reason, no ids of people) in the
    commit that deletes them; returns how many.

    Threat: an agreement that is never renewed would otherwise keep its partners' whole events,
    sealed but kept, for ever (UK GDPR art. 5(1)(e), storage limitation); its ``[hold]`` said how
    long (``days``, never beyond its retention)."""
    stamp = format_time(now)

    def unit(rows: Sequence[HeldRow]) -> CommitUnit:
        by_agreement: dict[str, Counter[str]] = {}
        for row in rows:
            by_agreement.setdefault(row.agreement_id, Counter())[row.reason] += 1
        drafts = [entries.held_purged(agreement, reasons, stamp) for agreement, reasons in sorted(by_agreement.items())]
        return CommitUnit(drafts=drafts, unhold=[row.id for row in rows])

    return await _in_pages(store, lambda: store.expired_held(now, PAGE), unit, "held_purged")
