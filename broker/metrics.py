"""``/metrics``: the broker's figures in Prometheus text format (``prometheus-client``).

Labels are ids and codes only: outcome, reason code, agreement id, consumer id, transport. A
payload value or anything about a person never becomes a label or a sample: a label value is
kept by Prometheus for as long as the series lives, outside the retention this broker enforces
(UK GDPR Art 5(1)(e)), and a label taken from a payload would also let a sender blow up the
number of series (one per distinct value). ``tests/test_metrics.py`` holds this with a canary.

Each broker has a registry of its own (tests run several brokers in one process); the gauges
that describe the present (store and RabbitMQ up, leader, chain head) are read at scrape time.

The alerts and partners' last-seen times are computed on a schedule (every minute, by every
process that serves ``/metrics``: ``broker/jobs.alerts_every``), not at scrape: their store reads
scan five weeks of the audit index, a scrape every few seconds from each Prometheus would repeat
that for figures that move by the day, and a slow store must not make the whole scrape time out
(losing "store up" exactly when it matters). ``sv_broker_alerts_refreshed_timestamp_seconds``
says how fresh they are.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from broker.monitor.alerts import Alert, PartnerStatus
from broker.stages.outcome import Accepted, Duplicate, Outcome, Rejected

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))

    def __post_init__(self) -> None:
        r = self.registry
        self.messages = Counter(
            "sv_broker_messages", "Messages settled, by outcome and reason code", ["outcome", "reason"], registry=r
        )
        self.releases = Counter(
            "sv_broker_releases",
            "Minimised records released, by agreement and consumer",
            ["agreement", "consumer"],
            registry=r,
        )
        self.withheld = Counter(
            "sv_broker_withheld",
            "Releases withheld from an accepted message, by refusal reason",
            ["reason"],
            registry=r,
        )
        self.batch_size = Histogram(
            "sv_broker_batch_size", "Messages per processed batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.commit_seconds = Histogram(
            "sv_broker_commit_seconds", "Store group-commit latency", buckets=LATENCY_BUCKETS, registry=r
        )
        self.confirm_seconds = Histogram(
            "sv_broker_confirm_seconds",
            "Delivery latency until every release of a batch is confirmed (RabbitMQ publisher confirms)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.store_up = Gauge("sv_broker_store_up", "1 if the store answers", registry=r)
        self.rabbitmq_up = Gauge("sv_broker_rabbitmq_up", "1 if the RabbitMQ connection is open", registry=r)
        self.leader = Gauge("sv_broker_leader", "1 if this process runs the singleton jobs", registry=r)
        self.chain_head = Gauge("sv_broker_audit_chain_head_seq", "Sequence number of the audit chain head", registry=r)
        # Alerts (``broker/monitor/alerts.py``): refreshed on a schedule, not at scrape (``alerts_observed``).
        self.alerts = Gauge("sv_broker_alerts", "Alerts now, by code and severity", ["code", "severity"], registry=r)
        self.partner_last_seen = Gauge(
            "sv_broker_partner_last_seen_timestamp_seconds",
            "Unix time of the partner's latest authenticated message (absent: none in the store)",
            ["partner"],
            registry=r,
        )
        self.partner_cadence = Gauge(
            "sv_broker_partner_cadence_seconds",
            "The tightest cadence the partner's flows in force declare",
            ["partner"],
            registry=r,
        )
        self.alerts_refreshed = Gauge(
            "sv_broker_alerts_refreshed_timestamp_seconds", "Unix time the alerts were last computed", registry=r
        )

    # -- the pipeline's observations (``broker.pipeline.ingest.Observer``) ----------------------------
    def settled(self, outcomes: Sequence[Outcome]) -> None:
        self.batch_size.observe(len(outcomes))
        for outcome in outcomes:
            if isinstance(outcome, Accepted):
                self.messages.labels("accepted", "").inc()
                for release in outcome.releases:
                    self.releases.labels(release.agreement_id, release.consumer).inc()
                for refusal in outcome.refusals:
                    self.withheld.labels(refusal.reason).inc()
            elif isinstance(outcome, Duplicate):
                self.messages.labels("duplicate", "").inc()
            elif isinstance(outcome, Rejected):
                self.messages.labels("rejected", str(outcome.reason)).inc()
            else:
                self.messages.labels("failed", "internal_error").inc()

    def alerts_observed(self, alerts: Sequence[Alert], partners: Sequence[PartnerStatus], at: datetime) -> None:
        """Replace the alert and partner gauges with these (an alert that cleared disappears).
        Labels: alert codes, severities and partner ids from the registry only."""
        self.alerts.clear()
        counts: dict[tuple[str, str], int] = {}
        for alert in alerts:
            key = (alert.code.value, alert.severity.value)
            counts[key] = counts.get(key, 0) + 1
        for (code, severity), n in sorted(counts.items()):
            self.alerts.labels(code, severity).set(n)
        self.partner_last_seen.clear()
        self.partner_cadence.clear()
        for partner in partners:
            if partner.last_seen is not None:
                self.partner_last_seen.labels(partner.id).set(partner.last_seen.timestamp())
            if partner.cadence is not None:
                self.partner_cadence.labels(partner.id).set(partner.cadence.period.total_seconds())
        self.alerts_refreshed.set(at.timestamp())

    def committed(self, seconds: float) -> None:
        self.commit_seconds.observe(seconds)

    def delivered(self, seconds: float) -> None:
        self.confirm_seconds.observe(seconds)

    # -- the scrape ------------------------------------------------------------------------------
    async def render(
        self,
        store_up: Callable[[], Awaitable[bool]],
        rabbitmq_up: Callable[[], Awaitable[bool]] | None,
        leading: bool,
        head_seq: Callable[[], Awaitable[int]],
    ) -> bytes:
        up = await store_up()
        self.store_up.set(1 if up else 0)
        if rabbitmq_up is not None:
            self.rabbitmq_up.set(1 if await rabbitmq_up() else 0)
        self.leader.set(1 if leading else 0)
        if up:
            try:
                self.chain_head.set(await head_seq())
            except Exception:  # the store went away between the two reads: keep the last value
                self.store_up.set(0)
        return generate_latest(self.registry)
