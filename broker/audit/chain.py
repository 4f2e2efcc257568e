"""The audit trail's hash chain: sealing entries and verifying a chain (pure, no I/O).

Each entry is a JSON object holding its sequence number, the previous entry's hash and what
happened (ids, codes and hashes; never payloads).  Its hash is SHA-256 over the RFC 8785 bytes
of the object, so any edit, deletion, insertion or reordering breaks the chain at a sequence
number that :func:`verify_chain` names.  (A rebuilt chain is caught by signed checkpoints kept
outside the broker, not by the chain alone.)
"""

from __future__ import annotations

import hashlib
import json
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from itertools import islice, repeat
from typing import Any

from broker.audit.columns import COLUMN_NAMES, Columns, columns_match, columns_of, first_mismatch
from schemas.canonical import canonicalize, canonicalize_plain
from schemas.envelope import format_time

GENESIS = "0" * 64


class Kind(StrEnum):
    RECEIVED = "received"
    REJECTED = "rejected"
    RELEASED = "released"
    WITHHELD = "withheld"  # accepted, but no agreement entitles anyone (with the reasons)
    DUPLICATE = "duplicate"
    DEAD_LETTERED = "dead_lettered"
    ACCESSED = "accessed"  # an analyst's or IG lead's read: who, what, which records
    ACCESS_DENIED = "access_denied"  # a refused token or a read outside the caller's rights
    WITHDRAWN = "withdrawn"  # a consumer told a record it held is withdrawn (the partner's, or no longer entitled)
    PURGED = "purged"
    QUARANTINE_PURGED = "quarantine_purged"  # refused messages past the quarantine retention
    REPLAY_GUARD_PURGED = "replay_guard_purged"  # message ids older than the freshness window forgets
    STARTED = "started"  # broker start: configuration fingerprint (agreements, registry)
    CONFIG_CHANGED = "config_changed"  # a reload took effect: both fingerprints, the agreements now in force
    CONFIG_REJECTED = "config_rejected"  # a reload was refused: the running set stays (the problems' codes)
    STOPPED = "stopped"  # graceful shutdown
    HELD = "held"  # kept sealed for an agreement not in force (its [hold]): agreement, revision, reason
    HELD_RELEASED = "held_released"  # a held event released under a later revision (both revisions)
    HELD_DISCARDED = "held_discarded"  # a held event deleted unreleased: no longer covered, key revoked, IG
    HELD_UNREADABLE = "held_unreadable"  # a held event that does not decrypt (tampered, wrong key): kept
    HELD_PURGED = "held_purged"  # held events past their hold time (counts per agreement and reason)
    COUNTED = "counted"  # a message's minimised record kept for a figures flow's quarter (never sent)
    FIGURES_RELEASED = "figures_released"  # a figures quarter released (or re-released as a revision)
    FIGURES_WITHHELD = "figures_withheld"  # a figures quarter the disclosure control could not protect
    FIGURES_PURGED = "figures_purged"  # figures flows' inputs and releases past their retention (counts)


@dataclass(frozen=True, slots=True)
class Draft:
    """An audit entry before it has a place in the chain."""

    kind: Kind
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Sealed:
    seq: int
    hash: str
    body: bytes  # canonical JSON, stored verbatim
    kind: Kind
    at: str
    attrs: dict[str, Any]


def seal(draft: Draft, *, seq: int, prev: str, at: datetime) -> Sealed:
    stamp = format_time(at)
    # Entries hold only our own ids, codes, hashes, ints and ASCII keys, never a float: the fast
    # RFC 8785 path applies (``verify_chain`` re-checks every entry with the reference encoder).
    # The chain's own fields last: an attribute of the same name can never replace them (the
    # sequence, the link, or the time and kind the store indexes the entry under).
    body = canonicalize_plain({**draft.attrs, "seq": seq, "prev": prev, "at": stamp, "kind": draft.kind.value})
    return Sealed(seq, hashlib.sha256(body).hexdigest(), body, draft.kind, stamp, draft.attrs)


@dataclass(frozen=True, slots=True)
class ChainReport:
    ok: bool
    entries: int
    head_seq: int
    head_hash: str
    first_bad_seq: int | None = None
    problem: str | None = None


# A stored row: (seq, body, hash), with its indexed columns when it comes from a store (an export
# holds entries only: there the body is all there is).
ChainRow = tuple[int, bytes, str] | tuple[int, bytes, str, Columns]


# Rows are verified a page at a time: first all at once, with C-level work per page (one SHA-256
# map, one parse pass, one canonical re-encoding, list comparisons); only a page where anything
# differs is walked row by row (``_verify_rows``), which names the first bad entry exactly as before.
_PAGE = 2048
# json.loads' decoder (its defaults), called where each body starts in the page's text:
# ``scan_once(text, at)`` is what ``JSONDecoder.raw_decode`` calls, without a Python frame per row
_SCAN: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
# the encoder ``canonicalize_plain`` uses (json.dumps with these arguments builds exactly this one)
_PLAIN = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False)


def verify_chain(
    rows: Iterable[ChainRow],
    *,
    start_seq: int = 1,
    start_prev: str = GENESIS,
    collect: set[int] | None = None,
    collected: dict[int, str] | None = None,
) -> ChainReport:
    """Recompute the chain over ``(seq, body, hash[, columns])`` rows in storage order.

    ``collect``/``collected``: the hashes at these sequence numbers are recorded (for checkpoints).

    Reports the first sequence number at which the stored chain stops being the chain that was
    written: a body that does not hash to its stored hash (modified), a ``prev`` that is not the
    previous entry's hash (deleted, inserted or swapped), a sequence number out of step, or an
    indexed column that is not the body's value (``columns.py``: the queries and the record trace
    select by those columns, so a rewritten one makes them lie while the chain itself holds).
    """
    report = ChainReport(True, 0, start_seq - 1, start_prev)
    wanted = sorted(collect) if collect is not None and collected is not None else []
    pending = iter(rows)
    while page := list(islice(pending, _PAGE)):
        expected_seq, prev = report.head_seq + 1, report.head_hash
        hashes = _page_hashes(page, expected_seq, prev)
        if hashes is None:  # something differs (or needs the reference encoder): row by row
            report = _verify_rows(page, report, collect, collected)
            if not report.ok:
                return report
            continue
        if collected is not None:
            end = expected_seq + len(page)
            for seq in wanted[bisect_left(wanted, expected_seq) : bisect_left(wanted, end)]:
                collected[seq] = hashes[seq - expected_seq]
        report = ChainReport(True, report.entries + len(page), expected_seq + len(page) - 1, hashes[-1])
    return report


def _page_hashes(page: Sequence[ChainRow], expected_seq: int, prev: str) -> list[str] | None:
    """The stored hashes of a page when every row passes every check of ``_verify_rows``; None when
    any might not (then ``_verify_rows`` decides: it may still pass, e.g. a body only the reference
    encoder reproduces).  Never accepts a row that ``_verify_rows`` would report."""
    bodies = [row[1] for row in page]
    hashes = [row[2] for row in page]
    if [digest.hexdigest() for digest in map(hashlib.sha256, bodies)] != hashes:
        return None
    # All bodies in one text, each parsed where it starts and required to end where it ends: a
    # row is one JSON value on its own (never half of one spread over two rows), no whitespace.
    joined = b"[" + b",".join(bodies) + b"]"
    if not joined.isascii():  # (then a body's length in bytes is its length in characters)
        return None
    text = joined.decode("ascii")
    docs: list[Any] = []
    pos = 1
    try:
        for body in bodies:
            doc, end = _SCAN(text, pos)
            pos += len(body)
            if end != pos:
                return None
            docs.append(doc)
            pos += 1
        if set(map(type, docs)) != {dict}:
            return None
        # canonical form: the page's text is the plain encoder's output for the parsed entries,
        # and (every row aligned to its own value above) so each body is its entry's encoding
        if _PLAIN.encode(docs) != text:
            return None
    except (StopIteration, ValueError):  # not JSON, or a value (NaN) the encoder refuses: the row walk names it
        return None
    seqs = list(range(expected_seq, expected_seq + len(page)))
    if [row[0] for row in page] != seqs or list(map(dict.get, docs, repeat("seq"))) != seqs:
        return None
    if list(map(dict.get, docs, repeat("prev"))) != [prev, *hashes[:-1]]:
        return None
    with_columns = [len(row) == 4 for row in page]
    if any(with_columns):
        if not all(with_columns):
            return None
        if not columns_match([row[3] for row in page if len(row) == 4], docs):
            return None
    return hashes


def _verify_rows(
    rows: Iterable[ChainRow],
    start: ChainReport,
    collect: set[int] | None,
    collected: dict[int, str] | None,
) -> ChainReport:
    """Row by row from ``start`` (the chain verified so far): the first bad entry, or the new head."""
    expected_seq, prev, count = start.head_seq + 1, start.head_hash, start.entries
    for row in rows:
        seq, body, stored_hash = row[0], row[1], row[2]
        bad_at = min(seq, expected_seq)
        if hashlib.sha256(body).hexdigest() != stored_hash:
            return ChainReport(False, count, expected_seq - 1, prev, bad_at, "entry content does not match its hash")
        try:
            doc = json.loads(body)
        except ValueError:
            return ChainReport(False, count, expected_seq - 1, prev, bad_at, "entry is not JSON")
        if not isinstance(doc, dict):
            return ChainReport(False, count, expected_seq - 1, prev, bad_at, "entry is not a JSON object")
        # (the fast encoder first: entries are ours and float-free; the reference one decides otherwise)
        try:
            canonical = canonicalize_plain(doc) == body or canonicalize(doc) == body
        except ValueError:  # NaN or Infinity (json.loads reads them): no JSON form at all
            canonical = False
        if not canonical:
            return ChainReport(False, count, expected_seq - 1, prev, bad_at, "entry is not in canonical form")
        if seq != expected_seq or doc.get("seq") != seq:
            return ChainReport(
                False, count, expected_seq - 1, prev, bad_at, f"sequence out of step (expected {expected_seq})"
            )
        if doc.get("prev") != prev:
            return ChainReport(False, count, expected_seq - 1, prev, seq, "previous-hash link is broken")
        if len(row) == 4:
            wrong = first_mismatch(row[3], columns_of(doc))
            if wrong is not None:
                # the column's name only: its value and the body's may be personal data
                problem = f"{COLUMN_NAMES[wrong]} does not match the entry (the stored index was edited)"
                return ChainReport(False, count, expected_seq - 1, prev, seq, problem)
        if collect is not None and collected is not None and seq in collect:
            collected[seq] = stored_hash
        prev, expected_seq, count = stored_hash, expected_seq + 1, count + 1
    return ChainReport(True, count, expected_seq - 1, prev)
