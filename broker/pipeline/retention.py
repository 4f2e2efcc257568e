"""The retention flow: records past their agreement's retention period are deleted, each purge
audited in the same transaction as the deletion (ICO code: secure deletion, and being able to
show it).

    1 read up to 1,000 expired records ─► 2 group them by consumer and agreement
      ─► 3 one ``purged`` entry per group + the deletions: one commit ─► repeat until none left
"""

from __future__ import annotations

from datetime import datetime

from broker.audit import entries
from broker.logs import get_logger
from broker.ports.store import CommitUnit, Store

log = get_logger("sv_broker.retention")

PAGE = 1000


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
