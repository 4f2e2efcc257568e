"""Broker throughput against a naive relay, latency at a fixed offered load, RSS, HTTP ingest.

Run: .venv/bin/python bench/bench_broker.py [--events 20000] [--amqp-url URL]

On the same RabbitMQ and the same preloaded signed messages, in one run:
  (a) naive aio-pika relays: consume -> republish persistent with confirms -> ack, prefetch 256,
      no verification / policy / audit. Two shapes, both "naive": a sequential iterator loop, and a
      consume callback (aio-pika runs each callback as a task, so up to 256 confirms overlap).
  (b) the full broker (a separate process): strict parse, Ed25519 verify, schema validation,
      agreements with two entitled consumers per event, confirmed releases + receipts, durable
      hash-chained audit (SQLite FULL sync).
Then p50/p99 end-to-end latency (publish -> record in the consumer queue) at 1,000 msg/s offered,
the broker's peak RSS, and the embedded HTTP ingest rate against a bare aiohttp handler.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import aiormq
from aiohttp import web
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.synthetic import SyntheticGenerator
from broker.demo import DemoEnvironment, prepare_environment
from broker.ports.rabbitmq.fast_publish import Publish, forget_publishes, publish_frames
from broker.ports.rabbitmq.topology import Names
from broker.ports.store import Store
from broker.ports.stores import store_for
from broker.service import Broker
from broker.settings import Settings
from schemas.envelope import encode, format_time

# HTTP ingest takes JSON only (415 otherwise).
JSON = {"Content-Type": "application/json"}

PERSISTENT = aio_pika.DeliveryMode.PERSISTENT
QUORUM: dict[str, Any] = {"x-queue-type": "quorum"}


def two_consumer_bodies(env: DemoEnvironment, count: int) -> list[tuple[str, bytes]]:
    """Royal Derby A&E assaults: each entitles exactly two consumers under the sample agreements."""
    gen = SyntheticGenerator(seed=99)
    out = []
    for _ in range(count):
        rec = gen.ae_assault("uhdb-royal-derby-ed")
        body = env.signers[rec.partner].sign_bytes("ae_assault", rec.data(), source_key=rec.source_key)
        out.append(("uhdb-royal-derby-ed.ae_assault", body))
    return out


async def preload(url: str, exchange_name: str, bodies: list[tuple[str, bytes]]) -> None:
    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(exchange_name)
    for i in range(0, len(bodies), 500):
        await asyncio.gather(
            *(
                exchange.publish(aio_pika.Message(body, delivery_mode=PERSISTENT), key, mandatory=True)
                for key, body in bodies[i : i + 500]
            )
        )
    await connection.close()


async def relay_topology(url: str) -> tuple[str, aio_pika.abc.AbstractConnection, aio_pika.abc.AbstractChannel]:
    """``<prefix>.in`` (topic exchange -> quorum queue) and ``<prefix>.out`` (direct -> quorum)."""
    prefix = f"bench-relay-{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    source_exchange = await channel.declare_exchange(f"{prefix}.in", aio_pika.ExchangeType.TOPIC, durable=True)
    source = await channel.declare_queue(f"{prefix}.in", durable=True, arguments=QUORUM)
    await source.bind(source_exchange, "#")
    out_exchange = await channel.declare_exchange(f"{prefix}.out", aio_pika.ExchangeType.DIRECT, durable=True)
    sink = await channel.declare_queue(f"{prefix}.out", durable=True, arguments=QUORUM)
    await sink.bind(out_exchange, "out")
    return prefix, connection, channel


async def naive_relay(url: str, bodies: list[tuple[str, bytes]], *, concurrent: bool) -> float:
    prefix, connection, channel = await relay_topology(url)
    out_exchange = await channel.get_exchange(f"{prefix}.out")
    await preload(url, f"{prefix}.in", bodies)

    consume_channel = await connection.channel()
    await consume_channel.set_qos(prefetch_count=256)
    queue = await consume_channel.get_queue(f"{prefix}.in")
    done = asyncio.Event()
    count = 0

    async def relay(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal count
        await out_exchange.publish(aio_pika.Message(message.body, delivery_mode=PERSISTENT), "out", mandatory=True)
        await message.ack()
        count += 1
        if count == len(bodies):
            done.set()

    started = time.perf_counter()
    if concurrent:
        tag = await queue.consume(relay)
        await done.wait()
        await queue.cancel(tag)
    else:
        async with queue.iterator() as it:
            async for message in it:
                await relay(message)
                if done.is_set():
                    break
    elapsed = time.perf_counter() - started
    await channel.queue_delete(f"{prefix}.in")
    await channel.queue_delete(f"{prefix}.out")
    await channel.exchange_delete(f"{prefix}.in")
    await channel.exchange_delete(f"{prefix}.out")
    await connection.close()
    return len(bodies) / elapsed


def start_broker(
    env: DemoEnvironment, url: str, prefix: str, data_dir: Path, ready: Path, workers: int = 1
) -> subprocess.Popen[bytes]:
    ready.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "broker.cli", "serve", "--amqp-url", url, "--amqp-prefix", prefix,
            "--data-dir", str(data_dir), "--keys-dir", str(env.keys_dir), "--secrets", str(env.secrets_file),
            "--port", "0", "--no-user-id-check", "--workers", str(workers), "--ready-file", str(ready),
            "--log-level", "WARNING",
        ],
        cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    while not ready.exists():
        if proc.poll() is not None:
            raise RuntimeError("broker exited")
        time.sleep(0.05)
    return proc


async def received(store: Store) -> int:
    """``received`` entries so far, read through the store contract (another process writes them)."""
    return (await store.counts()).audit_by_kind.get("received", 0)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker_pids(pid: int) -> list[int]:
    """The primary's ingest workers (its child processes)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in children.read_text().split()] if children.exists() else []


async def delete_topology(url: str, prefix: str) -> None:
    from tests.conftest import delete_prefixed

    await delete_prefixed(url, prefix)


async def broker_throughput(
    env: DemoEnvironment, url: str, bodies: list[tuple[str, bytes]], work: Path, workers: int, *, latency: bool
) -> tuple[float, float, float, float]:
    """Throughput over the preloaded bodies; then, if ``latency``, latency at fixed offered loads.
    Returns (msg/s, p50 ms and p99 ms at 1,000 msg/s, peak RSS MB of the largest process)."""
    prefix = f"bench-broker-{uuid.uuid4().hex[:8]}"
    data_dir = work / prefix
    proc = start_broker(env, url, prefix, data_dir, work / "ready")  # declares the topology
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    await preload(url, Names(prefix).ingest_exchange, bodies)
    db = data_dir / "broker.db"
    proc = start_broker(env, url, prefix, data_dir, work / "ready", workers)
    started = time.perf_counter()
    view = store_for(db, readonly=True)
    await view.open()
    try:
        while await received(view) < len(bodies):  # noqa: ASYNC110 - polling another process's store
            await asyncio.sleep(0.02)
    finally:
        await view.close()
    elapsed = time.perf_counter() - started
    throughput = len(bodies) / elapsed
    label = f"{workers} process{'es' if workers > 1 else ''}"
    print(f"(b)  full broker pipeline, {label:<12}      {throughput:8.0f} msg/s", flush=True)
    if not latency:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        await delete_topology(url, prefix)
        return throughput, float("nan"), float("nan"), float("nan")

    # Latency at fixed offered loads, records read from a consumer queue.
    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(Names(prefix).ingest_exchange)
    consumer_channel = await connection.channel()
    await consumer_channel.set_qos(prefetch_count=1000)
    queue = await consumer_channel.get_queue(Names(prefix).consumer_queue("derbyshire-vru"))
    for name in ("derbyshire-vru", "derby-csp-analysts", "derbyshire-csp-analysts"):
        await (await consumer_channel.get_queue(Names(prefix).consumer_queue(name))).purge()
    rates = at_shares(throughput)
    latencies_by_rate = await latencies_at_rates(
        env, channel, exchange.name, "uhdb-royal-derby-ed.ae_assault", queue, "produced_at", rates
    )
    rss = max(peak_rss_mb(pid) for pid in [proc.pid, *worker_pids(proc.pid)])
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    await connection.close()
    await delete_topology(url, prefix)
    p50, p99 = latencies_by_rate[rates[-1][0]]
    return throughput, p50, p99, rss


RATES = ((500.0, 4000), (1000.0, 8000))
SHARES = (0.25, 0.5)  # latency is measured at these shares of each system's own measured peak


def at_shares(peak: float, seconds: float = 4.0) -> tuple[tuple[float, int], ...]:
    """Offered rates at 25% and 50% of ``peak`` (issue 15: each system loaded alike, relative to
    what it can do on this machine today, whose speed varies threefold from day to day), each
    for ``seconds``."""
    return tuple((round(peak * share), max(400, int(peak * share * seconds))) for share in SHARES)


async def latencies_at_rates(
    env: DemoEnvironment,
    channel: aio_pika.abc.AbstractChannel,
    exchange: str,
    routing_key: str,
    queue: aio_pika.abc.AbstractQueue,
    time_field: str,
    rates: tuple[tuple[float, int], ...] = RATES,
) -> dict[float, tuple[float, float]]:
    """p50 / p99 ms from publish (with confirm) to arrival in ``queue``, at each offered rate.

    Each body has a unique produced-at time, which both the broker's records (``produced_at``)
    and the relayed envelopes (``time``) carry: it matches an arrival to its send."""
    gen = SyntheticGenerator(seed=7)
    signer = env.signers["uhdb-royal-derby-ed"]
    offset = 0
    out: dict[float, tuple[float, float]] = {}
    for rate, count in rates:
        sent_at: dict[str, float] = {}
        latencies: list[float] = []
        all_in = asyncio.Event()

        async def on_arrival(
            message: DeliveredMessage,
            sent_at: dict[str, float] = sent_at,
            latencies: list[float] = latencies,
            all_in: asyncio.Event = all_in,
            count: int = count,
        ) -> None:
            key = json.loads(message.body)[time_field]
            if key in sent_at:
                latencies.append(time.perf_counter() - sent_at.pop(key))
            if len(latencies) >= count:
                all_in.set()

        # The load generator must not steal the broker's CPU (two cores, shared with RabbitMQ):
        # bodies are signed before the clock starts, published and read on the aiormq channels
        # under aio-pika (no per-message wrapper objects and tasks), arrivals without acks.
        reader = await queue.channel.get_underlay_channel()
        writer = await channel.get_underlay_channel()
        assert isinstance(writer, aiormq.Channel)
        tag = (await reader.basic_consume(queue.name, on_arrival, no_ack=True)).consumer_tag or ""
        base = datetime.now(UTC)
        prepared = []
        for i in range(count):
            rec = gen.ae_assault("uhdb-royal-derby-ed")
            produced = base + timedelta(milliseconds=offset + i)
            doc = signer.sign("ae_assault", rec.data(), source_key=rec.source_key, produced_at=produced)
            prepared.append((produced, encode(doc)))
        t0 = time.perf_counter()
        pending = []
        for i, (produced, body) in enumerate(prepared):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent_at[format_time(produced)] = time.perf_counter()
            pending += await publish_frames(writer, [Publish(exchange, routing_key, body, f"lat-{offset}-{i}")])
        confirms = await asyncio.gather(*(future for _, _, future in pending))
        assert all(isinstance(c, Basic.Ack) for c in confirms)
        forget_publishes(writer, pending)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_in.wait(), timeout=60)
        await reader.basic_cancel(tag)
        if not latencies:
            raise RuntimeError("nothing arrived in the latency phase")
        offset += count
        latencies.sort()
        out[rate] = (statistics.median(latencies) * 1000, latencies[int(len(latencies) * 0.99) - 1] * 1000)
        print(
            f"     latency at {rate:,.0f} msg/s offered ({len(latencies)} arrivals): "
            f"p50 {out[rate][0]:.1f} ms, p99 {out[rate][1]:.1f} ms",
            flush=True,
        )
    return out


async def relay_latency(
    env: DemoEnvironment, url: str, rates: tuple[tuple[float, int], ...] = RATES
) -> dict[float, tuple[float, float]]:
    """The same latency measurement through the naive callback relay: the bare RabbitMQ hops
    (two quorum queues, confirmed publishes) on this machine, as the baseline for (b)."""
    prefix, connection, channel = await relay_topology(url)
    relay_connection = await aio_pika.connect(url)
    relay_channel = await relay_connection.channel(publisher_confirms=True, on_return_raises=True)
    relay_out = await relay_channel.get_exchange(f"{prefix}.out")
    consume_channel = await relay_connection.channel()
    await consume_channel.set_qos(prefetch_count=256)
    relay_in = await consume_channel.get_queue(f"{prefix}.in")

    async def relay(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        await relay_out.publish(aio_pika.Message(message.body, delivery_mode=PERSISTENT), "out", mandatory=True)
        await message.ack()

    tag = await relay_in.consume(relay)
    reader = await connection.channel()
    await reader.set_qos(prefetch_count=1000)
    out = await latencies_at_rates(
        env,
        channel,
        f"{prefix}.in",
        "uhdb-royal-derby-ed.ae_assault",
        await reader.get_queue(f"{prefix}.out"),
        "time",
        rates,
    )
    await relay_in.cancel(tag)
    await relay_connection.close()
    for queue_name in (f"{prefix}.in", f"{prefix}.out"):
        await channel.queue_delete(queue_name)
    for exchange_name in (f"{prefix}.in", f"{prefix}.out"):
        await channel.exchange_delete(exchange_name)
    await connection.close()
    return out


async def http_ingest(env: DemoEnvironment, work: Path, count: int) -> tuple[float, float]:
    bodies = [body for _, body in two_consumer_bodies(env, count)]
    settings = Settings(
        policy_dir=env.policy_dir,
        keys_dir=env.keys_dir,
        secrets_file=env.secrets_file,
        data_dir=work / "http",
        http_port=0,
    )

    async def blast(url: str) -> float:
        semaphore = asyncio.Semaphore(64)
        async with aiohttp.ClientSession() as session:

            async def post(body: bytes) -> None:
                async with semaphore, session.post(url, data=body, headers=JSON) as resp:
                    await resp.read()
                    assert resp.status in (200, 202), resp.status

            started = time.perf_counter()
            await asyncio.gather(*(post(b) for b in bodies))
            return len(bodies) / (time.perf_counter() - started)

    broker = Broker(settings)
    await broker.start()
    try:
        rate = await blast(f"{broker.url}/v1/events")
    finally:
        await broker.stop()

    async def accept(_request: web.Request) -> web.Response:
        return web.json_response({"status": "accepted"}, status=202)

    app = web.Application()
    app.router.add_post("/v1/events", accept)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        bare = await blast(f"http://127.0.0.1:{port}/v1/events")
    finally:
        await runner.cleanup()
    return rate, bare


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--http-events", type=int, default=5000)
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="broker processes for run (b2) (default: CPUs)"
    )
    parser.add_argument("--amqp-url", default=os.environ.get("SV_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sv-bench-") as tmp:
        work = Path(tmp)
        env = prepare_environment(work / "env")
        bodies = two_consumer_bodies(env, args.events)
        print(
            f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}"
        )
        print(f"messages: {len(bodies)} signed ae_assault events, each entitling two consumers\n")
        sequential = await naive_relay(args.amqp_url, bodies, concurrent=False)
        print(f"(a1) naive relay, sequential iterator:       {sequential:8.0f} msg/s")
        concurrent = await naive_relay(args.amqp_url, bodies, concurrent=True)
        print(f"(a2) naive relay, consume callback (tasks):  {concurrent:8.0f} msg/s")
        print("     (latency below: at 25% and 50% of each system's own peak, measured above)")
        await relay_latency(env, args.amqp_url, at_shares(concurrent))
        single, _, _, rss1 = await broker_throughput(env, args.amqp_url, bodies, work, 1, latency=True)
        print(f"     broker peak RSS {rss1:.0f} MB")
        print(f"     ratio b/a1 = {single / sequential:.2f}   ratio b/a2 = {single / concurrent:.2f}")
        full, _p50, _p99, rss = await broker_throughput(env, args.amqp_url, bodies, work, args.workers, latency=True)
        print(f"     ratio b/a1 = {full / sequential:.2f}   ratio b/a2 = {full / concurrent:.2f}")
        print(f"     broker peak RSS {rss:.0f} MB per process")
        rate, bare = await http_ingest(env, work, args.http_events)
        print(f"\nembedded HTTP ingest (durable audit + records): {rate:8.0f} msg/s")
        print(f"bare aiohttp 202 handler, same client:          {bare:8.0f} msg/s   ratio {rate / bare:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
