"""Audit trail: hash chain, group commit, exactly-once release entries, tamper detection.

The tampering tests edit the SQLite file with SQL, as an attacker with the file would; reads go
through the store contract."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from broker.audit.chain import GENESIS, Draft, Kind, verify_chain
from broker.ports.sqlite_store import SqliteStore, verify_audit_file
from broker.ports.store import CommitUnit
from tests.helpers import audit_entries


async def _fill(path: Path, n: int) -> SqliteStore:
    store = SqliteStore(path)
    await store.open()
    units = [
        CommitUnit(drafts=[Draft(Kind.RECEIVED, {"message_id": f"m-{i:08d}", "source": "derbyshire-police"})])
        for i in range(n)
    ]
    await asyncio.gather(*(store.commit(u) for u in units))  # concurrent callers: group commit
    return store


def _cli_verify(db: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", "audit", "verify", "--db", str(db)],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture
def filled(tmp_path: Path) -> Path:
    async def go() -> None:
        store = await _fill(tmp_path / "broker.db", 40)
        assert store.commits < 40, "concurrent commits must share transactions (group commit)"
        await store.close()

    asyncio.run(go())
    return tmp_path / "broker.db"


def test_intact_chain_verifies(filled: Path) -> None:
    report = verify_audit_file(filled)
    assert report.ok
    assert report.entries == 40
    assert report.head_seq == 40
    result = _cli_verify(filled)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "intact: 40 entries" in result.stdout


def test_modified_entry_is_named(filled: Path) -> None:
    conn = sqlite3.connect(filled)
    body = conn.execute("SELECT body FROM audit WHERE seq = 17").fetchone()[0]
    conn.execute("UPDATE audit SET body = ? WHERE seq = 17", (bytes(body).replace(b"m-0", b"m-9"),))
    conn.commit()
    conn.close()
    report = verify_audit_file(filled)
    assert not report.ok
    assert report.first_bad_seq == 17
    result = _cli_verify(filled)
    assert result.returncode == 1
    assert "BROKEN at sequence 17" in result.stdout


def test_modified_entry_with_recomputed_hash_is_named(filled: Path) -> None:
    """An editor who also recomputes the entry's own hash (and its indexed column) still breaks
    the next link; one who forgets the column is caught at the entry itself."""
    import hashlib

    conn = sqlite3.connect(filled)
    body = bytes(conn.execute("SELECT body FROM audit WHERE seq = 9").fetchone()[0]).replace(b"m-0", b"m-9")
    conn.execute("UPDATE audit SET body = ?, hash = ? WHERE seq = 9", (body, hashlib.sha256(body).hexdigest()))
    conn.commit()
    report = verify_audit_file(filled)
    assert (report.ok, report.first_bad_seq) == (False, 9)
    assert report.problem is not None
    assert "message_id column" in report.problem
    conn.execute("UPDATE audit SET message_id = 'm-90000008' WHERE seq = 9")
    conn.commit()
    conn.close()
    report = verify_audit_file(filled)
    assert not report.ok
    assert report.first_bad_seq == 10
    assert report.problem == "previous-hash link is broken"


def test_deleted_entry_is_named(filled: Path) -> None:
    conn = sqlite3.connect(filled)
    conn.execute("DELETE FROM audit WHERE seq = 23")
    conn.commit()
    conn.close()
    report = verify_audit_file(filled)
    assert not report.ok
    assert report.first_bad_seq == 23
    assert "BROKEN at sequence 23" in _cli_verify(filled).stdout


def test_swapped_entries_are_named(filled: Path) -> None:
    conn = sqlite3.connect(filled)
    rows = {seq: (body, h) for seq, body, h in conn.execute("SELECT seq, body, hash FROM audit WHERE seq IN (5, 6)")}
    conn.execute("UPDATE audit SET body = ?, hash = ? WHERE seq = 5", rows[6])
    conn.execute("UPDATE audit SET body = ?, hash = ? WHERE seq = 6", rows[5])
    conn.commit()
    conn.close()
    report = verify_audit_file(filled)
    assert not report.ok
    assert report.first_bad_seq == 5


def test_inserted_entry_is_named(filled: Path) -> None:
    from datetime import UTC, datetime

    from broker.audit.chain import seal

    conn = sqlite3.connect(filled)
    # Forge an entry that links correctly to #30 and slot it in as #31, shifting the rest up.
    prev = conn.execute("SELECT hash FROM audit WHERE seq = 30").fetchone()[0]
    conn.execute("UPDATE audit SET seq = seq + 1000 WHERE seq > 30")
    forged = seal(Draft(Kind.RELEASED, {"record_id": "rec-forged"}), seq=31, prev=prev, at=datetime.now(UTC))
    conn.execute(  # with its indexed columns filled in as the broker would
        "INSERT INTO audit(seq, at, kind, record_id, body, hash) VALUES (31, ?, 'released', 'rec-forged', ?, ?)",
        (forged.at, forged.body, forged.hash),
    )
    conn.execute("UPDATE audit SET seq = seq - 999 WHERE seq > 1000")
    conn.commit()
    conn.close()
    report = verify_audit_file(filled)
    assert not report.ok
    assert report.first_bad_seq == 32  # the original #31 no longer links to its predecessor


def test_release_entries_are_written_once_per_record_id(tmp_path: Path) -> None:
    async def go() -> None:
        store = SqliteStore(tmp_path / "broker.db")
        await store.open()
        release = Draft(Kind.RELEASED, {"record_id": "rec-1", "consumer": "derby-csp-analysts"})
        await store.commit(CommitUnit(drafts=[Draft(Kind.RECEIVED, {}), release]))
        await store.commit(CommitUnit(drafts=[Draft(Kind.RECEIVED, {"redelivered": True}), release]))
        await store.close()

    asyncio.run(go())
    kinds = [e["kind"] for e in audit_entries(tmp_path / "broker.db")]
    assert kinds == ["received", "released", "received"]
    assert verify_audit_file(tmp_path / "broker.db").ok


def test_chain_resumes_after_restart(tmp_path: Path) -> None:
    async def go() -> None:
        for _ in range(3):
            store = await _fill(tmp_path / "broker.db", 5)
            await store.close()

    asyncio.run(go())
    report = verify_audit_file(tmp_path / "broker.db")
    assert report.ok
    assert report.entries == 15


def test_verify_chain_empty_is_ok() -> None:
    report = verify_chain([])
    assert report.ok
    assert report.head_hash == GENESIS


def test_two_writers_on_one_store_do_not_fork_the_chain(tmp_path: Path) -> None:
    """Two broker processes sharing one store (competing consumers on one host) each extend the
    chain from the head on disk, so the chain stays one chain."""

    async def go() -> None:
        first, second = SqliteStore(tmp_path / "broker.db"), SqliteStore(tmp_path / "broker.db")
        await first.open()
        await second.open()
        units = [
            (store, CommitUnit(drafts=[Draft(Kind.RECEIVED, {"message_id": f"m-{i}"})]))
            for i in range(60)
            for store in (first, second)
        ]
        await asyncio.gather(*(store.commit(unit) for store, unit in units))
        await first.close()
        await second.close()

    asyncio.run(go())
    report = verify_audit_file(tmp_path / "broker.db")
    assert report.ok, report.problem
    assert report.entries == 120
