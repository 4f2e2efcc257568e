"""A store made by the release before revisions (issue 12) opens with this one, in both backends:
its records become revision 1 of their records, held by their consumers until their own expiry,
so feeds, corrections and retention (now driven by the holdings) go on as if they had been made
by this release."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from broker.ports.postgres_store import MIGRATIONS, VERSION_TABLE
from broker.ports.store import Store
from broker.ports.stores import store_for
from schemas.envelope import format_time

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
# The records table as the release before this one made it (one row per record id).
OLD_RECORDS = """
CREATE TABLE records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    record_id TEXT NOT NULL UNIQUE,
    consumer TEXT NOT NULL,
    agreement_id TEXT NOT NULL,
    agreement_revision INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    source TEXT NOT NULL,
    message_id TEXT NOT NULL,
    released_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX records_consumer ON records(consumer, id);
CREATE INDEX records_expiry ON records(expires_at);
"""
ROWS = [
    ("rec-a", "c1", "dsa-1", 1, "ae_assault", "p", "p:aaaa", format_time(T0), format_time(T0 + timedelta(days=30))),
    ("rec-b", "c2", "dsa-1", 1, "ae_assault", "p", "p:aaaa", format_time(T0), format_time(T0 + timedelta(days=30))),
    ("rec-c", "c1", "dsa-2", 1, "nte_incident", "q", "q:cccc", format_time(T0), format_time(T0 + timedelta(days=5))),
]
INSERT = (
    "INSERT INTO records(record_id, consumer, agreement_id, agreement_revision, event_type, source, message_id, "
    "released_at, expires_at, body) VALUES "
)


async def check_migrated(store: Store) -> None:
    await store.open()
    try:
        feed = await store.feed_page("c1", after=0, limit=10)
        assert [(r.id, r.record_id, r.revision, r.kind) for r in feed] == [
            (1, "rec-a", 1, "record"),
            (3, "rec-c", 1, "record"),
        ]
        lineage = (await store.lineages([("p", "p:aaaa")]))[("p", "p:aaaa")]
        assert (lineage.revision, lineage.message_id, lineage.event_type) == (1, "p:aaaa", "ae_assault")
        assert sorted((h.record_id, h.consumer) for h in lineage.holdings) == [("rec-a", "c1"), ("rec-b", "c2")]
        due = await store.expired(T0 + timedelta(days=6), 10)
        assert [(e.record_id, e.consumer, e.event_type) for e in due] == [("rec-c", "c1", "nte_incident")]
    finally:
        await store.close()
    # and opening it again changes nothing
    await store.open()
    try:
        assert len(await store.feed_page("c1", after=0, limit=10)) == 2
    finally:
        await store.close()


def test_an_older_sqlite_store_is_migrated(tmp_path: Path) -> None:
    db = tmp_path / "broker.db"
    conn = sqlite3.connect(db)
    conn.executescript(OLD_RECORDS)
    conn.executemany(INSERT + "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [(*row, b"{}") for row in ROWS])
    conn.commit()
    conn.close()
    asyncio.run(check_migrated(store_for(db)))


def test_an_older_postgresql_store_is_migrated(pg_store_url: str) -> None:
    async def old_store() -> None:
        conn = await asyncpg.connect(pg_store_url)
        try:
            await conn.execute(f"CREATE TABLE {VERSION_TABLE} (version integer NOT NULL)")
            for number in (1, 2):  # the schema as the release before revisions left it
                await conn.execute(MIGRATIONS[number - 1])
                await conn.execute(f"INSERT INTO {VERSION_TABLE}(version) VALUES ($1)", number)
            await conn.executemany(
                INSERT + "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)", [(*row, b"{}") for row in ROWS]
            )
        finally:
            await conn.close()

    asyncio.run(old_store())
    asyncio.run(check_migrated(store_for(pg_store_url)))


# The records table as the lifecycle release (issue 12) left it: revisions, no event-date period.
LIFECYCLE_RECORDS = """
CREATE TABLE records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    record_id TEXT NOT NULL,
    consumer TEXT NOT NULL,
    agreement_id TEXT NOT NULL,
    agreement_revision INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    source TEXT NOT NULL,
    message_id TEXT NOT NULL,
    released_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    body BLOB NOT NULL,
    revision INTEGER NOT NULL DEFAULT 1,
    kind TEXT NOT NULL DEFAULT 'record',
    current INTEGER NOT NULL DEFAULT 1,
    UNIQUE (record_id, revision, kind)
);
CREATE INDEX records_consumer ON records(consumer, id);
CREATE INDEX records_record ON records(record_id);
"""


def test_a_sqlite_store_from_the_lifecycle_release_gains_the_event_date_period(tmp_path: Path) -> None:
    db = tmp_path / "broker.db"
    conn = sqlite3.connect(db)
    conn.executescript(LIFECYCLE_RECORDS)
    conn.executemany(INSERT + "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [(*row, b"{}") for row in ROWS])
    conn.commit()
    conn.close()

    async def check() -> None:
        store = store_for(db)
        await store.open()
        try:
            assert [r.record_id for r in await store.feed_page("c1", after=0, limit=10)] == ["rec-a", "rec-c"]
            assert await store.feed_page("c1", after=0, limit=10, period="2026-Q2") == []  # none had one
        finally:
            await store.close()
        await store.open()  # and again: nothing to do
        await store.close()

    asyncio.run(check())
    columns = {row[1] for row in sqlite3.connect(db).execute("PRAGMA table_info(records)")}
    assert "period" in columns
