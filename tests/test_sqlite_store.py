"""The SQLite store's group commit: multi-row statements keep the semantics of one row at a time,
the chain stays one line when several stores (processes) share a file, releases are audited once."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

from broker.audit.chain import Draft, Kind
from broker.ports.sqlite_store import SqliteStore, verify_audit_file
from broker.ports.store import CommitUnit, Seen
from broker.stages.replay import ReplayState


def released(record_id: str, message_id: str = "m1") -> Draft:
    return Draft(Kind.RELEASED, {"message_id": message_id, "source": "p", "consumer": "c", "record_id": record_id})


def audit_rows(path: Path) -> list[tuple[int, str, str | None]]:
    conn = sqlite3.connect(path)
    try:
        return [(int(s), str(k), r) for s, k, r in conn.execute("SELECT seq, kind, record_id FROM audit ORDER BY seq")]
    finally:
        conn.close()


async def test_upserts_of_one_key_in_one_commit_apply_in_order(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "b.db")
    await store.open()
    key = ("p", "m1")
    await store.commit(
        CommitUnit(
            seen=[
                (key, Seen(ReplayState.IN_PROGRESS, "first-content")),
                (key, Seen(ReplayState.DONE)),  # done keeps the first content hash (coalesce)
                (key, Seen(ReplayState.IN_PROGRESS, "other")),  # after done: ignored
            ]
        )
    )
    states = await store.replay_states([key, ("p", "never")])
    await store.close()
    assert states[key] == Seen(ReplayState.DONE, "first-content")
    assert states[("p", "never")].state is ReplayState.NEW


async def test_a_record_id_is_audited_as_released_once_within_and_across_commits(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "b.db")
    await store.open()
    await store.commit(CommitUnit(drafts=[released("r1"), released("r1"), released("r2")]))
    await store.commit(CommitUnit(drafts=[released("r2"), released("r3")]))
    await store.close()
    assert [r for _, kind, r in audit_rows(tmp_path / "b.db") if kind == "released"] == ["r1", "r2", "r3"]
    assert verify_audit_file(tmp_path / "b.db").ok


async def test_large_commits_span_several_statements_and_stay_one_chain(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "b.db")
    await store.open()
    drafts = [released(f"r{i}", f"m{i}") for i in range(1234)]
    many = Draft(Kind.PURGED, {"record_ids": [f"r{i}" for i in range(450)] + ["r0"], "count": 451})
    seen = [(("p", f"m{i}"), Seen(ReplayState.DONE)) for i in range(700)]
    await store.commit(CommitUnit(drafts=[*drafts, many], seen=seen))
    head = await store.current_head()
    await store.close()
    rows = audit_rows(tmp_path / "b.db")
    assert [seq for seq, _, _ in rows] == list(range(1, 1236))
    assert head[0] == 1235
    report = verify_audit_file(tmp_path / "b.db")
    assert report.ok
    assert report.entries == 1235
    assert report.head_hash == head[1]
    conn = sqlite3.connect(tmp_path / "b.db")
    assert conn.execute("SELECT COUNT(*) FROM audit_records WHERE seq = 1235").fetchone()[0] == 450
    assert conn.execute("SELECT COUNT(*) FROM seen WHERE state = 'done'").fetchone()[0] == 700
    conn.close()


async def test_stores_sharing_one_file_write_one_linear_chain(tmp_path: Path) -> None:
    """Broker processes on one host share the file: the head is read inside each write
    transaction, so interleaved commits from several writers never fork the chain."""
    stores = [SqliteStore(tmp_path / "b.db") for _ in range(3)]
    for store in stores:
        await store.open()

    async def writer(n: int, store: SqliteStore) -> None:
        for i in range(40):
            await store.commit(CommitUnit(drafts=[released(f"w{n}-{i}-{j}", f"w{n}-{i}") for j in range(5)]))

    await asyncio.gather(*(writer(n, s) for n, s in enumerate(stores)))
    heads = [await s.current_head() for s in stores]
    for store in stores:
        await store.close()
    report = verify_audit_file(tmp_path / "b.db")
    assert report.ok, report.problem
    assert report.entries == 3 * 40 * 5
    assert all(h == (report.head_seq, report.head_hash) for h in heads)
    bodies = [json.loads(b) for (b,) in sqlite3.connect(tmp_path / "b.db").execute("SELECT body FROM audit")]
    assert len({b["record_id"] for b in bodies}) == 600


def test_multi_row_statements_respect_a_low_bound_parameter_limit(tmp_path: Path) -> None:
    """SQLite before 3.32 binds at most 999 parameters per statement."""
    from broker.ports.sqlite_store import _insert_many

    conn = sqlite3.connect(tmp_path / "t.db")
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
    conn.execute("CREATE TABLE t (" + ", ".join(f"c{i}" for i in range(10)) + ")")
    _insert_many(conn, "INSERT INTO t VALUES ", [tuple(range(n, n + 10)) for n in range(450)])
    assert conn.execute("SELECT COUNT(*), SUM(c0) FROM t").fetchone() == (450, sum(range(450)))
