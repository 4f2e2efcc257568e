"""What the pipeline concluded about one inbound message: a closed union, each case holding only
the fields it can have.

    Outcome = Accepted | Duplicate | Rejected | Failed

- ``Accepted``: admitted by the replay guard and decided; holds the decision (which holds the
  admitted, validated, fresh, verified message it was made for) and the released records' bytes.
  The only case a record can be released from.
- ``Duplicate``: the same content under an id already finished; acknowledged, nothing released.
- ``Rejected``: refused with a stable reason; quarantined, the publisher told. Fields taken from
  an envelope that was never verified are *claims* (``verified`` says which).
- ``Failed``: our fault (an exception): not acknowledged, redelivered, dead-lettered at the limit.

``Settled`` (everything but ``Failed``) is what gets audit entries and a receipt.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import ClassVar

from broker.policy.decision import Decision, Hold, Refusal, Release
from broker.stages.lineage import NO_LINEAGE, Holding, Lineage
from broker.stages.types import Admitted, Inbound, Validated
from schemas.envelope import format_time
from schemas.errors import Reason
from schemas.identifiers import looks_identifying, looks_identifying_text
from schemas.messages import Receipt, Withheld, receipt_for

# Refusals a person can only diagnose by reading the body: a field the schema refused, JSON the
# parser refused, an envelope attribute, a signature over bytes the partner's canonicaliser got
# wrong, a replay's other content, a message the broker itself failed on. Every other refusal is
# about keys, clocks, routing or size: its reason and hash say all there is to say.
DIAGNOSABLE: frozenset[Reason] = frozenset(
    {
        Reason.SCHEMA_INVALID,
        Reason.ENVELOPE_INVALID,
        Reason.UNSUPPORTED_SPECVERSION,
        Reason.UNKNOWN_EVENT_TYPE,
        Reason.BAD_SIGNATURE,
        Reason.REPLAYED,
        Reason.DEAD_LETTERED,
        Reason.MALFORMED_JSON,
        Reason.TRAILING_DATA,
        Reason.DUPLICATE_KEY,
        Reason.NON_FINITE_NUMBER,
        Reason.INTEGER_OUT_OF_RANGE,
        Reason.LONE_SURROGATE,
        Reason.NOT_AN_OBJECT,
        Reason.BOM_PRESENT,
        Reason.INVALID_UTF8,
    }
)
# The envelope's own attributes, whose values the contract's patterns fix (ids, times, a
# signature): their values are not scanned for identifiers (a signature's digits are no one's).
_ENVELOPE_ATTRS = frozenset(
    {"specversion", "id", "source", "type", "dataschema", "time", "datacontenttype", "keyid", "signature"}
)


def keep_body(reason: Reason, body: bytes) -> bool:
    """May quarantine keep a refused message's body?  Pure.

    Threat: quarantine is read by operators and kept for weeks; a body under an identifier-like
    name the contract's list missed (``nhsnumber``), or an NHS number in a free-text field, would
    sit there as personal data the broker has no basis to hold (DOMAIN.md, PCSC Act s.16). So a
    body is kept only for a diagnosable reason (``DIAGNOSABLE``) and only when no member name at
    any depth and no string value looks like a direct identifier (``schemas.identifiers``); a
    body that is not JSON is scanned as text. Never for ``direct_identifier``.
    """
    if reason not in DIAGNOSABLE:
        return False
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return looks_identifying_text(body.decode("utf-8", "replace")) is None
    return looks_identifying(document, _ENVELOPE_ATTRS) is None


class Status(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ReleasedRecord:
    """One minimised record as its consumer receives it: the release and its exact bytes."""

    release: Release
    body: bytes
    sha256: str


@dataclass(frozen=True, slots=True)
class Contribution:
    """One event's minimised record counted in a figures flow (its ``Release.figures`` releases, one
    per consumer, the same record): kept once by the broker, in the commit that audits it, to
    compute the flow's figures; never sent.

    ``period``: the quarter by event date ("2026-Q3"), None when the record holds no event date
    the figures can read (then it is counted nowhere, and the audit entry says so); ``key`` the
    flow's quarter (``decision.quarter_key``), ``figures_ids`` each consumer's release of it."""

    release: Release  # the first consumer's: the agreement, flow, fields and record
    consumers: tuple[str, ...]
    contribution_id: str
    period: str | None
    key: str | None
    figures_ids: tuple[str | None, ...]

    @property
    def data(self) -> dict[str, object]:
        return self.release.record


@dataclass(frozen=True, slots=True)
class ReleasedNotice:
    """A withdrawal notice to a consumer that held an earlier revision, and its exact bytes."""

    holding: Holding  # what the consumer held (record id, agreement, its revision then)
    revision: int  # the revision that withdraws it
    reason: str
    body: bytes
    sha256: str


@dataclass(frozen=True, slots=True)
class Accepted:
    status: ClassVar[Status] = Status.ACCEPTED
    verified: ClassVar[bool] = True
    inbound: Inbound
    decision: Decision[Admitted]
    records: tuple[ReleasedRecord, ...]
    notices: tuple[ReleasedNotice, ...] = ()
    lineage: Lineage = NO_LINEAGE  # the record's life before this message
    contributions: tuple[Contribution, ...] = ()  # counted in figures (``Contribution``), never sent

    @property
    def validated(self) -> Validated:
        return self.decision.subject.validated

    @property
    def body_sha256(self) -> str:
        return self.validated.fresh.verified.received.body_sha256

    @property
    def source(self) -> str:
        return self.decision.source

    @property
    def message_id(self) -> str:
        return self.decision.message_id

    @property
    def event_type(self) -> str:
        return self.decision.event_type

    @property
    def produced_at(self) -> datetime:
        return self.validated.envelope.time

    @property
    def releases(self) -> tuple[Release, ...]:
        return self.decision.releases

    @property
    def refusals(self) -> tuple[Refusal, ...]:
        return self.decision.refusals

    @property
    def receipt_to(self) -> str:
        return self.source


@dataclass(frozen=True, slots=True)
class Duplicate:
    status: ClassVar[Status] = Status.DUPLICATE
    verified: ClassVar[bool] = True
    inbound: Inbound
    validated: Validated

    @property
    def body_sha256(self) -> str:
        return self.validated.fresh.verified.received.body_sha256

    @property
    def source(self) -> str:
        return self.validated.envelope.source

    @property
    def message_id(self) -> str:
        return self.validated.envelope.id

    @property
    def event_type(self) -> str:
        return self.validated.envelope.type

    @property
    def receipt_to(self) -> str:
        return self.source


@dataclass(frozen=True, slots=True)
class Rejected:
    status: ClassVar[Status] = Status.REJECTED
    inbound: Inbound
    body_sha256: str
    reason: Reason
    message: str
    verified: bool  # were source, message_id and event_type authenticated (or only claimed)?
    source: str | None = None
    message_id: str | None = None
    event_type: str | None = None
    # Receipts go to the authenticated publisher when there is one, never to a partner named only
    # by an unverified envelope (no reflection to third parties).
    receipt_to: str | None = None
    # Whether quarantine may hold this body (``keep_body``); otherwise only its hash, which lets
    # the partner find the message in its own export. Decided once (it parses and scans the body):
    # the store's quarantine row and the AMQP quarantine copy both read it.
    body_kept: bool = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "body_kept", keep_body(self.reason, self.inbound.body))


@dataclass(frozen=True, slots=True)
class Failed:
    status: ClassVar[Status] = Status.FAILED
    inbound: Inbound
    body_sha256: str
    source: str | None = None
    message_id: str | None = None


Settled = Accepted | Duplicate | Rejected
Outcome = Accepted | Duplicate | Rejected | Failed


def receipt(outcome: Settled, at: datetime) -> Receipt:
    """The partner's receipt for one message (batched per partner on RabbitMQ, the HTTP answer)."""
    reason = message = None
    if isinstance(outcome, Rejected):
        reason, message = outcome.reason.value, outcome.message
    return receipt_for(
        status=outcome.status.value,
        message_id=outcome.message_id,
        source=outcome.source,
        body_sha256=outcome.body_sha256,
        at=at,
        records=len(outcome.releases) if isinstance(outcome, Accepted) else None,
        reason=reason,
        message=message,
        withheld=withheld_of(outcome.refusals, outcome.decision.holds)
        if isinstance(outcome, Accepted) and not outcome.releases
        else (),
        withdrawn=len(outcome.notices) if isinstance(outcome, Accepted) else 0,
    )


def withheld_of(refusals: Sequence[Refusal], holds: Sequence[Hold] = ()) -> list[Withheld]:
    """The refusals a partner is told of when nothing was released: one per (agreement, reason),
    in a stable order, without naming consumers (the receipt goes to the partner, who knows its
    agreements; who else would have received the record is not its business). An agreement that
    holds the event says until when (``held_until``): not lost, waiting for its renewal."""
    until = {(h.agreement_id, h.reason): format_time(h.expires_at) for h in holds}
    seen: dict[tuple[str, str], Withheld] = {}
    for refusal in refusals:
        key = (refusal.agreement_id or "", refusal.reason)
        if key not in seen:
            seen[key] = {"reason": refusal.reason, "agreement_id": refusal.agreement_id, "message": refusal.message}
            held = until.get(key)
            if held is not None:
                seen[key]["held_until"] = held
    return [seen[key] for key in sorted(seen)]
