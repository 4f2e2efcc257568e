"""Issue 11 item 14: quarantined messages have their own retention (30 days by default), purged
and audited like records, on both backends; the AMQP quarantine queue has the same period
(``tests/test_rabbitmq_definitions.py``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from broker.demo import DemoEnvironment
from broker.pipeline.retention import purge_quarantine
from broker.pipeline.trail import verify_store
from broker.ports.store import AuditQuery, CommitUnit, QuarantineItem, Store
from broker.service import Broker
from broker.settings import Settings
from tests import test_store_contract as contract

location = contract.location
make_store = contract.make_store

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def item(days_ago: float, reason: str, body: bytes | None = b"{}", *, at: datetime = NOW) -> QuarantineItem:
    return QuarantineItem(
        at=at - timedelta(days=days_ago),
        reason=reason,
        message="m",
        source="derby-pubwatch",
        message_id=None,
        body_sha256="0" * 64,
        body=body,
    )


async def all_quarantined(store: Store) -> list[QuarantineItem]:
    return [row.item for row in await store.quarantine_page(after=0, limit=1000)]


async def entries_of(store: Store, kind: str) -> list[dict[str, object]]:
    rows = await store.audit_page(AuditQuery(kind=kind, limit=100))
    return [json.loads(r.body) for r in rows]


async def test_messages_past_the_retention_are_purged_and_audited(make_store: Callable[..., Store]) -> None:
    store = await make_store()
    old = [item(45, "schema_invalid"), item(31, "bad_signature"), item(30.5, "schema_invalid", None)]
    young = [item(29.9, "schema_invalid"), item(1, "stale", None)]
    await store.commit(CommitUnit(quarantine=old + young))

    assert await purge_quarantine(store, NOW, timedelta(days=30)) == 3
    assert [q.at for q in await all_quarantined(store)] == [q.at for q in young]
    [entry] = await entries_of(store, "quarantine_purged")
    assert entry["count"] == 3
    assert entry["reasons"] == {"bad_signature": 1, "schema_invalid": 2}
    assert entry["refused_before"] == "2026-11-01T12:00:00.000Z"
    assert entry["retention_days"] == 30
    assert (await verify_store(store)).ok

    # Nothing more to purge: no entry for nothing.
    assert await purge_quarantine(store, NOW, timedelta(days=30)) == 0
    assert len(await entries_of(store, "quarantine_purged")) == 1


async def test_purging_pages_through_many(make_store: Callable[..., Store]) -> None:
    store = await make_store()
    await store.commit(CommitUnit(quarantine=[item(40, f"r{n % 3}") for n in range(2500)]))
    assert await purge_quarantine(store, NOW, timedelta(days=30)) == 2500
    assert await all_quarantined(store) == []
    purged = await entries_of(store, "quarantine_purged")
    assert [e["count"] for e in purged] == [1000, 1000, 500]  # one audited commit per page


async def test_the_broker_purges_quarantine_with_its_retention_setting(env: DemoEnvironment, tmp_path: Path) -> None:
    settings = Settings(
        policy_dir=env.policy_dir,
        keys_dir=env.keys_dir,
        secrets_file=env.secrets_file,
        data_dir=tmp_path,
        http_port=0,
        quarantine_retention=timedelta(days=7),
    )
    broker = Broker(settings)
    await broker.start()
    # Relative to the real clock: the broker's own retention job (run at start, and hourly) purges
    # at the real time too, and must agree with the purge below on which message is past 7 days.
    now = datetime.now(UTC).replace(microsecond=0)  # the store keeps milliseconds
    try:
        assert broker.store is not None
        old, young = item(8, "schema_invalid", at=now), item(6, "schema_invalid", at=now)
        await broker.store.commit(CommitUnit(quarantine=[old, young]))
        await broker.purge_expired(now)
        assert [q.at for q in await all_quarantined(broker.store)] == [young.at]
        [entry] = await entries_of(broker.store, "quarantine_purged")
        assert entry["retention_days"] == 7
    finally:
        await broker.stop()
