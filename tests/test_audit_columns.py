"""The audit rows' indexed columns are checked against the entries' bodies, on both backends.

Threat: someone with write access to the database rewrites a column the queries and the record
trace select by (a record id, a consumer) and leaves the hashed body alone. The chain alone still
verifies; the trace and filtered queries would lie. Here each column is tampered in turn with raw
SQL on the real table (as that attacker would), and verification must name the entry and the
column, never a value. Reads otherwise go through the store contract.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.audit.chain import Draft, Kind, verify_chain
from broker.audit.columns import Columns, columns_of
from broker.audit.commit_plan import plan_commit
from broker.pipeline.trail import audit_pages, trace_entries, verify_store
from broker.ports.sqlite_store import SqliteStore
from broker.ports.store import GENESIS_HEAD, AuditQuery, CommitUnit, Store
from tests import test_store_contract as contract
from tests.test_store_contract import Location

# the conformance suite's fixtures: each test runs on SQLite and on the real PostgreSQL (a schema of
# its own, dropped afterwards; without PostgreSQL skipped locally, failed in CI)
location = contract.location
make_store = contract.make_store

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

# seq: what the entry is (every indexed column is set on some entry and absent on another)
ENTRIES = [
    Draft(Kind.RECEIVED, {"message_id": "m1", "source": "p"}),  # 1
    Draft(
        Kind.RELEASED,
        {"message_id": "m1", "source": "p", "consumer": "c1", "agreement_id": "dsa-1", "record_id": "r1"},
    ),  # 2
    Draft(
        Kind.RELEASED,
        {"message_id": "m1", "source": "p", "consumer": "c2", "agreement_id": "dsa-2", "record_id": "r2"},
    ),  # 3
    Draft(Kind.ACCESSED, {"sub": "a1", "consumer": "c1", "record_ids": ["r1"]}),  # 4
    Draft(Kind.RECEIVED, {"message_id": "m2", "source": "q"}),  # 5
    Draft(Kind.PURGED, {"consumer": "c2", "agreement_id": "dsa-2", "record_ids": ["r2", "r1"]}),  # 6
]
# values planted by the tampering below: none may appear in a report
PLANTED = ("r9", "c9", "m9", "q9", "dsa-9", "1999-01-01")

# (case, SQL on the real tables, first bad seq, what the report must name)
TAMPERING = [
    ("record_id changed", "UPDATE audit SET record_id = 'r9' WHERE seq = 2", 2, "record_id column"),
    ("record_id nulled", "UPDATE audit SET record_id = NULL WHERE seq = 3", 3, "record_id column"),
    ("record_id set where the body has none", "UPDATE audit SET record_id = 'r1' WHERE seq = 5", 5, "record_id column"),
    ("consumer changed", "UPDATE audit SET consumer = 'c9' WHERE seq = 3", 3, "consumer column"),
    ("consumer nulled", "UPDATE audit SET consumer = NULL WHERE seq = 4", 4, "consumer column"),
    ("consumer set where the body has none", "UPDATE audit SET consumer = 'c1' WHERE seq = 1", 1, "consumer column"),
    ("message_id changed", "UPDATE audit SET message_id = 'm9' WHERE seq = 2", 2, "message_id column"),
    ("message_id nulled", "UPDATE audit SET message_id = NULL WHERE seq = 1", 1, "message_id column"),
    ("message_id set where the body has none", "UPDATE audit SET message_id = 'm9' WHERE seq = 6", 6, "message_id"),
    ("source changed", "UPDATE audit SET source = 'q9' WHERE seq = 5", 5, "source column"),
    ("source set where the body has none", "UPDATE audit SET source = 'p' WHERE seq = 4", 4, "source column"),
    ("agreement_id changed", "UPDATE audit SET agreement_id = 'dsa-9' WHERE seq = 6", 6, "agreement_id column"),
    ("agreement_id nulled", "UPDATE audit SET agreement_id = NULL WHERE seq = 2", 2, "agreement_id column"),
    ("kind changed", "UPDATE audit SET kind = 'received' WHERE seq = 3", 3, "kind column"),
    ("at changed", "UPDATE audit SET at = '1999-01-01T00:00:00.000Z' WHERE seq = 4", 4, "at column"),
    ("seq changed", "UPDATE audit SET seq = 99 WHERE seq = 3", 3, "sequence out of step"),
    ("hash changed", "UPDATE audit SET hash = repeat('0', 64) WHERE seq = 5", 5, "does not match its hash"),
    ("index row deleted", "DELETE FROM audit_records WHERE seq = 4", 4, "per-record index"),
    ("index row added", "INSERT INTO audit_records(seq, record_id) VALUES (5, 'r1')", 5, "per-record index"),
    ("index row changed", "UPDATE audit_records SET record_id = 'r9' WHERE seq = 6 AND record_id = 'r2'", 6, "index"),
]


async def raw_sql(where: Location, statement: str) -> None:
    """Edit the store's tables directly, bypassing the broker (the attacker's view)."""
    if isinstance(where, Path):
        conn = sqlite3.connect(where)
        try:
            # SQLite has no repeat(); the one case that uses it gets the same value another way
            conn.execute(re.sub(r"repeat\('0', 64\)", "'" + "0" * 64 + "'", statement))
            conn.commit()
        finally:
            conn.close()
        return
    import asyncpg

    pg = await asyncpg.connect(where)
    try:
        await pg.execute(statement)
    finally:
        await pg.close()


async def filled(make: Callable[..., Store]) -> Store:
    store = await make(clock=lambda: T0)
    await store.commit(CommitUnit(drafts=list(ENTRIES)))
    return store


async def seqs(store: Store, **filters: Any) -> list[int]:
    return [row.seq async for page in audit_pages(store, AuditQuery(**filters)) for row in page]


# -- the store writes columns_of(body), and verifies it ---------------------------------------------
async def test_every_stored_row_holds_the_columns_of_its_body(make_store: Callable[..., Store]) -> None:
    store = await filled(make_store)
    rows = [row async for page in audit_pages(store, AuditQuery()) for row in page]
    assert [row.seq for row in rows] == [1, 2, 3, 4, 5, 6]
    for row in rows:
        assert row.columns == columns_of(json.loads(row.body))
    assert rows[5].record_ids == ("r1", "r2")
    assert rows[1].columns == Columns("2026-06-01T12:00:00.000Z", "released", "m1", "p", "c1", "dsa-1", "r1", ())
    report = await verify_store(store)
    assert report.ok, report.problem
    assert report.chain.entries == 6


@pytest.mark.parametrize(("case", "statement", "bad_seq", "named"), TAMPERING, ids=[t[0] for t in TAMPERING])
async def test_a_tampered_column_is_named_at_its_entry(
    make_store: Callable[..., Store], location: Location, case: str, statement: str, bad_seq: int, named: str
) -> None:
    store = await filled(make_store)
    assert (await verify_store(store)).ok  # untampered, it verifies
    await raw_sql(location, statement)
    report = await verify_store(store)
    assert not report.ok, case
    assert report.first_bad_seq == bad_seq
    assert report.problem is not None
    assert named in report.problem
    assert not any(value in report.problem for value in PLANTED)  # the column's name, never a value


async def test_a_rewritten_column_does_not_put_an_entry_into_another_answer(
    make_store: Callable[..., Store], location: Location
) -> None:
    """Between the tampering and its detection, the queries answer from the bodies: an entry
    whose column was rewritten *to* a value is not shown for it (its body says otherwise)."""
    store = await filled(make_store)
    await raw_sql(location, "UPDATE audit SET record_id = 'r1', consumer = 'c1' WHERE seq = 3")  # r2's release
    await raw_sql(location, "INSERT INTO audit_records(seq, record_id) VALUES (5, 'r1')")
    assert await seqs(store, record_id="r1") == [2, 4, 6]
    assert await seqs(store, consumer="c1") == [2, 4]
    assert await store.record_message("r1") == "m1"
    trace = await trace_entries(store, "r1", "m1")
    assert sorted(trace) == [1, 2, 4, 6]  # not r2's release, not the received entry of m2
    # a column rewritten *away* from a value hides the entry from that query: verification names it
    await raw_sql(location, "UPDATE audit SET message_id = 'm9' WHERE seq = 1")
    assert await seqs(store, message_id="m1") == [2, 3]
    assert await seqs(store, message_id="m9") == []
    report = await verify_store(store)
    assert (report.ok, report.first_bad_seq) == (False, 1)


async def test_dropped_rows_never_end_a_page_early(make_store: Callable[..., Store], location: Location) -> None:
    """A page whose rows the bodies refuse is refilled, so paging (``after`` = the last seq, an
    empty page ends it) still reaches every entry after them."""
    store = await make_store(clock=lambda: T0)
    drafts = [Draft(Kind.RECEIVED, {"message_id": f"m{i}", "source": "p"}) for i in range(12)]
    await store.commit(CommitUnit(drafts=drafts))
    await raw_sql(location, "UPDATE audit SET source = 'x' WHERE seq <= 10")
    await raw_sql(location, "UPDATE audit SET source = 'x' WHERE seq = 12")
    await store.commit(CommitUnit(drafts=[Draft(Kind.RECEIVED, {"message_id": "m-late", "source": "x"})]))
    assert [r.seq for r in await store.audit_page(AuditQuery(source="x", limit=2))] == [13]
    assert [r.seq for r in await store.audit_page(AuditQuery(source="x", after=11, limit=1))] == [13]
    assert await store.audit_page(AuditQuery(source="x", after=13, limit=1)) == []
    assert [r.seq for r in await store.audit_page(AuditQuery(source="p", limit=2))] == [11]


# -- the CLI: the same verification as the HTTP API (both call ``verify_store``) ------------------
def test_the_cli_names_a_tampered_column_of_a_sqlite_store(tmp_path: Path) -> None:
    db = tmp_path / "broker.db"

    async def fill() -> None:
        store = SqliteStore(db, clock=lambda: T0)
        await store.open()
        await store.commit(CommitUnit(drafts=list(ENTRIES)))
        await store.close()

    asyncio.run(fill())
    base = [sys.executable, "-m", "broker.cli", "audit", "verify", "--db", str(db)]
    intact = subprocess.run(base, capture_output=True, text=True, cwd=ROOT, check=False)
    assert intact.returncode == 0, intact.stdout + intact.stderr
    asyncio.run(raw_sql(db, "UPDATE audit SET record_id = 'r9' WHERE seq = 2"))
    broken = subprocess.run(base, capture_output=True, text=True, cwd=ROOT, check=False)
    assert broken.returncode == 1
    assert "BROKEN at sequence 2: the record_id column does not match the entry" in broken.stdout
    assert "r9" not in broken.stdout
    as_json = subprocess.run([*base, "--json"], capture_output=True, text=True, cwd=ROOT, check=False)
    report = json.loads(as_json.stdout)
    assert (report["ok"], report["first_bad_seq"], report["entries"]) == (False, 2, 1)


# -- columns_of, pure -------------------------------------------------------------------------------
INDEXED = ("message_id", "source", "consumer", "agreement_id", "record_id")
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
value = st.one_of(text, st.none(), st.integers(-5, 5), st.booleans(), st.lists(text, max_size=2))
attrs = st.dictionaries(st.sampled_from([*INDEXED, "record_ids", "reason", "count"]), value, max_size=7).flatmap(
    lambda base: st.one_of(
        st.just(base),
        st.lists(st.one_of(text, st.integers(0, 3)), max_size=5).map(lambda ids: {**base, "record_ids": ids}),
    )
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(list(Kind)), attrs), min_size=1, max_size=6))
def test_columns_of_round_trip(drafts: list[tuple[Kind, dict[str, Any]]]) -> None:
    """The row a commit writes holds ``columns_of`` its body; those are the attributes' strings
    (anything else is no column); the chain verifies with them and fails, naming the column, at
    the entry whose copy differs in any one of them."""
    plan = plan_commit(
        [CommitUnit(drafts=[Draft(kind, a) for kind, a in drafts])], head=GENESIS_HEAD, released=(), held={}, now=T0
    )
    released: set[str] = set()
    written = []  # a record id's release is written once (the store contract's rule)
    for kind, a in drafts:
        rid = a.get("record_id")
        if kind is Kind.RELEASED and isinstance(rid, str):
            if rid in released:
                continue
            released.add(rid)
        written.append((kind, a))
    index = []
    for row, (kind, a) in zip(plan.audit, written, strict=True):
        doc = json.loads(row.body)
        assert row.columns == columns_of(doc)
        expected = {k: v if isinstance(v, str) else None for k, v in ((k, a.get(k)) for k in INDEXED)}
        assert row.columns._asdict() == {
            "at": "2026-06-01T12:00:00.000Z",
            "kind": kind.value,
            **expected,
            "record_ids": tuple(sorted({r for r in a.get("record_ids") or [] if isinstance(r, str)}))
            if isinstance(a.get("record_ids"), list)
            else (),
        }
        index.extend((row.seq, rid) for rid in row.record_ids)
    assert sorted(plan.audit_records) == sorted(index)
    rows = [(row.seq, row.body, row.hash, row.columns) for row in plan.audit]
    assert verify_chain(rows).ok
    last = rows[-1]
    for field in Columns._fields:
        kept = getattr(last[3], field)
        other = (*kept, "~") if isinstance(kept, tuple) else "x" if kept is None else kept + "~"
        changed = last[3]._replace(**{field: other})
        report = verify_chain([*rows[:-1], (last[0], last[1], last[2], changed)])
        assert (report.ok, report.first_bad_seq) == (False, last[0])
        assert report.problem is not None
        assert ("audit_records" if field == "record_ids" else f"the {field} column") in report.problem


def test_an_attribute_cannot_replace_the_chain_fields() -> None:
    """Attributes named like the chain's own fields never reach the body in their place."""
    draft = Draft(Kind.RECEIVED, {"seq": 7, "prev": "x", "at": "1999", "kind": "released", "source": "p"})
    plan = plan_commit([CommitUnit(drafts=[draft])], head=GENESIS_HEAD, released=(), held={}, now=T0)
    doc = json.loads(plan.audit[0].body)
    assert (doc["seq"], doc["kind"], doc["at"]) == (1, "received", "2026-06-01T12:00:00.000Z")
    assert verify_chain([(r.seq, r.body, r.hash, r.columns) for r in plan.audit]).ok
