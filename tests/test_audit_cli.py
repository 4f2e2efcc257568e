"""The audit CLI's query, trace and CSV export on a real store."""

from __future__ import annotations

import asyncio
import csv
import json
import subprocess
import sys
from pathlib import Path

from broker.audit.chain import Draft, Kind
from broker.ports.sqlite_store import SqliteStore
from broker.ports.store import CommitUnit


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "broker.cli", *args], capture_output=True, text=True, check=False)


def make_store(path: Path) -> None:
    async def go() -> None:
        store = SqliteStore(path)
        await store.open()
        await store.commit(
            CommitUnit(
                drafts=[
                    Draft(Kind.RECEIVED, {"message_id": "m-1", "source": "derbyshire-police"}),
                    Draft(Kind.RELEASED, {"message_id": "m-1", "consumer": "derby-csp-analysts", "record_id": "rec-1"}),
                    # a value an attacker chose (e.g. a requested consumer id in a denied read)
                    Draft(Kind.ACCESS_DENIED, {"consumer": '=HYPERLINK("http://evil")', "reason": "not_your_feed"}),
                    Draft(Kind.PURGED, {"record_ids": ["rec-1"], "count": 1, "reason": "retention_expired"}),
                ]
            )
        )
        await store.close()

    asyncio.run(go())


def test_query_trace_and_export(tmp_path: Path) -> None:
    db = tmp_path / "broker.db"
    make_store(db)
    query = cli("audit", "query", "--db", str(db), "--message-id", "m-1")
    assert [json.loads(line)["kind"] for line in query.stdout.splitlines()] == ["received", "released"]
    trace = cli("audit", "trace", "--db", str(db), "rec-1")
    assert [json.loads(line)["kind"] for line in trace.stdout.splitlines()] == ["received", "released", "purged"]
    assert cli("audit", "trace", "--db", str(db), "rec-nope").returncode == 1
    out = tmp_path / "audit.csv"
    assert cli("audit", "export", "--db", str(db), "--format", "csv", "--out", str(out)).returncode == 0
    rows = list(csv.DictReader(out.read_text(encoding="utf-8").splitlines()))
    assert len(rows) == 4
    denied = next(r for r in rows if r["kind"] == "access_denied")
    assert denied["consumer"].startswith("'=")  # no formula reaches a spreadsheet
    jsonl = tmp_path / "audit.jsonl"
    assert cli("audit", "export", "--db", str(db), "--out", str(jsonl)).returncode == 0
    assert cli("audit", "verify", "--export", str(jsonl)).returncode == 0
