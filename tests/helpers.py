"""Helpers shared by the broker-level tests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from broker.pipeline.trail import audit_pages
from broker.policy.engine import decide
from broker.policy.loader import PolicySet
from broker.ports.store import AuditQuery, QuarantineItem, Store
from broker.ports.stores import store_for
from broker.registry import Registry
from broker.stages.parse import parse
from broker.stages.types import Fresh
from broker.stages.validate import validate
from broker.stages.verify import verify


def expected_records(body: bytes, registry: Registry, policy: PolicySet) -> dict[str, dict[str, Any]]:
    """consumer -> minimised record data the engine decides for this signed body."""
    now = datetime.now(UTC)
    validated = validate(Fresh(verify(parse(body, max_bytes=65536, now=now), registry), now))
    decision = decide(validated, policy, datetime.now(UTC))
    return {release.consumer: release.record for release in decision.releases}


T = TypeVar("T")


def read_store(location: str | Path, work: Callable[[Store], Awaitable[T]]) -> T:
    """Run ``work`` on a read-only view of the store, through the store contract (never SQL).

    Callable from a synchronous test and from inside a running event loop alike (it runs on a
    thread of its own with its own loop; the broker under test keeps its own connections)."""

    async def run() -> T:
        store = store_for(location, readonly=True)
        await store.open()
        try:
            return await work(store)
        finally:
            await store.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, run()).result()


def audit_entries(location: str | Path, kind: str | None = None, **filters: str) -> list[dict[str, Any]]:
    """Every audit entry (of ``kind``, matching ``filters``), in chain order, as JSON."""

    async def work(store: Store) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        async for page in audit_pages(store, AuditQuery(kind=kind, **filters)):  # type: ignore[arg-type]
            out.extend(json.loads(row.body) for row in page)
        return out

    return read_store(location, work)


@dataclass(frozen=True, slots=True)
class Held:
    """A stored record as a consumer's feed serves it, with the message it was released from."""

    consumer: str
    message_id: str
    event_type: str
    record: dict[str, Any]


def stored_records(location: str | Path) -> list[Held]:
    """Every record still held (not purged), in release order, through the feeds."""

    async def work(store: Store) -> list[Held]:
        message_of: dict[str, str] = {}
        async for page in audit_pages(store, AuditQuery(kind="released")):
            message_of.update((row.record_id or "", row.message_id or "") for row in page)
        consumers = sorted((await store.counts()).records_by_consumer)
        held: list[tuple[int, Held]] = []
        for consumer in consumers:
            after = 0
            while rows := await store.feed_page(consumer, after=after, limit=1000):
                for row in rows:
                    record = json.loads(row.body)
                    held.append((row.id, Held(consumer, message_of[row.record_id], row.event_type, record)))
                after = rows[-1].id
        return [h for _, h in sorted(held, key=lambda pair: pair[0])]

    return read_store(location, work)


def quarantined(location: str | Path) -> list[QuarantineItem]:
    async def work(store: Store) -> list[QuarantineItem]:
        out: list[QuarantineItem] = []
        after = 0
        while rows := await store.quarantine_page(after=after, limit=1000):
            out.extend(row.item for row in rows)
            after = rows[-1].id
        return out

    return read_store(location, work)


def audit_counts(location: str | Path) -> dict[str, int]:
    async def work(store: Store) -> dict[str, int]:
        return (await store.counts()).audit_by_kind

    return read_store(location, work)
