"""Confirmed delivery over RabbitMQ: records to consumers' queues, quarantine, receipts.

aio-pika defaults we override on purpose (DESIGN.md): messages are published PERSISTENT;
channels that publish use publisher confirms and ``on_return_raises`` (an unroutable message is
an error, not a silent drop); every publish is ``mandatory`` and under a deadline, and a
timeout counts as "not confirmed".
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from datetime import datetime

import aiormq
from aio_pika.abc import AbstractChannel
from pamqp.commands import Basic

from broker.errors import DeliveryFailed
from broker.ports.delivery import Deliverable, WithAudit
from broker.ports.rabbitmq.errors import bus_errors
from broker.ports.rabbitmq.fast_publish import (
    Pending,
    Publish,
    check_channel_internals,
    forget_publishes,
    publish_frames,
)
from broker.ports.rabbitmq.topology import Topology
from broker.registry import Registry
from broker.stages.outcome import Rejected, Settled, receipt
from schemas.messages import Receipt, quarantine_headers, receipts_message


class AmqpDelivery:
    """Publishes records, quarantine and receipts with confirms; returns only when all are confirmed.

    A batch's publishes are written as one frame buffer on the aiormq channel under aio-pika
    (:func:`publish_frames`) and their confirms awaited together, under one deadline.
    """

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
        with bus_errors("opening the publishing channel"):
            check_channel_internals(await self.channel.get_underlay_channel())

    def with_audit(self, batch: Deliverable) -> WithAudit:
        """Nothing rides in the audit transaction: records are published after it, confirmed."""
        return WithAudit()

    async def publish_all(self, publishes: Sequence[Publish]) -> None:
        if not publishes:
            return
        if self.channel.is_closed:
            raise DeliveryFailed("the publishing channel is closed")
        with bus_errors("opening the publishing channel"):
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
                with bus_errors("publishing"):
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

    def receipts(self, outcomes: Sequence[Settled], at: datetime) -> list[Publish]:
        """One receipts message per partner per batch: ``{"receipts": [receipt, ...]}``.

        Batched because a receipt per message was a third of all publishes (each costs a frame,
        a confirm and ~100 us of client CPU); partners read them in bulk anyway.
        """
        by_partner: dict[str, list[Receipt]] = {}
        for outcome in outcomes:
            if outcome.receipt_to is not None and outcome.receipt_to in self.registry.partners:
                by_partner.setdefault(outcome.receipt_to, []).append(receipt(outcome, at))
        return [
            Publish(
                self.topology.receipts.name,
                partner,
                receipts_message(items),
                self.unique_id(f"receipts:{partner}"),
            )
            for partner, items in by_partner.items()
        ]

    def quarantine(self, outcome: Rejected) -> Publish:
        """The refused message, with its reason in headers; its body only when keeping it is lawful."""
        keep = outcome.body_kept
        return Publish(
            self.topology.quarantine.name,
            "",
            outcome.inbound.body if keep else b"",
            self.unique_id("quarantine"),
            dict(
                quarantine_headers(
                    reason=outcome.reason.value,
                    reason_message=outcome.message,
                    body_sha256=outcome.body_sha256,
                    source=outcome.source,
                    message_id=outcome.message_id,
                    verified=outcome.verified,
                    body_kept=keep,
                )
            ),
        )

    async def deliver(self, batch: Deliverable) -> None:
        # Records carry no headers: everything a consumer needs is in the body, and every
        # property costs encoding time on the hot path.
        publishes = [
            Publish(self.topology.deliver.name, record.release.consumer, record.body, record.release.record_id)
            for outcome in batch.accepted
            for record in outcome.records
        ]
        publishes.extend(self.quarantine(outcome) for outcome in batch.rejected)
        publishes.extend(self.receipts(batch.receipts, batch.at))
        await self.publish_all(publishes)
