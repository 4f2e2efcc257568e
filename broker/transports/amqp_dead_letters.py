"""The dead-letter consumer: hands each dead-lettered message to its flow, then acknowledges it."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from broker.logs import get_logger
from broker.pipeline.dead_letters import DeadLetter, DeadLetterFlow

log = get_logger("sv_broker.amqp")


class DeadLetterConsumer:
    """Consumes the dead-letter queue: each message goes through :class:`DeadLetterFlow`, then is
    acknowledged; if the flow fails it is requeued (retried), never dropped."""

    def __init__(self, flow: DeadLetterFlow, queue: AbstractQueue, user_map: Mapping[str, str]) -> None:
        self.flow = flow
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
        count = (message.headers or {}).get("x-delivery-count")
        letter = DeadLetter(
            body=message.body,
            publisher=self.user_map.get(message.user_id, message.user_id) if message.user_id else None,
            amqp_message_id=message.message_id,
            routing_key=message.routing_key or "",
            delivery_count=count if isinstance(count, int) else None,
        )
        try:
            await self.flow.handle(letter)
            await message.ack()
        except Exception as exc:
            log.warning("dead_letter_audit_failed", error=type(exc).__name__)
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
