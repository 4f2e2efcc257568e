"""SQLite (WAL) implementation of the storage port, with group commit.

One writer thread owns the write connection and the head of the audit chain.  Callers hand it
commit units; it drains whatever is queued (up to ``batch_max``) into ONE transaction and one
fsync, then wakes every caller whose unit was in it.  Durability therefore costs one fsync per
group, not per message, and the chain is extended by one thread only, so it cannot fork.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TypeVar

from broker.audit.chain import GENESIS, ChainReport, Kind, seal, verify_chain
from broker.errors import StoreUnavailable
from broker.ports.store import NOT_SEEN, Checkpoint, CommitUnit, ReplayKey, Seen
from broker.stages.replay import ReplayState
from schemas.envelope import format_time

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    message_id TEXT,
    source TEXT,
    consumer TEXT,
    agreement_id TEXT,
    record_id TEXT,
    body BLOB NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_message ON audit(message_id);
CREATE INDEX IF NOT EXISTS audit_record ON audit(record_id);
CREATE INDEX IF NOT EXISTS audit_source ON audit(source, seq);
CREATE INDEX IF NOT EXISTS audit_consumer ON audit(consumer, seq);
CREATE INDEX IF NOT EXISTS audit_agreement ON audit(agreement_id, seq);
CREATE INDEX IF NOT EXISTS audit_kind ON audit(kind, seq);
CREATE INDEX IF NOT EXISTS audit_at ON audit(at);
CREATE TABLE IF NOT EXISTS seen (
    source TEXT NOT NULL,
    message_id TEXT NOT NULL,
    state TEXT NOT NULL,
    content_sha256 TEXT,
    first_seen TEXT NOT NULL,
    PRIMARY KEY (source, message_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS releases (
    record_id TEXT PRIMARY KEY,
    audit_seq INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
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
CREATE INDEX IF NOT EXISTS records_consumer ON records(consumer, id);
CREATE INDEX IF NOT EXISTS records_expiry ON records(expires_at);
CREATE TABLE IF NOT EXISTS audit_records (
    seq INTEGER NOT NULL,
    record_id TEXT NOT NULL,
    PRIMARY KEY (record_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    seq INTEGER PRIMARY KEY,
    head_hash TEXT NOT NULL,
    at TEXT NOT NULL,
    kid TEXT NOT NULL,
    signature TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    reason TEXT NOT NULL,
    message TEXT NOT NULL,
    source TEXT,
    message_id TEXT,
    body_sha256 TEXT NOT NULL,
    body BLOB
);
"""

_STOP = object()
T = TypeVar("T")


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None)
    else:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk when it returns, so an ack/response after it never loses data.
        conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


Lost = frozenset[ReplayKey]  # message ids a unit lost its claim on (see ``Store.commit``)
NONE_LOST: Lost = frozenset()


class _Job:
    __slots__ = ("future", "loop", "unit")

    def __init__(self, unit: CommitUnit, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Lost]) -> None:
        self.unit, self.loop, self.future = unit, loop, future


def _resolve(future: asyncio.Future[Lost], result: Lost, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


# sqlite3's errors translated here, where sqlite3 is imported. Locked past the busy timeout, disk
# full, an I/O error, a file it cannot open: the store is unavailable (retry, never dead-letter the
# message in hand). A constraint or API misuse is a bug of ours and stays what it is.
_BUGS = (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError, sqlite3.NotSupportedError)


def translated(exc: BaseException) -> BaseException:
    if isinstance(exc, _BUGS) or not isinstance(exc, sqlite3.DatabaseError | OSError):
        return exc
    unavailable = StoreUnavailable(f"the SQLite store is unavailable: {type(exc).__name__}")
    unavailable.__cause__ = exc
    return unavailable


_ROWS_PER_STATEMENT = 200  # at most; fewer where SQLite allows fewer bound parameters (see below)


def _insert_many(
    conn: sqlite3.Connection,
    head: str,
    rows: list[tuple[object, ...]],
    tail: str = "",
) -> None:
    """``head`` + ``VALUES (...), (...)`` + ``tail``: one statement per up to 200 rows.

    SQLite applies a multi-row insert (and its upsert clause) row by row, in order, exactly as
    the same rows one statement each would be (``tests/test_sqlite_store.py`` pins this).
    """
    if not rows:
        return
    width = len(rows[0])
    one = "(" + ", ".join("?" * width) + ")"
    # SQLite before 3.32 binds at most 999 parameters per statement (later: 32,766).
    step = max(1, min(_ROWS_PER_STATEMENT, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width))
    for i in range(0, len(rows), step):
        chunk = rows[i : i + step]
        sql = head + ", ".join([one] * len(chunk)) + tail
        conn.execute(sql, [value for row in chunk for value in row])


def _existing(conn: sqlite3.Connection, query: str, keys: list[object]) -> set[object]:
    """The subset of ``keys`` that ``query`` + ``(?, ...)`` finds (first column), in chunks."""
    found: set[object] = set()
    unique = list(dict.fromkeys(k for k in keys if k is not None))
    for i in range(0, len(unique), 500):
        chunk = unique[i : i + 500]
        sql = query + "(" + ", ".join("?" * len(chunk)) + ")"
        found.update(row[0] for row in conn.execute(sql, chunk))
    return found


class SqliteStore:
    def __init__(self, path: Path, *, batch_max: int = 512) -> None:
        self.path = path
        self.batch_max = batch_max
        self._jobs: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._reader: sqlite3.Connection | None = None
        self._guard: sqlite3.Connection | None = None  # replay-guard reads, on the event loop's thread
        self._read_lock = threading.Lock()
        self.head: tuple[int, str] = (0, GENESIS)  # one attribute: read atomically by other threads
        self.commits = 0  # transactions written (for the group-commit figures)
        self.units = 0

    # -- lifecycle -------------------------------------------------------------------------------
    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        writer = connect(self.path)
        writer.executescript(SCHEMA)
        row = writer.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        if row is not None:
            self.head = (int(row[0]), str(row[1]))
        self._reader = connect(self.path)
        self._guard = connect(self.path)
        # WAL readers do not wait for the writer; a short timeout bounds the rare case that does
        # (recovery after a crash), and the read then moves off the loop (``replay_states``).
        self._guard.execute("PRAGMA busy_timeout=50")
        self._thread = threading.Thread(target=self._writer_loop, args=(writer,), name="sqlite-writer", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        if self._thread is not None:
            self._jobs.put(_STOP)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._guard is not None:
            self._guard.close()
            self._guard = None

    # -- writes ----------------------------------------------------------------------------------
    async def commit(self, unit: CommitUnit) -> Lost:
        if self._thread is None:
            raise RuntimeError("store is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Lost] = loop.create_future()
        self._jobs.put(_Job(unit, loop, future))
        return await future

    def _writer_loop(self, conn: sqlite3.Connection) -> None:
        try:
            while True:
                first = self._jobs.get()
                if first is _STOP:
                    return
                assert isinstance(first, _Job)
                jobs = [first]
                stop = False
                while len(jobs) < self.batch_max:
                    try:
                        nxt = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is _STOP:
                        stop = True
                        break
                    assert isinstance(nxt, _Job)
                    jobs.append(nxt)
                error: BaseException | None = None
                lost: list[Lost] = [NONE_LOST] * len(jobs)
                try:
                    lost = self._write(conn, [job.unit for job in jobs])
                except BaseException as exc:  # report to every waiter; the writer keeps running
                    error = translated(exc)
                for job, job_lost in zip(jobs, lost, strict=True):
                    with contextlib.suppress(RuntimeError):  # loop already closed
                        job.loop.call_soon_threadsafe(_resolve, job.future, job_lost, error)
                if stop:
                    return
        finally:
            conn.close()

    def _write(self, conn: sqlite3.Connection, units: list[CommitUnit]) -> list[Lost]:
        """One transaction for every queued unit, written with multi-row statements.

        A statement per row would release and re-take the GIL around every ``sqlite3_step``; with
        the event loop busy on the other side, each hand-back waits for the loop's next system
        call, and that convoy, not SQLite, was most of the writer's time. Multi-row statements
        cost a few hand-offs per commit instead of several per message.
        """
        now = datetime.now(UTC)
        stamp = format_time(now)
        audit_rows: list[tuple[object, ...]] = []
        release_rows: list[tuple[object, ...]] = []
        audit_record_rows: list[tuple[object, ...]] = []
        quarantine_rows: list[tuple[object, ...]] = []
        purge: list[tuple[object, ...]] = []
        checkpoint_rows: list[tuple[object, ...]] = []
        for unit in units:
            for item in unit.quarantine:
                quarantine_rows.append(
                    (
                        format_time(item.at),
                        item.reason,
                        item.message,
                        item.source,
                        item.message_id,
                        item.body_sha256,
                        item.body,
                    )
                )
            purge.extend((rid,) for rid in unit.purge)
            checkpoint_rows.extend((cp.seq, cp.head_hash, cp.at, cp.kid, cp.signature) for cp in unit.checkpoints)
        released_ids = [
            draft.attrs.get("record_id") for unit in units for draft in unit.drafts if draft.kind is Kind.RELEASED
        ]
        conn.execute("BEGIN IMMEDIATE")
        try:
            # The head is read inside the write transaction (which holds SQLite's write lock), not
            # taken from memory: another broker process sharing this store cannot fork the chain.
            row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (int(row[0]), str(row[1])) if row is not None else (0, GENESIS)
            # A redelivered message's releases are audited once: record ids already released
            # (earlier, or earlier in this very commit) get no second "released" entry.
            released = _existing(conn, "SELECT record_id FROM releases WHERE record_id IN ", released_ids)
            lost = self._claims(conn, units)
            seen_rows: list[tuple[object, ...]] = []
            record_rows: list[tuple[object, ...]] = []
            for unit, unit_lost in zip(units, lost, strict=True):
                for (source, message_id), seen in unit.seen:
                    if (source, message_id) not in unit_lost:
                        seen_rows.append((source, message_id, seen.state.value, seen.content_sha256, stamp))
                for rec in unit.records:
                    if (rec.source, rec.message_id) in unit_lost:
                        continue
                    record_rows.append(
                        (
                            rec.record_id,
                            rec.consumer,
                            rec.agreement_id,
                            rec.agreement_revision,
                            rec.event_type,
                            rec.source,
                            rec.message_id,
                            format_time(rec.released_at),
                            format_time(rec.expires_at),
                            rec.body,
                        )
                    )
                for draft in unit.drafts:
                    attrs = draft.attrs
                    if (
                        unit_lost
                        and draft.kind is not Kind.RECEIVED
                        and (attrs.get("source"), attrs.get("message_id")) in unit_lost
                    ):
                        continue  # the caller records this message's outcome again (rejected)
                    record_id = attrs.get("record_id")
                    if draft.kind is Kind.RELEASED:
                        if record_id in released:
                            continue
                        released.add(record_id)
                        release_rows.append((record_id, seq + 1))
                    seq += 1
                    entry = seal(draft, seq=seq, prev=prev, at=now)
                    audit_rows.append(
                        (
                            seq,
                            entry.at,
                            draft.kind.value,
                            attrs.get("message_id"),
                            attrs.get("source"),
                            attrs.get("consumer"),
                            attrs.get("agreement_id"),
                            record_id,
                            entry.body,
                            entry.hash,
                        )
                    )
                    prev = entry.hash
                    # Entries about many records (reads, purges) are indexed per record, so an IG
                    # lead's per-record trace finds them.
                    many = attrs.get("record_ids")
                    if isinstance(many, list):
                        audit_record_rows.extend((seq, rid) for rid in dict.fromkeys(many))
            _insert_many(
                conn,
                "INSERT INTO seen(source, message_id, state, content_sha256, first_seen) VALUES ",
                seen_rows,
                " ON CONFLICT(source, message_id) DO UPDATE SET state = excluded.state, "
                "content_sha256 = coalesce(seen.content_sha256, excluded.content_sha256) "
                "WHERE seen.state != 'done'",
            )
            _insert_many(conn, "INSERT INTO releases(record_id, audit_seq) VALUES ", release_rows)
            _insert_many(
                conn,
                "INSERT INTO audit(seq, at, kind, message_id, source, consumer, agreement_id, record_id, body, hash) "
                "VALUES ",
                audit_rows,
            )
            _insert_many(conn, "INSERT OR IGNORE INTO audit_records(seq, record_id) VALUES ", audit_record_rows)
            _insert_many(
                conn,
                "INSERT OR IGNORE INTO records(record_id, consumer, agreement_id, agreement_revision, event_type, "
                "source, message_id, released_at, expires_at, body) VALUES ",
                record_rows,
            )
            _insert_many(
                conn,
                "INSERT INTO quarantine(at, reason, message, source, message_id, body_sha256, body) VALUES ",
                quarantine_rows,
            )
            if purge:
                conn.executemany("DELETE FROM records WHERE record_id = ?", purge)
            _insert_many(
                conn, "INSERT OR IGNORE INTO checkpoints(seq, head_hash, at, kid, signature) VALUES ", checkpoint_rows
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.head = (seq, prev)
        self.commits += 1
        self.units += len(units)
        return lost

    @staticmethod
    def _claims(conn: sqlite3.Connection, units: list[CommitUnit]) -> list[Lost]:
        """Per unit, the message ids already held for different content.

        Threat: a partner (or an attacker holding its key) reuses a message id for other content
        and the two copies reach two broker processes at once. Each process's replay guard
        read "not seen", so both would release, under the same record ids, while the audit
        (one "released" entry per record id) would show only the first. The claim is settled
        here, under SQLite's write lock: the first content written wins; a later unit with
        other content for that id loses it and releases nothing."""
        keys = list(dict.fromkeys(key for unit in units for key, seen in unit.seen if seen.content_sha256))
        if not keys:
            return [NONE_LOST] * len(units)
        held = SqliteStore._replay_states(conn, keys)
        content = {key: seen.content_sha256 for key, seen in held.items() if seen.content_sha256}
        out: list[Lost] = []
        for unit in units:
            lost, mine = set(), set()  # a unit's own first content for an id is its claim
            for key, seen in unit.seen:
                if not seen.content_sha256 or key in mine:
                    continue
                prior = content.setdefault(key, seen.content_sha256)
                if prior == seen.content_sha256:
                    mine.add(key)
                else:
                    lost.add(key)
            out.append(frozenset(lost) if lost else NONE_LOST)
        return out

    # -- reads -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        if self._reader is None:
            raise RuntimeError("store is not open")
        with self._read_lock:
            yield self._reader

    async def replay_states(self, keys: Sequence[ReplayKey]) -> dict[ReplayKey, Seen]:
        """Read on the event loop's thread, with a connection of its own: primary-key lookups in
        a WAL snapshot never wait for the writer, and a hand-off to a worker thread (submit, wake,
        GIL, call back) cost more than the read itself at the small batches of a light load."""
        if not keys:
            return {}
        if self._guard is None:
            raise RuntimeError("store is not open")
        try:
            return self._replay_states(self._guard, list(keys))
        except sqlite3.OperationalError:  # busy (see ``open``): wait for it off the loop
            return await self.read(partial(self._replay_states, keys=list(keys)))

    @staticmethod
    def _replay_states(conn: sqlite3.Connection, keys: list[ReplayKey]) -> dict[ReplayKey, Seen]:
        out: dict[ReplayKey, Seen] = {}
        for i in range(0, len(keys), 400):
            chunk = keys[i : i + 400]
            where = " OR ".join("(source = ? AND message_id = ?)" for _ in chunk)
            params = [part for key in chunk for part in key]
            sql = f"SELECT source, message_id, state, content_sha256 FROM seen WHERE {where}"  # noqa: S608
            for source, message_id, state, content in conn.execute(sql, params):
                out[(source, message_id)] = Seen(ReplayState(state), content)
        return {key: out.get(key, NOT_SEEN) for key in keys}

    async def ping(self) -> bool:
        def check() -> bool:
            with self._read() as conn:
                conn.execute("SELECT 1").fetchone()
            return self._thread is not None and self._thread.is_alive()

        try:
            return await asyncio.to_thread(check)
        except (sqlite3.Error, RuntimeError):
            return False

    async def current_head(self) -> tuple[int, str]:
        """The chain head as committed, whichever process wrote it (``head`` is only this
        store's last write; broker processes sharing the file each write to the chain)."""

        def query(conn: sqlite3.Connection) -> tuple[int, str]:
            row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            return (int(row[0]), str(row[1])) if row is not None else (0, GENESIS)

        return await self.read(query)

    async def verify_audit(self) -> ChainReport:
        return await asyncio.to_thread(verify_audit_file, self.path)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read-only query function on a reader connection, off the event loop."""

        def run() -> T:
            with self._read() as conn:
                return fn(conn)

        try:
            return await asyncio.to_thread(run)
        except (sqlite3.DatabaseError, OSError) as exc:
            unavailable = translated(exc)
            if unavailable is exc:
                raise  # a bug of ours, as it is
            raise unavailable from exc

    # -- queries (used through ``read``) ---------------------------------------------------------
    @staticmethod
    def feed_page(
        conn: sqlite3.Connection,
        consumer: str,
        *,
        after: int,
        limit: int,
        event_type: str | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> list[FeedRow]:
        """One page of a consumer's records in id order. Ids are assigned by the single writer in
        commit order, so paging by ``id > after`` never skips or repeats a record, however many
        arrive meanwhile."""
        sql = (
            "SELECT id, record_id, event_type, agreement_id, released_at, body FROM records "
            "WHERE consumer = ? AND id > ?"
        )
        params: list[object] = [consumer, after]
        if event_type:
            sql += " AND event_type = ?"
            params.append(event_type)
        if since:
            sql += " AND released_at >= ?"
            params.append(since)
        if until:
            sql += " AND released_at < ?"
            params.append(until)
        sql += " ORDER BY id LIMIT ?"
        params.append(limit)
        return [
            FeedRow(int(i), str(rid), str(et), str(ag), str(at), bytes(body))
            for i, rid, et, ag, at, body in conn.execute(sql, params)
        ]

    @staticmethod
    def audit_page(conn: sqlite3.Connection, query: AuditQuery) -> list[tuple[int, bytes]]:
        return [(seq, body) for seq, body, _ in SqliteStore.audit_page_with_hash(conn, query)]

    @staticmethod
    def all_audit_rows(conn: sqlite3.Connection) -> list[tuple[int, bytes, str]]:
        return [
            (int(s), bytes(b), str(h)) for s, b, h in conn.execute("SELECT seq, body, hash FROM audit ORDER BY seq")
        ]

    @staticmethod
    def audit_page_with_hash(conn: sqlite3.Connection, query: AuditQuery) -> list[tuple[int, bytes, str]]:
        clauses: list[str] = ["seq > ?"]
        params: list[object] = [query.after]
        for column, value in (
            ("message_id", query.message_id),
            ("source", query.source),
            ("consumer", query.consumer),
            ("agreement_id", query.agreement_id),
            ("kind", query.kind),
        ):
            if value:
                clauses.append(f"{column} = ?")
                params.append(value)
        if query.record_id:
            clauses.append("(record_id = ? OR seq IN (SELECT seq FROM audit_records WHERE record_id = ?))")
            params.extend([query.record_id, query.record_id])
        if query.since:
            clauses.append("at >= ?")
            params.append(query.since)
        if query.until:
            clauses.append("at < ?")
            params.append(query.until)
        sql = f"SELECT seq, body, hash FROM audit WHERE {' AND '.join(clauses)} ORDER BY seq LIMIT ?"  # noqa: S608
        params.append(query.limit)
        return [(int(seq), bytes(body), str(h)) for seq, body, h in conn.execute(sql, params)]

    @staticmethod
    def expired(conn: sqlite3.Connection, now: str, limit: int = 1000) -> list[tuple[str, str, str]]:
        return [
            (str(r), str(c), str(a))
            for r, c, a in conn.execute(
                "SELECT record_id, consumer, agreement_id FROM records WHERE expires_at <= ? "
                "ORDER BY expires_at LIMIT ?",
                (now, limit),
            )
        ]

    @staticmethod
    def checkpoints_list(conn: sqlite3.Connection) -> list[Checkpoint]:
        return [
            Checkpoint(int(seq), str(h), str(at), str(kid), str(sig))
            for seq, h, at, kid, sig in conn.execute(
                "SELECT seq, head_hash, at, kid, signature FROM checkpoints ORDER BY seq"
            )
        ]

    @staticmethod
    def record_message(conn: sqlite3.Connection, record_id: str) -> str | None:
        row = conn.execute(
            "SELECT message_id FROM audit WHERE record_id = ? AND message_id IS NOT NULL LIMIT 1", (record_id,)
        ).fetchone()
        return None if row is None else str(row[0])


@dataclass(frozen=True, slots=True)
class FeedRow:
    id: int
    record_id: str
    event_type: str
    agreement_id: str
    released_at: str
    body: bytes


@dataclass(frozen=True, slots=True)
class AuditQuery:
    after: int = 0
    limit: int = 100
    message_id: str | None = None
    record_id: str | None = None
    source: str | None = None
    consumer: str | None = None
    agreement_id: str | None = None
    kind: str | None = None
    since: str | None = None
    until: str | None = None


def verify_audit_file(path: Path) -> ChainReport:
    """Verify the audit chain of a store file, read-only (the ``audit verify`` command)."""
    conn = connect(path, readonly=True)
    try:
        rows = (
            (int(seq), bytes(body), str(h))
            for seq, body, h in conn.execute("SELECT seq, body, hash FROM audit ORDER BY seq")
        )
        return verify_chain(rows)
    finally:
        conn.close()
