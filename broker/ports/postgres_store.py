"""PostgreSQL backend of the store contract (``broker/ports/store.py``): several broker processes
on several hosts share one database, one audit chain and one replay guard.

**One chain across every host.** The chain's head lives in a one-row table, ``chain_head``. Every
commit's first statement is ``SELECT … FROM chain_head … FOR UPDATE``: it waits for the previous
commit (from any process) to finish, then reads the head that commit left, the record ids
already released and the message ids already claimed, all under the lock, and hands them to the
pure rules in ``broker/audit/commit_plan.py`` (the same rules the SQLite backend applies). So the
chain cannot fork, a record id is audited as released once ever, and of two copies of one message
id with different content the first committed wins, whichever host holds them.

What it costs: commits are serialised database-wide, one at a time, for as long as a commit
transaction takes (a few round trips: lock, two lookups, one multi-row insert per table, commit
and its WAL flush). Each process batches whatever is queued into one commit (group commit, as on
SQLite), so the serial section is paid per batch, not per message. The README's "Several hosts"
section has the measured figures. The alternatives were a chain per host merged for
verification (no single order of events for an IG lead to read, and a record's release-once
check still needs a global lock) or a sequence per entry with the hash linked later (a chain
that is not sealed at commit time is not tamper-evident when it matters).

**Feeds page by ``records.id``** (a sequence): ids are taken inside the locked section, so they
increase in commit order on every host, and ``id > after`` never skips a record committed later.

**Migrations** are numbered SQL steps applied at start under an advisory lock (several hosts may
start at once); a database whose schema is newer than this code knows is refused.

asyncpg's errors are translated here: a lost connection, a server shutting down or starting, too
many connections, a serialisation failure: :class:`StoreUnavailable` (retry, never poison).
Anything else (a constraint, a syntax error) is a bug and stays what it is.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, TypeVar

import asyncpg

from broker.audit.chain import GENESIS
from broker.audit.columns import record_index
from broker.audit.commit_plan import (
    CommitPlan,
    claim_keys,
    contribution_steps,
    pending_of,
    plan_commit,
    released_ids,
    replaced,
    replay_view,
)
from broker.errors import StartupError, StoreUnavailable
from broker.ports.sql import (
    BACKFILL_LINEAGE,
    CONTRIBUTION_COLUMNS,
    CONTRIBUTION_UPSERT,
    CONTRIBUTIONS_OF_RECORD,
    ENDED_SESSIONS_PRUNE,
    ENDED_SESSIONS_TABLE,
    EXPIRED_COLUMNS,
    EXPIRED_SEEN,
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
    numbered,
    outcome_days_query,
    pending_row,
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

T = TypeVar("T")

# Numbered schema steps: MIGRATIONS[n - 1] takes a database from version n - 1 to n. Append only.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE chain_head (
        id integer PRIMARY KEY CHECK (id = 1),
        seq bigint NOT NULL,
        hash text NOT NULL,
        at text
    );
    INSERT INTO chain_head VALUES (1, 0, repeat('0', 64), NULL);  -- GENESIS
    CREATE TABLE audit (
        seq bigint PRIMARY KEY,
        at text NOT NULL,
        kind text NOT NULL,
        message_id text,
        source text,
        consumer text,
        agreement_id text,
        record_id text,
        body bytea NOT NULL,
        hash text NOT NULL
    );
    CREATE INDEX audit_message ON audit(message_id);
    CREATE INDEX audit_record ON audit(record_id);
    CREATE INDEX audit_source ON audit(source, seq);
    CREATE INDEX audit_consumer ON audit(consumer, seq);
    CREATE INDEX audit_agreement ON audit(agreement_id, seq);
    CREATE INDEX audit_kind ON audit(kind, seq);
    CREATE INDEX audit_at ON audit(at);
    CREATE TABLE seen (
        source text NOT NULL,
        message_id text NOT NULL,
        state text NOT NULL,
        content_sha256 text,
        first_seen text NOT NULL,
        PRIMARY KEY (source, message_id)
    );
    CREATE TABLE releases (
        record_id text PRIMARY KEY,
        audit_seq bigint NOT NULL
    );
    CREATE TABLE records (
        id bigserial PRIMARY KEY,
        record_id text NOT NULL UNIQUE,
        consumer text NOT NULL,
        agreement_id text NOT NULL,
        agreement_revision integer NOT NULL,
        event_type text NOT NULL,
        source text NOT NULL,
        message_id text NOT NULL,
        released_at text NOT NULL,
        expires_at text NOT NULL,
        body bytea NOT NULL
    );
    CREATE INDEX records_consumer ON records(consumer, id);
    CREATE INDEX records_expiry ON records(expires_at);
    CREATE TABLE audit_records (
        seq bigint NOT NULL,
        record_id text NOT NULL,
        PRIMARY KEY (record_id, seq)
    );
    CREATE TABLE checkpoints (
        seq bigint PRIMARY KEY,
        head_hash text NOT NULL,
        at text NOT NULL,
        kid text NOT NULL,
        signature text NOT NULL
    );
    CREATE TABLE quarantine (
        id bigserial PRIMARY KEY,
        at text NOT NULL,
        reason text NOT NULL,
        message text NOT NULL,
        source text,
        message_id text,
        body_sha256 text NOT NULL,
        body bytea
    );
    """,
    # 2: an entry's per-record index rows looked up by its seq (read with every audit row, so
    # verification checks the index against the body).
    """
    CREATE INDEX audit_records_seq ON audit_records(seq);
    """,
    # 3: a record's life (corrections, withdrawals, deletion notices): records get a row per
    # revision and per notice; every record released so far becomes its lineage's revision 1.
    """
    ALTER TABLE records ADD COLUMN revision integer NOT NULL DEFAULT 1;
    ALTER TABLE records ADD COLUMN kind text NOT NULL DEFAULT 'record';
    ALTER TABLE records ADD COLUMN current integer NOT NULL DEFAULT 1;
    ALTER TABLE records DROP CONSTRAINT records_record_id_key;
    ALTER TABLE records ADD CONSTRAINT records_version UNIQUE (record_id, revision, kind);
    DROP INDEX records_expiry;
    CREATE INDEX records_record ON records(record_id);
    """
    + LINEAGE_TABLES
    + BACKFILL_LINEAGE,
    # 4: held events (an agreement's [hold]): sealed bodies, one row per (agreement, message).
    """
    CREATE TABLE held (
        pos bigserial PRIMARY KEY,
        id text NOT NULL UNIQUE,
        agreement_id text NOT NULL,
        held_under_revision integer NOT NULL,
        reason text NOT NULL,
        source text NOT NULL,
        message_id text NOT NULL,
        event_type text NOT NULL,
        held_at text NOT NULL,
        expires_at text NOT NULL,
        sealed bytea NOT NULL
    );
    CREATE INDEX held_agreement ON held(agreement_id, pos);
    CREATE INDEX held_expiry ON held(expires_at);
    """,
    # 5: per-day outcome counts for the alerts read this index alone (``Store.outcome_days``).
    """
    CREATE INDEX audit_kind_at ON audit(kind, at, source);
    """,
    # 6: the IG console's signed-out sessions (``Store.session_ended``).
    ENDED_SESSIONS_TABLE,
    # 7: figures flows (issue 14): their contributions, pending quarters and released figures.
    FIGURES_TABLES,
    # 8: feeds read by event date (a record's quarter, from its released date field).
    RECORDS_PERIOD,
)
SCHEMA_VERSION = len(MIGRATIONS)
VERSION_TABLE = "sv_broker_schema"
MIGRATION_LOCK = 0x5376_4272_6F6B_0001  # pg_advisory_xact_lock key: "SvBrok" + 1

# SQLSTATE classes that mean "the database is not there right now", not "our statement is wrong":
# 08 connection exception, 40 transaction rollback (serialisation failure, deadlock), 53
# insufficient resources, 57 operator intervention (shutdown, starting up), 58 system error;
# 55P03 lock not available.
_UNAVAILABLE_CLASSES = ("08", "40", "53", "57", "58")


def translated(exc: BaseException) -> BaseException:
    """asyncpg's (and the socket's) errors as the store contract's: unavailable, or a bug as it is."""
    unavailable = False
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        unavailable = state[:2] in _UNAVAILABLE_CLASSES or state == "55P03"
    elif isinstance(exc, asyncpg.exceptions.ConnectionDoesNotExistError | OSError | TimeoutError):
        unavailable = True
    elif isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc):
        unavailable = True  # a pooled connection the server dropped (restart): reconnect and retry
    if not unavailable:
        return exc
    out = StoreUnavailable(f"the PostgreSQL store is unavailable: {type(exc).__name__}")
    out.__cause__ = exc
    return out


@dataclass(slots=True)
class _Job:
    unit: CommitUnit
    future: asyncio.Future[Lost]


class PostgresStore:
    """The store contract on PostgreSQL (asyncpg). ``readonly``: the offline commands' view (no
    migrations, no writer; ``commit`` refuses)."""

    def __init__(
        self,
        dsn: str,
        *,
        batch_max: int = 512,
        readonly: bool = False,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        pool_size: int = 4,
        connect_timeout: float = 5.0,
    ) -> None:
        self.dsn = dsn
        self.batch_max = batch_max
        self.readonly = readonly
        self.clock = clock
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self._pool: asyncpg.Pool | None = None
        self._queue: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self.head: tuple[int, str] = (0, GENESIS)  # this process's last write
        self.commits = 0
        self.units = 0

    def __repr__(self) -> str:
        from broker.ports.stores import redacted

        return f"PostgresStore({redacted(self.dsn)!r})"

    # -- lifecycle -------------------------------------------------------------------------------
    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=1,
                max_size=self.pool_size,
                timeout=self.connect_timeout,
                command_timeout=60,
            )
            async with self._pool.acquire() as conn:
                version = await self._migrate(conn)
        except BaseException as exc:
            await self._close_pool()
            error = translated(exc)
            if error is exc:
                raise
            raise error from exc
        if self.readonly and version == 0:
            await self._close_pool()
            raise StoreUnavailable("the database holds no sv-broker store")
        if not self.readonly:
            self._writer = asyncio.create_task(self._write_loop(), name="postgres-writer")

    async def _migrate(self, conn: asyncpg.Connection) -> int:
        """Bring the schema to ``SCHEMA_VERSION``; refuse a newer one. Returns the version found."""
        async with conn.transaction():
            if self.readonly:
                exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", VERSION_TABLE)
                if not exists:
                    return 0
                version = int(await conn.fetchval(f"SELECT coalesce(max(version), 0) FROM {VERSION_TABLE}"))  # noqa: S608
            else:
                # Several hosts may start at once: one migrates, the others wait and find it done.
                await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
                await conn.execute(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version integer NOT NULL)")
                version = int(await conn.fetchval(f"SELECT coalesce(max(version), 0) FROM {VERSION_TABLE}"))  # noqa: S608
            if version > SCHEMA_VERSION:
                # Threat: an older broker writing to a schema it does not know (a rolled-back
                # deployment) could write rows a newer rule depends on without their columns.
                raise StartupError(
                    f"the database schema is version {version}, newer than this broker knows "
                    f"({SCHEMA_VERSION}): upgrade the broker, or use the database it was made with"
                )
            if not self.readonly:
                for number in range(version + 1, SCHEMA_VERSION + 1):
                    await conn.execute(MIGRATIONS[number - 1])
                    await conn.execute(f"INSERT INTO {VERSION_TABLE}(version) VALUES ($1)", number)  # noqa: S608
            return version

    async def _close_pool(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(), timeout=10)

    async def close(self) -> None:
        if self._writer is not None:
            await self._queue.put(None)
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        await self._close_pool()

    # -- writes ----------------------------------------------------------------------------------
    async def commit(self, unit: CommitUnit) -> Lost:
        if self._writer is None or self._writer.done():
            raise RuntimeError("store is not open for writing")
        future: asyncio.Future[Lost] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(unit, future))
        return await future

    async def _write_loop(self) -> None:
        while True:
            first = await self._queue.get()
            if first is None:
                return
            jobs = [first]
            stop = False
            while len(jobs) < self.batch_max and not self._queue.empty():
                nxt = self._queue.get_nowait()
                if nxt is None:
                    stop = True
                    break
                jobs.append(nxt)
            try:
                lost = await self._write([job.unit for job in jobs])
            except Exception as exc:  # report to every waiter; the writer keeps running
                error = translated(exc)
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(error)
            else:
                for job, job_lost in zip(jobs, lost, strict=True):
                    if not job.future.done():
                        job.future.set_result(job_lost)
            if stop:
                return

    async def _write(self, units: list[CommitUnit]) -> list[Lost]:
        pool = self._open_pool()
        async with pool.acquire() as conn, conn.transaction():
            # The lock first: everything read below is what the previous commit left.
            row = await conn.fetchrow("SELECT seq, hash, at FROM chain_head WHERE id = 1 FOR UPDATE")
            if row is None:
                raise StartupError("the chain_head row is missing: the database was altered by hand")
            head = Head(int(row["seq"]), str(row["hash"]), row["at"])
            ids = released_ids(units)
            released: list[str] = []
            if ids:
                found = await conn.fetch("SELECT record_id FROM releases WHERE record_id = ANY($1::text[])", ids)
                released = [str(r["record_id"]) for r in found]
            held = await _seen(conn, claim_keys(units))
            plan = plan_commit(units, head=head, released=released, held=held, now=self.clock())
            await _apply(conn, plan)
        self.head = (plan.head.seq, plan.head.hash)
        self.commits += 1
        self.units += len(units)
        return plan.lost

    # -- reads -----------------------------------------------------------------------------------
    def _open_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool

    async def _run(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        pool = self._open_pool()
        try:
            async with pool.acquire() as conn:
                return await fn(conn)
        except Exception as exc:
            error = translated(exc)
            if error is exc:
                raise
            raise error from exc

    async def replay_states(self, keys: Sequence[ReplayKey]) -> dict[ReplayKey, Seen]:
        if not keys:
            return {}
        wanted = list(keys)
        found = await self._run(lambda conn: _seen(conn, wanted))
        return replay_view(wanted, found)

    async def ping(self) -> bool:
        try:
            await self._run(lambda conn: conn.fetchval("SELECT 1"))
        except (StoreUnavailable, RuntimeError):
            return False
        return self.readonly or (self._writer is not None and not self._writer.done())

    async def current_head(self) -> Head:
        async def run(conn: asyncpg.Connection) -> Head:
            row = await conn.fetchrow("SELECT seq, hash, at FROM chain_head WHERE id = 1")
            return GENESIS_HEAD if row is None else Head(int(row["seq"]), str(row["hash"]), row["at"])

        return await self._run(run)

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
        bind = Binder(numbered)
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

        async def run(conn: asyncpg.Connection) -> list[FeedRow]:
            rows = await conn.fetch(sql, *params)
            return [
                FeedRow(
                    int(r["id"]),
                    r["record_id"],
                    r["event_type"],
                    r["agreement_id"],
                    r["released_at"],
                    r["body"],
                    int(r["revision"]),
                    r["kind"],
                )
                for r in rows
            ]

        return await self._run(run)

    async def lineages(self, keys: Sequence[ReplayKey]) -> dict[ReplayKey, Lineage]:
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}

        async def run(conn: asyncpg.Connection) -> dict[ReplayKey, Lineage]:
            sources, firsts = [k[0] for k in wanted], [k[1] for k in wanted]
            pairs = "(lineage, source) IN (SELECT * FROM unnest($2::text[], $1::text[]))"
            rows = await conn.fetch(
                f"SELECT source, lineage, revision, message_id, withdrawn, event_type FROM lineage WHERE {pairs}",  # noqa: S608
                sources,
                firsts,
            )
            found = {
                (r["source"], r["lineage"]): (
                    int(r["revision"]),
                    r["message_id"],
                    bool(r["withdrawn"]),
                    r["event_type"],
                )
                for r in rows
            }
            held = await conn.fetch(f"SELECT {HOLDING_COLUMNS} FROM holdings WHERE {pairs}", sources, firsts)  # noqa: S608
            return lineage_view(wanted, found, [tuple(r) for r in held])

        return await self._run(run)

    async def audit_page(self, query: AuditQuery) -> list[AuditRow]:
        async def run(conn: asyncpg.Connection) -> list[AuditRow]:
            out: list[AuditRow] = []
            asked: AuditQuery | None = query
            while asked is not None:
                rows = await _audit_rows(conn, asked)
                out.extend(admitted(query, rows))
                asked = refill(query, asked, rows, len(out))
            return out

        return await self._run(run)

    async def record_message(self, record_id: str) -> str | None:
        async def run(conn: asyncpg.Connection) -> str | None:
            rows = await conn.fetch("SELECT body FROM audit WHERE record_id = $1 ORDER BY seq", record_id)
            return message_of(record_id, (bytes(r["body"]) for r in rows))

        return await self._run(run)

    async def checkpoints(self) -> list[Checkpoint]:
        async def run(conn: asyncpg.Connection) -> list[Checkpoint]:
            rows = await conn.fetch("SELECT seq, head_hash, at, kid, signature FROM checkpoints ORDER BY seq")
            return [Checkpoint(int(r["seq"]), r["head_hash"], r["at"], r["kid"], r["signature"]) for r in rows]

        return await self._run(run)

    async def expired(self, now: datetime, limit: int) -> list[Expired]:
        async def run(conn: asyncpg.Connection) -> list[Expired]:
            rows = await conn.fetch(
                EXPIRED_COLUMNS + "expires_at <= $1 ORDER BY expires_at, record_id LIMIT $2",
                format_time(now),
                limit,
            )
            return [
                Expired(
                    r["record_id"],
                    r["consumer"],
                    r["agreement_id"],
                    r["source"],
                    r["event_type"],
                    int(r["revision"]),
                    bool(r["withdrawn"]),
                    parse_time(r["expires_at"]),
                )
                for r in rows
            ]

        return await self._run(run)

    async def expired_seen(self, before: str, limit: int) -> list[ReplayKey]:
        async def run(conn: asyncpg.Connection) -> list[ReplayKey]:
            rows = await conn.fetch(EXPIRED_SEEN, before, limit)
            return [(r["source"], r["message_id"]) for r in rows]

        return await self._run(run)

    async def expired_quarantine(self, before: datetime, limit: int) -> list[ExpiredQuarantine]:
        async def run(conn: asyncpg.Connection) -> list[ExpiredQuarantine]:
            rows = await conn.fetch(
                "SELECT id, reason FROM quarantine WHERE at < $1 ORDER BY id LIMIT $2", format_time(before), limit
            )
            return [ExpiredQuarantine(int(r["id"]), r["reason"]) for r in rows]

        return await self._run(run)

    async def counts(self) -> StoreCounts:
        async def run(conn: asyncpg.Connection) -> StoreCounts:
            kinds = await conn.fetch("SELECT kind, count(*) AS n FROM audit GROUP BY kind")
            consumers = await conn.fetch(
                "SELECT consumer, count(*) AS n FROM records WHERE kind = 'record' AND current = 1 GROUP BY consumer"
            )
            return StoreCounts(
                {str(r["kind"]): int(r["n"]) for r in kinds}, {str(r["consumer"]): int(r["n"]) for r in consumers}
            )

        return await self._run(run)

    async def quarantine_page(self, *, after: int, limit: int) -> list[QuarantineRow]:
        async def run(conn: asyncpg.Connection) -> list[QuarantineRow]:
            rows = await conn.fetch(
                "SELECT id, at, reason, message, source, message_id, body_sha256, body FROM quarantine "
                "WHERE id > $1 ORDER BY id LIMIT $2",
                after,
                limit,
            )
            return [
                QuarantineRow(
                    int(r["id"]),
                    QuarantineItem(
                        parse_time(r["at"]),
                        r["reason"],
                        r["message"],
                        r["source"],
                        r["message_id"],
                        r["body_sha256"],
                        None if r["body"] is None else bytes(r["body"]),
                    ),
                )
                for r in rows
            ]

        return await self._run(run)

    def leadership(self, name: str) -> AdvisoryLeadership:
        return AdvisoryLeadership(self.dsn, name, self.connect_timeout)

    # -- held events ---------------------------------------------------------------------------
    async def held_page(
        self, *, agreement_id: str | None = None, source: str | None = None, after: int = 0, limit: int = 100
    ) -> list[HeldRow]:
        bind = Binder(numbered)
        sql = held_page_query(
            bind, HELD_ROW_COLUMNS, agreement_id=agreement_id, source=source, after=after, limit=limit
        )

        async def run(conn: asyncpg.Connection) -> list[HeldRow]:
            return [held_row(tuple(r)) for r in await conn.fetch(sql, *bind.params)]

        return await self._run(run)

    async def held_items(
        self, agreement_id: str, ids: Sequence[str] | None, *, after: int, limit: int
    ) -> list[HeldItem]:
        bind = Binder(numbered)
        sql = held_items_query(bind, agreement_id, ids, after=after, limit=limit)

        async def run(conn: asyncpg.Connection) -> list[HeldItem]:
            return [held_item(tuple(r)) for r in await conn.fetch(sql, *bind.params)]

        return await self._run(run)

    async def held_agreements(self) -> dict[str, int]:
        async def run(conn: asyncpg.Connection) -> dict[str, int]:
            rows = await conn.fetch("SELECT agreement_id, count(*) AS n FROM held GROUP BY agreement_id")
            return {str(r["agreement_id"]): int(r["n"]) for r in rows}

        return await self._run(run)

    async def expired_held(self, now: datetime, limit: int) -> list[HeldRow]:
        async def run(conn: asyncpg.Connection) -> list[HeldRow]:
            rows = await conn.fetch(
                f"SELECT {HELD_ROW_COLUMNS} FROM held WHERE expires_at <= $1 ORDER BY expires_at, pos LIMIT $2",  # noqa: S608
                format_time(now),
                limit,
            )
            return [held_row(tuple(r)) for r in rows]

        return await self._run(run)

    async def last_seen(self, sources: Sequence[str]) -> dict[str, datetime]:
        # Newest first along the source's own index (audit_source: source, seq); times never go
        # backwards along the chain, so the first entry of a verified kind is the latest.
        async def run(conn: asyncpg.Connection) -> dict[str, datetime]:
            out: dict[str, datetime] = {}
            for source in dict.fromkeys(sources):
                at = await conn.fetchval(
                    "SELECT at FROM audit WHERE source = $1 AND kind = ANY($2::text[]) ORDER BY seq DESC LIMIT 1",
                    source,
                    list(SEEN_KINDS),
                )
                if at is not None:
                    out[source] = parse_time(str(at))
            return out

        return await self._run(run)

    async def outcome_days(self, since: datetime) -> list[DayCount]:
        bind = Binder(numbered)
        sql = outcome_days_query(bind, format_time(since))

        async def run(conn: asyncpg.Connection) -> list[DayCount]:
            rows = await conn.fetch(sql, *bind.params)
            return [
                DayCount(date.fromisoformat(str(r[0])), str(r[1]), None if r[2] is None else str(r[2]), int(r[3]))
                for r in rows
            ]

        return await self._run(run)

    async def held_summary(self) -> list[HeldSummary]:
        async def run(conn: asyncpg.Connection) -> list[HeldSummary]:
            rows = await conn.fetch(HELD_SUMMARY_QUERY)
            return [HeldSummary(r[0], int(r[1]), parse_time(r[2])) for r in rows]

        return await self._run(run)

    async def figures_pending(self, limit: int) -> list[FiguresPending]:
        async def run(conn: asyncpg.Connection) -> list[FiguresPending]:
            return [pending_row(tuple(r)) for r in await conn.fetch(PENDING_QUERY, limit)]

        return await self._run(run)

    async def contributions(self, figures_ids: Sequence[str]) -> list[tuple[str, str, bytes]]:
        ids = list(dict.fromkeys(figures_ids))

        async def run(conn: asyncpg.Connection) -> list[tuple[str, str, bytes]]:
            rows = await conn.fetch(
                "SELECT figures_id, event_type, data FROM contributions WHERE figures_id = ANY($1::text[])", ids
            )
            return [(r[0], r[1], str(r[2]).encode()) for r in rows]

        return await self._run(run)

    async def latest_figures(self, figures_id: str) -> FiguresRow | None:
        async def run(conn: asyncpg.Connection) -> FiguresRow | None:
            row = await conn.fetchrow(LATEST_FIGURES, figures_id)
            return figures_row(tuple(row)) if row is not None else None

        return await self._run(run)

    async def figures_of(self, consumer: str) -> list[FiguresRow]:
        async def run(conn: asyncpg.Connection) -> list[FiguresRow]:
            return [figures_row(tuple(r)) for r in await conn.fetch(FIGURES_OF_CONSUMER, consumer)]

        return await self._run(run)

    async def figures_expiring(self, before: str) -> tuple[int, int]:
        async def run(conn: asyncpg.Connection) -> tuple[int, int]:
            row = await conn.fetchrow(FIGURES_EXPIRING, before)
            return int(row[0]), int(row[1])

        return await self._run(run)

    async def session_ended(self, session_id: str) -> bool:
        async def run(conn: asyncpg.Connection) -> bool:
            return await conn.fetchval(SESSION_ENDED_QUERY, session_id) is not None

        return await self._run(run)

    async def released_volumes(self, since: str, until: str) -> list[VolumeCount]:
        bind = Binder(numbered)
        sql = released_volumes_query(bind, since, until, "convert_from(body, 'UTF8')::jsonb ->> 'flow_id'")

        async def run(conn: asyncpg.Connection) -> list[VolumeCount]:
            rows = await conn.fetch(sql, *bind.params)
            return [
                VolumeCount(str(r[0]), str(r[1]), str(r[2]), int(r[3]))
                for r in rows
                if r[0] is not None and r[1] is not None and r[2] is not None
            ]

        return await self._run(run)


class AdvisoryLeadership:
    """A session-level advisory lock, held on a connection of its own for as long as this process
    leads. PostgreSQL releases it when that session ends: a process killed (even by SIGKILL) or
    cut off loses the role within seconds (TCP keep-alives below bound a silent network loss),
    and the next ``check`` of another process takes it.

    Between two checks (a second) a process that lost its connection may still believe it leads.
    The singleton jobs are safe to overlap for that long: a checkpoint is keyed by its sequence
    number, and a purge deletes only what is still there, in a commit serialised by the chain
    head's lock."""

    def __init__(self, dsn: str, name: str, connect_timeout: float) -> None:
        self.dsn = dsn
        self.name = name
        self.connect_timeout = connect_timeout
        self._conn: asyncpg.Connection | None = None
        self._held = False

    async def check(self) -> bool:
        try:
            if self._conn is None or self._conn.is_closed():
                self._held = False
                self._conn = await asyncpg.connect(
                    self.dsn,
                    timeout=self.connect_timeout,
                    server_settings={
                        "tcp_keepalives_idle": "5",
                        "tcp_keepalives_interval": "2",
                        "tcp_keepalives_count": "3",
                        "application_name": f"sv-broker leader election: {self.name}",
                    },
                )
            if self._held:
                await self._conn.fetchval("SELECT 1")  # still our session, so still our lock
            else:
                # The key names the role within this store (database and schema): two stores on
                # one server (a test per schema, two partnerships) elect separately.
                self._held = bool(
                    await self._conn.fetchval(
                        "SELECT pg_try_advisory_lock(('x' || substr(md5($1 || current_database() || "
                        "current_schema()), 1, 16))::bit(64)::bigint)",
                        self.name,
                    )
                )
        except Exception as exc:
            if translated(exc) is exc:
                raise
            await self._drop()
        return self._held

    async def _drop(self) -> None:
        self._held = False
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.terminate()

    async def release(self) -> None:
        conn = self._conn
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=5)  # ends the session: the lock goes with it
        self._conn, self._held = None, False


async def _seen(conn: asyncpg.Connection, keys: Sequence[ReplayKey]) -> dict[ReplayKey, Seen]:
    if not keys:
        return {}
    rows = await conn.fetch(
        "SELECT s.source, s.message_id, s.state, s.content_sha256 FROM seen s "
        "JOIN unnest($1::text[], $2::text[]) AS k(source, message_id) "
        "ON s.source = k.source AND s.message_id = k.message_id",
        [k[0] for k in keys],
        [k[1] for k in keys],
    )
    return {(r["source"], r["message_id"]): Seen(ReplayState(r["state"]), r["content_sha256"]) for r in rows}


# An entry's per-record index rows (``audit_records_seq`` makes it a lookup).
_RECORD_IDS = "ARRAY(SELECT r.record_id FROM audit_records r WHERE r.seq = audit.seq)"


async def _audit_rows(conn: asyncpg.Connection, query: AuditQuery) -> list[AuditRow]:
    """The rows the index selects, with their columns as stored (verification checks those)."""
    bind = Binder(numbered)
    sql = audit_page_query(bind, query, _RECORD_IDS)
    return [
        AuditRow(
            int(r["seq"]),
            r["at"],
            r["kind"],
            r["message_id"],
            r["source"],
            r["consumer"],
            r["agreement_id"],
            r["record_id"],
            bytes(r["body"]),
            r["hash"],
            record_index(list(r["record_ids"])),
        )
        for r in await conn.fetch(sql, *bind.params)
    ]


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows -> one list per column (``unnest`` takes arrays: one statement, one round trip)."""
    return [[row[i] for row in rows] for i in range(width)]


_CONTRIBUTIONS_INSERT = (
    f"INSERT INTO contributions({CONTRIBUTION_COLUMNS}) SELECT * FROM unnest($1::text[], $2::text[], "  # noqa: S608
    "$3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::integer[], "
    "$10::text[], $11::text[], $12::text[])" + CONTRIBUTION_UPSERT
)
_PENDING_INSERT = (
    "INSERT INTO figures_pending(figures_id, agreement_id, flow_id, period, mark) "  # noqa: S608
    "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[])" + PENDING_UPSERT
)
_FIGURES_INSERT = (
    "INSERT INTO figures SELECT * FROM unnest($1::text[], $2::integer[], $3::text[], $4::text[], $5::integer[], "
    "$6::text[], $7::text[], $8::integer[], $9::text[], $10::text[], $11::text[], $12::bytea[]) ON CONFLICT DO NOTHING"
)


async def _apply_figures(conn: asyncpg.Connection, plan: CommitPlan) -> None:
    """Figures flows' inputs, pending quarters, releases and purges (see the SQLite backend)."""
    mark = plan.head.seq
    pending = []
    for change, rows in contribution_steps(plan.contributions):
        if change is not None:
            existing = await conn.fetch(CONTRIBUTIONS_OF_RECORD, change.lineage, change.source)
            gone, lost = replaced(change, [tuple(r) for r in existing])
            if gone:
                await conn.execute("DELETE FROM contributions WHERE record_id = ANY($1::text[])", gone)
            pending.extend(lost)
        if rows:
            await conn.execute(_CONTRIBUTIONS_INSERT, *_columns(contribution_values(rows), 12))
        pending.extend(pending_of(rows))
    if plan.figures_done:
        await conn.executemany(PENDING_DONE, plan.figures_done)
    if pending:
        unique = {p.figures_id: (p.figures_id, p.agreement_id, p.flow_id, p.period, mark) for p in pending}
        await conn.execute(_PENDING_INSERT, *_columns(list(unique.values()), 5))
    if plan.figures:
        await conn.execute(_FIGURES_INSERT, *_columns(figures_values(plan.figures), 12))
    if plan.purge_contributions_before is not None:
        await conn.execute(PURGE_CONTRIBUTIONS, plan.purge_contributions_before)
    if plan.purge_figures_before is not None:
        await conn.execute(PURGE_FIGURES, plan.purge_figures_before)
        await conn.execute(PURGE_FIGURES_FEED, plan.purge_figures_before)


async def _apply(conn: asyncpg.Connection, plan: CommitPlan) -> None:
    if plan.seen:
        await conn.execute(
            "INSERT INTO seen(source, message_id, state, content_sha256, first_seen) "
            "SELECT s, m, st, c, $5 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS u(s, m, st, c) "
            "ON CONFLICT (source, message_id) DO UPDATE SET state = excluded.state, "
            "content_sha256 = coalesce(seen.content_sha256, excluded.content_sha256) "
            "WHERE seen.state <> 'done'",
            *_columns([(r.source, r.message_id, r.state.value, r.content_sha256) for r in plan.seen], 4),
            plan.at,
        )
    if plan.releases:
        await conn.execute(
            "INSERT INTO releases(record_id, audit_seq) SELECT * FROM unnest($1::text[], $2::bigint[])",
            *_columns(plan.releases, 2),
        )
    if plan.audit:
        await conn.execute(
            "INSERT INTO audit(seq, at, kind, message_id, source, consumer, agreement_id, record_id, body, hash) "
            "SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], "
            "$7::text[], $8::text[], $9::bytea[], $10::text[])",
            *_columns(
                [
                    (
                        a.seq,
                        a.at,
                        a.kind,
                        a.message_id,
                        a.source,
                        a.consumer,
                        a.agreement_id,
                        a.record_id,
                        a.body,
                        a.hash,
                    )
                    for a in plan.audit
                ],
                10,
            ),
        )
        head = plan.head
        await conn.execute(
            "UPDATE chain_head SET seq = $1, hash = $2, at = $3 WHERE id = 1", head.seq, head.hash, head.at
        )
    if plan.audit_records:
        await conn.execute(
            "INSERT INTO audit_records(seq, record_id) SELECT * FROM unnest($1::bigint[], $2::text[]) "
            "ON CONFLICT DO NOTHING",
            *_columns(plan.audit_records, 2),
        )
    if plan.purge:
        # Retention: every revision goes, notices stay until their own expiry, the holding stays as
        # a tombstone (see the SQLite backend); deletion notices are among ``plan.records``.
        ids = list(plan.purge)
        await conn.execute("DELETE FROM records WHERE record_id = ANY($1::text[]) AND kind = 'record'", ids)
        await conn.execute("UPDATE holdings SET purged = 1 WHERE record_id = ANY($1::text[])", ids)
        if plan.notices_until is not None:
            await conn.execute(
                "UPDATE records SET expires_at = $1 WHERE record_id = ANY($2::text[]) AND kind != 'record'",
                plan.notices_until,
                ids,
            )
    if plan.records:
        await conn.execute(
            "INSERT INTO records(record_id, consumer, agreement_id, agreement_revision, event_type, source, "
            "message_id, released_at, expires_at, body, revision, kind, period) "
            "SELECT r, c, a, v, e, s, m, ra, ea, b, rv, k, p FROM unnest($1::text[], $2::text[], $3::text[], "
            "$4::integer[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::bytea[], "
            "$11::integer[], $12::text[], $13::text[]) "
            "WITH ORDINALITY AS u(r, c, a, v, e, s, m, ra, ea, b, rv, k, p, n) ORDER BY n "
            "ON CONFLICT (record_id, revision, kind) DO NOTHING",
            *_columns(
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
                13,
            ),
        )
        for record_id in later_revisions(plan.records):  # the rules: ``sql.RECORDS_CURRENT``
            await conn.execute(RECORDS_BEFORE_NOTICE, record_id)
            await conn.execute(RECORDS_CURRENT, record_id)
    if plan.lineages:
        await conn.execute(
            "INSERT INTO lineage(source, lineage, revision, message_id, withdrawn, event_type, updated_at) "  # noqa: S608
            "SELECT s, l, r, m, w, e, $7 FROM unnest($1::text[], $2::text[], $3::integer[], $4::text[], "
            "$5::integer[], $6::text[]) AS u(s, l, r, m, w, e)" + LINEAGE_UPSERT_WHERE,
            *_columns(
                [
                    (lin.source, lin.lineage, lin.revision, lin.message_id, int(lin.withdrawn), lin.event_type)
                    for lin in plan.lineages
                ],
                6,
            ),
            plan.at,
        )
    if plan.holdings:
        await conn.execute(
            "INSERT INTO holdings(record_id, source, lineage, consumer, agreement_id, event_type, revision, "  # noqa: S608
            "withdrawn, expires_at) SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], "
            "$5::text[], $6::text[], $7::integer[], $8::integer[], $9::text[])" + HOLDING_UPSERT_WHERE,
            *_columns(
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
                9,
            ),
        )
    if plan.quarantine:
        await conn.execute(
            "INSERT INTO quarantine(at, reason, message, source, message_id, body_sha256, body) "
            "SELECT q, r, m, s, i, h, b FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], "
            "$6::text[], $7::bytea[]) WITH ORDINALITY AS u(q, r, m, s, i, h, b, n) ORDER BY n",
            *_columns(
                [
                    (format_time(q.at), q.reason, q.message, q.source, q.message_id, q.body_sha256, q.body)
                    for q in plan.quarantine
                ],
                7,
            ),
        )
    if plan.purge_notices_before is not None:
        await conn.execute("DELETE FROM records WHERE kind = 'deleted' AND expires_at <= $1", plan.purge_notices_before)
    if plan.purge_seen:
        await conn.execute(
            "DELETE FROM seen WHERE (source, message_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
            *_columns(plan.purge_seen, 2),
        )
    if plan.purge_quarantine:
        await conn.execute("DELETE FROM quarantine WHERE id = ANY($1::bigint[])", list(plan.purge_quarantine))
    if plan.checkpoints:
        await conn.execute(
            "INSERT INTO checkpoints(seq, head_hash, at, kid, signature) "
            "SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[]) "
            "ON CONFLICT DO NOTHING",
            *_columns([(cp.seq, cp.head_hash, cp.at, cp.kid, cp.signature) for cp in plan.checkpoints], 5),
        )
    if plan.held:
        # One row per id (a redelivered message is held once: the first row stays).
        await conn.execute(
            "INSERT INTO held(id, agreement_id, held_under_revision, reason, source, message_id, event_type, "
            "held_at, expires_at, sealed) "
            "SELECT i, a, r, re, s, m, e, h, x, b FROM unnest($1::text[], $2::text[], $3::integer[], $4::text[], "
            "$5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::bytea[]) "
            "WITH ORDINALITY AS u(i, a, r, re, s, m, e, h, x, b, n) ORDER BY n "
            "ON CONFLICT (id) DO NOTHING",
            *_columns(
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
                10,
            ),
        )
    if plan.unhold:
        await conn.execute("DELETE FROM held WHERE id = ANY($1::text[])", list(plan.unhold))
    await _apply_figures(conn, plan)
    if plan.end_sessions:
        await conn.execute(ENDED_SESSIONS_PRUNE, plan.at)
        await conn.executemany(
            "INSERT INTO console_sessions_ended(session_id, ended_at, expires_at) VALUES ($1, $2, $3) "
            "ON CONFLICT (session_id) DO NOTHING",
            [(s.session_id, plan.at, format_time(s.expires_at)) for s in plan.end_sessions],
        )
