"""The read queries both store backends run, written once (no I/O here: text and parameters).

The backends differ only in how a parameter is marked (SQLite ``?``, PostgreSQL ``$1``), so each
query is built with a :class:`Binder` of the backend's style. Only placeholders are formatted into
the text; every value, whatever its source (an analyst's filter, an IG lead's query), is a bound
parameter (threat: SQL injection through a query-string filter).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace

from broker.audit.columns import body_columns
from broker.ports.store import OUTCOME_KINDS, AuditQuery, AuditRow

AUDIT_COLUMNS = "seq, at, kind, message_id, source, consumer, agreement_id, record_id, body, hash"
FEED_COLUMNS = "id, record_id, event_type, agreement_id, released_at, body"


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
) -> str:
    sql = f"SELECT {FEED_COLUMNS} FROM records WHERE consumer = {bind(consumer)} AND id > {bind(after)}"  # noqa: S608
    for clause, value in (("event_type =", event_type), ("released_at >=", since), ("released_at <", until)):
        if value:
            sql += f" AND {clause} {bind(value)}"
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
