"""Stage 7 (pure): what a decision releases, as bytes, and what the store keeps of an outcome."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime, timedelta

from broker.policy.decision import Decision, Release
from broker.ports.store import QuarantineItem, StoredRecord
from broker.stages.outcome import Accepted, Rejected, ReleasedRecord
from broker.stages.types import Admitted, Inbound
from schemas.messages import consumer_record


def record_body(decision: Decision[Admitted], release: Release) -> bytes:
    """The minimised record as the consumer receives it (``schemas.messages.ConsumerRecord``):
    deterministic, so a redelivered copy is byte-identical and its hash matches the audit entry.
    Canonical (RFC 8785) by the fast path:
    event models have no float field, so no released value is a float, and every key is ours."""
    return consumer_record(
        record_id=release.record_id,
        consumer=release.consumer,
        event_type=decision.event_type,
        source=decision.source,
        produced_at=decision.subject.envelope.time,
        agreement_id=release.agreement_id,
        agreement_revision=release.agreement_revision,
        flow_id=release.flow_id,
        purpose=release.purpose,
        lawful_basis=release.lawful_basis,
        retention_days=release.retention_days,
        data=release.record,
    )


def accept(inbound: Inbound, decision: Decision[Admitted]) -> Accepted:
    """An accepted outcome with the exact bytes of every record it releases."""
    records = []
    for release in decision.releases:
        body = record_body(decision, release)
        records.append(ReleasedRecord(release, body, sha256_hex(body)))
    return Accepted(inbound, decision, tuple(records))


def stored_records(accepted: Sequence[Accepted], now: datetime) -> list[StoredRecord]:
    """The records an embedded broker keeps for its consumers' feeds, until their retention ends."""
    return [
        StoredRecord(
            record_id=record.release.record_id,
            consumer=record.release.consumer,
            agreement_id=record.release.agreement_id,
            agreement_revision=record.release.agreement_revision,
            event_type=outcome.event_type,
            source=outcome.source,
            message_id=outcome.message_id,
            released_at=now,
            expires_at=now + timedelta(days=record.release.retention_days),
            body=record.body,
        )
        for outcome in accepted
        for record in outcome.records
    ]


def quarantine_item(outcome: Rejected, now: datetime) -> QuarantineItem:
    return QuarantineItem(
        at=now,
        reason=outcome.reason.value,
        message=outcome.message,
        source=outcome.source,
        message_id=outcome.message_id,
        body_sha256=outcome.body_sha256,
        body=outcome.inbound.body if outcome.body_kept else None,
    )


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
