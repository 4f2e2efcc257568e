"""Reading the audit trail through the store contract, the same way on every backend.

The HTTP audit API (``transports/http_audit.py``) and the offline ``sv-broker audit`` commands
both use these, so a trace or a verification reads the same on SQLite and on PostgreSQL:

- :func:`verify_store`: 1 read the chain page by page, each entry with its indexed columns ─►
  2 recompute it and check every column against its entry (pure, ``audit/trail.py``), with the
  signed checkpoints when given;
- :func:`trace_entries`: 1 the record's own entries (its release, reads, purge) ─► 2 the entries
  of the message it came from ─► 3 without the entries about *other* consumers' records (each
  decided on the entry's body: the store answers only with entries whose body matches);
- :func:`audit_pages`: every entry matching a query, in pages (exports).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from broker.audit.chain import ChainRow
from broker.audit.columns import body_columns
from broker.audit.trail import AuditReport, verify_trail
from broker.ports.store import AuditQuery, AuditRow, Checkpoint, Store

PAGE = 5000


async def audit_pages(store: Store, query: AuditQuery, page: int = PAGE) -> AsyncIterator[list[AuditRow]]:
    """Every entry matching ``query`` (its ``after`` is the start; its ``limit`` is ignored)."""
    after = query.after
    while rows := await store.audit_page(replace(query, after=after, limit=page)):
        yield rows
        after = rows[-1].seq


async def verify_store(
    store: Store,
    checkpoints: list[Checkpoint] | None = None,
    keys: Mapping[str, Ed25519PublicKey] | None = None,
) -> AuditReport:
    rows: list[ChainRow] = []
    async for page in audit_pages(store, AuditQuery()):
        # with each row's indexed columns: a column that is not its body's value is tampering too
        rows.extend((row.seq, row.body, row.hash, row.columns) for row in page)
    # Hashing and canonical re-encoding of every entry: CPU work, off the event loop.
    return await asyncio.to_thread(verify_trail, rows, checkpoints, keys)


async def trace_entries(store: Store, record_id: str, message_id: str) -> dict[int, bytes]:
    """seq -> entry body, for one record: received -> decisions -> releases -> reads -> purge, and
    every later revision's (its correction or withdrawal message: received, released, withdrawn)."""
    seen: dict[int, bytes] = {}
    messages = [message_id]

    async def collect(query: AuditQuery) -> None:
        async for page in audit_pages(store, query):
            for row in page:
                # what the entry says, not what its (rewritable) index column says
                body = body_columns(row.body)
                # the message's entries about *other* consumers' records belong to their traces
                if body is not None and body.record_id not in (None, record_id):
                    continue
                seen[row.seq] = row.body
                if body is not None and body.message_id is not None and body.message_id not in messages:
                    messages.append(body.message_id)  # a later revision of the record

    await collect(AuditQuery(record_id=record_id))
    for mid in messages:
        await collect(AuditQuery(message_id=mid))
    # A record counted in a figures flow: the releases of each quarter it was counted in.
    quarters = []
    for body in list(seen.values()):
        doc = json.loads(body)
        if doc.get("kind") != "counted":
            continue
        for fid in doc.get("figures_ids") or []:
            if isinstance(fid, str) and fid not in quarters:
                quarters.append(fid)
    for fid in quarters:
        async for page in audit_pages(store, AuditQuery(record_id=fid)):
            seen.update((row.seq, row.body) for row in page)
    return dict(sorted(seen.items()))
