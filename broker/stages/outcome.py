"""What the pipeline concluded about one inbound message, and the pure builders that turn it into
audit drafts, stored records, quarantine items and the partner's receipt.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from broker.audit.chain import Draft, Kind
from broker.policy.decision import Refusal, Release
from broker.ports.store import QuarantineItem, StoredRecord
from schemas.errors import Reason
from schemas.messages import consumer_record, receipt_for


@dataclass(frozen=True, slots=True)
class Inbound:
    """One message as a transport delivered it."""

    body: bytes
    publisher: str | None = None  # partner id the transport authenticated (AMQP user_id), if any
    route_partner: str | None = None  # partner named by the routing key, for receipts of unparseable input
    redelivered: bool = False
    transport: str = "http"


class Status(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    FAILED = "failed"  # our fault (an exception): not acknowledged, redelivered, dead-lettered at the limit


@dataclass(frozen=True, slots=True)
class Outcome:
    status: Status
    body_sha256: str
    source: str | None = None  # verified partner, or the claimed one for a rejection (see ``verified``)
    verified: bool = False
    message_id: str | None = None
    event_type: str | None = None
    reason: str | None = None
    message: str | None = None
    releases: tuple[Release, ...] = ()
    refusals: tuple[Refusal, ...] = ()
    receipt_to: str | None = None
    produced_at: datetime | None = None

    def receipt(self, at: datetime) -> dict[str, Any]:
        return dict(
            receipt_for(
                status=self.status.value,
                message_id=self.message_id,
                source=self.source,
                body_sha256=self.body_sha256,
                at=at,
                records=len(self.releases) if self.status is Status.ACCEPTED else None,
                reason=self.reason,
                message=self.message,
            )
        )


def record_body(outcome: Outcome, release: Release) -> bytes:
    """The minimised record as the consumer receives it (``schemas.messages.ConsumerRecord``):
    deterministic, so a redelivered copy is byte-identical and its hash matches the audit entry."""
    return consumer_record(
        record_id=release.record_id,
        consumer=release.consumer,
        event_type=outcome.event_type,
        source=outcome.source,
        produced_at=outcome.produced_at,
        agreement_id=release.agreement_id,
        agreement_revision=release.agreement_revision,
        flow_id=release.flow_id,
        purpose=release.purpose,
        lawful_basis=release.lawful_basis,
        retention_days=release.retention_days,
        data=release.record,
    )


def drafts_for(outcome: Outcome, inbound: Inbound, record_hashes: dict[str, str]) -> list[Draft]:
    """Audit drafts: ids, codes and hashes only, never payloads (DESIGN.md invariant 5)."""
    base: dict[str, Any] = {
        "message_id": outcome.message_id,
        "source": outcome.source,
        "body_sha256": outcome.body_sha256,
    }
    if outcome.event_type:
        base["event_type"] = outcome.event_type
    received = Draft(
        Kind.RECEIVED,
        {**base, "transport": inbound.transport, "redelivered": inbound.redelivered, "verified": outcome.verified},
    )
    if outcome.status is Status.REJECTED:
        return [received, Draft(Kind.REJECTED, {**base, "reason": outcome.reason, "verified": outcome.verified})]
    if outcome.status is Status.DUPLICATE:
        return [received, Draft(Kind.DUPLICATE, base)]
    drafts = [received]
    for release in outcome.releases:
        drafts.append(
            Draft(
                Kind.RELEASED,
                {
                    **base,
                    "consumer": release.consumer,
                    "agreement_id": release.agreement_id,
                    "agreement_revision": release.agreement_revision,
                    "flow_id": release.flow_id,
                    "fields": list(release.fields),
                    "rules": list(release.rules),
                    "record_id": release.record_id,
                    "record_sha256": record_hashes[release.record_id],
                },
            )
        )
    if not outcome.releases:
        drafts.append(
            Draft(
                Kind.WITHHELD,
                {
                    **base,
                    "refusals": [
                        {"reason": r.reason, "agreement_id": r.agreement_id, "consumer": r.consumer}
                        for r in outcome.refusals
                    ],
                },
            )
        )
    return drafts


def stored_records(outcome: Outcome, bodies: dict[str, bytes], now: datetime) -> list[StoredRecord]:
    assert outcome.source is not None
    assert outcome.message_id is not None
    assert outcome.event_type is not None
    return [
        StoredRecord(
            record_id=release.record_id,
            consumer=release.consumer,
            agreement_id=release.agreement_id,
            agreement_revision=release.agreement_revision,
            event_type=outcome.event_type,
            source=outcome.source,
            message_id=outcome.message_id,
            released_at=now,
            expires_at=now + timedelta(days=release.retention_days),
            body=bodies[release.record_id],
        )
        for release in outcome.releases
    ]


def quarantine_item(outcome: Outcome, inbound: Inbound, now: datetime) -> QuarantineItem:
    # A body refused for carrying a direct identifier is not kept: holding it would itself be
    # processing patient data the broker has no basis for (DOMAIN.md, PCSC Act s.16). The hash
    # lets the partner find the record in its own export.
    keep = outcome.reason != Reason.DIRECT_IDENTIFIER.value
    return QuarantineItem(
        at=now,
        reason=outcome.reason or "unknown",
        message=outcome.message or "",
        source=outcome.source,
        message_id=outcome.message_id,
        body_sha256=outcome.body_sha256,
        body=inbound.body if keep else None,
    )


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
