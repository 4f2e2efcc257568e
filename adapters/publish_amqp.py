"""Publishing to the broker's RabbitMQ ingest exchange, with publisher confirms and a window.

Every choice here answers "could a row be lost or mis-attributed?":

* ``delivery_mode=2`` (persistent) and publisher confirms: a row is recorded as sent only after
  RabbitMQ confirmed it is on the (quorum, replicated) ingest queue, never on ``write()``.
* ``mandatory`` with returns raised: a message no queue would take (wrong routing key, the
  broker's queue missing) is an error, not a silent drop.
* ``user_id`` = the login user: RabbitMQ refuses a publish whose user_id differs from the
  connection's user, so the broker can tie each message to the partner's own account (one
  partner cannot publish as another: DESIGN.md, RabbitMQ topology).
* Nothing is declared: the exchange is published to by name (what aio-pika's
  ``get_exchange(ensure=False)`` amounts to). The topology is the broker's, and a partner account
  has no configure permission. A missing exchange closes the channel with NOT_FOUND, reported so.
* A plain (not robust) connection: after a reconnect the fate of in-flight publishes is unknown;
  stopping and letting the re-run resend them (the broker dedups) is simpler and as safe.
* Up to ``window`` publishes in flight: one confirm round trip per message would cap a bulk
  import at a few hundred rows a second.
* aiormq (under aio-pika) directly, for two measured reasons (``bench/bench_adapter.py``): no
  per-message aio-pika ``Message`` object and timer (as the broker's own publisher does), and
  its ``transport_factory``, through which the connection keeps Nagle's algorithm on
  (:class:`CoalescingTransport`); aio-pika does not pass that parameter through.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from typing import Any
from urllib.parse import unquote, urlsplit

import aiormq
import aiormq.abc
from aiormq.connection import TCPTransportFactory, TLSTransportFactory, TransportFactory
from pamqp.commands import Basic
from yarl import URL

from adapters.sink import OnResult, Outgoing, Result, Verdict
from schemas.topology import Names, ingest_routing_key

CONTENT_TYPE = "application/cloudevents+json"


def login_user(url: str) -> str | None:
    """The user name in an AMQP URL (None when the URL has none, e.g. TLS client certificates)."""
    user = urlsplit(url).username
    return unquote(user) if user else None


def redact(url: str) -> str:
    """The URL without its password, for messages and logs (invariant: no secrets in logs)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = f"{unquote(parts.username)}@" if parts.username else ""
    return f"{parts.scheme}://{user}{host}{parts.path or '/'}"


class CoalescingTransport(TransportFactory):
    """The usual TCP (or TLS) connection, with Nagle's algorithm left on (TCP_NODELAY off).

    asyncio sets TCP_NODELAY, so each publish (~1 KB) leaves as its own TCP segment with its own
    send path through the kernel, on both ends. With Nagle on, publishes made while earlier ones
    are unacknowledged coalesce into full segments: on the benchmark machine that roughly halved
    the publishing CPU, for both the adapter and RabbitMQ. The cost is latency only at the tail
    (a last small write may wait for the ACK of the previous one), and a bulk import has no use
    for per-message latency; throughput is what decides whether a partner's nightly file is done.
    """

    def __init__(self, url: str) -> None:
        self.inner: TransportFactory = TLSTransportFactory() if url.startswith("amqps") else TCPTransportFactory()

    async def create(self, url: URL, **kwargs: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await self.inner.create(url, **kwargs)
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
        return reader, writer


class AmqpSink:
    """``window`` long-lived publisher tasks, each publishing one message and awaiting its confirm
    at a time, fed from a short queue: a task per message (plus a semaphore) cost ~20% more CPU per
    row, and the push process's CPU is what bounds a bulk import (``bench/bench_adapter.py``)."""

    transport = "amqp"

    def __init__(
        self,
        url: str,
        prefix: str,
        partner: str,
        event_type: str,
        on_result: OnResult,
        *,
        window: int = 256,
        user_id: str | None = None,
        confirm_timeout: float = 30.0,
    ) -> None:
        self.url = url
        self.names = Names(prefix)
        self.routing_key = ingest_routing_key(partner, event_type)
        self.on_result = on_result
        self.window = max(1, window)
        self.user_id = user_id
        self.confirm_timeout = confirm_timeout
        self.description = f"{redact(url)} exchange {self.names.ingest_exchange!r} routing key {self.routing_key!r}"
        self._broken: str | None = None
        self._connection: aiormq.abc.AbstractConnection | None = None
        self._underlay: aiormq.Channel | None = None
        self._exchange = self.names.ingest_exchange
        self._queue: asyncio.Queue[Outgoing | None] = asyncio.Queue(maxsize=max(8, self.window // 8))
        self._workers: list[asyncio.Task[None]] = []
        self._last_progress = time.monotonic()

    @property
    def broken(self) -> str | None:
        return self._broken

    async def open(self) -> None:
        try:
            self._connection = await asyncio.wait_for(
                aiormq.connect(self.url, transport_factory=CoalescingTransport(self.url)), timeout=15
            )
            channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        except Exception as exc:
            raise ConnectionError(f"cannot connect to RabbitMQ at {redact(self.url)}: {_describe(exc)}") from None
        if not isinstance(channel, aiormq.Channel):
            raise ConnectionError(f"unexpected channel type {type(channel).__name__}")
        self._underlay = channel
        self._workers = [asyncio.create_task(self._worker()) for _ in range(self.window)]

    async def send(self, item: Outgoing) -> None:
        if self._broken is not None:
            raise ConnectionError(self._broken)
        if not self._queue.full():
            self._queue.put_nowait(item)
            return
        # Every publisher is waiting for a confirm: waiting this long means RabbitMQ stopped confirming.
        try:
            async with asyncio.timeout(self.confirm_timeout):
                await self._queue.put(item)
        except TimeoutError:
            self._break(f"RabbitMQ confirmed nothing for {self.confirm_timeout:.0f} s")
            raise ConnectionError(self._broken) from None

    async def _worker(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            await self._publish(item)

    async def _publish(self, item: Outgoing) -> None:
        reason = ""
        try:
            assert self._underlay is not None
            if self._broken is not None:
                raise ConnectionError(self._broken)
            properties = Basic.Properties(
                delivery_mode=2,
                content_type=CONTENT_TYPE,
                message_id=item.message_id,
                user_id=self.user_id,
            )
            confirmation = await self._underlay.basic_publish(
                item.body,
                exchange=self._exchange,
                routing_key=self.routing_key,
                properties=properties,
                mandatory=True,
                wait=False,
            )
            if not isinstance(confirmation, Basic.Ack):
                reason = f"RabbitMQ did not accept it ({type(confirmation).__name__})"
        except aiormq.exceptions.PublishError:
            reason = f"RabbitMQ returned it: no queue takes routing key {self.routing_key!r} (is the broker set up?)"
        except asyncio.CancelledError:
            self.on_result(Result(item, Verdict.FAILED, "not_confirmed", self._broken or "stopped before a confirm"))
            raise
        except Exception as exc:
            self._break(f"RabbitMQ closed the channel: {_describe(self._close_reason() or exc)}")
            reason = self._broken or _describe(exc)
        self._last_progress = time.monotonic()
        if reason:
            self.on_result(Result(item, Verdict.FAILED, "not_confirmed", reason))
        else:
            self.on_result(Result(item, Verdict.CONFIRMED))

    def _close_reason(self) -> BaseException | None:
        """Why RabbitMQ closed the channel (NOT_FOUND, ACCESS_REFUSED, ...), once it has."""
        if self._underlay is None:
            return None
        closing = self._underlay.closing
        if closing.done() and not closing.cancelled():
            return closing.exception()
        return None

    def _break(self, why: str) -> None:
        if self._broken is None:
            self._broken = why

    def _stalled(self) -> bool:
        if time.monotonic() - self._last_progress > self.confirm_timeout:
            self._break(f"RabbitMQ confirmed nothing for {self.confirm_timeout:.0f} s")
            return True
        return False

    async def drain(self) -> None:
        """Wait for every queued and in-flight publish; give up after ``confirm_timeout`` without one."""
        for _ in self._workers:
            while True:
                try:
                    async with asyncio.timeout(1.0):
                        await self._queue.put(None)  # one stop marker per publisher
                    break
                except TimeoutError:
                    if self._stalled():
                        await self._stop_workers()
                        return
        pending = {w for w in self._workers if not w.done()}
        while pending:
            _, pending = await asyncio.wait(pending, timeout=1.0)
            if pending and self._stalled():
                await self._stop_workers()
                return

    async def _stop_workers(self) -> None:
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        while not self._queue.empty():  # queued, never published: not confirmed either
            item = self._queue.get_nowait()
            if item is not None:
                self.on_result(Result(item, Verdict.FAILED, "not_confirmed", self._broken or "not sent"))

    async def close(self) -> None:
        await self._stop_workers()
        self._workers = []
        if self._connection is not None:
            with contextlib.suppress(Exception):  # already closed by the server: nothing to release
                await self._connection.close()
            self._connection = None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiormq.exceptions.ChannelInvalidStateError):
        return "the connection or channel closed (RabbitMQ restarted, the network dropped, or a publish was refused)"
    text = str(exc) or type(exc).__name__
    if "NOT_FOUND" in text:
        return f"{text} (check --amqp-prefix, and that the broker has started once to declare its exchanges)"
    if "ACCESS_REFUSED" in text:
        return f"{text} (the account may not publish to this exchange; ask the broker's operators)"
    if "PRECONDITION_FAILED" in text and "user_id" in text:
        return f"{text} (the user_id must be the login user: use --amqp-user-id or --no-user-id)"
    return text
