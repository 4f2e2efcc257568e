"""Every audit entry the broker writes, built here as a typed value (pure: no I/O, no clock).

Entries hold ids, codes, counts and hashes, never payloads, tokens or secrets (DESIGN.md
invariant 5). The flows (``broker/pipeline/``) decide *when* an entry is written; this module is
the one place that says *what* each kind of entry holds, so an IG lead's queries and the export
read one vocabulary.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from broker.audit.chain import Draft, Kind
from broker.policy.decision import Hold
from broker.stages.outcome import Accepted, Contribution, Duplicate, Rejected, Settled
from schemas.envelope import format_time
from schemas.errors import Reason


class HeldRef(Protocol):
    """What an entry names of a held event (``broker.ports.store.HeldItem``): ids, never the body."""

    @property
    def id(self) -> str: ...
    @property
    def agreement_id(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def message_id(self) -> str: ...
    @property
    def event_type(self) -> str: ...
    @property
    def held_under_revision(self) -> int: ...


def _base(outcome: Settled) -> dict[str, Any]:
    base: dict[str, Any] = {
        "message_id": outcome.message_id,
        "source": outcome.source,
        "body_sha256": outcome.body_sha256,
    }
    if outcome.event_type:
        base["event_type"] = outcome.event_type
    if isinstance(outcome, Accepted | Duplicate):
        env = outcome.validated.envelope
        if env.supersedes is not None:  # a later revision of a record: traced to its first message
            base["supersedes"] = env.supersedes
            base["revision"] = env.revision
        if env.withdrawn is not None:
            base["withdrawn"] = env.withdrawn.value
    return base


def received(outcome: Settled) -> Draft:
    base = _base(outcome)
    inbound = outcome.inbound
    return Draft(
        Kind.RECEIVED,
        {**base, "transport": inbound.transport, "redelivered": inbound.redelivered, "verified": outcome.verified},
    )


def verdict(outcome: Settled) -> list[Draft]:
    """What became of a message after ``received``: rejected, duplicate, or each release (or
    ``withheld`` with every refusal when no agreement entitles anyone)."""
    base = _base(outcome)
    if isinstance(outcome, Rejected):
        return [Draft(Kind.REJECTED, {**base, "reason": outcome.reason.value, "verified": outcome.verified})]
    if isinstance(outcome, Duplicate):
        return [Draft(Kind.DUPLICATE, base)]
    return released(outcome, base)


def released(outcome: Accepted, base: Mapping[str, Any]) -> list[Draft]:
    drafts = [
        Draft(
            Kind.RELEASED,
            {
                **base,
                "consumer": record.release.consumer,
                "agreement_id": record.release.agreement_id,
                "agreement_revision": record.release.agreement_revision,
                "flow_id": record.release.flow_id,
                "fields": list(record.release.fields),
                "rules": list(record.release.rules),
                "record_id": record.release.record_id,
                "record_sha256": record.sha256,
            },
        )
        for record in outcome.records
    ]
    drafts.extend(
        Draft(
            Kind.WITHDRAWN,
            {
                **base,
                "consumer": notice.holding.consumer,
                "agreement_id": notice.holding.agreement_id,
                "record_id": notice.holding.record_id,
                "reason": notice.reason,
                "notice_sha256": notice.sha256,
            },
        )
        for notice in outcome.notices
    )
    drafts.extend(counted(base, c) for c in outcome.contributions)
    if not drafts:
        refusals = [
            {"reason": r.reason, "agreement_id": r.agreement_id, "consumer": r.consumer} for r in outcome.refusals
        ]
        drafts.append(Draft(Kind.WITHHELD, {**base, "refusals": refusals}))
    drafts.extend(held(base, hold) for hold in outcome.decision.holds)
    return drafts


def counted(base: Mapping[str, Any], c: Contribution) -> Draft:
    """One message counted under one figures flow, for its consumers (the same fields, the same
    quarter for all): where it is counted, the figures quarter by event date (period None: the
    record holds no event date, counted nowhere), and each consumer's figures id."""
    return Draft(
        Kind.COUNTED,
        {
            **base,
            "agreement_id": c.release.agreement_id,
            "agreement_revision": c.release.agreement_revision,
            "flow_id": c.release.flow_id,
            "fields": list(c.release.fields),
            "rules": list(c.release.rules),
            "record_id": c.contribution_id,
            "period": c.period,
            "consumers": list(c.consumers),
            "figures_ids": list(c.figures_ids),
        },
    )


def held(base: Mapping[str, Any], hold: Hold) -> Draft:
    """The message is kept, sealed, for one agreement not in force (its ``[hold]``): in the same
    commit as the held row (``Pipeline._commit``), so the trail never says held for nothing."""
    return Draft(
        Kind.HELD,
        {
            **base,
            "agreement_id": hold.agreement_id,
            "agreement_revision": hold.agreement_revision,
            "reason": hold.reason,
            "held_until": format_time(hold.expires_at),
        },
    )


def _held_base(item: HeldRef) -> dict[str, Any]:
    return {
        "held_id": item.id,
        "agreement_id": item.agreement_id,
        "source": item.source,
        "message_id": item.message_id,
        "event_type": item.event_type,
        "held_under_revision": item.held_under_revision,
    }


def held_released(item: HeldRef, revision: int, record_ids: Sequence[str]) -> Draft:
    """A held event released under a later revision: held under rN, released under rM."""
    return Draft(
        Kind.HELD_RELEASED,
        {**_held_base(item), "released_under_revision": revision, "record_ids": sorted(record_ids)},
    )


def held_discarded(item: HeldRef, reason: str, details: Mapping[str, Any] | None = None) -> Draft:
    """A held event deleted unreleased: the re-decision's refusal (no longer covered, a key revoked
    since), or an IG lead's decision (``details``: who, and their note screened)."""
    return Draft(Kind.HELD_DISCARDED, {**_held_base(item), "reason": reason, **(details or {})})


def held_unreadable(item: HeldRef) -> Draft:
    """A held event that does not decrypt and authenticate (a tampered row, or the wrong hold key
    on this host): refused, never released; kept for the IG lead to discard or the key to be fixed."""
    return Draft(Kind.HELD_UNREADABLE, {**_held_base(item), "reason": Reason.HELD_UNREADABLE.value})


def held_purged(agreement_id: str, reasons: Mapping[str, int], before: str) -> Draft:
    """Held events of one agreement past their hold time, deleted unreleased: counts per reason."""
    return Draft(
        Kind.HELD_PURGED,
        {
            "agreement_id": agreement_id,
            "reason": Reason.RETENTION_EXPIRED.value,
            "count": sum(reasons.values()),
            "reasons": dict(sorted(reasons.items())),
            "held_until_before": before,
        },
    )


def for_outcome(outcome: Settled) -> list[Draft]:
    return [received(outcome), *verdict(outcome)]


def dead_lettered(
    body_sha256: str, source: str | None, amqp_message_id: str | None, routing_key: str, count: int | None
) -> Draft:
    return Draft(
        Kind.DEAD_LETTERED,
        {
            "body_sha256": body_sha256,
            "source": source,
            "amqp_message_id": amqp_message_id,
            "routing_key": routing_key,
            "delivery_count": count,
        },
    )


def accessed(sub: str, role: str, resource: str, route: str, details: Mapping[str, Any]) -> Draft:
    """A read by an analyst or IG lead: who, which resource, which records (ids, never bodies)."""
    return Draft(Kind.ACCESSED, {"sub": sub, "role": role, "resource": resource, "route": route, **details})


def access_denied(route: str, status: int, reason: Reason, details: Mapping[str, Any] | None = None) -> Draft:
    """A refused token or a read outside the caller's rights. The token itself is never recorded
    (a token in the audit would be a credential at rest)."""
    return Draft(Kind.ACCESS_DENIED, {"route": route, "status": status, "reason": reason.value, **(details or {})})


def purged(consumer: str, agreement_id: str, record_ids: Sequence[str], notified: int = 0) -> Draft:
    """Records deleted at the end of their retention; ``notified``: deletion notices sent to the
    consumer (its own copies follow), one per record it still held (not those withdrawn before)."""
    return Draft(
        Kind.PURGED,
        {
            "consumer": consumer,
            "agreement_id": agreement_id,
            "reason": Reason.RETENTION_EXPIRED.value,
            "count": len(record_ids),
            "record_ids": list(record_ids),
            "notified": notified,
        },
    )


def replay_guard_purged(count: int, before: str) -> Draft:
    """Replay-guard rows deleted: message ids first seen before ``before``, which the freshness
    window refuses anyway (``broker/pipeline/retention.purge_replay_guard``)."""
    return Draft(
        Kind.REPLAY_GUARD_PURGED, {"reason": Reason.RETENTION_EXPIRED.value, "count": count, "seen_before": before}
    )


def quarantine_purged(reasons: Mapping[str, int], before: str, retention_days: int) -> Draft:
    """Quarantined messages deleted at the end of the quarantine retention: how many, for which
    reasons, refused before when (their hashes stay in their ``rejected`` entries)."""
    return Draft(
        Kind.QUARANTINE_PURGED,
        {
            "reason": Reason.RETENTION_EXPIRED.value,
            "count": sum(reasons.values()),
            "reasons": dict(sorted(reasons.items())),
            "refused_before": before,
            "retention_days": retention_days,
        },
    )


def started(config_sha256: str, mode: str, agreements: Mapping[str, int], role: Mapping[str, Any]) -> Draft:
    """Broker start: the configuration fingerprint, so an IG lead can tell which agreements governed
    a period."""
    return Draft(Kind.STARTED, {"config_sha256": config_sha256, "mode": mode, "agreements": dict(agreements), **role})


def config_changed(
    before: str, after: str, agreements: Mapping[str, int], role: Mapping[str, Any] | None = None
) -> Draft:
    """A reload took effect: from which configuration to which, and the agreements now in force
    (with ``--workers``, how many worker processes confirmed they put it in force too)."""
    return Draft(
        Kind.CONFIG_CHANGED,
        {"config_sha256_before": before, "config_sha256": after, "agreements": dict(agreements), **(role or {})},
    )


def config_rejected(running: str, codes: Sequence[str], count: int) -> Draft:
    """A reload was refused (the running configuration stays in force): the problems' codes."""
    return Draft(
        Kind.CONFIG_REJECTED,
        {"config_sha256": running, "problems": count, "codes": sorted(set(codes))},
    )


def stopped(role: Mapping[str, Any]) -> Draft:
    return Draft(Kind.STOPPED, dict(role))


def figures_released(
    *,
    figures_id: str,
    consumer: str,
    agreement_id: str,
    agreement_revision: int,
    flow_id: str,
    period: str,
    revision: int,
    counted: int,
    suppressed: int,
    body_sha256: str,
    not_counted: Mapping[str, int] | None = None,
    report: Mapping[str, Any] | None = None,
) -> Draft:
    """A figures quarter released to its consumer (revision 2, 3, ...: recounted after a change):
    what an IG lead needs to trace it (which flow, quarter, how many events counted, how many
    entries suppressed) and the SHA-256 of the exact bytes delivered."""
    return Draft(
        Kind.FIGURES_RELEASED,
        {
            "record_id": figures_id,
            "consumer": consumer,
            "agreement_id": agreement_id,
            "agreement_revision": agreement_revision,
            "flow_id": flow_id,
            "period": period,
            "revision": revision,
            "counted": counted,
            "suppressed": suppressed,
            "record_sha256": body_sha256,
            # The IG lead's copy: exact counts and the full output-checking report (which cells
            # are primary, why, the attack's intervals), never released with the figures.
            "not_counted": dict(not_counted or {}),
            "disclosure_check": dict(report or {}),
        },
    )


def figures_withheld(
    *, figures_id: str, consumer: str, agreement_id: str, flow_id: str, period: str, reason: str
) -> Draft:
    """A figures quarter not released: the disclosure control could not protect it (nothing sent)."""
    return Draft(
        Kind.FIGURES_WITHHELD,
        {
            "record_id": figures_id,
            "consumer": consumer,
            "agreement_id": agreement_id,
            "flow_id": flow_id,
            "period": period,
            "reason": reason,
        },
    )


def figures_purged(contributions: int, figures: int, before: str) -> Draft:
    """Figures flows' kept inputs and released figures past their retention, deleted (counts only)."""
    return Draft(Kind.FIGURES_PURGED, {"contributions": contributions, "figures": figures, "before": before})
