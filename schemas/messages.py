"""The messages the broker sends back: receipts to partners, records to consumers, quarantine headers.

Each is a ``TypedDict`` (a plain dict at run time) for three reasons: the broker builds one per
message on its hot path, so a builder must cost no more than the dict literal it replaces; mypy
checks every builder against the definition (a misspelt or missing key fails the type check); and
pydantic reads the same definition to validate (``extra="forbid"``, strict) what an adapter
receives and to export the JSON Schema files in ``schemas/jsonschema/`` (``sv-broker schemas
export``). One definition, three uses.

The builders produce exactly the bytes the broker has always produced: receipts and records are
RFC 8785 canonical JSON (``schemas.canonical.canonicalize_plain``), and the audit trail holds the
SHA-256 of each record body, so a changed byte would break the link between a delivered record
and its audit entry (``tests/test_messages.py`` pins them).

* :class:`Receipt`, :class:`ReceiptsMessage`: the broker's verdict on one message, batched per
  partner per batch on the partner's receipts queue (``schemas.topology.Names.receipts_queue``);
  over HTTP one receipt is the response body.
* :class:`ConsumerRecord`: one minimised record as a consumer receives it (AMQP body, HTTP feed).
* :class:`ConsumerFigures`: one quarter's figures, disclosure-controlled, for a figures-only consumer.
* :class:`QuarantineHeaders`: the AMQP headers of a quarantined message (the body is the
  partner's original, or empty when it was refused for carrying a direct identifier).
"""

# No "from __future__ import annotations": TypedDict needs real annotations at run time to know
# which keys are NotRequired (``__required_keys__``, what partners' tools may introspect).

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal, NotRequired, cast

from pydantic import ConfigDict, TypeAdapter, with_config
from typing_extensions import TypedDict  # pydantic needs it on Python < 3.12

from schemas.canonical import canonicalize, canonicalize_plain
from schemas.envelope import format_time

CONFIG = ConfigDict(extra="forbid", strict=True)

ReceiptStatus = Literal["accepted", "duplicate", "rejected"]
DEAD_LETTERED = "dead_lettered"  # the reason of a message the broker failed on too many times


@with_config(CONFIG)
class Withheld(TypedDict):
    """Why an accepted message released nothing under one agreement (or none covers it)."""

    reason: str  # a policy code of ``schemas.errors.Reason``: review_overdue, row_condition_false, ...
    agreement_id: str | None  # null: no agreement covers this partner and event type
    message: str  # a sentence for the partner's staff
    # only when the agreement holds the event (its [hold]): RFC 3339 time until which the broker
    # keeps it, sealed, to release it if a new revision is in force by then (issue 12: held, not lost)
    held_until: NotRequired[str]


@with_config(CONFIG)
class Receipt(TypedDict):
    """The broker's verdict on one message. ``records`` only when accepted; ``reason`` (a code of
    ``schemas.errors.Reason``, or ``dead_lettered``) and ``message`` only when rejected."""

    status: ReceiptStatus
    message_id: str | None  # null when the body was not a readable envelope
    source: str | None  # the partner, verified or as claimed; null when unknown
    body_sha256: str  # hex SHA-256 of the body as received: finds the row even without an id
    at: str  # RFC 3339 UTC time of the verdict
    records: NotRequired[int]  # records released (0: accepted, but no agreement released anything)
    # withdrawal notices sent to consumers that held an earlier revision (a withdrawal, or a
    # correction that leaves a consumer no longer entitled); only when there were any
    withdrawn: NotRequired[int]
    # only with records 0: why, one entry per agreement and reason (issue 12: partners are told)
    withheld: NotRequired[list[Withheld]]
    reason: NotRequired[str]
    message: NotRequired[str | None]  # a sentence for the partner's staff


@with_config(CONFIG)
class ReceiptsMessage(TypedDict):
    """One AMQP message on a partner's receipts queue: the receipts of one broker batch."""

    receipts: list[Receipt]


@with_config(CONFIG)
class Agreement(TypedDict):
    """The agreement flow under which a record was released."""

    id: str
    revision: int
    flow: str
    purpose: str
    lawful_basis: list[str]
    retention_days: int


@with_config(CONFIG)
class ConsumerRecord(TypedDict):
    """One released record. Deterministic: a redelivered copy is byte-identical, and its SHA-256
    is the ``record_sha256`` of the audit entry that released it."""

    record_id: str
    consumer: str
    event_type: str | None  # set for every released record (the types follow the broker's builder)
    source: str | None
    produced_at: str | None  # the event's envelope time, RFC 3339 UTC
    agreement: Agreement
    revision: int  # the record's revision: 1, then one more for each correction the partner sent
    data: dict[str, Any]  # only the released fields, transformed as the agreement declares


NoticeKind = Literal["withdrawn", "deleted"]


@with_config(CONFIG)
class ConsumerNotice(TypedDict):
    """A notice about a record a consumer received: ``withdrawn`` (the partner withdrew it, or a
    correction means this consumer is no longer entitled to it) or ``deleted`` (its retention
    ended and the broker deleted its copy): the consumer deletes its own copy too. Told apart from
    a record by its ``notice`` member (a record has ``data``); holds no personal data."""

    notice: NoticeKind
    record_id: str
    consumer: str
    agreement_id: str
    revision: int  # withdrawn: the revision that withdrew it; deleted: the last revision held
    reason: str  # withdrawn: a withdrawal reason or no_longer_entitled; deleted: retention_expired
    at: str  # RFC 3339 UTC: the withdrawal's time (as signed), or the deletion's


Count = int | Literal["[c]"]
"""A published count, or ``"[c]"``: suppressed (confidential), as UK official statistics mark it."""


@with_config(CONFIG)
class FiguresTable(TypedDict):
    """One count table. One-way: ``title`` and ``cells`` (label -> count) and ``total``. Two-way:
    ``rows`` x ``cols`` ``cells`` (a list per row), ``row_totals``, ``col_totals`` and ``total``.
    Suppressed entries (primary: small or dominated; secondary: so that no suppressed entry can be
    worked out from the others) are ``"[c]"``; ``footnotes`` says so, and whether figures are rounded."""

    table: str
    caption: str
    title: NotRequired[str]
    row_title: NotRequired[str]
    col_title: NotRequired[str]
    rows: NotRequired[list[str]]
    cols: NotRequired[list[str]]
    cells: dict[str, Count] | list[list[Count]]
    row_totals: NotRequired[list[Count]]
    col_totals: NotRequired[list[Count]]
    total: Count
    footnotes: list[str]


@with_config(CONFIG)
class FiguresShare(TypedDict):
    """A share computed from published counts only (``percent`` null when a part is suppressed)."""

    share: str
    label: str
    numerator: Count
    denominator: Count
    percent: float | None
    note: str | None


@with_config(CONFIG)
class FiguresSection(TypedDict):
    event_type: str
    title: str
    period_field: str  # the released event-date field the quarter was read from
    tables: list[FiguresTable]
    shares: list[FiguresShare]


@with_config(CONFIG)
class ConsumerFigures(TypedDict):
    """One quarter's figures for a figures-only consumer (an agreement flow with ``figures``): count
    tables the broker computed from the flow's minimised events, disclosure-controlled, never a
    record. Told apart from a record by its ``figures_id`` member. ``revision`` 2, 3, ...: the
    same quarter recounted after a correction, withdrawal or late event (replace the earlier one).
    ``disclosure_check``: the method, the rules, which entries are suppressed and that the
    linear-programming attack found every one protected (not which are small: that would narrow
    them)."""

    figures_id: str
    consumer: str
    period: str  # "2026-Q3": the calendar quarter, by event date
    period_basis: Literal["event date"]
    revision: int
    released_at: str  # RFC 3339 UTC
    agreement: Agreement
    rules: Literal["source", "partnership"]
    counted: Count  # events counted in the quarter, as the tables publish their total ("[c]": suppressed)
    sections: list[FiguresSection]
    disclosure_check: dict[str, Any]


@with_config(CONFIG)
class QuarantineHeaders(TypedDict):
    """AMQP headers of a quarantined message. A refused message carries all of them; one moved from
    the dead-letter queue (reason ``dead_lettered``) only the first three."""

    reason: str
    reason_message: str
    body_sha256: str
    source: NotRequired[str]  # "" when unknown
    message_id: NotRequired[str]  # "" when unknown
    verified: NotRequired[bool]  # the signature was verified (so ``source`` is proven)
    body_kept: NotRequired[bool]  # false: refused for a direct identifier, the body is not kept


RECEIPT = TypeAdapter(Receipt)
RECEIPTS_MESSAGE = TypeAdapter(ReceiptsMessage)
CONSUMER_RECORD = TypeAdapter(ConsumerRecord)
CONSUMER_NOTICE = TypeAdapter(ConsumerNotice)
CONSUMER_FIGURES = TypeAdapter(ConsumerFigures)
QUARANTINE_HEADERS = TypeAdapter(QuarantineHeaders)

# Exported as JSON Schema files (schemas/schema_files.py): file name -> (id, title, adapter).
MESSAGE_SCHEMAS: dict[str, tuple[str, str, TypeAdapter[Any]]] = {
    "receipts.v1.json": ("receipts", "sv-broker receipts message (a partner's receipts queue)", RECEIPTS_MESSAGE),
    "consumer_record.v1.json": ("consumer_record", "sv-broker released record (a consumer's queue)", CONSUMER_RECORD),
    "consumer_notice.v1.json": (
        "consumer_notice",
        "sv-broker notice of a withdrawn or deleted record (a consumer's queue)",
        CONSUMER_NOTICE,
    ),
    "consumer_figures.v1.json": (
        "consumer_figures",
        "sv-broker quarterly figures, disclosure-controlled (a figures-only consumer's queue)",
        CONSUMER_FIGURES,
    ),
    "quarantine_headers.v1.json": (
        "quarantine_headers",
        "sv-broker quarantine message headers (AMQP)",
        QUARANTINE_HEADERS,
    ),
}


def receipt_for(
    *,
    status: str,
    message_id: str | None,
    source: str | None,
    body_sha256: str,
    at: datetime,
    records: int | None = None,
    reason: str | None = None,
    message: str | None = None,
    withheld: Sequence[Withheld] = (),
    withdrawn: int = 0,
) -> Receipt:
    """One receipt. Keys in this order: the HTTP response body is this dict as JSON, unsorted."""
    # The broker's own status values; its fourth, "failed", never leaves it (over HTTP the
    # receipt is built and then replaced by a problem response), hence the cast, not a check.
    out: Receipt = {
        "status": cast(ReceiptStatus, status),
        "message_id": message_id,
        "source": source,
        "body_sha256": body_sha256,
        "at": format_time(at),
    }
    if records is not None:
        out["records"] = records
        if withdrawn:
            out["withdrawn"] = withdrawn
        if records == 0 and withheld:
            out["withheld"] = list(withheld)
    if reason is not None:
        out["reason"] = reason
        out["message"] = message
    return out


def receipts_message(receipts: Sequence[Receipt]) -> bytes:
    """The body of one receipts message: ``{"receipts": [...]}``, canonical JSON."""
    body: ReceiptsMessage = {"receipts": list(receipts)}
    return canonicalize_plain(body)


def consumer_record(
    *,
    record_id: str,
    consumer: str,
    event_type: str | None,
    source: str | None,
    produced_at: datetime | None,
    agreement_id: str,
    agreement_revision: int,
    flow_id: str,
    purpose: str,
    lawful_basis: Sequence[str],
    retention_days: int,
    data: dict[str, Any],
    revision: int = 1,
) -> bytes:
    """The record body as the consumer receives it. Canonical (RFC 8785) by the fast path: event
    models have no float field, so no released value is a float, and every key is ours."""
    record: ConsumerRecord = {
        "record_id": record_id,
        "consumer": consumer,
        "event_type": event_type,
        "source": source,
        "produced_at": format_time(produced_at) if produced_at else None,
        "agreement": {
            "id": agreement_id,
            "revision": agreement_revision,
            "flow": flow_id,
            "purpose": purpose,
            "lawful_basis": list(lawful_basis),
            "retention_days": retention_days,
        },
        "revision": revision,
        "data": data,
    }
    return canonicalize_plain(record)


def consumer_notice(
    *, notice: NoticeKind, record_id: str, consumer: str, agreement_id: str, revision: int, reason: str, at: datetime
) -> bytes:
    """A notice's body, canonical JSON (deterministic: a redelivered notice is byte-identical)."""
    body: ConsumerNotice = {
        "notice": notice,
        "record_id": record_id,
        "consumer": consumer,
        "agreement_id": agreement_id,
        "revision": revision,
        "reason": reason,
        "at": format_time(at),
    }
    return canonicalize_plain(body)


def consumer_figures(figures: ConsumerFigures) -> bytes:
    """A figures release's body, canonical JSON (RFC 8785, with its floats: the shares' percents and
    the attacker's intervals): a redelivery is byte-identical, its SHA-256 the audit entry's."""
    return canonicalize(figures)


def quarantine_headers(
    *,
    reason: str | None,
    reason_message: str | None,
    body_sha256: str,
    source: str | None,
    message_id: str | None,
    verified: bool,
    body_kept: bool,
) -> QuarantineHeaders:
    """Headers of a message the broker refused (AMQP header values cannot be null: "" instead)."""
    return {
        "reason": reason or "",
        "reason_message": reason_message or "",
        "body_sha256": body_sha256,
        "source": source or "",
        "message_id": message_id or "",
        "verified": verified,
        "body_kept": body_kept,
    }


def dead_letter_headers(*, reason_message: str, body_sha256: str) -> QuarantineHeaders:
    """Headers of a message moved from the dead-letter queue to quarantine (its body is kept)."""
    return {"reason": DEAD_LETTERED, "reason_message": reason_message, "body_sha256": body_sha256}
