"""One conformance suite for the store contract (``broker/ports/store.py``), run against both
backends: SQLite (a file of its own per test) and the real PostgreSQL (a schema of its own per
test, dropped afterwards). Several store instances on one location stand for several broker
processes (or hosts); one test runs writers in two real OS processes.

Everything is read back through the contract itself, never with SQL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker.audit.chain import Draft, Kind
from broker.errors import StoreUnavailable
from broker.pipeline.trail import audit_pages, verify_store
from broker.ports.store import (
    AuditQuery,
    Checkpoint,
    CommitUnit,
    ContributionChange,
    CountedRow,
    EndedSession,
    FiguresRow,
    HeldItem,
    LineageUpdate,
    QuarantineItem,
    Seen,
    Store,
    StoredRecord,
    VolumeCount,
)
from broker.ports.stores import store_for
from broker.stages.held import held_id
from broker.stages.lineage import NO_LINEAGE, Holding
from broker.stages.replay import ReplayState
from schemas.envelope import format_time

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

Location = str | Path


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Location:
    if request.param == "sqlite":
        return tmp_path / "broker.db"
    url: str = request.getfixturevalue("pg_store_url")
    return url


@pytest.fixture
async def make_store(location: Location) -> Callable[..., Store]:
    """Open store instances on the test's location; all are closed at the end."""
    opened: list[Store] = []

    async def make(**kwargs: object) -> Store:
        store = store_for(location, **kwargs)  # type: ignore[arg-type]
        await store.open()
        opened.append(store)
        return store

    yield make  # type: ignore[misc]
    for store in opened:
        await store.close()


def released(record_id: str, message_id: str = "m1", consumer: str = "c") -> Draft:
    return Draft(Kind.RELEASED, {"message_id": message_id, "source": "p", "consumer": consumer, "record_id": record_id})


def record(
    record_id: str, consumer: str = "c", *, message_id: str = "m1", at: datetime = T0, days: int = 30
) -> StoredRecord:
    body = json.dumps({"record_id": record_id, "consumer": consumer}).encode()
    return StoredRecord(
        record_id=record_id,
        consumer=consumer,
        agreement_id="dsa-1",
        agreement_revision=1,
        event_type="ae_assault" if record_id.endswith(("0", "2", "4", "6", "8")) else "school_exclusion",
        source="p",
        message_id=message_id,
        released_at=at,
        expires_at=at + timedelta(days=days),
        body=body,
    )


def holdings_of(*records: StoredRecord, withdrawn: bool = False) -> list[LineageUpdate]:
    """The lineage updates a pipeline commits with these records (each its own record, revision as stored)."""
    return [
        LineageUpdate(
            source=r.source,
            lineage=r.message_id.partition(":r")[0],
            revision=r.revision,
            message_id=r.message_id,
            withdrawn=withdrawn,
            event_type=r.event_type,
            holdings=(Holding(r.record_id, r.consumer, r.agreement_id, r.revision, withdrawn, r.expires_at),),
        )
        for r in records
    ]


async def all_rows(store: Store, query: AuditQuery | None = None) -> list[tuple[int, str, str | None]]:
    out = []
    async for page in audit_pages(store, query or AuditQuery()):
        out.extend((row.seq, row.kind, row.record_id) for row in page)
    return out


# -- the replay guard ------------------------------------------------------------------------------
async def test_upserts_of_one_key_in_one_commit_apply_in_order(make_store: Callable[..., Store]) -> None:
    store = await make_store()
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
    assert states[key] == Seen(ReplayState.DONE, "first-content")
    assert states[("p", "never")].state is ReplayState.NEW
    # and across commits: a done id stays done, its content hash is never replaced
    await store.commit(CommitUnit(seen=[(key, Seen(ReplayState.IN_PROGRESS, "first-content"))]))
    assert (await store.replay_states([key]))[key] == Seen(ReplayState.DONE, "first-content")


async def test_two_instances_racing_on_one_id_with_different_content_the_first_commit_wins(
    make_store: Callable[..., Store],
) -> None:
    first, second = await make_store(), await make_store()
    key = ("p", "m1")
    lost_a = await first.commit(
        CommitUnit(drafts=[released("r-a")], seen=[(key, Seen(ReplayState.DONE, "content-a"))], records=[record("r-a")])
    )
    # the second read "not seen" before the first committed; it commits other content for the id
    lost_b = await second.commit(
        CommitUnit(drafts=[released("r-b")], seen=[(key, Seen(ReplayState.DONE, "content-b"))], records=[record("r-b")])
    )
    same = await second.commit(CommitUnit(seen=[(key, Seen(ReplayState.DONE, "content-a"))]))
    assert lost_a == frozenset()
    assert lost_b == frozenset({key})
    assert same == frozenset()  # the same content again is a resend, not a conflict
    assert [r for _, kind, r in await all_rows(first) if kind == "released"] == ["r-a"]
    assert [row.record_id for row in await first.feed_page("c", after=0, limit=10)] == ["r-a"]
    assert (await second.replay_states([key]))[key] == Seen(ReplayState.DONE, "content-a")


# -- the audit chain -------------------------------------------------------------------------------
async def test_a_record_id_is_audited_as_released_once_within_and_across_commits(
    make_store: Callable[..., Store],
) -> None:
    store, other = await make_store(), await make_store()
    await store.commit(CommitUnit(drafts=[released("r1"), released("r1"), released("r2")]))
    await other.commit(CommitUnit(drafts=[released("r2"), released("r3")]))  # another process
    assert [r for _, kind, r in await all_rows(store) if kind == "released"] == ["r1", "r2", "r3"]
    assert (await verify_store(store)).ok


async def test_large_commits_span_several_statements_and_stay_one_chain(make_store: Callable[..., Store]) -> None:
    store = await make_store()
    drafts = [released(f"r{i}", f"m{i}") for i in range(1234)]
    many = Draft(Kind.PURGED, {"record_ids": [f"r{i}" for i in range(450)] + ["r0"], "count": 451})
    seen = [(("p", f"m{i}"), Seen(ReplayState.DONE)) for i in range(700)]
    await store.commit(CommitUnit(drafts=[*drafts, many], seen=seen))
    head = await store.current_head()
    rows = await all_rows(store)
    assert [seq for seq, _, _ in rows] == list(range(1, 1236))
    assert head.seq == 1235
    report = await verify_store(store)
    assert report.ok
    assert report.chain.entries == 1235
    assert report.chain.head_hash == head.hash
    # the purge entry is indexed under each of its 450 record ids (a per-record trace finds it)
    for rid in ("r0", "r17", "r449"):
        assert 1235 in [seq for seq, _, _ in await all_rows(store, AuditQuery(record_id=rid))]
    assert 1235 not in [seq for seq, _, _ in await all_rows(store, AuditQuery(record_id="r450"))]
    states = await store.replay_states([("p", f"m{i}") for i in range(800)])
    assert sum(1 for s in states.values() if s.state is ReplayState.DONE) == 700


async def test_instances_sharing_one_store_write_one_linear_chain(make_store: Callable[..., Store]) -> None:
    """Broker processes (or hosts) share the store: the head is read under the write lock in
    each commit, so interleaved commits from several writers never fork the chain."""
    stores = [await make_store() for _ in range(3)]

    async def writer(n: int, store: Store) -> None:
        for i in range(40):
            await store.commit(CommitUnit(drafts=[released(f"w{n}-{i}-{j}", f"w{n}-{i}") for j in range(5)]))

    await asyncio.gather(*(writer(n, s) for n, s in enumerate(stores)))
    heads = [await s.current_head() for s in stores]
    report = await verify_store(stores[0])
    assert report.ok, report.problem
    assert report.chain.entries == 3 * 40 * 5
    assert all((h.seq, h.hash) == (report.chain.head_seq, report.chain.head_hash) for h in heads)
    assert len({r for _, _, r in await all_rows(stores[0])}) == 600


async def test_entry_times_never_go_backwards_along_the_chain(make_store: Callable[..., Store]) -> None:
    """Hosts' clocks differ: a commit sealed by a clock behind the head's still stamps the head's time."""
    ahead = await make_store(clock=lambda: T0 + timedelta(seconds=5))
    behind = await make_store(clock=lambda: T0)
    await ahead.commit(CommitUnit(drafts=[released("r1")]))
    await behind.commit(CommitUnit(drafts=[released("r2")]))
    rows = await ahead.audit_page(AuditQuery())
    assert [r.at for r in rows] == ["2026-06-01T12:00:05.000Z"] * 2
    assert (await ahead.current_head()).at == "2026-06-01T12:00:05.000Z"


async def test_concurrent_writers_in_two_os_processes_keep_one_chain(location: Location) -> None:
    script = """
import asyncio, sys
from broker.audit.chain import Draft, Kind
from broker.ports.store import CommitUnit
from broker.ports.stores import store_for

async def main(location, tag):
    store = store_for(location)
    await store.open()
    async def one(i):
        attrs = {"record_id": f"{tag}-{i}", "message_id": f"{tag}-{i}", "source": "p"}
        await store.commit(CommitUnit(drafts=[Draft(Kind.RELEASED, attrs)]))
    for start in range(0, 300, 30):
        await asyncio.gather(*(one(i) for i in range(start, start + 30)))
    await store.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""
    procs = [
        await asyncio.create_subprocess_exec(sys.executable, "-c", script, str(location), tag, cwd=ROOT)
        for tag in ("a", "b")
    ]
    codes = [await asyncio.wait_for(p.wait(), timeout=120) for p in procs]
    assert codes == [0, 0]
    store = store_for(location, readonly=True)
    await store.open()
    try:
        report = await verify_store(store)
        assert report.ok, report.problem
        assert report.chain.entries == 600
        ids = [r for _, _, r in await all_rows(store)]
        assert sorted(ids) == sorted([f"a-{i}" for i in range(300)] + [f"b-{i}" for i in range(300)])
        assert (await store.counts()).audit_by_kind == {"released": 600}
    finally:
        await store.close()


# -- feeds ----------------------------------------------------------------------------------------
async def test_feed_pages_in_commit_order_with_filters(make_store: Callable[..., Store]) -> None:
    one, two = await make_store(), await make_store()
    for i in range(10):
        store = one if i % 2 else two  # two processes interleave their commits
        at = T0 + timedelta(hours=i)
        await store.commit(CommitUnit(records=[record(f"r{i}", at=at), record(f"x{i}", "other", at=at)]))
    first = await one.feed_page("c", after=0, limit=4)
    assert [r.record_id for r in first] == ["r0", "r1", "r2", "r3"]
    rest = await two.feed_page("c", after=first[-1].id, limit=100)
    assert [r.record_id for r in rest] == [f"r{i}" for i in range(4, 10)]
    ids = [r.id for r in first + rest]
    assert ids == sorted(ids)
    assert len(set(ids)) == 10
    assert json.loads(first[0].body) == {"record_id": "r0", "consumer": "c"}
    assert first[0].released_at == "2026-06-01T12:00:00.000Z"
    typed = await one.feed_page("c", after=0, limit=100, event_type="ae_assault")
    assert [r.record_id for r in typed] == ["r0", "r2", "r4", "r6", "r8"]
    window = await one.feed_page(
        "c", after=0, limit=100, since="2026-06-01T14:00:00.000Z", until="2026-06-01T16:00:00.000Z"
    )
    assert [r.record_id for r in window] == ["r2", "r3"]
    assert await one.feed_page("nobody", after=0, limit=10) == []
    # a record id is stored once: a redelivered release does not add a second copy
    await one.commit(CommitUnit(records=[record("r0")]))
    assert len(await one.feed_page("c", after=0, limit=100)) == 10
    assert (await one.counts()).records_by_consumer == {"c": 10, "other": 10}


# -- audit queries, trace, checkpoints, retention, quarantine ----------------------------------------
async def test_audit_queries_filter_on_every_column(make_store: Callable[..., Store]) -> None:
    store = await make_store(clock=lambda: T0)
    later = await make_store(clock=lambda: T0 + timedelta(hours=1))
    await store.commit(
        CommitUnit(
            drafts=[
                Draft(Kind.RECEIVED, {"message_id": "m1", "source": "p"}),
                released("r1", "m1", "c1"),
                released("r2", "m1", "c2"),
                Draft(Kind.RECEIVED, {"message_id": "m2", "source": "q"}),
            ]
        )
    )
    await later.commit(CommitUnit(drafts=[Draft(Kind.ACCESSED, {"consumer": "c1", "record_ids": ["r1"]})]))

    async def seqs(**filters: object) -> list[int]:
        return [seq for seq, _, _ in await all_rows(store, AuditQuery(**filters))]  # type: ignore[arg-type]

    assert await seqs(message_id="m1") == [1, 2, 3]
    assert await seqs(source="q") == [4]
    assert await seqs(consumer="c1") == [2, 5]
    assert await seqs(kind="received") == [1, 4]
    assert await seqs(record_id="r1") == [2, 5]  # its release and the read that named it
    assert await seqs(since="2026-06-01T12:30:00.000Z") == [5]
    assert await seqs(until="2026-06-01T12:30:00.000Z") == [1, 2, 3, 4]
    assert [r.seq for r in await store.audit_page(AuditQuery(after=2, limit=2))] == [3, 4]
    assert await store.record_message("r2") == "m1"
    assert await store.record_message("r-none") is None
    page = await store.audit_page(AuditQuery(limit=1))
    assert json.loads(page[0].body)["seq"] == 1
    assert len(page[0].hash) == 64


async def test_released_volumes_per_agreement_flow_and_consumer(make_store: Callable[..., Store]) -> None:
    store = await make_store(clock=lambda: T0)
    later = await make_store(clock=lambda: T0 + timedelta(days=2))

    def release(rid: str, consumer: str, flow: str, agreement: str = "dsa-1") -> Draft:
        attrs = {"message_id": f"m-{rid}", "source": "p", "consumer": consumer, "record_id": rid}
        return Draft(Kind.RELEASED, attrs | {"agreement_id": agreement, "flow_id": flow})

    await store.commit(
        CommitUnit(drafts=[release("r1", "c1", "f1"), release("r2", "c1", "f1"), release("r3", "c2", "f2")])
    )
    await later.commit(CommitUnit(drafts=[release("r4", "c1", "f1"), release("r5", "c1", "f1", "dsa-2")]))
    everything = await store.released_volumes("2026-01-01T00:00:00.000Z", "2027-01-01T00:00:00.000Z")
    assert everything == [
        VolumeCount("dsa-1", "f1", "c1", 3),
        VolumeCount("dsa-1", "f2", "c2", 1),
        VolumeCount("dsa-2", "f1", "c1", 1),
    ]
    # the period is [since, until): the later commit's entries fall outside a day after T0
    first_day = await store.released_volumes(format_time(T0), format_time(T0 + timedelta(days=1)))
    assert first_day == [VolumeCount("dsa-1", "f1", "c1", 2), VolumeCount("dsa-1", "f2", "c2", 1)]
    assert await store.released_volumes(format_time(T0 + timedelta(days=3)), "2027-01-01T00:00:00.000Z") == []


async def test_an_ended_console_session_is_ended_for_every_instance(make_store: Callable[..., Store]) -> None:
    # Two instances on one location stand for two broker hosts: a sign-out on one ends the
    # session on both (the cookie itself is stateless: this table is what revokes it).
    one = await make_store(clock=lambda: T0)
    other = await make_store(clock=lambda: T0)
    assert await other.session_ended("s1") is False
    signed_out = Draft(Kind.ACCESSED, {"sub": "ig-lead", "role": "ig", "resource": "console:sign-out"})
    await one.commit(CommitUnit(drafts=[signed_out], end_sessions=[EndedSession("s1", T0 + timedelta(hours=8))]))
    assert await other.session_ended("s1") is True
    assert await other.session_ended("s2") is False
    # the same id twice (a double submit) is no error
    await one.commit(CommitUnit(end_sessions=[EndedSession("s1", T0 + timedelta(hours=8))]))
    # a row past its session's absolute end is pruned by a later sign-out (its cookie is dead anyway)
    late = await make_store(clock=lambda: T0 + timedelta(hours=9))
    await late.commit(CommitUnit(end_sessions=[EndedSession("s2", T0 + timedelta(hours=17))]))
    assert await other.session_ended("s1") is False
    assert await other.session_ended("s2") is True


async def test_checkpoints_retention_and_quarantine(make_store: Callable[..., Store]) -> None:
    store = await make_store()
    recs = [record("r1", days=1), record("r2", days=10), record("r3", days=1)]
    await store.commit(CommitUnit(records=recs, lineages=holdings_of(*recs)))
    cp = Checkpoint(1, "ab" * 32, "2026-06-01T12:00:00.000Z", "kid-1", "sig")
    await store.commit(CommitUnit(checkpoints=[cp]))
    await store.commit(CommitUnit(checkpoints=[cp]))  # the same checkpoint twice is kept once
    assert await store.checkpoints() == [cp]
    due = await store.expired(T0 + timedelta(days=2), 100)
    assert [(e.record_id, e.consumer, e.agreement_id) for e in due] == [("r1", "c", "dsa-1"), ("r3", "c", "dsa-1")]
    assert [e.record_id for e in await store.expired(T0 + timedelta(days=2), 1)] == ["r1"]
    await store.commit(CommitUnit(purge=["r1", "r3"], drafts=[Draft(Kind.PURGED, {"record_ids": ["r1", "r3"]})]))
    assert [r.record_id for r in await store.feed_page("c", after=0, limit=10)] == ["r2"]
    assert await store.expired(T0 + timedelta(days=2), 100) == []
    item = QuarantineItem(T0, "bad_signature", "The signature does not verify.", "p", "m9", "00" * 32, None)
    kept = QuarantineItem(T0, "schema_invalid", "district is not a district.", None, None, "11" * 32, b"{}")
    await store.commit(CommitUnit(quarantine=[item, kept]))
    page = await store.quarantine_page(after=0, limit=10)
    assert [row.item for row in page] == [item, kept]
    assert await store.quarantine_page(after=page[0].id, limit=10) == page[1:]
    assert (await verify_store(store)).ok


# -- a record's life: revisions, notices, holdings ------------------------------------------------------
def revision_of(base: StoredRecord, revision: int, kind: str = "record") -> StoredRecord:
    body = json.dumps({"record_id": base.record_id, "revision": revision, "kind": kind}).encode()
    return dataclasses.replace(base, revision=revision, kind=kind, body=body, message_id=f"m1:r{revision}")


async def test_revisions_and_notices_in_the_feed(make_store: Callable[..., Store]) -> None:
    """A feed shows each record's latest row (a correction replaces, a withdrawal notice
    replaces and deletes the data), the history on request; a resent revision is kept once."""
    store = await make_store()
    first, other = record("r1"), record("r2", message_id="m2")
    await store.commit(CommitUnit(records=[first, other], lineages=holdings_of(first, other)))
    second = revision_of(first, 2)
    await store.commit(CommitUnit(records=[second], lineages=holdings_of(second)))
    await store.commit(CommitUnit(records=[second], lineages=holdings_of(second)))  # redelivered: once
    latest = await store.feed_page("c", after=0, limit=10)
    assert [(r.record_id, r.revision, r.kind) for r in latest] == [("r2", 1, "record"), ("r1", 2, "record")]
    history = await store.feed_page("c", after=0, limit=10, history=True)
    assert [(r.record_id, r.revision) for r in history] == [("r1", 1), ("r2", 1), ("r1", 2)]
    withdrawn = revision_of(first, 3, "withdrawn")
    await store.commit(CommitUnit(records=[withdrawn], lineages=holdings_of(withdrawn, withdrawn=True)))
    history = await store.feed_page("c", after=0, limit=10, history=True)
    assert [(r.record_id, r.revision, r.kind) for r in history] == [("r2", 1, "record"), ("r1", 3, "withdrawn")]
    assert (await store.counts()).records_by_consumer == {"c": 1}
    lineage = (await store.lineages([("p", "m1")]))[("p", "m1")]
    assert (lineage.revision, lineage.message_id, lineage.withdrawn) == (3, "m1:r3", True)
    assert [(h.record_id, h.revision, h.withdrawn) for h in lineage.holdings] == [("r1", 3, True)]
    assert lineage.holdings[0].expires_at == first.expires_at  # retention runs from the first release


@pytest.mark.parametrize("order", ["withdrawal_first", "correction_first"])
async def test_a_withdrawal_and_a_later_correction_in_one_commit(make_store: Callable[..., Store], order: str) -> None:
    """Revision 2 withdraws, revision 3 reinstates, both in one group commit (in either order): the
    feed's current row is revision 3, whose data is kept; revision 1's data is gone."""
    store = await make_store()
    first = record("r1")
    await store.commit(CommitUnit(records=[first], lineages=holdings_of(first)))
    withdrawn, back = revision_of(first, 2, "withdrawn"), revision_of(first, 3)
    units = [
        CommitUnit(records=[withdrawn], lineages=holdings_of(withdrawn, withdrawn=True)),
        CommitUnit(records=[back], lineages=holdings_of(back)),
    ]
    if order == "correction_first":
        units.reverse()
    await asyncio.gather(*(store.commit(unit) for unit in units))
    assert [(r.revision, r.kind) for r in await store.feed_page("c", after=0, limit=10)] == [(3, "record")]
    history = await store.feed_page("c", after=0, limit=10, history=True)
    assert sorted((r.revision, r.kind) for r in history) == [(2, "withdrawn"), (3, "record")]
    lineage = (await store.lineages([("p", "m1")]))[("p", "m1")]
    assert (lineage.revision, lineage.withdrawn, lineage.holdings[0].withdrawn) == (3, False, False)


async def test_holdings_and_lineage_only_move_forward(make_store: Callable[..., Store]) -> None:
    """An older revision committed after a newer one (two processes) changes nothing; a record
    at revision 1 has holdings but no lineage row; an unknown record is NO_LINEAGE; one
    partner's record is not another's under the same message id."""
    store = await make_store()
    first = record("r1")
    await store.commit(CommitUnit(lineages=holdings_of(first)))
    only = (await store.lineages([("p", "m1")]))[("p", "m1")]
    assert (only.revision, only.message_id, len(only.holdings)) == (1, "m1", 1)
    third, second = revision_of(first, 3), revision_of(first, 2)
    await store.commit(CommitUnit(lineages=holdings_of(third)))
    await store.commit(CommitUnit(lineages=holdings_of(second)))
    lineage = (await store.lineages([("p", "m1")]))[("p", "m1")]
    assert (lineage.revision, lineage.holdings[0].revision) == (3, 3)
    assert await store.lineages([("q", "m1"), ("p", "nothing")]) == {
        ("q", "m1"): NO_LINEAGE,
        ("p", "nothing"): NO_LINEAGE,
    }
    # several revisions of one record in one commit: the highest wins
    fourth, fifth = revision_of(first, 4), revision_of(first, 5)
    await store.commit(CommitUnit(lineages=[*holdings_of(fifth), *holdings_of(fourth)]))
    assert (await store.lineages([("p", "m1")]))[("p", "m1")].revision == 5


async def test_expired_holdings_purge_with_deletion_notices(make_store: Callable[..., Store]) -> None:
    """Retention reads the holdings (AMQP mode stores no records, yet its consumers hold them):
    a purge deletes every revision and the holding; a deletion notice takes the feed's place and
    is itself purged at its own expiry."""
    store = await make_store()
    first = record("r1", days=1)
    await store.commit(CommitUnit(records=[first], lineages=holdings_of(first)))
    second = revision_of(first, 2)
    await store.commit(CommitUnit(records=[second], lineages=holdings_of(second)))
    due = await store.expired(T0 + timedelta(days=2), 10)
    assert [(e.record_id, e.revision, e.withdrawn, e.event_type, e.source) for e in due] == [
        ("r1", 2, False, first.event_type, "p")
    ]
    notice = dataclasses.replace(revision_of(first, 2, "deleted"), message_id="", expires_at=T0 + timedelta(days=30))
    await store.commit(CommitUnit(purge=["r1"], records=[notice]))
    assert await store.expired(T0 + timedelta(days=2), 10) == []
    history = await store.feed_page("c", after=0, limit=10, history=True)
    assert [(r.record_id, r.kind) for r in history] == [("r1", "deleted")]
    await store.commit(CommitUnit(purge_notices_before=format_time(T0 + timedelta(days=29))))
    assert len(await store.feed_page("c", after=0, limit=10)) == 1
    await store.commit(CommitUnit(purge_notices_before=format_time(T0 + timedelta(days=31))))
    assert await store.feed_page("c", after=0, limit=10, history=True) == []


async def test_replay_guard_rows_expire(make_store: Callable[..., Store]) -> None:
    """Finished ids first seen before a time are listed oldest first and deleted; one in progress stays."""
    now = [T0]
    store = await make_store(clock=lambda: now[0])
    await store.commit(CommitUnit(seen=[(("p", "m1"), Seen(ReplayState.DONE, "c1"))]))
    await store.commit(CommitUnit(seen=[(("p", "m2"), Seen(ReplayState.IN_PROGRESS, "c2"))]))
    now[0] = T0 + timedelta(days=20)
    await store.commit(CommitUnit(seen=[(("p", "m3"), Seen(ReplayState.DONE, "c3"))]))
    before = format_time(T0 + timedelta(days=10))
    assert await store.expired_seen(before, 10) == [("p", "m1")]
    # a message that released records is remembered as long as its holdings
    kept = dataclasses.replace(record("r9"), message_id="m1")
    await store.commit(CommitUnit(lineages=holdings_of(kept)))
    assert await store.expired_seen(before, 10) == []
    await store.commit(CommitUnit(purge=["r9"]))  # retention: the holding stays, as a tombstone
    assert await store.expired_seen(before, 10) == []
    # forget it anyway (as a store with no holdings would): the row goes
    await store.commit(CommitUnit(purge_seen=[("p", "m1")]))
    assert await store.expired_seen(before, 10) == []
    states = await store.replay_states([("p", "m1"), ("p", "m2")])
    assert states[("p", "m1")].state is ReplayState.NEW
    assert states[("p", "m2")].state is ReplayState.IN_PROGRESS


# -- read-only views and failures --------------------------------------------------------------------
async def test_a_read_only_view_reads_and_refuses_to_write(
    make_store: Callable[..., Store], location: Location
) -> None:
    writer = await make_store()
    await writer.commit(CommitUnit(drafts=[released("r1")]))
    reader = await make_store(readonly=True)
    assert (await reader.current_head()).seq == 1
    assert await reader.ping()
    with pytest.raises(RuntimeError):
        await reader.commit(CommitUnit(drafts=[released("r2")]))
    assert (await writer.current_head()).seq == 1


async def test_a_read_only_view_of_nothing_is_unavailable(tmp_path: Path, pg_store_url: str) -> None:
    for location in (tmp_path / "none.db", pg_store_url):
        store = store_for(location, readonly=True)
        with pytest.raises(StoreUnavailable):
            await store.open()
        assert not (tmp_path / "none.db").exists()


async def test_an_unreachable_database_is_unavailable_not_a_bug() -> None:
    store = store_for("postgresql://postgres@127.0.0.1:1/none", readonly=True)
    with pytest.raises(StoreUnavailable):
        await store.open()


async def test_postgres_refuses_a_schema_newer_than_it_knows(pg_store_url: str) -> None:
    import asyncpg

    from broker.errors import StartupError
    from broker.ports.postgres_store import SCHEMA_VERSION, VERSION_TABLE

    store = store_for(pg_store_url)
    await store.open()
    await store.close()
    conn = await asyncpg.connect(pg_store_url)
    try:
        await conn.execute(f"INSERT INTO {VERSION_TABLE}(version) VALUES ($1)", SCHEMA_VERSION + 1)
    finally:
        await conn.close()
    with pytest.raises(StartupError, match="newer than this broker knows"):
        await store_for(pg_store_url).open()


async def test_postgres_migrations_are_applied_once_when_hosts_start_together(pg_store_url: str) -> None:
    stores = [store_for(pg_store_url) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        await stores[0].commit(CommitUnit(drafts=[released("r1")]))
        assert all([(await s.current_head()).seq == 1 for s in stores])
    finally:
        for s in stores:
            await s.close()


def test_the_offline_commands_read_either_backend(location: Location, tmp_path: Path) -> None:
    async def fill() -> None:
        store = store_for(location)
        await store.open()
        await store.commit(
            CommitUnit(drafts=[Draft(Kind.RECEIVED, {"message_id": "m1", "source": "p"}), released("r1")])
        )
        await store.close()

    asyncio.run(fill())
    base = [sys.executable, "-m", "broker.cli", "audit"]
    verify = subprocess.run(
        [*base, "verify", "--store", str(location), "--json"], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert verify.returncode == 0, verify.stderr
    assert json.loads(verify.stdout)["entries"] == 2
    trace = subprocess.run(
        [*base, "trace", "--store", str(location), "r1"], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert [json.loads(line)["kind"] for line in trace.stdout.splitlines()] == ["received", "released"]
    out = tmp_path / "export.jsonl"
    export = subprocess.run(
        [*base, "export", "--store", str(location), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert export.returncode == 0, export.stderr
    offline = subprocess.run(
        [*base, "verify", "--export", str(out)], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert offline.returncode == 0
    assert "2 entries" in offline.stdout


# -- held events (an agreement's [hold]) -------------------------------------------------------------
def held_item(n: int, agreement: str = "dsa-1", source: str = "p", days: int = 30) -> HeldItem:
    return HeldItem(
        held_id(agreement, source, f"p:{n:032x}"),
        agreement,
        1,
        "review_overdue",
        source,
        f"p:{n:032x}",
        "ae_assault",
        T0,
        T0 + timedelta(days=days),
        bytes([n % 256]) * 40,
    )


async def test_held_events_are_kept_once_listed_without_bodies_paged_and_deleted(
    make_store: Callable[..., Store],
) -> None:
    store, other = await make_store(), await make_store()  # two processes sharing the store
    items = [held_item(1), held_item(2), held_item(3, agreement="dsa-2"), held_item(4, source="q", days=1)]
    await store.commit(CommitUnit(held=items[:2], drafts=[Draft(Kind.HELD, {"agreement_id": "dsa-1"})]))
    await other.commit(CommitUnit(held=[items[0], *items[2:]]))  # a redelivery holds nothing twice
    assert await store.held_agreements() == {"dsa-1": 3, "dsa-2": 1}
    summary = {h.agreement_id: (h.count, h.earliest_expiry) for h in await store.held_summary()}
    assert summary == {"dsa-1": (3, items[3].expires_at), "dsa-2": (1, items[2].expires_at)}
    page = await other.held_page(limit=10)
    assert [r.id for r in page] == [i.id for i in items]
    assert [r.pos for r in page] == sorted(r.pos for r in page)
    assert (page[0].agreement_id, page[0].held_under_revision, page[0].reason, page[0].held_at) == (
        "dsa-1", 1, "review_overdue", T0,
    )  # fmt: skip
    assert [r.id for r in await store.held_page(agreement_id="dsa-1", limit=10)] == [
        items[0].id,
        items[1].id,
        items[3].id,
    ]
    assert [r.id for r in await store.held_page(source="q", limit=10)] == [items[3].id]
    assert [r.id for r in await store.held_page(after=page[1].pos, limit=1)] == [items[2].id]
    sealed = await store.held_items("dsa-1", None, after=0, limit=10)
    assert [(i.id, i.sealed) for i in sealed] == [(i.id, i.sealed) for i in (items[0], items[1], items[3])]
    assert [i.id for i in await store.held_items("dsa-1", [items[1].id], after=0, limit=10)] == [items[1].id]
    assert await store.held_items("dsa-1", [], after=0, limit=10) == []
    assert [i.id for i in await store.held_items("dsa-1", None, after=sealed[0].pos, limit=1)] == [items[1].id]
    assert [r.id for r in await store.expired_held(T0 + timedelta(days=2), 10)] == [items[3].id]
    await other.commit(CommitUnit(unhold=[items[3].id, items[0].id]))
    assert await store.held_agreements() == {"dsa-1": 1, "dsa-2": 1}
    assert await store.expired_held(T0 + timedelta(days=2), 10) == []
    assert (await verify_store(store)).ok


async def test_a_message_that_lost_its_claim_is_not_held(make_store: Callable[..., Store]) -> None:
    first, second = await make_store(), await make_store()
    key = ("p", f"p:{5:032x}")
    await first.commit(CommitUnit(seen=[(key, Seen(ReplayState.DONE, "a" * 64))]))
    lost = await second.commit(CommitUnit(seen=[(key, Seen(ReplayState.DONE, "b" * 64))], held=[held_item(5)]))
    assert lost == {key}
    assert await second.held_agreements() == {}


# -- monitoring reads (alerts, ``sv-broker status``) ------------------------------------------------


def settled(kind: Kind, source: str | None, n: int, **attrs: object) -> Draft:
    return Draft(kind, {"message_id": f"{source}-{kind}-{n}", "source": source, **attrs})


async def test_last_seen_is_the_latest_authenticated_entry_per_source(make_store: Callable[..., Store]) -> None:
    clock = [T0]
    store = await make_store(clock=lambda: clock[0])
    # p1: released, later a duplicate; p2: only withheld; p3: only claimed (received + rejected,
    # e.g. forged messages with a bad signature): never seen.
    await store.commit(CommitUnit(drafts=[settled(Kind.RECEIVED, "p1", 1), released("r1")]))
    clock[0] = T0 + timedelta(days=1)
    await store.commit(CommitUnit(drafts=[settled(Kind.RECEIVED, "p2", 1), settled(Kind.WITHHELD, "p2", 1)]))
    clock[0] = T0 + timedelta(days=2)
    await store.commit(CommitUnit(drafts=[settled(Kind.DUPLICATE, "p", 2)]))
    clock[0] = T0 + timedelta(days=3)
    await store.commit(
        CommitUnit(drafts=[settled(Kind.RECEIVED, "p3", 1), settled(Kind.REJECTED, "p3", 1, reason="bad_signature")])
    )
    # "p" (the source of ``released``) also gets a later claimed-only entry, which does not count.
    await store.commit(CommitUnit(drafts=[settled(Kind.RECEIVED, "p", 3)]))
    seen = await store.last_seen(["p", "p2", "p3", "nobody", "p"])
    assert seen == {"p": T0 + timedelta(days=2), "p2": T0 + timedelta(days=1)}
    assert await store.last_seen([]) == {}


async def test_outcome_days_count_per_day_kind_and_source_from_since(make_store: Callable[..., Store]) -> None:
    clock = [T0]
    store = await make_store(clock=lambda: clock[0])
    for day, drafts in (
        (-1, [settled(Kind.RECEIVED, "p1", 0)]),  # before ``since``: not counted
        (0, [settled(Kind.RECEIVED, "p1", 1), settled(Kind.RECEIVED, "p1", 2), settled(Kind.REJECTED, "p1", 1)]),
        (0, [settled(Kind.RECEIVED, None, 3), settled(Kind.REJECTED, None, 3, reason="malformed_json")]),
        (1, [settled(Kind.RECEIVED, "p2", 4), settled(Kind.WITHHELD, "p2", 4), settled(Kind.DUPLICATE, "p2", 5)]),
        (1, [released("r9", "m9"), Draft(Kind.ACCESSED, {"sub": "ig", "source": "p2"})]),  # not outcome kinds
    ):
        clock[0] = T0 + timedelta(days=day, hours=1)
        await store.commit(CommitUnit(drafts=drafts))
    days = await store.outcome_days(T0)
    d0, d1 = T0.date(), (T0 + timedelta(days=1)).date()
    assert sorted((d.day, d.kind, d.source or "", d.count) for d in days) == sorted(
        [
            (d0, "received", "p1", 2),
            (d0, "rejected", "p1", 1),
            (d0, "received", "", 1),
            (d0, "rejected", "", 1),
            (d1, "received", "p2", 1),
            (d1, "withheld", "p2", 1),
            (d1, "duplicate", "p2", 1),
        ]
    )
    assert await store.outcome_days(T0 + timedelta(days=5)) == []


async def test_held_summary_is_empty_when_nothing_is_held(make_store: Callable[..., Store]) -> None:
    store = await make_store()
    assert await store.held_summary() == []


# -- figures flows (issue 14): contributions, pending quarters, releases ---------------------------
def counted(
    record_id: str, lineage: str, period: str | None, revision: int = 1, agreement: str = "dsa-f"
) -> CountedRow:
    fid = f"fig-{agreement}-{period}" if period else None
    return CountedRow(
        record_id=record_id,
        source="p",
        lineage=lineage,
        agreement_id=agreement,
        flow_id="f",
        figures_id=fid,
        period=period,
        event_type="police_sv_offence",
        revision=revision,
        message_id=lineage if revision == 1 else f"{lineage}:r{revision}",
        data=json.dumps({"district": "E06000015", "n": revision}).encode(),
        expires_at=T0 + timedelta(days=400),
    )


def counted_entry(row: CountedRow) -> Draft:
    return Draft(Kind.COUNTED, {"message_id": row.message_id, "source": "p", "record_id": row.record_id,
                                "revision": row.revision})  # fmt: skip


async def test_contributions_are_replaced_by_revisions_and_mark_every_quarter_they_touch(
    make_store: Callable[..., Store],
) -> None:
    store = await make_store()
    first = [counted(f"r{i}", f"m{i}", "2026-Q3") for i in range(3)]
    await store.commit(
        CommitUnit(
            drafts=[counted_entry(r) for r in first],
            contributions=[ContributionChange("p", r.lineage, r.message_id, False, rows=(r,)) for r in first],
        )
    )
    [pending] = await store.figures_pending(100)
    assert (pending.figures_id, pending.period) == ("fig-dsa-f-2026-Q3", "2026-Q3")
    assert len(await store.contributions(["fig-dsa-f-2026-Q3"])) == 3
    # The release clears the quarter up to the mark it read ...
    await store.commit(CommitUnit(figures_done=[(pending.figures_id, pending.mark)]))
    assert await store.figures_pending(100) == []
    # ... and a contribution committed after that read keeps it pending (no lost update).
    late = counted("r9", "m9", "2026-Q3")
    change = ContributionChange("p", "m9", "m9", False, rows=(late,))
    await store.commit(CommitUnit(drafts=[counted_entry(late)], contributions=[change]))
    [again] = await store.figures_pending(100)
    await store.commit(CommitUnit(figures_done=[(again.figures_id, pending.mark)]))  # an older mark: stays
    assert [p.figures_id for p in await store.figures_pending(100)] == ["fig-dsa-f-2026-Q3"]
    await store.commit(CommitUnit(figures_done=[(again.figures_id, again.mark)]))
    # A correction moves r1 to Q4: both quarters are pending, r1 counted once, in Q4.
    moved = counted("r1", "m1", "2026-Q4", revision=2)
    change = ContributionChange("p", "m1", "m1:r2", True, rows=(moved,))
    await store.commit(CommitUnit(drafts=[counted_entry(moved)], contributions=[change]))
    assert sorted(p.period for p in await store.figures_pending(100)) == ["2026-Q3", "2026-Q4"]
    q3 = await store.contributions(["fig-dsa-f-2026-Q3"])
    q4 = await store.contributions(["fig-dsa-f-2026-Q4"])
    assert len(q3) == 3
    assert [json.loads(d)["n"] for _, _, d in q4] == [2]
    # A withdrawal removes it from every quarter, except under an agreement that keeps it.
    kept = counted("r2b", "m2", "2026-Q3", agreement="dsa-g")
    await store.commit(CommitUnit(contributions=[ContributionChange("p", "m2", "m2", False, rows=(kept,))]))
    await store.commit(
        CommitUnit(
            drafts=[Draft(Kind.WITHDRAWN, {"message_id": "m2:r2", "source": "p"})],
            contributions=[ContributionChange("p", "m2", "m2:r2", True, frozenset({"dsa-g"}))],
        )
    )
    assert {json.loads(d)["n"] for _, _, d in await store.contributions(["fig-dsa-f-2026-Q3"])} == {1}
    assert len(await store.contributions(["fig-dsa-f-2026-Q3"])) == 2
    assert len(await store.contributions(["fig-dsa-g-2026-Q3"])) == 1


async def test_figures_releases_keep_every_revision_and_expire(make_store: Callable[..., Store]) -> None:
    store = await make_store()

    def row(revision: int, sha: str) -> FiguresRow:
        return FiguresRow("fig-1", revision, "board", "dsa-f", 1, "f", "2026-Q3", 10 + revision, T0,
                          T0 + timedelta(days=30), sha, b'{"figures_id":"fig-1"}')  # fmt: skip

    assert await store.latest_figures("fig-1") is None
    await store.commit(CommitUnit(figures=[row(1, "a")]))
    await store.commit(CommitUnit(figures=[row(2, "b"), row(1, "a")]))  # a repeat is ignored
    latest = await store.latest_figures("fig-1")
    assert latest is not None
    assert (latest.revision, latest.content_sha256, latest.counted) == (2, "b", 12)
    assert [f.revision for f in await store.figures_of("board")] == [2]
    assert await store.figures_of("someone-else") == []
    c = counted("r1", "m1", "2026-Q3")
    await store.commit(CommitUnit(contributions=[ContributionChange("p", "m1", "m1", False, rows=(c,))]))
    assert await store.figures_expiring(format_time(T0 + timedelta(days=31))) == (0, 2)
    stamp = format_time(T0 + timedelta(days=401))
    assert await store.figures_expiring(stamp) == (1, 2)
    await store.commit(CommitUnit(purge_contributions_before=stamp, purge_figures_before=stamp))
    assert await store.figures_expiring(stamp) == (0, 0)
    assert await store.latest_figures("fig-1") is None
