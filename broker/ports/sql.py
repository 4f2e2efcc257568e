"""The read queries both store backends run, written once (no I/O here: text and parameters).

The backends differ only in how a parameter is marked (SQLite ``?``, PostgreSQL ``$1``), so each
query is built with a :class:`Binder` of the backend's style. Only placeholders are formatted into
the text; every value, whatever its source (an analyst's filter, an IG lead's query), is a bound
parameter (threat: SQL injection through a query-string filter).
"""

from __future__ import annotations

from collections.abc import Callable

from broker.ports.store import AuditQuery

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


def audit_page_query(bind: Binder, query: AuditQuery) -> str:
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
    return f"SELECT {AUDIT_COLUMNS} FROM audit WHERE {' AND '.join(clauses)} ORDER BY seq LIMIT {bind(query.limit)}"  # noqa: S608
