"""The read queries both store backends run, written once (no I/O here: text and parameters).

The backends differ only in how a parameter is marked (SQLite ``?``, PostgreSQL ``$1``), so each
query is built with a :class:`Binder` of the backend's style. Only placeholders are formatted into
the text; every value, whatever its source (an analyst's filter, an IG lead's query), is a bound
parameter (threat: SQL injection through a query-string filter).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from broker.audit.columns import body_columns
from broker.ports.store import (
    OUTCOME_KINDS,
    AuditQuery,
    AuditRow,
    CountedRow,
    FiguresPending,
    FiguresRow,
    HeldItem,
    HeldRow,
    ReplayKey,
    StoredRecord,
)
from broker.stages.lineage import NO_LINEAGE, Holding, Lineage
from schemas.envelope import format_time, parse_time

AUDIT_COLUMNS = "seq, at, kind, message_id, source, consumer, agreement_id, record_id, body, hash"
FEED_COLUMNS = "id, record_id, event_type, agreement_id, released_at, body, revision, kind"

# A record's life (issue 12: corrections, withdrawals, deletion notices), the same in both
# backends. ``lineage``: one row per record that has a later revision (its first message id), the
# latest revision applied (a record still at revision 1 has none: the hot path writes no row);
# ``holdings``: one row per record id (a consumer's copy under one agreement), what it holds and
# until when. ``records`` (the embedded feeds) keeps a row per revision and per notice;
# ``current`` marks each record id's latest row (what a feed shows unless history is asked for).
LINEAGE_TABLES = """
CREATE TABLE IF NOT EXISTS lineage (
    source TEXT NOT NULL,
    lineage TEXT NOT NULL,
    revision INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    withdrawn INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (lineage, source)
);
CREATE TABLE IF NOT EXISTS holdings (
    record_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    lineage TEXT NOT NULL,
    consumer TEXT NOT NULL,
    agreement_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    revision INTEGER NOT NULL,
    withdrawn INTEGER NOT NULL,
    expires_at TEXT NOT NULL,
    purged INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS holdings_lineage ON holdings(lineage, source);
CREATE INDEX IF NOT EXISTS holdings_expiry ON holdings(purged, expires_at);
CREATE INDEX IF NOT EXISTS records_notices ON records(kind, expires_at);
CREATE INDEX IF NOT EXISTS seen_expiry ON seen(state, first_seen);
CREATE INDEX IF NOT EXISTS lineage_message ON lineage(message_id);
"""
# Records released before lineages existed: each becomes its record's revision 1, held until its
# own expiry (so retention, now driven by the holdings, still purges it and tells its consumer).
# ("WHERE true": without a WHERE, SQLite reads an upsert's ON after SELECT ... FROM as a join's.)
BACKFILL_LINEAGE = """
INSERT INTO holdings(record_id, source, lineage, consumer, agreement_id, event_type, revision, withdrawn, expires_at)
    SELECT record_id, source, message_id, consumer, agreement_id, event_type, 1, 0, expires_at FROM records
    WHERE true ON CONFLICT DO NOTHING;
"""
LINEAGE_UPSERT_WHERE = (
    " ON CONFLICT (lineage, source) DO UPDATE SET revision = excluded.revision, message_id = excluded.message_id, "
    "withdrawn = excluded.withdrawn, updated_at = excluded.updated_at WHERE excluded.revision >= lineage.revision"
)
# A holding moves only forward in revisions, and keeps its first expiry (a correction does not
# extend retention).
HOLDING_UPSERT_WHERE = (
    " ON CONFLICT (record_id) DO UPDATE SET revision = excluded.revision, withdrawn = excluded.withdrawn "
    "WHERE excluded.revision >= holdings.revision"
)
# For one record id ($1, given twice), after a commit's rows are written: the consumer's data rows
# of revisions before its latest notice go; the row of the highest revision (a notice before a
# record of the same revision, then the newest) is the one ``current`` marks. By revision, not by
# row id: a withdrawal and a later correction may be written in one commit, in either order.
RECORDS_BEFORE_NOTICE = (
    "DELETE FROM records WHERE record_id = $1 AND kind = 'record' AND revision < "
    "(SELECT coalesce(max(n.revision), 0) FROM records n WHERE n.record_id = $1 AND n.kind != 'record')"
)
RECORDS_CURRENT = (
    "UPDATE records SET current = CASE WHEN id = (SELECT r.id FROM records r WHERE r.record_id = $1 "
    "ORDER BY r.revision DESC, CASE WHEN r.kind = 'record' THEN 0 ELSE 1 END DESC, r.id DESC LIMIT 1) "
    "THEN 1 ELSE 0 END WHERE record_id = $1"
)
EXPIRED_COLUMNS = (
    "SELECT record_id, consumer, agreement_id, source, event_type, revision, withdrawn, expires_at "
    "FROM holdings WHERE purged = 0 AND "
)
# Replay-guard rows past their retention: finished, first seen before $1, and of a message that
# left nothing behind. A message that released records stays remembered as long as its record's
# holdings do (for ever, as tombstones): a resend of it, re-signed later by an adapter, must be
# a duplicate, never a second release (the store would not audit a record id twice, so it would
# leave without an entry); nor is the message that brought a record to its current revision
# forgotten. Everything else (refused by every agreement, superseded revisions) may go.
EXPIRED_SEEN = (
    "SELECT source, message_id FROM seen WHERE state = 'done' AND first_seen < $1 "
    "AND NOT EXISTS (SELECT 1 FROM holdings h WHERE h.lineage = seen.message_id AND h.source = seen.source) "
    "AND NOT EXISTS (SELECT 1 FROM lineage l WHERE l.message_id = seen.message_id AND l.source = seen.source) "
    "AND NOT EXISTS (SELECT 1 FROM contributions c WHERE c.lineage = seen.message_id AND c.source = seen.source) "
    "ORDER BY first_seen LIMIT $2"
)
HOLDING_COLUMNS = (
    "source, lineage, record_id, consumer, agreement_id, revision, withdrawn, expires_at, purged, event_type"
)


class Binder:
    """Collects parameters in order and returns the placeholder for each."""

    def __init__(self, mark: Callable[[int], str]) -> None:
        self.mark = mark
        self.params: list[object] = []

    def __call__(self, value: object) -> str:
        self.params.append(value)
        return self.mark(len(self.params))


def qmark(_: int) -> str:
    return "?"


def numbered(n: int) -> str:
    return f"${n}"


def feed_page_query(
    bind: Binder,
    consumer: str,
    *,
    after: int,
    limit: int,
    event_type: str | None,
    since: str | None,
    until: str | None,
    history: bool = False,
    period: str | None = None,
) -> str:
    sql = f"SELECT {FEED_COLUMNS} FROM records WHERE consumer = {bind(consumer)} AND id > {bind(after)}"  # noqa: S608
    if not history:
        sql += " AND current = 1"
    for clause, value in (
        ("event_type =", event_type),
        ("released_at >=", since),
        ("released_at <", until),
    ):
        if value:
            sql += f" AND {clause} {bind(value)}"
    if period:
        # By event date (``StoredRecord.period``); withdrawal and deletion notices have none and
        # are always in: a feed read by quarter must still hear that a record it holds is gone.
        sql += f" AND (period = {bind(period)} OR kind IN ('withdrawn', 'deleted'))"
    return sql + f" ORDER BY id LIMIT {bind(limit)}"


def audit_page_query(bind: Binder, query: AuditQuery, record_ids: str) -> str:
    """``record_ids``: the backend's expression for an entry's per-record index rows (an array),
    read with every row so that verification can check the index against the body too."""
    clauses = [f"seq > {bind(query.after)}"]
    for column, value in (
        ("message_id", query.message_id),
        ("source", query.source),
        ("consumer", query.consumer),
        ("agreement_id", query.agreement_id),
        ("kind", query.kind),
    ):
        if value:
            clauses.append(f"{column} = {bind(value)}")
    if query.record_id:
        # its own entries, and the many-record entries (reads, purges) indexed under it
        own, indexed = bind(query.record_id), bind(query.record_id)
        many = f"SELECT seq FROM audit_records WHERE record_id = {indexed}"  # noqa: S608
        clauses.append(f"(record_id = {own} OR seq IN ({many}))")
    if query.since:
        clauses.append(f"at >= {bind(query.since)}")
    if query.until:
        clauses.append(f"at < {bind(query.until)}")
    where = " AND ".join(clauses)
    select = f"SELECT {AUDIT_COLUMNS}, {record_ids} AS record_ids FROM audit"  # noqa: S608
    return f"{select} WHERE {where} ORDER BY seq LIMIT {bind(query.limit)}"


def admitted(query: AuditQuery, rows: list[AuditRow]) -> list[AuditRow]:
    """The rows whose body, not only whose index columns, matches ``query`` (``AuditQuery.admits``).

    A body that is not a JSON object cannot contradict the index: it is kept (and verification
    names it)."""
    if not query.selects_by_index():
        return rows
    out = []
    for row in rows:
        body = body_columns(row.body)
        if body is None or query.admits(body):
            out.append(row)
    return out


def refill(query: AuditQuery, asked: AuditQuery, rows: list[AuditRow], kept: int) -> AuditQuery | None:
    """After :func:`admitted` dropped rows of a page: the query for the rest of it, or None when
    the page is complete (``limit`` rows kept) or the trail is exhausted. So a page comes back
    short only at the end of the trail, as the callers' paging (``after`` = the last row's seq,
    an empty page ends it) expects, however many rows were dropped."""
    if kept >= query.limit or len(rows) < asked.limit or not rows:
        return None
    return replace(query, after=rows[-1].seq, limit=query.limit - kept)


def message_of(record_id: str, bodies: Iterable[bytes]) -> str | None:
    """The message id of the first entry whose body names ``record_id`` as its record (its
    release), from the bodies of the rows the ``record_id`` column selected."""
    for body in bodies:
        cols = body_columns(body)
        if cols is not None and cols.record_id == record_id and cols.message_id is not None:
            return cols.message_id
    return None


def holding_of(row: Sequence[Any]) -> tuple[ReplayKey, Holding, str]:
    """A ``HOLDING_COLUMNS`` row: its record's key, the holding, the record's event type."""
    source, lineage, record_id, consumer, agreement, revision, withdrawn, expires, purged, event_type = row
    held = Holding(
        str(record_id),
        str(consumer),
        str(agreement),
        int(revision),
        bool(withdrawn),
        parse_time(str(expires)),
        bool(purged),
    )
    return (str(source), str(lineage)), held, str(event_type)


def lineage_view(
    keys: Iterable[ReplayKey],
    found: dict[ReplayKey, tuple[int, str, bool, str]],
    rows: Iterable[Sequence[Any]],
) -> dict[ReplayKey, Lineage]:
    """Every asked record's life, ``NO_LINEAGE`` where the store knows none of it (``found``:
    lineage rows; ``rows``: ``HOLDING_COLUMNS`` rows, of any record: only asked ones are kept).
    A record with holdings and no lineage row is at its revision 1 (its first message id)."""
    asked = set(keys)
    held: dict[ReplayKey, list[Holding]] = {}
    types: dict[ReplayKey, str] = {}
    for row in rows:
        key, holding, event_type = holding_of(row)
        if key in asked:
            held.setdefault(key, []).append(holding)
            types[key] = event_type
    out: dict[ReplayKey, Lineage] = {}
    for key in keys:
        stored = found.get(key)
        holdings = tuple(sorted(held.get(key, ()), key=lambda h: h.record_id))
        if stored is None and not holdings:
            out[key] = NO_LINEAGE
        else:
            revision, message_id, withdrawn, event_type = (
                stored if stored is not None else (1, key[1], False, types[key])
            )
            out[key] = Lineage(revision, message_id, withdrawn, holdings, event_type)
    return out


# -- held events (both backends) ----------------------------------------------------------------------
HELD_ROW_COLUMNS = (
    "pos, id, agreement_id, held_under_revision, reason, source, message_id, event_type, held_at, expires_at"
)


def held_page_query(
    bind: Binder, columns: str, *, agreement_id: str | None, source: str | None, after: int, limit: int
) -> str:
    sql = f"SELECT {columns} FROM held WHERE pos > {bind(after)}"  # noqa: S608
    if agreement_id:
        sql += f" AND agreement_id = {bind(agreement_id)}"
    if source:
        sql += f" AND source = {bind(source)}"
    return sql + f" ORDER BY pos LIMIT {bind(limit)}"


def held_items_query(bind: Binder, agreement_id: str, ids: Sequence[str] | None, *, after: int, limit: int) -> str:
    sql = (
        f"SELECT {HELD_ROW_COLUMNS}, sealed FROM held WHERE agreement_id = {bind(agreement_id)} AND pos > {bind(after)}"  # noqa: S608
    )
    if ids is not None:
        marks = ", ".join(bind(i) for i in ids) or "NULL"
        sql += f" AND id IN ({marks})"
    return sql + f" ORDER BY pos LIMIT {bind(limit)}"


def held_row(row: Sequence[Any]) -> HeldRow:
    pos, hid, agreement, revision, reason, source, message_id, event_type, held_at, expires_at = row[:10]
    return HeldRow(
        int(pos),
        str(hid),
        str(agreement),
        int(revision),
        str(reason),
        str(source),
        str(message_id),
        str(event_type),
        parse_time(str(held_at)),
        parse_time(str(expires_at)),
    )


def held_item(row: Sequence[Any]) -> HeldItem:
    r = held_row(row)
    return HeldItem(
        r.id,
        r.agreement_id,
        r.held_under_revision,
        r.reason,
        r.source,
        r.message_id,
        r.event_type,
        r.held_at,
        r.expires_at,
        bytes(row[10]),
        r.pos,
    )


HELD_SUMMARY_QUERY = (
    "SELECT agreement_id, COUNT(*), min(expires_at) FROM held GROUP BY agreement_id ORDER BY agreement_id"
)


# The IG console's signed-out sessions (``Store.session_ended``), the same table in both backends.
ENDED_SESSIONS_TABLE = """
CREATE TABLE IF NOT EXISTS console_sessions_ended (
    session_id TEXT PRIMARY KEY,
    ended_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS console_sessions_ended_expiry ON console_sessions_ended(expires_at);
"""
# A row past its session's absolute end protects nothing (the cookie is refused by its own expiry):
# each sign-out removes those, so the table holds at most the sessions that could still be live.
ENDED_SESSIONS_PRUNE = "DELETE FROM console_sessions_ended WHERE expires_at < $1"
SESSION_ENDED_QUERY = "SELECT 1 FROM console_sessions_ended WHERE session_id = $1"


def released_volumes_query(bind: Binder, since: str, until: str, flow_id_of_body: str) -> str:
    """``released`` entries in ``[since, until)`` per agreement, flow and consumer.
    ``flow_id_of_body``: the backend's expression for the body's ``flow_id`` (JSON)."""
    return (
        f"SELECT agreement_id, {flow_id_of_body} AS flow_id, consumer, COUNT(*) FROM audit "  # noqa: S608
        f"WHERE kind = {bind('released')} AND at >= {bind(since)} AND at < {bind(until)} "
        "GROUP BY agreement_id, flow_id, consumer ORDER BY agreement_id, flow_id, consumer"
    )


SEEN_KINDS = ("released", "withheld", "duplicate")
"""The kinds of entry written only for a message whose signature verified (``Store.last_seen``)."""


def outcome_days_query(bind: Binder, since: str) -> str:
    """Entries of the outcome kinds at or after ``since``, per UTC day (``at`` is RFC 3339 in UTC,
    so its first ten characters are the day), kind and source. The ``audit_kind_at`` index
    (kind, at, source) answers it alone: a range per kind, no table row read."""
    kinds = ", ".join(bind(kind) for kind in OUTCOME_KINDS)
    return (
        f"SELECT substr(at, 1, 10) AS day, kind, source, COUNT(*) FROM audit "  # noqa: S608
        f"WHERE kind IN ({kinds}) AND at >= {bind(since)} GROUP BY day, kind, source ORDER BY day, kind, source"
    )


def later_revisions(records: Iterable[StoredRecord]) -> list[str]:
    """The record ids among a commit's rows whose feed rows need sorting out (a revision after the
    first, or a notice): a first revision alone, the hot path, needs nothing."""
    return list(dict.fromkeys(r.record_id for r in records if r.revision > 1 or r.kind != "record"))


# Figures flows (issue 14: ``broker/pipeline/figures.py``), the same tables in both backends.
# ``contributions``: one row per record and figures flow, its latest revision's minimised fields
# (``figures_id``: the flow's quarter key); ``figures_pending``: the flows' quarters to recount, with the audit
# sequence of the commit that last changed them (``FiguresPending.mark``); ``figures``: every
# released revision of every quarter, its exact bytes (a redelivery is byte-identical).
FIGURES_TABLES = """
CREATE TABLE IF NOT EXISTS contributions (
    record_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    lineage TEXT NOT NULL,
    agreement_id TEXT NOT NULL,
    flow_id TEXT NOT NULL,
    figures_id TEXT,
    period TEXT,
    event_type TEXT NOT NULL,
    revision INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    data TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS contributions_figures ON contributions(figures_id);
CREATE INDEX IF NOT EXISTS contributions_lineage ON contributions(lineage, source);
CREATE INDEX IF NOT EXISTS contributions_expiry ON contributions(expires_at);
CREATE TABLE IF NOT EXISTS figures_pending (
    figures_id TEXT PRIMARY KEY,
    agreement_id TEXT NOT NULL,
    flow_id TEXT NOT NULL,
    period TEXT NOT NULL,
    mark BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS figures (
    figures_id TEXT NOT NULL,
    revision INTEGER NOT NULL,
    consumer TEXT NOT NULL,
    agreement_id TEXT NOT NULL,
    agreement_revision INTEGER NOT NULL,
    flow_id TEXT NOT NULL,
    period TEXT NOT NULL,
    counted INTEGER NOT NULL,
    released_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    content_sha256 TEXT NOT NULL,
    body BYTEA NOT NULL,
    PRIMARY KEY (figures_id, revision)
);
CREATE INDEX IF NOT EXISTS figures_consumer ON figures(consumer, period);
CREATE INDEX IF NOT EXISTS figures_expiry ON figures(expires_at);
"""
# Feeds by event date: each feed row's quarter (``StoredRecord.period``); rows from before it, none.
RECORDS_PERIOD_INDEX = """
CREATE INDEX IF NOT EXISTS records_period ON records(consumer, period, id);
"""
RECORDS_PERIOD = "ALTER TABLE records ADD COLUMN period TEXT;" + RECORDS_PERIOD_INDEX
CONTRIBUTION_COLUMNS = (
    "record_id, source, lineage, agreement_id, flow_id, figures_id, period, event_type, revision, "
    "message_id, data, expires_at"
)
# A redelivered message writes the same row again; a revision only moves forward.
CONTRIBUTION_UPSERT = (
    " ON CONFLICT (record_id) DO UPDATE SET figures_id = excluded.figures_id, period = excluded.period, "
    "revision = excluded.revision, message_id = excluded.message_id, data = excluded.data "
    "WHERE excluded.revision >= contributions.revision"
)
CONTRIBUTIONS_OF_RECORD = (
    "SELECT record_id, agreement_id, figures_id, flow_id, period FROM contributions WHERE lineage = $1 AND source = $2"
)
PENDING_UPSERT = (
    " ON CONFLICT (figures_id) DO UPDATE SET mark = excluded.mark WHERE excluded.mark > figures_pending.mark"
)
PENDING_DONE = "DELETE FROM figures_pending WHERE figures_id = $1 AND mark <= $2"
PENDING_QUERY = (
    "SELECT figures_id, agreement_id, flow_id, period, mark FROM figures_pending ORDER BY period, figures_id LIMIT $1"
)
FIGURES_COLUMNS = (
    "figures_id, revision, consumer, agreement_id, agreement_revision, flow_id, period, counted, released_at, "
    "expires_at, content_sha256, body"
)
LATEST_FIGURES = f"SELECT {FIGURES_COLUMNS} FROM figures WHERE figures_id = $1 ORDER BY revision DESC LIMIT 1"  # noqa: S608
FIGURES_OF_CONSUMER = (
    f"SELECT {FIGURES_COLUMNS} FROM figures f WHERE consumer = $1 AND revision = "  # noqa: S608
    "(SELECT max(revision) FROM figures g WHERE g.figures_id = f.figures_id) ORDER BY period, figures_id"
)
FIGURES_EXPIRING = (
    "SELECT (SELECT COUNT(*) FROM contributions WHERE expires_at <= $1), "
    "(SELECT COUNT(*) FROM figures WHERE expires_at <= $1)"
)
PURGE_CONTRIBUTIONS = "DELETE FROM contributions WHERE expires_at <= $1"
PURGE_FIGURES = "DELETE FROM figures WHERE expires_at <= $1"
PURGE_FIGURES_FEED = "DELETE FROM records WHERE kind = 'figures' AND expires_at <= $1"


def figures_row(row: Sequence[Any]) -> FiguresRow:
    return FiguresRow(
        figures_id=row[0],
        revision=int(row[1]),
        consumer=row[2],
        agreement_id=row[3],
        agreement_revision=int(row[4]),
        flow_id=row[5],
        period=row[6],
        counted=int(row[7]),
        released_at=parse_time(row[8]),
        expires_at=parse_time(row[9]),
        content_sha256=row[10],
        body=bytes(row[11]),
    )


def pending_row(row: Sequence[Any]) -> FiguresPending:
    return FiguresPending(row[0], row[1], row[2], row[3], int(row[4]))


def contribution_values(rows: Iterable[CountedRow]) -> list[tuple[Any, ...]]:
    return [
        (
            r.record_id,
            r.source,
            r.lineage,
            r.agreement_id,
            r.flow_id,
            r.figures_id,
            r.period,
            r.event_type,
            r.revision,
            r.message_id,
            r.data.decode(),
            format_time(r.expires_at),
        )
        for r in rows
    ]


def figures_values(rows: Iterable[FiguresRow]) -> list[tuple[Any, ...]]:
    return [
        (
            f.figures_id,
            f.revision,
            f.consumer,
            f.agreement_id,
            f.agreement_revision,
            f.flow_id,
            f.period,
            f.counted,
            format_time(f.released_at),
            format_time(f.expires_at),
            f.content_sha256,
            f.body,
        )
        for f in rows
    ]
