"""Stage 7 (pure): what a decision releases, as bytes, and what the store keeps of an outcome."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime, timedelta

from broker.figures.specs import Quarter, period_label, quarter_end
from broker.policy.decision import Decision, Refusal, Release, contribution_id, figures_id, quarter_key
from broker.policy.model import local_midnight
from broker.ports.store import ContributionChange, CountedRow, LineageUpdate, QuarantineItem, StoredRecord
from broker.stages.lineage import NO_LINEAGE, NO_LONGER_ENTITLED, Holding, Lineage, holders_to_tell
from broker.stages.outcome import Accepted, Contribution, Rejected, ReleasedNotice, ReleasedRecord
from broker.stages.types import Admitted, Inbound
from schemas.canonical import canonicalize_plain
from schemas.errors import Reason
from schemas.messages import consumer_notice, consumer_record


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
        revision=decision.subject.envelope.revision,
    )


# Refusals about *when* an agreement applies, not about the record: a holder refused only for
# these keeps what it has (the agreement is lapsed, not the record; a [hold] may release it later).
_WINDOW = frozenset({Reason.NOT_YET_VALID.value, Reason.EXPIRED.value, Reason.REVIEW_OVERDUE.value})


def accept(
    inbound: Inbound, decision: Decision[Admitted], lineage: Lineage = NO_LINEAGE, *, notify: bool = True
) -> Accepted:
    """An accepted outcome with the exact bytes of every record it releases and, for a record the
    broker has seen before, a withdrawal notice to each consumer that holds it and gets no record
    from this message (a withdrawal, or a correction its flow now refuses). ``notify`` False: no
    notices (a held event released under one agreement says nothing about the others).

    Threat: a corrected record that no longer meets a consumer's row conditions (reclassified
    out of scope, an age outside the flow's range) would otherwise stay with that consumer, who
    is no longer entitled to it (UK GDPR art. 5(1)(c), (d): minimised and accurate). And a consumer
    whose copy was purged at the end of its retention never gets the record again (a correction
    would otherwise restart a retention the agreement ended)."""
    gone = {h.record_id for h in lineage.holdings if h.purged}
    if gone and any(r.record_id in gone for r in decision.releases):
        decision = Decision(
            decision.subject,
            tuple(r for r in decision.releases if r.record_id not in gone),
            decision.refusals
            + tuple(
                Refusal(
                    Reason.RETENTION_EXPIRED.value,
                    f"Agreement {r.agreement_id}'s retention for this record ended; it is not released again.",
                    r.agreement_id,
                    r.consumer,
                )
                for r in decision.releases
                if r.record_id in gone
            ),
            decision.holds,
            decision.counted,
        )
    records = []
    counted = contributions(decision)
    for release in decision.releases:
        body = record_body(decision, release)
        records.append(ReleasedRecord(release, body, sha256_hex(body)))
    env = decision.subject.envelope
    released = {release.record_id for release in decision.releases}
    lapsed = {(r.agreement_id, r.consumer) for r in decision.refusals if r.reason in _WINDOW}
    reason = env.withdrawn.value if env.withdrawn is not None else NO_LONGER_ENTITLED
    notices = []
    for held in holders_to_tell(lineage) if notify else ():
        if held.record_id in released:
            continue
        if env.withdrawn is None and (held.agreement_id, held.consumer) in lapsed:
            continue  # only its agreement's dates refuse it now: not a change to the record
        body = consumer_notice(
            notice="withdrawn",
            record_id=held.record_id,
            consumer=held.consumer,
            agreement_id=held.agreement_id,
            revision=env.revision,
            reason=reason,
            at=env.time,
        )
        notices.append(ReleasedNotice(held, env.revision, reason, body, sha256_hex(body)))
    return Accepted(inbound, decision, tuple(records), tuple(notices), lineage, tuple(counted))


def contributions(decision: Decision[Admitted]) -> list[Contribution]:
    """A figures flow's releases (one per consumer, one record), as one contribution, placed in
    its quarter by the event's own (generalised) date."""
    by_flow: dict[tuple[str, str], list[Release]] = {}
    for release in decision.counted:
        by_flow.setdefault((release.agreement_id, release.flow_id), []).append(release)
    env = decision.subject.envelope
    out = []
    for (agreement, flow), releases in by_flow.items():
        first = releases[0]
        period = period_label(decision.event_type, first.record)
        out.append(
            Contribution(
                release=first,
                consumers=tuple(r.consumer for r in releases),
                contribution_id=contribution_id(env.source, env.lineage, agreement, flow),
                period=period,
                key=quarter_key(agreement, flow, period) if period else None,
                figures_ids=tuple(
                    figures_id(r.consumer, agreement, flow, period) if period else None for r in releases
                ),
            )
        )
    return out


def _expires(outcome: Accepted, release: Release, now: datetime) -> datetime:
    """A record's retention runs from its first release: a correction does not extend it
    (otherwise a partner's resends would keep a record for ever)."""
    held = outcome.lineage.holding(release.record_id)
    return held.expires_at if held is not None else now + timedelta(days=release.retention_days)


def lineage_update(outcome: Accepted, now: datetime) -> LineageUpdate:
    """What the store remembers of the record's life after ``outcome``."""
    env = outcome.validated.envelope
    holdings = [
        Holding(
            r.release.record_id,
            r.release.consumer,
            r.release.agreement_id,
            env.revision,
            False,
            _expires(outcome, r.release, now),
        )
        for r in outcome.records
    ]
    holdings.extend(
        Holding(
            n.holding.record_id, n.holding.consumer, n.holding.agreement_id, env.revision, True, n.holding.expires_at
        )
        for n in outcome.notices
    )
    return LineageUpdate(
        source=env.source,
        lineage=env.lineage,
        revision=env.revision,
        message_id=env.id,
        withdrawn=env.withdrawn is not None,
        event_type=env.type,
        holdings=tuple(holdings),
    )


def contribution_change(outcome: Accepted, now: datetime, *, only: str | None = None) -> ContributionChange | None:
    """What an accepted message changes in the figures flows' inputs (None: nothing, the hot path
    of a first revision no figures flow counts).

    A contribution is kept until its quarter's end plus the agreement's retention (a quarter's
    events go together: its figures are never recounted from half of them); one with no event
    date, for the retention from now."""
    env = outcome.validated.envelope
    replaces = env.revision > 1 or env.withdrawn is not None
    if not replaces and not outcome.contributions:
        return None
    rows = []
    for c in outcome.contributions:
        r = c.release
        expires = now + timedelta(days=r.retention_days)
        if c.period is not None:
            try:
                end = local_midnight(quarter_end(Quarter.parse(c.period))) + timedelta(days=1)
                expires = end + timedelta(days=r.retention_days)
            except OverflowError:  # an event dated in 9999: kept for the retention from now
                pass
        rows.append(
            CountedRow(
                record_id=c.contribution_id,
                source=env.source,
                lineage=env.lineage,
                agreement_id=r.agreement_id,
                flow_id=r.flow_id,
                figures_id=c.key,
                period=c.period,
                event_type=env.type,
                revision=env.revision,
                message_id=env.id,
                data=canonicalize_plain(r.record),
                expires_at=expires,
            )
        )
    # An agreement that refused this revision only for its dates keeps what it counted (as a
    # records flow's consumer keeps its copy); a withdrawal removes it from every quarter.
    keep = (
        frozenset()
        if env.withdrawn is not None
        else frozenset(r.agreement_id for r in outcome.refusals if r.reason in _WINDOW and r.agreement_id)
    )
    return ContributionChange(env.source, env.lineage, env.id, replaces, keep, tuple(rows), only)


def stored_records(accepted: Sequence[Accepted], now: datetime) -> list[StoredRecord]:
    """The records (and withdrawal notices) an embedded broker keeps for its consumers' feeds."""
    out = []
    for outcome in accepted:
        revision = outcome.validated.envelope.revision
        for record in outcome.records:
            out.append(
                StoredRecord(
                    record_id=record.release.record_id,
                    consumer=record.release.consumer,
                    agreement_id=record.release.agreement_id,
                    agreement_revision=record.release.agreement_revision,
                    event_type=outcome.event_type,
                    source=outcome.source,
                    message_id=outcome.message_id,
                    released_at=now,
                    expires_at=_expires(outcome, record.release, now),
                    body=record.body,
                    revision=revision,
                    period=period_label(outcome.event_type, record.release.record),
                )
            )
        for notice in outcome.notices:
            out.append(
                StoredRecord(
                    record_id=notice.holding.record_id,
                    consumer=notice.holding.consumer,
                    agreement_id=notice.holding.agreement_id,
                    agreement_revision=0,  # a notice releases under no agreement revision
                    event_type=outcome.event_type,
                    source=outcome.source,
                    message_id=outcome.message_id,
                    released_at=now,
                    expires_at=notice.holding.expires_at,
                    body=notice.body,
                    revision=revision,
                    kind="withdrawn",
                )
            )
    return out


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
