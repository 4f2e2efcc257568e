"""The indexed columns of a stored audit entry, derived from its body (pure, no I/O).

Beside each entry's canonical body the store keeps copies of a few of its values, for lookup:
columns the audit queries, the export and the record trace filter on (time, kind, message,
source, consumer, agreement, record) and an index of the records that a many-record entry names
(reads, purges: the ``audit_records`` table). Only the body is hashed and chained; the copies are
not evidence. Threat: someone with write access to the database rewrites a copy and leaves the
body alone (a record id changed, a consumer nulled). The chain still verifies, but a record's
trace now misses an entry, or shows another record's, and a filtered query answers wrongly.

So the copies are written from :func:`columns_of` (``commit_plan.plan_commit``), and verification
(``chain.verify_chain``) recomputes them from each stored body with the same function and compares
every one: a row whose copies differ from its body is reported like any other tampering, at its
sequence number, naming the column, never the values (they may be personal data).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from itertools import repeat
from typing import Any, NamedTuple


class Columns(NamedTuple):
    """An entry's indexed copies, in the store's column order; ``record_ids`` is the index of a
    many-record entry (sorted, unique: the store keeps it as a set of rows)."""

    at: str | None
    kind: str | None
    message_id: str | None
    source: str | None
    consumer: str | None
    agreement_id: str | None
    record_id: str | None
    record_ids: tuple[str, ...] = ()


# How a mismatch is named in a report: the column, never its value.
COLUMN_NAMES: Mapping[str, str] = {name: f"the {name} column" for name in Columns._fields} | {
    "record_ids": "the per-record index (audit_records)"
}


def _text(doc: Mapping[str, Any], key: str) -> str | None:
    # Only a string is indexed: a column holds a real name or id, or nothing.
    value = doc.get(key)
    return value if isinstance(value, str) else None


def record_index(ids: object) -> tuple[str, ...]:
    """The index rows of a ``record_ids`` list, in the one order both sides compare (the store
    reads its index rows back through this too)."""
    if not isinstance(ids, list):
        return ()
    return tuple(sorted({rid for rid in ids if isinstance(rid, str)}))


def columns_of(doc: Mapping[str, Any]) -> Columns:
    """The indexed columns of the entry whose parsed canonical body is ``doc``.

    The one definition: the store writes these values, verification expects them."""
    return Columns(
        _text(doc, "at"),
        _text(doc, "kind"),
        _text(doc, "message_id"),
        _text(doc, "source"),
        _text(doc, "consumer"),
        _text(doc, "agreement_id"),
        _text(doc, "record_id"),
        record_index(doc.get("record_ids")),
    )


# Each text column holds the body's member of the column's name (``columns_of``).
_TEXT_COLUMNS = Columns._fields[:-1]
_TEXT = {str, type(None)}


def columns_match(stored: Sequence[Columns], docs: Sequence[dict[str, Any]]) -> bool:
    """``list(stored) == [columns_of(doc) for doc in docs]``, a column at a time for a page of
    entries (verification): equal, or not, exactly as that comparison is."""
    if len(stored) != len(docs) or set(map(len, stored)) - {len(Columns._fields)}:
        return list(stored) == [columns_of(doc) for doc in docs]
    kept = list(zip(*stored, strict=True)) if stored else [()] * len(Columns._fields)
    for i, name in enumerate(_TEXT_COLUMNS):
        values = tuple(map(dict.get, docs, repeat(name)))
        if not set(map(type, values)) <= _TEXT:
            # a member that is not a string is indexed as nothing: compare entry by entry
            return list(stored) == [columns_of(doc) for doc in docs]
        if kept[i] != values:
            return False
    return kept[-1] == tuple(
        () if ids is None else record_index(ids) for ids in map(dict.get, docs, repeat("record_ids"))
    )


def first_mismatch(stored: Columns, derived: Columns) -> str | None:
    """The first column whose stored copy differs from the body's value (its field name)."""
    for name, kept, expected in zip(Columns._fields, stored, derived, strict=True):
        if kept != expected:
            return name
    return None


def body_columns(body: bytes) -> Columns | None:
    """:func:`columns_of` a stored body; None when it is not a JSON object (verification names
    such an entry; a reader cannot tell what it says)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    return columns_of(doc) if isinstance(doc, dict) else None
