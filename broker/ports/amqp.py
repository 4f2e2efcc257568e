"""RabbitMQ: topology, confirmed delivery, and the batched ingest consumer (aio-pika).

aio-pika defaults we override on purpose (DESIGN.md): messages are published PERSISTENT;
channels that publish use publisher confirms and ``on_return_raises`` (an unroutable message is
an error, not a silent drop); every publish is ``mandatory`` and wrapped in a timeout, and a
timeout counts as "not confirmed"; we never use ``message.process()`` (it rejects without
requeue on an exception, which would drop an accepted message).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)

from broker.audit.chain import Draft, Kind
from broker.logs import get_logger
from broker.pipeline import Pipeline
from broker.ports.delivery import Delivered
from broker.ports.store import CommitUnit, Store
from broker.registry import Registry
from broker.settings import Settings
from broker.stages.outcome import Inbound, Outcome, Status, sha256_hex
from schemas.canonical import canonicalize
from schemas.errors import Reason

log = get_logger("sv_broker.amqp")

NO_USER_ID = ""  # publisher value meaning "published without an AMQP user_id"


class DeliveryFailed(Exception):
    """A publish was nacked, returned or not confirmed in time: the batch is not acknowledged."""


@dataclass(frozen=True, slots=True)
class Names:
    prefix: str

    @property
    def ingest_exchange(self) -> str:
        return f"{self.prefix}.ingest"

    @property
    def ingest_queue(self) -> str:
        return f"{self.prefix}.ingest"

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.prefix}.dlx"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.prefix}.dead"

    @property
    def deliver_exchange(self) -> str:
        return f"{self.prefix}.deliver"

    def consumer_queue(self, consumer: str) -> str:
        return f"{self.prefix}.consumer.{consumer}"

    @property
    def quarantine_exchange(self) -> str:
        return f"{self.prefix}.quarantine"

    @property
    def quarantine_queue(self) -> str:
        return f"{self.prefix}.quarantine"

    @property
    def receipts_exchange(self) -> str:
        return f"{self.prefix}.receipts"

    def receipts_queue(self, partner: str) -> str:
        return f"{self.prefix}.receipts.{partner}"


@dataclass(frozen=True, slots=True)
class Topology:
    ingest: AbstractExchange
    deliver: AbstractExchange
    quarantine: AbstractExchange
    receipts: AbstractExchange


QUORUM: dict[str, Any] = {"x-queue-type": "quorum"}


async def declare_topology(channel: AbstractChannel, names: Names, registry: Registry, delivery_limit: int) -> Topology:
    """Declare every exchange, queue and binding; idempotent (same arguments every time)."""
    durable = aio_pika.ExchangeType
    dlx = await channel.declare_exchange(names.dead_letter_exchange, durable.FANOUT, durable=True)
    dead = await channel.declare_queue(names.dead_letter_queue, durable=True, arguments=QUORUM)
    await dead.bind(dlx, routing_key="")
    ingest = await channel.declare_exchange(names.ingest_exchange, durable.TOPIC, durable=True)
    ingest_queue = await channel.declare_queue(
        names.ingest_queue,
        durable=True,
        arguments={
            **QUORUM,
            # RabbitMQ 3.10 quorum queues have no default limit: without one, a message that makes
            # the broker fail is redelivered forever (a poison message stalls the partition).
            "x-delivery-limit": delivery_limit,
            "x-dead-letter-exchange": names.dead_letter_exchange,
            # at-least-once dead-lettering: a dead-lettered message is not lost if the DLX target
            # is briefly unavailable; it needs overflow=reject-publish on the source queue.
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        },
    )
    await ingest_queue.bind(ingest, routing_key="#")
    deliver = await channel.declare_exchange(names.deliver_exchange, durable.DIRECT, durable=True)
    for consumer in sorted(registry.consumers):
        queue = await channel.declare_queue(names.consumer_queue(consumer), durable=True, arguments=QUORUM)
        await queue.bind(deliver, routing_key=consumer)
    quarantine = await channel.declare_exchange(names.quarantine_exchange, durable.FANOUT, durable=True)
    quarantine_queue = await channel.declare_queue(names.quarantine_queue, durable=True, arguments=QUORUM)
    await quarantine_queue.bind(quarantine, routing_key="")
    receipts = await channel.declare_exchange(names.receipts_exchange, durable.DIRECT, durable=True)
    for partner in sorted(registry.partners):
        queue = await channel.declare_queue(names.receipts_queue(partner), durable=True, arguments=QUORUM)
        await queue.bind(receipts, routing_key=partner)
    return Topology(ingest=ingest, deliver=deliver, quarantine=quarantine, receipts=receipts)


def _persistent(body: bytes, *, message_id: str | None, headers: Mapping[str, Any] | None = None) -> aio_pika.Message:
    return aio_pika.Message(
        body,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        content_type="application/json",
        message_id=message_id,
        headers=dict(headers or {}),
        timestamp=datetime.now(UTC),
    )


class AmqpDelivery:
    """Publishes records, quarantine and receipts with confirms; returns only when all are confirmed."""

    stores_records = False

    def __init__(self, topology: Topology, registry: Registry, timeout: float) -> None:
        self.topology = topology
        self.registry = registry
        self.timeout = timeout

    async def publish(self, exchange: AbstractExchange, message: aio_pika.Message, routing_key: str) -> None:
        try:
            await exchange.publish(message, routing_key, mandatory=True, timeout=self.timeout)
        except TimeoutError as exc:
            raise DeliveryFailed(f"publish to {exchange.name} not confirmed in {self.timeout}s") from exc
        except aio_pika.exceptions.DeliveryError as exc:
            raise DeliveryFailed(f"publish to {exchange.name} was returned or nacked") from exc

    def receipt_message(self, outcome: Outcome, at: datetime) -> aio_pika.Message | None:
        if outcome.receipt_to is None or outcome.receipt_to not in self.registry.partners:
            return None
        return _persistent(canonicalize(outcome.receipt(at)), message_id=outcome.message_id)

    async def deliver(self, items: Sequence[Delivered]) -> None:
        publishes = []
        for item in items:
            outcome = item.outcome
            for release in outcome.releases:
                message = _persistent(
                    item.record_bodies[release.record_id],
                    message_id=release.record_id,
                    headers={"agreement_id": release.agreement_id, "event_type": outcome.event_type or ""},
                )
                publishes.append(self.publish(self.topology.deliver, message, release.consumer))
            if outcome.status is Status.REJECTED:
                keep = outcome.reason != Reason.DIRECT_IDENTIFIER.value  # see stages.outcome.quarantine_item
                message = _persistent(
                    item.inbound.body if keep else b"",
                    message_id=outcome.message_id,
                    headers={
                        "reason": outcome.reason or "",
                        "reason_message": outcome.message or "",
                        "body_sha256": outcome.body_sha256,
                        "source": outcome.source or "",
                        "verified": outcome.verified,
                        "body_kept": keep,
                    },
                )
                publishes.append(self.publish(self.topology.quarantine, message, ""))
            receipt = self.receipt_message(outcome, item.at)
            if receipt is not None and outcome.receipt_to is not None:
                publishes.append(self.publish(self.topology.receipts, receipt, outcome.receipt_to))
        if publishes:
            results = await asyncio.gather(*publishes, return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                raise DeliveryFailed(f"{len(errors)} of {len(results)} publishes not confirmed") from errors[0]


class AmqpIngest:
    """Consumes the ingest queue in batches: process, then ack (or nack) each delivery."""

    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        channel: AbstractChannel,
        queue: AbstractQueue,
        registry: Registry,
        user_map: Mapping[str, str],
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.channel = channel
        self.queue = queue
        self.registry = registry
        self.user_map = user_map
        self.buffer: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self.consumer_tag: str | None = None
        self.stopping = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()

    async def start(self) -> None:
        self.consumer_tag = await self.queue.consume(self.buffer.put, no_ack=False)

    async def stop_consuming(self) -> None:
        self.stopping.set()
        if self.consumer_tag is not None:
            with contextlib.suppress(Exception):
                await self.queue.cancel(self.consumer_tag)
            self.consumer_tag = None

    def _inbound(self, message: AbstractIncomingMessage) -> Inbound:
        user_id = message.user_id
        if user_id:
            publisher: str | None = self.user_map.get(user_id, user_id)
        else:
            publisher = NO_USER_ID if self.settings.check_user_id else None
        if not self.settings.check_user_id:
            publisher = None
        route = (message.routing_key or "").split(".", 1)[0]
        return Inbound(
            body=message.body,
            publisher=publisher,
            route_partner=route if route in self.registry.partners else None,
            redelivered=bool(message.redelivered),
            transport="amqp",
        )

    async def run(self) -> None:
        max_batch = max(1, self.settings.prefetch)
        while not (self.stopping.is_set() and self.buffer.empty()):
            try:
                first = await asyncio.wait_for(self.buffer.get(), timeout=0.5)
            except TimeoutError:
                await self.pipeline.flush()
                continue
            self.idle.clear()
            batch = [first]
            while len(batch) < max_batch and not self.buffer.empty():
                batch.append(self.buffer.get_nowait())
            try:
                await self._handle(batch)
            finally:
                self.idle.set()
        await self.pipeline.flush()

    async def _handle(self, batch: list[AbstractIncomingMessage]) -> None:
        try:
            outcomes = await self.pipeline.process([self._inbound(m) for m in batch])
        except Exception as exc:
            # I/O failure of ours (store, publish): nothing is acknowledged, all is redelivered.
            log.warning("batch_failed", size=len(batch), error=type(exc).__name__, detail=str(exc)[:200])
            for message in batch:
                with contextlib.suppress(Exception):
                    await message.nack(requeue=True)
            await asyncio.sleep(0.5)
            return
        failed = [m for m, o in zip(batch, outcomes, strict=True) if o.status is Status.FAILED]
        try:
            for message in failed:
                await message.nack(requeue=True)  # counted by x-delivery-limit, then dead-lettered
            if not failed:
                await batch[-1].ack(multiple=True)  # one frame acknowledges the whole batch
            else:
                for message, outcome in zip(batch, outcomes, strict=True):
                    if outcome.status is not Status.FAILED:
                        await message.ack()
        except Exception as exc:  # channel lost: the deliveries come back; releases are idempotent
            log.warning("ack_failed", size=len(batch), error=type(exc).__name__)


class DeadLetterAuditor:
    """Consumes the dead-letter queue: audits each dead-lettered message, moves it to quarantine
    (reason ``dead_lettered``) with a receipt to its publisher, then acknowledges it."""

    def __init__(
        self,
        store: Store,
        delivery: AmqpDelivery,
        topology: Topology,
        queue: AbstractQueue,
        user_map: Mapping[str, str],
    ) -> None:
        self.store = store
        self.delivery = delivery
        self.topology = topology
        self.queue = queue
        self.user_map = user_map
        self.consumer_tag: str | None = None

    async def start(self) -> None:
        self.consumer_tag = await self.queue.consume(self._on_message, no_ack=False)

    async def stop(self) -> None:
        if self.consumer_tag is not None:
            with contextlib.suppress(Exception):
                await self.queue.cancel(self.consumer_tag)
            self.consumer_tag = None

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        body_hash = sha256_hex(message.body)
        headers = message.headers or {}
        count = headers.get("x-delivery-count")
        publisher = self.user_map.get(message.user_id, message.user_id) if message.user_id else None
        times = str(count) if isinstance(count, int) else "several"
        sentence = (
            f"The broker failed to process this message {times} times; "
            "it was set aside for the operators and no record was released."
        )
        outcome = Outcome(
            Status.REJECTED,
            body_hash,
            source=publisher,
            message_id=message.message_id,
            reason="dead_lettered",
            message=sentence,
            receipt_to=publisher,
        )
        try:
            await self.store.commit(
                CommitUnit(
                    drafts=[
                        Draft(
                            Kind.DEAD_LETTERED,
                            {
                                "body_sha256": body_hash,
                                "source": publisher,
                                "amqp_message_id": message.message_id,
                                "routing_key": message.routing_key,
                                "delivery_count": count if isinstance(count, int) else None,
                            },
                        )
                    ]
                )
            )
            q_message = _persistent(
                message.body,
                message_id=message.message_id,
                headers={"reason": "dead_lettered", "reason_message": sentence, "body_sha256": body_hash},
            )
            await self.delivery.publish(self.topology.quarantine, q_message, "")
            receipt = self.delivery.receipt_message(outcome, datetime.now(UTC))
            if receipt is not None and publisher is not None:
                await self.delivery.publish(self.topology.receipts, receipt, publisher)
            await message.ack()
        except Exception as exc:
            log.warning("dead_letter_audit_failed", error=type(exc).__name__)
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
