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
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)
from aiormq.abc import ChannelFrame, DeliveredMessage
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from broker.audit.chain import Draft, Kind
from broker.logs import get_logger
from broker.pipeline import Pipeline
from broker.ports.delivery import Delivered
from broker.ports.store import CommitUnit, Store
from broker.registry import Registry
from broker.settings import Settings
from broker.stages.outcome import Inbound, Outcome, Status, sha256_hex
from schemas.canonical import canonicalize_plain
from schemas.errors import Reason

# The names and the topology are the contract's (schemas/topology.py); re-exported here in the
# "X as X" form that mypy --strict counts as an export, for the broker's modules that import them.
from schemas.topology import QUORUM as QUORUM  # noqa: PLC0414
from schemas.topology import Names as Names  # noqa: PLC0414
from schemas.topology import TopologySpec as TopologySpec  # noqa: PLC0414
from schemas.topology import topology_spec as contract_topology_spec

log = get_logger("sv_broker.amqp")

NO_USER_ID = ""  # publisher value meaning "published without an AMQP user_id"


class DeliveryFailed(Exception):
    """A publish was nacked, returned or not confirmed in time: the batch is not acknowledged."""


@dataclass(frozen=True, slots=True)
class Topology:
    ingest: AbstractExchange
    deliver: AbstractExchange
    quarantine: AbstractExchange
    receipts: AbstractExchange


def topology_spec(names: Names, registry: Registry, delivery_limit: int) -> TopologySpec:
    """The contract's topology (``schemas.topology``) for this registry's partners and consumers."""
    return contract_topology_spec(
        names, partners=registry.partners, consumers=registry.consumers, delivery_limit=delivery_limit
    )


async def declare_topology(channel: AbstractChannel, names: Names, registry: Registry, delivery_limit: int) -> Topology:
    """Declare every exchange, queue and binding; idempotent (same arguments every time)."""
    spec = topology_spec(names, registry, delivery_limit)
    exchanges = {
        name: await channel.declare_exchange(name, aio_pika.ExchangeType(kind), durable=True)
        for name, kind in spec.exchanges
    }
    queues = {name: await channel.declare_queue(name, durable=True, arguments=args) for name, args in spec.queues}
    for exchange, queue, key in spec.bindings:
        await queues[queue].bind(exchanges[exchange], routing_key=key)
    return Topology(
        ingest=exchanges[names.ingest_exchange],
        deliver=exchanges[names.deliver_exchange],
        quarantine=exchanges[names.quarantine_exchange],
        receipts=exchanges[names.receipts_exchange],
    )


@dataclass(frozen=True, slots=True)
class Publish:
    exchange: str
    routing_key: str
    body: bytes
    message_id: str  # unique per publish: aiormq matches a basic.return to its publish by it
    headers: dict[str, Any] | None = None


# What the batched publisher uses of aiormq's channel; checked when a delivery is set up, so an
# aiormq that changed them fails at start-up, loudly, not on the first release.
_CHANNEL_INTERNALS = ("lock", "delivery_tag", "confirmations", "message_id_delivery_tag", "write_queue", "number")


def check_channel_internals(channel: object) -> None:
    missing = [name for name in _CHANNEL_INTERNALS if not hasattr(channel, name)]
    if missing or not callable(getattr(channel, "_split_body", None)):
        raise DeliveryFailed(
            f"aiormq {getattr(aiormq, '__version__', '?')} lacks what the batched publisher uses: "
            f"{', '.join(missing) or '_split_body'} (pin aiormq as pyproject.toml does)"
        )


Pending = tuple[int, str, "asyncio.Future[Any]"]  # delivery tag, message id, confirmation


async def publish_frames(channel: aiormq.Channel, publishes: Sequence[Publish]) -> list[Pending]:
    """Queue every publish of a batch as ONE write; return each one's tag and confirmation future.

    The same frames, delivery tags and confirmation futures as ``Channel.basic_publish``, taken
    under the same channel lock, but a batch costs one lock, one queued write and one syscall
    instead of a task, a timeout, a lock and a write per publish: measured 73 -> 24 us of client
    CPU per confirmed publish. Confirms, nacks, returns (``mandatory``) and a closed channel
    resolve these futures exactly as they would aiormq's own (the futures are the channel's).
    """
    pending: list[Pending] = []
    frames: list[Any] = []
    async with channel.lock:
        first = channel.delivery_tag
        try:
            for item in publishes:
                channel.delivery_tag += 1
                tag = channel.delivery_tag
                future = channel.create_future()
                channel.confirmations[tag] = future
                # A basic.return names the message by its message_id: it must find this publish.
                channel.message_id_delivery_tag[item.message_id] = tag
                pending.append((tag, item.message_id, future))
                properties = Basic.Properties(
                    delivery_mode=2,  # persistent: survives a RabbitMQ restart
                    content_type="application/json",
                    message_id=item.message_id,
                    headers=item.headers,
                )
                # mandatory: unroutable is an error (a return), never a silent drop
                frames.append(Basic.Publish(exchange=item.exchange, routing_key=item.routing_key, mandatory=True))
                frames.append(ContentHeader(properties=properties, body_size=len(item.body)))
                frames.extend(channel._split_body(item.body))
            await channel.write_queue.put(ChannelFrame.marshall(channel_number=channel.number, frames=frames))
        except BaseException:
            # Nothing reached the wire: give the delivery tags back, as basic_publish does.
            channel.delivery_tag = first
            forget_publishes(channel, pending, sent=False)
            raise
    return pending


def forget_publishes(channel: aiormq.Channel, pending: Sequence[Pending], *, sent: bool = True) -> None:
    """Drop what aiormq keeps for these publishes, once their batch is settled or abandoned.

    Sent ones keep their ``confirmations`` entry until RabbitMQ's confirm arrives (aiormq pops
    it then, and ignores a cancelled future): a ``multiple`` ack whose top tag had no entry
    would be thrown away whole by aiormq, unconfirming other batches' publishes with it.
    """
    for tag, message_id, future in pending:
        future.cancel()  # no-op for the settled ones
        if not sent:
            channel.confirmations.pop(tag, None)
        if channel.message_id_delivery_tag.get(message_id) == tag:
            del channel.message_id_delivery_tag[message_id]


class AmqpDelivery:
    """Publishes records, quarantine and receipts with confirms; returns only when all are confirmed.

    A batch's publishes are written as one frame buffer on the aiormq channel under aio-pika
    (:func:`publish_frames`) and their confirms awaited together, under one deadline.
    """

    stores_records = False

    def __init__(self, channel: AbstractChannel, topology: Topology, registry: Registry, timeout: float) -> None:
        self.channel = channel
        self.topology = topology
        self.registry = registry
        self.timeout = timeout
        # AMQP message ids of receipts and quarantine copies: unique among everything in flight
        # on the channel, because a basic.return is matched to its publish by message id alone.
        self._serial = itertools.count(1)

    def unique_id(self, kind: str) -> str:
        return f"{kind}:{next(self._serial)}"

    async def check(self) -> None:
        """At start-up: the aiormq underneath has what :func:`publish_frames` uses."""
        check_channel_internals(await self.channel.get_underlay_channel())

    async def publish_all(self, publishes: Sequence[Publish]) -> None:
        if not publishes:
            return
        if self.channel.is_closed:
            raise DeliveryFailed("the publishing channel is closed")
        underlay = await self.channel.get_underlay_channel()
        if not isinstance(underlay, aiormq.Channel):
            raise DeliveryFailed(f"unexpected channel type {type(underlay).__name__}")
        if underlay.is_closed:
            raise DeliveryFailed("the publishing channel is closed")
        pending: list[Pending] = []
        try:
            # One deadline for the whole batch, sending included (the channel lock, a full write
            # queue); a timeout counts as "not confirmed".
            async with asyncio.timeout(self.timeout):
                pending = await publish_frames(underlay, publishes)
                results = await asyncio.gather(*(future for _, _, future in pending), return_exceptions=True)
        except TimeoutError as exc:
            raise DeliveryFailed(f"publishes not confirmed within {self.timeout}s") from exc
        finally:
            forget_publishes(underlay, pending)
        errors = [r for r in results if not isinstance(r, Basic.Ack)]
        if errors:
            # A nack, a return or a lost channel: all mean "not confirmed".
            first = errors[0]
            raise DeliveryFailed(f"{len(errors)} of {len(results)} publishes not confirmed") from (
                first if isinstance(first, BaseException) else None
            )

    def receipts(self, outcomes: Sequence[Outcome], at: datetime) -> list[Publish]:
        """One receipts message per partner per batch: ``{"receipts": [receipt, ...]}``.

        Batched because a receipt per message was a third of all publishes (each costs a frame,
        a confirm and ~100 us of client CPU); partners read them in bulk anyway.
        """
        by_partner: dict[str, list[dict[str, Any]]] = {}
        for outcome in outcomes:
            if outcome.receipt_to is not None and outcome.receipt_to in self.registry.partners:
                by_partner.setdefault(outcome.receipt_to, []).append(outcome.receipt(at))
        return [
            Publish(
                self.topology.receipts.name,
                partner,
                canonicalize_plain({"receipts": items}),
                self.unique_id(f"receipts:{partner}"),
            )
            for partner, items in by_partner.items()
        ]

    async def deliver(self, items: Sequence[Delivered]) -> None:
        publishes: list[Publish] = []
        for item in items:
            outcome = item.outcome
            for release in outcome.releases:
                # No headers: everything a consumer needs is in the body, and every property
                # costs encoding time on the hot path.
                publishes.append(
                    Publish(
                        self.topology.deliver.name,
                        release.consumer,
                        item.record_bodies[release.record_id],
                        release.record_id,
                    )
                )
            if outcome.status is Status.REJECTED:
                keep = outcome.reason != Reason.DIRECT_IDENTIFIER.value  # see stages.outcome.quarantine_item
                publishes.append(
                    Publish(
                        self.topology.quarantine.name,
                        "",
                        item.inbound.body if keep else b"",
                        self.unique_id("quarantine"),
                        {
                            "reason": outcome.reason or "",
                            "reason_message": outcome.message or "",
                            "body_sha256": outcome.body_sha256,
                            "source": outcome.source or "",
                            "message_id": outcome.message_id or "",
                            "verified": outcome.verified,
                            "body_kept": keep,
                        },
                    )
                )
        if items:
            publishes.extend(self.receipts([item.outcome for item in items], items[0].at))
        await self.publish_all(publishes)


class AmqpIngest:
    """Consumes the ingest queue in batches: process, then acknowledge (or nack) each delivery.

    Consumes on the aiormq channel under aio-pika directly: aio-pika's per-delivery wrapper (an
    ``IncomingMessage`` and one more task per message) was a measurable share of the broker's CPU.
    The robust channel's reopen callback re-registers the consumer after a reconnect.
    """

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
        self.buffer: asyncio.Queue[DeliveredMessage] = asyncio.Queue()
        self.acks = AckTracker()
        self.consumer_tag: str | None = None
        self._underlay: aiormq.abc.AbstractChannel | None = None
        self.stopping = asyncio.Event()

    async def start(self) -> None:
        await self._consume()
        reopen = getattr(self.channel, "reopen_callbacks", None)
        if reopen is not None:
            reopen.add(self._on_reopen)

    async def _consume(self) -> None:
        underlay = await self.channel.get_underlay_channel()
        ok = await underlay.basic_consume(self.queue.name, self._on_delivery, no_ack=False)
        self._underlay, self.consumer_tag = underlay, ok.consumer_tag

    async def _on_reopen(self, *_: object) -> None:
        # After a connection loss, deliveries that were not acknowledged come back from RabbitMQ;
        # releases are idempotent (same record ids) and audited once, so nothing doubles.
        if not self.stopping.is_set():
            await self._consume()
            log.info("ingest_reconsumed")

    async def _on_delivery(self, message: DeliveredMessage) -> None:
        self.acks.delivered(message)
        self.buffer.put_nowait(message)

    async def stop_consuming(self) -> None:
        self.stopping.set()
        if self.consumer_tag is not None and self._underlay is not None:
            with contextlib.suppress(Exception):
                await self._underlay.basic_cancel(self.consumer_tag)
            self.consumer_tag = None

    def _inbound(self, message: DeliveredMessage) -> Inbound:
        user_id = message.header.properties.user_id
        publisher: str | None = None
        if self.settings.check_user_id:
            publisher = self.user_map.get(user_id, user_id) if user_id else NO_USER_ID
        route = (getattr(message.delivery, "routing_key", None) or "").split(".", 1)[0]
        return Inbound(
            body=message.body,
            publisher=publisher,
            route_partner=route if route in self.registry.partners else None,
            redelivered=bool(getattr(message.delivery, "redelivered", False)),
            transport="amqp",
        )

    async def run(self) -> None:
        """Take batches off the buffer and process up to ``batches_in_flight`` of them at once, so
        one batch's CPU work overlaps the previous batch's audit fsync and publish confirms."""
        max_batch = max(1, self.settings.batch_max)
        linger = self.settings.batch_linger.total_seconds()
        slots = asyncio.Semaphore(self.settings.batches_in_flight)
        tasks: set[asyncio.Task[None]] = set()
        while not (self.stopping.is_set() and self.buffer.empty()):
            try:
                first = await asyncio.wait_for(self.buffer.get(), timeout=0.5)
            except TimeoutError:
                if not tasks:
                    await self.pipeline.flush()
                continue
            await slots.acquire()
            if linger and tasks:
                # Another batch is in flight, so this one would start small: wait a moment for
                # more. Per batch there is a commit, a receipts publish and an ack whatever its
                # size; at 500 msg/s this cut the broker's CPU by a fifth at no cost in latency.
                await asyncio.sleep(linger)
            batch = [first]
            while len(batch) < max_batch and not self.buffer.empty():
                batch.append(self.buffer.get_nowait())
            task = asyncio.create_task(self._handle(batch))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            task.add_done_callback(lambda _t: slots.release())
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.pipeline.flush()

    async def _handle(self, batch: list[DeliveredMessage]) -> None:
        inbounds = [self._inbound(m) for m in batch]
        delay = 0.25
        while True:
            try:
                outcomes = await self.pipeline.process(inbounds)
                break
            except Exception as exc:
                # An I/O failure of ours (store, publish not confirmed): retry here, holding the
                # deliveries unacknowledged. Not nack: on quorum queues every requeue counts toward
                # x-delivery-limit, so a short outage would dead-letter good messages. Releases are
                # idempotent and audited once, so a retry cannot double anything.
                log.warning("batch_failed", size=len(batch), error=type(exc).__name__, retry_in=delay)
                channel_gone = any(getattr(m.channel, "is_closed", False) for m in batch[:1])
                if self.stopping.is_set() or channel_gone:
                    return  # the deliveries return to the queue with the channel; nothing is lost
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        try:
            failed = [m for m, o in zip(batch, outcomes, strict=True) if o.status is Status.FAILED]
            if failed:
                await self.acks.nack(failed)  # counted by x-delivery-limit, then dead-lettered
                batch = [m for m, o in zip(batch, outcomes, strict=True) if o.status is not Status.FAILED]
            await self.acks.done(batch)
        except Exception as exc:  # channel lost: the deliveries come back; releases are idempotent
            log.warning("ack_failed", size=len(batch), error=type(exc).__name__)


class AckTracker:
    """Acknowledges finished deliveries with as few frames as possible, never one too early.

    Batches finish out of order when several are in flight, so a plain ``multiple`` ack of a
    batch's last tag could acknowledge an earlier, unfinished batch (and lose it on a crash). This
    keeps the delivery tags not yet finished and acknowledges ``multiple`` only up to the lowest
    of them: one frame per contiguous run of finished work.
    """

    def __init__(self) -> None:
        self.channel: object | None = None
        self.pending: set[int] = set()  # delivered, not finished
        self.finished: set[int] = set()  # finished, not yet acknowledged

    def _current(self, message: DeliveredMessage) -> bool:
        return message.channel is self.channel and message.delivery_tag is not None

    def delivered(self, message: DeliveredMessage) -> None:
        if message.channel is not self.channel:
            # A new channel after a reconnect numbers its deliveries from 1 again; what was
            # outstanding on the old one is redelivered by RabbitMQ anyway.
            self.channel = message.channel
            self.pending.clear()
            self.finished.clear()
        if message.delivery_tag is not None:
            self.pending.add(message.delivery_tag)

    async def nack(self, messages: list[DeliveredMessage]) -> None:
        """Return deliveries to the queue (settled now: a later ``multiple`` ack must not cover
        them, and it cannot: RabbitMQ forgets a tag once it is nacked)."""
        for message in messages:
            if self._current(message):
                assert message.delivery_tag is not None
                self.pending.discard(message.delivery_tag)
                with contextlib.suppress(Exception):
                    await message.channel.basic_nack(message.delivery_tag, requeue=True)
        await self._flush()

    async def done(self, batch: list[DeliveredMessage]) -> None:
        for message in batch:
            if self._current(message):
                assert message.delivery_tag is not None
                self.pending.discard(message.delivery_tag)
                self.finished.add(message.delivery_tag)
        await self._flush()

    async def _flush(self) -> None:
        if not self.finished or self.channel is None:
            return
        low = min(self.pending) if self.pending else None
        ready = [tag for tag in self.finished if low is None or tag < low]
        if not ready:
            return
        top = max(ready)
        self.finished.difference_update(ready)
        # multiple=True settles every outstanding tag <= top: all of them are finished (nacked
        # ones were settled already, and RabbitMQ no longer counts them as outstanding).
        channel: Any = self.channel
        await channel.basic_ack(top, multiple=True)


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
            publishes = [
                Publish(
                    self.topology.quarantine.name,
                    "",
                    message.body,
                    self.delivery.unique_id("quarantine:dead"),
                    {"reason": "dead_lettered", "reason_message": sentence, "body_sha256": body_hash},
                )
            ]
            publishes.extend(self.delivery.receipts([outcome], datetime.now(UTC)))
            await self.delivery.publish_all(publishes)
            await message.ack()
        except Exception as exc:
            log.warning("dead_letter_audit_failed", error=type(exc).__name__)
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
