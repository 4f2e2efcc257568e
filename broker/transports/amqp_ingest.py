"""The ingest consumer: RabbitMQ deliveries into the shared batcher, acknowledged when settled.

We never use aio-pika's ``message.process()`` (it rejects without requeue on an exception, which
would drop an accepted message).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

import aiormq
from aio_pika.abc import AbstractChannel, AbstractQueue
from aiormq.abc import DeliveredMessage

from broker.logs import get_logger
from broker.pipeline.batcher import Batcher
from broker.pipeline.ingest import Pipeline
from broker.registry import Registry
from broker.settings import Settings
from broker.stages.outcome import Failed, Outcome
from broker.stages.types import Inbound
from schemas.errors import Unavailable

log = get_logger("sv_broker.amqp")

NO_USER_ID = ""  # publisher value meaning "published without an AMQP user_id"


class AmqpIngest:
    """Consumes the ingest queue into the shared :class:`Batcher`; acknowledges each delivery
    when its batch is settled, and nacks the ``Failed`` ones (counted by x-delivery-limit, then
    dead-lettered).

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
        self.batcher: Batcher[DeliveredMessage] = Batcher(
            pipeline,
            self._settle,
            self._retry,
            batch_max=settings.batch_max,
            in_flight=settings.batches_in_flight,
            linger=settings.batch_linger.total_seconds(),
        )
        self.acks = AckTracker()
        self.consumer_tag: str | None = None
        self._underlay: aiormq.abc.AbstractChannel | None = None

    @property
    def stopping(self) -> asyncio.Event:
        return self.batcher.stopping

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
        self.batcher.put(self._inbound(message), message)

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
        routing_key = getattr(message.delivery, "routing_key", None) or ""
        route = routing_key.split(".", 1)[0]
        return Inbound(
            body=message.body,
            publisher=publisher,
            route_partner=route if route in self.registry.partners else None,
            routing_key=routing_key,
            redelivered=bool(getattr(message.delivery, "redelivered", False)),
            transport="amqp",
        )

    async def run(self) -> None:
        """Batch and process until stopped, then finish what is in flight."""
        await self.batcher.run()

    async def _retry(self, batch: list[DeliveredMessage], exc: Exception) -> bool:
        channel_gone = any(getattr(m.channel, "is_closed", False) for m in batch[:1])
        if self.stopping.is_set() or channel_gone:
            return False  # the deliveries return to the queue with the channel; nothing is lost
        if isinstance(exc, Unavailable):
            # The store or RabbitMQ is down: retry here, holding the deliveries unacknowledged.
            # Not nack: on quorum queues every requeue counts toward x-delivery-limit, so a short
            # outage would dead-letter good messages. Releases are idempotent and audited once.
            return True
        # A bug of ours escaped the pipeline: poison handling (redelivered, then dead-lettered).
        log.error("batch_failed_internally", size=len(batch), error=type(exc).__name__)
        with contextlib.suppress(Exception):
            await self.acks.nack(batch)
        return False

    async def _settle(self, batch: list[DeliveredMessage], outcomes: list[Outcome]) -> None:
        try:
            failed = [m for m, o in zip(batch, outcomes, strict=True) if isinstance(o, Failed)]
            if failed:
                await self.acks.nack(failed)  # counted by x-delivery-limit, then dead-lettered
                batch = [m for m, o in zip(batch, outcomes, strict=True) if not isinstance(o, Failed)]
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
