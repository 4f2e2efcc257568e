"""SQLite (WAL) backend of the store contract (``broker/ports/store.py``), with group commit.

The embedded default: one host, one file. One writer thread owns the write connection. Callers
hand it commit units; it drains whatever is queued (up to ``batch_max``) into ONE transaction and
one fsync, then wakes every caller whose unit was in it. Durability therefore costs one fsync per
group, not per message. What a commit writes is decided by the pure rules in
``broker/audit/commit_plan.py`` (shared with the PostgreSQL backend), from what this backend
reads under SQLite's write lock, so processes sharing the file cannot fork the chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, date, datetime
from functools import partial
from pathlib import Path
from typing import TypeVar

from broker.audit.chain import GENESIS, ChainReport, ChainRow, verify_chain
from broker.audit.columns import record_index
from broker.audit.commit_plan import (
    NONE_LOST,
    CommitPlan,
    claim_keys,
    contribution_steps,
    pending_of,
    plan_commit,
    released_ids,
    replaced,
    replay_view,
)
from broker.errors import StoreUnavailable
from broker.ports.private_files import private_directory, private_file
from broker.ports.sql import (
    BACKFILL_LINEAGE,
    CONTRIBUTION_COLUMNS,
    CONTRIBUTION_UPSERT,
    CONTRIBUTIONS_OF_RECORD,
    ENDED_SESSIONS_PRUNE,
    ENDED_SESSIONS_TABLE,
    EXPIRED_COLUMNS,
    EXPIRED_SEEN,
    FIGURES_COLUMNS,
    FIGURES_EXPIRING,
    FIGURES_OF_CONSUMER,
    FIGURES_TABLES,
    HELD_ROW_COLUMNS,
    HELD_SUMMARY_QUERY,
    HOLDING_COLUMNS,
    HOLDING_UPSERT_WHERE,
    LATEST_FIGURES,
    LINEAGE_TABLES,
    LINEAGE_UPSERT_WHERE,
    PENDING_DONE,
    PENDING_QUERY,
    PENDING_UPSERT,
    PURGE_CONTRIBUTIONS,
    PURGE_FIGURES,
    PURGE_FIGURES_FEED,
    RECORDS_BEFORE_NOTICE,
    RECORDS_CURRENT,
    RECORDS_PERIOD,
    RECORDS_PERIOD_INDEX,
    SEEN_KINDS,
    SESSION_ENDED_QUERY,
    Binder,
    admitted,
    audit_page_query,
    contribution_values,
    feed_page_query,
    figures_row,
    figures_values,
    held_item,
    held_items_query,
    held_page_query,
    held_row,
    later_revisions,
    lineage_view,
    message_of,
    outcome_days_query,
    pending_row,
    qmark,
    refill,
    released_volumes_query,
)
from broker.ports.store import (
    GENESIS_HEAD,
    AuditQuery,
    AuditRow,
    Checkpoint,
    CommitUnit,
    DayCount,
    Expired,
    ExpiredQuarantine,
    FeedRow,
    FiguresPending,
    FiguresRow,
    Head,
    HeldItem,
    HeldRow,
    HeldSummary,
    Lost,
    QuarantineItem,
    QuarantineRow,
    ReplayKey,
    Seen,
    StoreCounts,
    VolumeCount,
)
from broker.stages.lineage import Lineage
from broker.stages.replay import ReplayState
from schemas.envelope import format_time, parse_time

__all__ = ["AuditQuery", "FeedRow", "SqliteStore", "connect", "translated", "verify_audit_file"]

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
CREATE TABLE IF NOT EXISTS audit_records (
    seq INTEGER NOT NULL,
    record_id TEXT NOT NULL,
    PRIMARY KEY (record_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS audit_records_seq ON audit_records(seq);
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
CREATE TABLE IF NOT EXISTS held (
    pos INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    agreement_id TEXT NOT NULL,
    held_under_revision INTEGER NOT NULL,
    reason TEXT NOT NULL,
    source TEXT NOT NULL,
    message_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    held_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    sealed BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS held_agreement ON held(agreement_id, pos);
CREATE INDEX IF NOT EXISTS held_expiry ON held(expires_at);
CREATE INDEX IF NOT EXISTS audit_kind_at ON audit(kind, at, source);
"""

RECORDS_TABLE = """
CREATE TABLE IF NOT EXISTS records (
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
    period TEXT,
    UNIQUE (record_id, revision, kind)
);
CREATE INDEX IF NOT EXISTS records_consumer ON records(consumer, id);
CREATE INDEX IF NOT EXISTS records_record ON records(record_id);
"""
# A store made before records had revisions (one row per record id, ``UNIQUE``): rebuilt with
# its rows as revision 1, in one transaction, keeping every row's feed position (``id``).
_RENAME_V0 = """
DROP INDEX IF EXISTS records_consumer;
DROP INDEX IF EXISTS records_expiry;
ALTER TABLE records RENAME TO records_v0;
"""
_COPY_V0 = """
INSERT INTO records(id, record_id, consumer, agreement_id, agreement_revision, event_type, source, message_id,
    released_at, expires_at, body)
    SELECT id, record_id, consumer, agreement_id, agreement_revision, event_type, source, message_id,
    released_at, expires_at, body FROM records_v0 ORDER BY id;
DROP TABLE records_v0;
"""
MIGRATE_RECORDS = "".join((_RENAME_V0, RECORDS_TABLE, _COPY_V0))


# The shared queries (``broker/ports/sql.py``) in SQLite's numbered-parameter style, made once.
def _q(query: str) -> str:
    """A shared query in SQLite's numbered-parameter style ($1 -> ?1)."""
    for n in range(9, 0, -1):
        query = query.replace(f"${n}", f"?{n}")
    return query


_BEFORE_NOTICE = _q(RECORDS_BEFORE_NOTICE)
_CURRENT = _q(RECORDS_CURRENT)
_EXPIRED_SEEN = _q(EXPIRED_SEEN)
_CONTRIBUTIONS_OF_RECORD = _q(CONTRIBUTIONS_OF_RECORD)
_PENDING_DONE = _q(PENDING_DONE)
_PENDING_QUERY = _q(PENDING_QUERY)
_LATEST_FIGURES = _q(LATEST_FIGURES)
_FIGURES_OF_CONSUMER = _q(FIGURES_OF_CONSUMER)
_FIGURES_EXPIRING = _q(FIGURES_EXPIRING)
_PURGE_CONTRIBUTIONS = _q(PURGE_CONTRIBUTIONS)
_PURGE_FIGURES = _q(PURGE_FIGURES)
_PURGE_FIGURES_FEED = _q(PURGE_FIGURES_FEED)

_STOP = object()
T = TypeVar("T")


def _migrate_records(conn: sqlite3.Connection) -> None:
    """Create the records and lineage tables, or bring an older store's to them: one transaction,
    its checks made under the write lock (processes opening one file at once migrate it once)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        columns = {str(row[1]) for row in conn.execute("PRAGMA table_info(records)")}
        lineage_exists = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'lineage'").fetchone() is not None
        script = MIGRATE_RECORDS if columns and "revision" not in columns else RECORDS_TABLE
        script += LINEAGE_TABLES + FIGURES_TABLES
        if columns and "period" not in columns and "revision" in columns:
            script += RECORDS_PERIOD  # a store from before feeds could be read by event date
        else:
            script += RECORDS_PERIOD_INDEX
        if columns and not lineage_exists:
            script += BACKFILL_LINEAGE
        for statement in script.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=10000")
        return conn
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    # The timeout first: processes opening one file at once (``--workers``) wait for each other's
    # schema and journal-mode set-up instead of failing with "database is locked".
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk when it returns, so an ack/response after it never loses data.
    conn.execute("PRAGMA synchronous=FULL")
    return conn


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


def _existing(conn: sqlite3.Connection, query: str, keys: Sequence[str]) -> set[str]:
    """The subset of ``keys`` that ``query`` + ``(?, ...)`` finds (first column), in chunks."""
    found: set[str] = set()
    unique = list(dict.fromkeys(keys))
    for i in range(0, len(unique), 500):
        chunk = unique[i : i + 500]
        sql = query + "(" + ", ".join("?" * len(chunk)) + ")"
        found.update(str(row[0]) for row in conn.execute(sql, chunk))
    return found


_HEAD_SQL = "SELECT seq, hash, at FROM audit ORDER BY seq DESC LIMIT 1"


def _head(conn: sqlite3.Connection) -> Head:
    row = conn.execute(_HEAD_SQL).fetchone()
    return Head(int(row[0]), str(row[1]), str(row[2])) if row is not None else GENESIS_HEAD


class SqliteStore:
    """The store contract on one SQLite file (WAL). ``readonly``: the offline commands' view of a
    store file (no writer, no schema changes; ``commit`` refuses)."""

    def __init__(
        self,
        path: Path,
        *,
        batch_max: int = 512,
        readonly: bool = False,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.path = path
        self.batch_max = batch_max
        self.readonly = readonly
        self.clock = clock
        self._jobs: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._reader: sqlite3.Connection | None = None
        self._guard: sqlite3.Connection | None = None  # replay-guard reads, on the event loop's thread
        self._read_lock = threading.Lock()
        self.head: tuple[int, str] = (0, GENESIS)  # this store's last write (one attribute: read atomically)
        self.commits = 0  # transactions written (for the group-commit figures)
        self.units = 0

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    # -- lifecycle -------------------------------------------------------------------------------
    async def open(self) -> None:
        if self.readonly:
            if not self.path.is_file():
                raise StoreUnavailable(f"no audit store at {self.path}")
            self._reader = connect(self.path, readonly=True)
            return
        private_directory(self.path.parent)
        for name in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):
            if name == self.path or name.exists():
                private_file(name)
        writer = connect(self.path)
        writer.executescript(SCHEMA + ENDED_SESSIONS_TABLE)
        _migrate_records(writer)
        head = _head(writer)
        self.head = (head.seq, head.hash)
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
            raise RuntimeError("store is not open for writing")
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
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Read under SQLite's write lock, not from memory: another broker process sharing
            # this store file may have committed since (see ``commit_plan``).
            plan = plan_commit(
                units,
                head=_head(conn),
                released=_existing(conn, "SELECT record_id FROM releases WHERE record_id IN ", released_ids(units)),
                held=self._replay_states(conn, claim_keys(units)),
                now=self.clock(),
            )
            self._apply(conn, plan)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.head = (plan.head.seq, plan.head.hash)
        self.commits += 1
        self.units += len(units)
        return plan.lost

    @staticmethod
    def _apply(conn: sqlite3.Connection, plan: CommitPlan) -> None:
        _insert_many(
            conn,
            "INSERT INTO seen(source, message_id, state, content_sha256, first_seen) VALUES ",
            [(r.source, r.message_id, r.state.value, r.content_sha256, plan.at) for r in plan.seen],
            " ON CONFLICT(source, message_id) DO UPDATE SET state = excluded.state, "
            "content_sha256 = coalesce(seen.content_sha256, excluded.content_sha256) "
            "WHERE seen.state != 'done'",
        )
        _insert_many(conn, "INSERT INTO releases(record_id, audit_seq) VALUES ", list(plan.releases))
        _insert_many(
            conn,
            "INSERT INTO audit(seq, at, kind, message_id, source, consumer, agreement_id, record_id, body, hash) "
            "VALUES ",
            [
                (a.seq, a.at, a.kind, a.message_id, a.source, a.consumer, a.agreement_id, a.record_id, a.body, a.hash)
                for a in plan.audit
            ],
        )
        _insert_many(conn, "INSERT OR IGNORE INTO audit_records(seq, record_id) VALUES ", list(plan.audit_records))
        if plan.purge:
            # Retention: every revision of these record ids goes; their notices stay until their
            # own expiry (a consumer that reads rarely still learns of a withdrawal); the holding
            # stays as a tombstone (never released to that consumer again). The deletion notices
            # that replace the records, if any, are among ``plan.records`` below.
            ids = [(rid,) for rid in plan.purge]
            conn.executemany("DELETE FROM records WHERE record_id = ? AND kind = 'record'", ids)
            conn.executemany("UPDATE holdings SET purged = 1 WHERE record_id = ?", ids)
            if plan.notices_until is not None:
                conn.executemany(
                    "UPDATE records SET expires_at = ? WHERE record_id = ? AND kind != 'record'",
                    [(plan.notices_until, rid) for rid in plan.purge],
                )
        _insert_many(
            conn,
            "INSERT OR IGNORE INTO records(record_id, consumer, agreement_id, agreement_revision, event_type, "
            "source, message_id, released_at, expires_at, body, revision, kind, period) VALUES ",
            [
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
                    rec.revision,
                    rec.kind,
                    rec.period,
                )
                for rec in plan.records
            ],
        )
        for record_id in later_revisions(plan.records):
            # A notice deletes the consumer's copies of the revisions before it (never a later one,
            # even one written in this same commit); the latest row, by revision, is current.
            conn.execute(_BEFORE_NOTICE, (record_id,))
            conn.execute(_CURRENT, (record_id,))
        _insert_many(
            conn,
            "INSERT INTO lineage(source, lineage, revision, message_id, withdrawn, event_type, updated_at) VALUES ",
            [
                (lin.source, lin.lineage, lin.revision, lin.message_id, int(lin.withdrawn), lin.event_type, plan.at)
                for lin in plan.lineages
            ],
            LINEAGE_UPSERT_WHERE,
        )
        _insert_many(
            conn,
            "INSERT INTO holdings(record_id, source, lineage, consumer, agreement_id, event_type, revision, "
            "withdrawn, expires_at) VALUES ",
            [
                (
                    h.record_id,
                    h.source,
                    h.lineage,
                    h.consumer,
                    h.agreement_id,
                    h.event_type,
                    h.revision,
                    int(h.withdrawn),
                    h.expires_at,
                )
                for h in plan.holdings
            ],
            HOLDING_UPSERT_WHERE,
        )
        _insert_many(
            conn,
            "INSERT INTO quarantine(at, reason, message, source, message_id, body_sha256, body) VALUES ",
            [
                (format_time(q.at), q.reason, q.message, q.source, q.message_id, q.body_sha256, q.body)
                for q in plan.quarantine
            ],
        )
        if plan.purge_notices_before is not None:
            conn.execute("DELETE FROM records WHERE kind = 'deleted' AND expires_at <= ?", (plan.purge_notices_before,))
        if plan.purge_seen:
            conn.executemany("DELETE FROM seen WHERE source = ? AND message_id = ?", plan.purge_seen)
        if plan.purge_quarantine:
            conn.executemany("DELETE FROM quarantine WHERE id = ?", [(qid,) for qid in plan.purge_quarantine])
        _insert_many(
            conn,
            "INSERT OR IGNORE INTO checkpoints(seq, head_hash, at, kid, signature) VALUES ",
            [(cp.seq, cp.head_hash, cp.at, cp.kid, cp.signature) for cp in plan.checkpoints],
        )
        # Held events: one row per id (a redelivered message is held once: the first row stays).
        _insert_many(
            conn,
            "INSERT OR IGNORE INTO held(id, agreement_id, held_under_revision, reason, source, message_id, "
            "event_type, held_at, expires_at, sealed) VALUES ",
            [
                (
                    h.id,
                    h.agreement_id,
                    h.held_under_revision,
                    h.reason,
                    h.source,
                    h.message_id,
                    h.event_type,
                    format_time(h.held_at),
                    format_time(h.expires_at),
                    h.sealed,
                )
                for h in plan.held
            ],
        )
        if plan.unhold:
            conn.executemany("DELETE FROM held WHERE id = ?", [(hid,) for hid in plan.unhold])
        SqliteStore._apply_figures(conn, plan)
        if plan.end_sessions:
            conn.execute(ENDED_SESSIONS_PRUNE.replace("$1", "?"), (plan.at,))
            _insert_many(
                conn,
                "INSERT OR IGNORE INTO console_sessions_ended(session_id, ended_at, expires_at) VALUES ",
                [(s.session_id, plan.at, format_time(s.expires_at)) for s in plan.end_sessions],
            )

    @staticmethod
    def _apply_figures(conn: sqlite3.Connection, plan: CommitPlan) -> None:
        """Figures flows' inputs (in message order: a revision replaces what its record counted),
        their pending quarters (marked with this commit's last sequence), releases and purges."""
        mark = plan.head.seq
        pending: list[FiguresPending] = []
        for change, rows in contribution_steps(plan.contributions):
            if change is not None:
                existing = conn.execute(_CONTRIBUTIONS_OF_RECORD, (change.lineage, change.source)).fetchall()
                gone, lost = replaced(change, existing)
                conn.executemany("DELETE FROM contributions WHERE record_id = ?", [(rid,) for rid in gone])
                pending.extend(lost)
            _insert_many(
                conn,
                f"INSERT INTO contributions({CONTRIBUTION_COLUMNS}) VALUES ",  # noqa: S608
                contribution_values(rows),
                CONTRIBUTION_UPSERT,
            )
            pending.extend(pending_of(rows))
        if plan.figures_done:
            conn.executemany(_PENDING_DONE, plan.figures_done)
        _insert_many(
            conn,
            "INSERT INTO figures_pending(figures_id, agreement_id, flow_id, period, mark) VALUES ",
            list({p.figures_id: (p.figures_id, p.agreement_id, p.flow_id, p.period, mark) for p in pending}.values()),
            PENDING_UPSERT,
        )
        _insert_many(
            conn,
            f"INSERT OR IGNORE INTO figures({FIGURES_COLUMNS}) VALUES ",  # noqa: S608
            figures_values(plan.figures),
        )
        if plan.purge_contributions_before is not None:
            conn.execute(_PURGE_CONTRIBUTIONS, (plan.purge_contributions_before,))
        if plan.purge_figures_before is not None:
            conn.execute(_PURGE_FIGURES, (plan.purge_figures_before,))
            conn.execute(_PURGE_FIGURES_FEED, (plan.purge_figures_before,))

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
            return await self._query(partial(self._replay_states, keys=list(keys)))
        try:
            return self._replay_states(self._guard, list(keys))
        except sqlite3.OperationalError:  # busy (see ``open``): wait for it off the loop
            return await self._query(partial(self._replay_states, keys=list(keys)))

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
        return replay_view(keys, out)

    async def ping(self) -> bool:
        def check() -> bool:
            with self._read() as conn:
                conn.execute("SELECT 1").fetchone()
            return self.readonly or (self._thread is not None and self._thread.is_alive())

        try:
            return await asyncio.to_thread(check)
        except (sqlite3.Error, RuntimeError):
            return False

    async def current_head(self) -> Head:
        return await self._query(_head)

    async def _query(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read-only query function on the reader connection, off the event loop."""

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

    async def feed_page(
        self,
        consumer: str,
        *,
        after: int,
        limit: int,
        event_type: str | None = None,
        since: str | None = None,
        until: str | None = None,
        history: bool = False,
        period: str | None = None,
    ) -> list[FeedRow]:
        """Ids are assigned by the single writer in commit order (see ``Store.feed_page``)."""
        bind = Binder(qmark)
        sql = feed_page_query(
            bind,
            consumer,
            after=after,
            limit=limit,
            event_type=event_type,
            since=since,
            until=until,
            history=history,
            period=period,
        )
        params = bind.params

        def run(conn: sqlite3.Connection) -> list[FeedRow]:
            # The columns come back as FeedRow's types (INTEGER and NOT NULL TEXT columns; body is
            # written as a BLOB), in FEED_COLUMNS' order: no per-value conversion.
            return list(map(FeedRow._make, conn.execute(sql, params)))

        return await self._query(run)

    async def lineages(self, keys: Sequence[ReplayKey]) -> dict[ReplayKey, Lineage]:
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}

        def run(conn: sqlite3.Connection) -> dict[ReplayKey, Lineage]:
            found: dict[ReplayKey, tuple[int, str, bool, str]] = {}
            rows: list[Sequence[object]] = []
            for i in range(0, len(wanted), 400):
                chunk = wanted[i : i + 400]
                # By first message id (the index's first column); the source is checked in
                # ``lineage_view`` (message ids are unique per partner only).
                where = "lineage IN (" + ", ".join("?" * len(chunk)) + ")"
                params = [key[1] for key in chunk]
                for src, lin, rev, mid, wd, et in conn.execute(
                    f"SELECT source, lineage, revision, message_id, withdrawn, event_type FROM lineage WHERE {where}",  # noqa: S608
                    params,
                ):
                    found[(str(src), str(lin))] = (int(rev), str(mid), bool(wd), str(et))
                rows.extend(conn.execute(f"SELECT {HOLDING_COLUMNS} FROM holdings WHERE {where}", params))  # noqa: S608
            return lineage_view(wanted, found, rows)

        return await self._query(run)

    async def audit_page(self, query: AuditQuery) -> list[AuditRow]:
        return await self._query(partial(_audit_page, query=query))

    async def record_message(self, record_id: str) -> str | None:
        def run(conn: sqlite3.Connection) -> str | None:
            rows = conn.execute("SELECT body FROM audit WHERE record_id = ? ORDER BY seq", (record_id,))
            return message_of(record_id, (bytes(body) for (body,) in rows))

        return await self._query(run)

    async def checkpoints(self) -> list[Checkpoint]:
        def run(conn: sqlite3.Connection) -> list[Checkpoint]:
            return [
                Checkpoint(int(seq), str(h), str(at), str(kid), str(sig))
                for seq, h, at, kid, sig in conn.execute(
                    "SELECT seq, head_hash, at, kid, signature FROM checkpoints ORDER BY seq"
                )
            ]

        return await self._query(run)

    async def expired(self, now: datetime, limit: int) -> list[Expired]:
        def run(conn: sqlite3.Connection) -> list[Expired]:
            return [
                Expired(str(r), str(c), str(a), str(s), str(e), int(v), bool(w), parse_time(str(x)))
                for r, c, a, s, e, v, w, x in conn.execute(
                    EXPIRED_COLUMNS + "expires_at <= ? ORDER BY expires_at, record_id LIMIT ?",
                    (format_time(now), limit),
                )
            ]

        return await self._query(run)

    async def expired_seen(self, before: str, limit: int) -> list[ReplayKey]:
        def run(conn: sqlite3.Connection) -> list[ReplayKey]:
            rows = conn.execute(_EXPIRED_SEEN, (before, limit))
            return [(str(s), str(m)) for s, m in rows]

        return await self._query(run)

    async def expired_quarantine(self, before: datetime, limit: int) -> list[ExpiredQuarantine]:
        def run(conn: sqlite3.Connection) -> list[ExpiredQuarantine]:
            return [
                ExpiredQuarantine(int(i), str(r))
                for i, r in conn.execute(
                    "SELECT id, reason FROM quarantine WHERE at < ? ORDER BY id LIMIT ?", (format_time(before), limit)
                )
            ]

        return await self._query(run)

    async def counts(self) -> StoreCounts:
        def run(conn: sqlite3.Connection) -> StoreCounts:
            kinds = {str(k): int(n) for k, n in conn.execute("SELECT kind, COUNT(*) FROM audit GROUP BY kind")}
            consumers = {
                str(c): int(n)
                for c, n in conn.execute(
                    "SELECT consumer, COUNT(*) FROM records WHERE kind = 'record' AND current = 1 GROUP BY consumer"
                )
            }
            return StoreCounts(kinds, consumers)

        return await self._query(run)

    async def quarantine_page(self, *, after: int, limit: int) -> list[QuarantineRow]:
        def run(conn: sqlite3.Connection) -> list[QuarantineRow]:
            rows = conn.execute(
                "SELECT id, at, reason, message, source, message_id, body_sha256, body FROM quarantine "
                "WHERE id > ? ORDER BY id LIMIT ?",
                (after, limit),
            )
            return [
                QuarantineRow(
                    int(i), QuarantineItem(parse_time(at), r, m, src, mid, h, None if body is None else bytes(body))
                )
                for i, at, r, m, src, mid, h, body in rows
            ]

        return await self._query(run)

    def leadership(self, name: str) -> SoleLeader:
        return SoleLeader()

    # -- held events ---------------------------------------------------------------------------
    async def held_page(
        self, *, agreement_id: str | None = None, source: str | None = None, after: int = 0, limit: int = 100
    ) -> list[HeldRow]:
        bind = Binder(qmark)
        sql = held_page_query(
            bind, HELD_ROW_COLUMNS, agreement_id=agreement_id, source=source, after=after, limit=limit
        )

        def run(conn: sqlite3.Connection) -> list[HeldRow]:
            return [held_row(row) for row in conn.execute(sql, bind.params)]

        return await self._query(run)

    async def held_items(
        self, agreement_id: str, ids: Sequence[str] | None, *, after: int, limit: int
    ) -> list[HeldItem]:
        bind = Binder(qmark)
        sql = held_items_query(bind, agreement_id, ids, after=after, limit=limit)

        def run(conn: sqlite3.Connection) -> list[HeldItem]:
            return [held_item(row) for row in conn.execute(sql, bind.params)]

        return await self._query(run)

    async def held_agreements(self) -> dict[str, int]:
        def run(conn: sqlite3.Connection) -> dict[str, int]:
            return {
                str(a): int(n) for a, n in conn.execute("SELECT agreement_id, COUNT(*) FROM held GROUP BY agreement_id")
            }

        return await self._query(run)

    async def expired_held(self, now: datetime, limit: int) -> list[HeldRow]:
        def run(conn: sqlite3.Connection) -> list[HeldRow]:
            rows = conn.execute(
                f"SELECT {HELD_ROW_COLUMNS} FROM held WHERE expires_at <= ? ORDER BY expires_at, pos LIMIT ?",  # noqa: S608
                (format_time(now), limit),
            )
            return [held_row(row) for row in rows]

        return await self._query(run)

    async def last_seen(self, sources: Sequence[str]) -> dict[str, datetime]:
        # Newest first along the source's own index: times never go backwards along the chain, so
        # the first entry of a verified kind is the latest. INDEXED BY: the planner might
        # otherwise walk audit_kind_at through every entry of those kinds ever written.
        kinds = ", ".join("?" * len(SEEN_KINDS))
        sql = (
            f"SELECT at FROM audit INDEXED BY audit_source WHERE source = ? AND kind IN ({kinds}) "  # noqa: S608
            "ORDER BY seq DESC LIMIT 1"
        )

        def run(conn: sqlite3.Connection) -> dict[str, datetime]:
            out: dict[str, datetime] = {}
            for source in dict.fromkeys(sources):
                row = conn.execute(sql, (source, *SEEN_KINDS)).fetchone()
                if row is not None:
                    out[source] = parse_time(str(row[0]))
            return out

        return await self._query(run)

    async def outcome_days(self, since: datetime) -> list[DayCount]:
        bind = Binder(qmark)
        sql = outcome_days_query(bind, format_time(since))
        params = bind.params

        def run(conn: sqlite3.Connection) -> list[DayCount]:
            return [
                DayCount(date.fromisoformat(str(day)), str(kind), None if src is None else str(src), int(n))
                for day, kind, src, n in conn.execute(sql, params)
            ]

        return await self._query(run)

    async def held_summary(self) -> list[HeldSummary]:
        def run(conn: sqlite3.Connection) -> list[HeldSummary]:
            return [
                HeldSummary(str(a), int(n), parse_time(str(first))) for a, n, first in conn.execute(HELD_SUMMARY_QUERY)
            ]

        return await self._query(run)

    async def figures_pending(self, limit: int) -> list[FiguresPending]:
        def run(conn: sqlite3.Connection) -> list[FiguresPending]:
            return [pending_row(row) for row in conn.execute(_PENDING_QUERY, (limit,))]

        return await self._query(run)

    async def contributions(self, figures_ids: Sequence[str]) -> list[tuple[str, str, bytes]]:
        ids = list(dict.fromkeys(figures_ids))

        def run(conn: sqlite3.Connection) -> list[tuple[str, str, bytes]]:
            out: list[tuple[str, str, bytes]] = []
            for i in range(0, len(ids), 500):
                part = ids[i : i + 500]
                marks = ", ".join("?" * len(part))
                query = f"SELECT figures_id, event_type, data FROM contributions WHERE figures_id IN ({marks})"  # noqa: S608
                out.extend((row[0], row[1], str(row[2]).encode()) for row in conn.execute(query, part))
            return out

        return await self._query(run)

    async def latest_figures(self, figures_id: str) -> FiguresRow | None:
        def run(conn: sqlite3.Connection) -> FiguresRow | None:
            row = conn.execute(_LATEST_FIGURES, (figures_id,)).fetchone()
            return figures_row(row) if row is not None else None

        return await self._query(run)

    async def figures_of(self, consumer: str) -> list[FiguresRow]:
        def run(conn: sqlite3.Connection) -> list[FiguresRow]:
            return [figures_row(row) for row in conn.execute(_FIGURES_OF_CONSUMER, (consumer,))]

        return await self._query(run)

    async def figures_expiring(self, before: str) -> tuple[int, int]:
        def run(conn: sqlite3.Connection) -> tuple[int, int]:
            row = conn.execute(_FIGURES_EXPIRING, (before,)).fetchone()
            return int(row[0]), int(row[1])

        return await self._query(run)

    async def session_ended(self, session_id: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            try:
                row = conn.execute(SESSION_ENDED_QUERY.replace("$1", "?"), (session_id,)).fetchone()
            except sqlite3.OperationalError:
                # A read-only view of a store made before the console: no session ever ended in it.
                return False
            return row is not None

        return await self._query(run)

    async def released_volumes(self, since: str, until: str) -> list[VolumeCount]:
        bind = Binder(qmark)
        # CAST: SQLite's JSON functions refuse a BLOB (the body is stored as bytes).
        sql = released_volumes_query(bind, since, until, "json_extract(CAST(body AS TEXT), '$.flow_id')")
        params = bind.params

        def run(conn: sqlite3.Connection) -> list[VolumeCount]:
            return [
                VolumeCount(str(a), str(f), str(c), int(n))
                for a, f, c, n in conn.execute(sql, params)
                if a is not None and f is not None and c is not None
            ]

        return await self._query(run)


class SoleLeader:
    """SQLite: one store file has one primary (``service.hold_primary_lock``), and the ingest
    workers sharing the file never run singleton jobs, so the primary always leads."""

    async def check(self) -> bool:
        return True

    async def release(self) -> None:
        return None


# An entry's per-record index rows, as a JSON array (``audit_records_seq`` makes it a lookup).
_RECORD_IDS = "(SELECT json_group_array(r.record_id) FROM audit_records r WHERE r.seq = audit.seq)"


def _audit_rows(conn: sqlite3.Connection, query: AuditQuery) -> list[AuditRow]:
    """The rows the index selects, with their columns as stored (verification checks those)."""
    bind = Binder(qmark)
    sql = audit_page_query(bind, query, _RECORD_IDS)
    return [
        AuditRow(int(seq), at, kind, mid, src, con, agr, rid, bytes(body), h, record_index(json.loads(many or "[]")))
        for seq, at, kind, mid, src, con, agr, rid, body, h, many in conn.execute(sql, bind.params)
    ]


def _audit_page(conn: sqlite3.Connection, query: AuditQuery) -> list[AuditRow]:
    out: list[AuditRow] = []
    asked: AuditQuery | None = query
    while asked is not None:
        rows = _audit_rows(conn, asked)
        out.extend(admitted(query, rows))
        asked = refill(query, asked, rows, len(out))
    return out


def verify_audit_file(path: Path) -> ChainReport:
    """Verify the audit chain of a store file, read-only (tests and the demo's closing check):
    the same check as ``broker.pipeline.trail.verify_store``, columns included."""
    conn = connect(path, readonly=True)
    try:
        rows: list[ChainRow] = []
        after = 0
        while page := _audit_rows(conn, AuditQuery(after=after, limit=5000)):
            rows.extend((row.seq, row.body, row.hash, row.columns) for row in page)
            after = page[-1].seq
        return verify_chain(rows)
    finally:
        conn.close()
