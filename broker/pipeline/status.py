"""What the store says about the broker's health, read for the alerts and ``sv-broker status``.

The one place that awaits the store for monitoring: the reads (``Store.last_seen``,
``Store.outcome_days``, ``Store.held_summary``, the first entry's time) become
:class:`~broker.monitor.alerts.Observations`, and the pure code decides what they mean. Used by
``sv-broker status`` (read-only, from the store), ``GET /v1/agreements`` and the broker's
``/metrics`` refresh, so all three say the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from broker.monitor.alerts import (
    AgreementStatus,
    Alert,
    Observations,
    PartnerStatus,
    Rates,
    agreement_statuses,
    compute_alerts,
    counts_since,
    outcome_rates,
    partner_statuses,
)
from broker.policy.model import PolicySet
from broker.ports.store import AuditQuery, HeldSummary, Store, StoreCounts
from broker.registry import Registry
from schemas.envelope import format_time, parse_time


async def observe(store: Store, registry: Registry, now: datetime) -> Observations:
    last_seen = await store.last_seen(sorted(registry.partners))
    days = await store.outcome_days(counts_since(now))
    held = await store.held_summary()
    first = await store.audit_page(AuditQuery(after=0, limit=1))
    return Observations(last_seen, days, held, parse_time(first[0].at) if first else None)


async def current_alerts(store: Store, policy: PolicySet, registry: Registry, now: datetime) -> list[Alert]:
    return compute_alerts(policy, registry, now, await observe(store, registry, now))


@dataclass(frozen=True, slots=True)
class StatusReport:
    now: datetime
    head_seq: int
    head_at: str | None
    counts: StoreCounts
    agreements: list[AgreementStatus]
    partners: list[PartnerStatus]
    rates: list[Rates]
    held: list[HeldSummary]
    alerts: list[Alert]

    def as_dict(self) -> dict[str, Any]:
        return {
            "now": format_time(self.now),
            "store": {
                "head_seq": self.head_seq,
                "head_at": self.head_at,
                "audit_by_kind": dict(sorted(self.counts.audit_by_kind.items())),
                "records_by_consumer": dict(sorted(self.counts.records_by_consumer.items())),
            },
            "agreements": [a.as_dict(self.now) for a in self.agreements],
            "partners": [p.as_dict() for p in self.partners],
            "rates": [r.as_dict() for r in self.rates],
            "held": [
                {"agreement_id": h.agreement_id, "count": h.count, "earliest_expiry": format_time(h.earliest_expiry)}
                for h in self.held
            ],
            "alerts": [a.as_dict() for a in self.alerts],
        }


async def status_report(store: Store, policy: PolicySet, registry: Registry, now: datetime) -> StatusReport:
    observations = await observe(store, registry, now)
    head = await store.current_head()
    counts = await store.counts()
    return StatusReport(
        now=now,
        head_seq=head.seq,
        head_at=head.at,
        counts=counts,
        agreements=agreement_statuses(policy, now),
        partners=partner_statuses(policy, registry, now, observations),
        rates=outcome_rates(registry, now, observations.days),
        held=list(observations.held),
        alerts=compute_alerts(policy, registry, now, observations),
    )
