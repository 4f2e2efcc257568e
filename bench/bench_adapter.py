"""Adapter throughput to RabbitMQ with confirms, beside a bare aio-pika publisher of the same bodies.

Run: .venv/bin/python bench/bench_adapter.py [--rows 20000] [--rounds 2] [--amqp-url URL]

On the same RabbitMQ, in one run, publishing to a durable topic exchange bound to a quorum queue
(the broker's ingest shape; no broker consumes, so the figures are the partner side's):
  (a) bare: aio-pika's idiomatic publisher of the already-signed bodies: persistent, mandatory,
      publisher confirms, a window of 256 in flight (``exchange.publish`` per message);
  (b) the adapter, end to end: read the CSV export (a police crime extract), map every row
      through its mapping, validate it against the schema, sign it (Ed25519), publish with
      confirms (window 256), record each confirm in the fsynced state file;
  (c) for transparency, the adapter's publishing path alone on the same bodies: how much of (b)
      is publishing and how much is the export's processing.
The rounds alternate (a)/(b)/(c) and the best of each is reported, with the ratio (b)/(a).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aio_pika

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.exports import rows as export_rows
from adapters.exports import scan
from adapters.mapping import Mapped, load_mapping
from adapters.publish_amqp import AmqpSink
from adapters.push import PushOptions, push
from adapters.sample_exports import write_sample
from adapters.signer import Signer, generate_keyring
from adapters.sink import Outgoing, Result, Verdict
from schemas.topology import Names

PARTNER = "derbyshire-police"
WINDOW = 256


async def declare(url: str, names: Names) -> None:
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    exchange = await channel.declare_exchange(names.ingest_exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(names.ingest_queue, durable=True, arguments={"x-queue-type": "quorum"})
    await queue.bind(exchange, "#")
    await connection.close()


async def purge(url: str, names: Names) -> None:
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    queue = await channel.get_queue(names.ingest_queue, ensure=True)
    await queue.purge()
    await connection.close()


async def teardown(url: str, names: Names) -> None:
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    await channel.queue_delete(names.ingest_queue)
    await channel.exchange_delete(names.ingest_exchange)
    await connection.close()


def signed_bodies(export: Path, signer: Signer) -> list[tuple[str, bytes]]:
    """The very bodies the adapter publishes (same mapping, same signer)."""
    mapping = load_mapping("police-crime")
    result = scan(export, mapping)
    writer = signer.envelope_writer(mapping.event_type, mapping.version)
    out = []
    for row in export_rows(export, mapping, result.format, result.columns):
        assert row.values is not None
        mapped = mapping.map_row(row.values)
        assert isinstance(mapped, Mapped)
        out.append(writer.write(mapped.record_key, mapped.data_json))
    return out


async def bare(url: str, names: Names, bodies: list[tuple[str, bytes]]) -> float:
    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    exchange = await channel.get_exchange(names.ingest_exchange, ensure=False)
    window = asyncio.Semaphore(WINDOW)
    routing_key = f"{PARTNER}.police_sv_offence"

    async def one(message_id: str, body: bytes) -> None:
        async with window:
            message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=message_id)
            await exchange.publish(message, routing_key, mandatory=True, timeout=30)

    started = time.perf_counter()
    await asyncio.gather(*(one(m, b) for m, b in bodies))
    elapsed = time.perf_counter() - started
    await connection.close()
    return len(bodies) / elapsed


async def sink_only(url: str, names: Names, bodies: list[tuple[str, bytes]]) -> float:
    """The adapter's publishing path alone (same bodies, no file, no mapping, no signing, no state)."""
    confirmed = 0

    def on_result(result: Result) -> None:
        nonlocal confirmed
        confirmed += result.verdict is Verdict.CONFIRMED

    sink = AmqpSink(url, names.prefix, PARTNER, "police_sv_offence", on_result, window=WINDOW)
    await sink.open()
    started = time.perf_counter()
    for row, (message_id, body) in enumerate(bodies, 2):
        await sink.send(Outgoing(str(row), message_id, "", body, row))
    await sink.drain()
    elapsed = time.perf_counter() - started
    await sink.close()
    assert confirmed == len(bodies)
    return len(bodies) / elapsed


async def adapter(url: str, names: Names, export: Path, signer: Signer, workdir: Path, rows: int) -> float:
    mapping = load_mapping("police-crime")
    state = workdir / f"state-{uuid.uuid4().hex[:6]}.jsonl"
    options = PushOptions(export, mapping, signer, state, workdir / "report.csv", progress=False)
    started = time.perf_counter()
    summary = await push(
        options,
        lambda on_result: AmqpSink(url, names.prefix, PARTNER, mapping.event_type, on_result, window=WINDOW),
    )
    elapsed = time.perf_counter() - started
    assert summary.confirmed == rows, summary
    return rows / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--amqp-url", default=os.environ.get("SV_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"))
    args = parser.parse_args()
    names = Names(f"bench-adapter-{uuid.uuid4().hex[:8]}")
    with tempfile.TemporaryDirectory(prefix="sv-bench-adapter-") as tmp:
        workdir = Path(tmp)
        signer = generate_keyring([PARTNER], workdir / "keys")[PARTNER]
        export = workdir / "crimes.csv"
        write_sample("police-crime", export, args.rows, seed=7, days=365)
        print(f"police crime extract: {args.rows:,} rows, {export.stat().st_size / 1e6:.1f} MB (synthetic)")
        bodies = signed_bodies(export, signer)
        await declare(args.amqp_url, names)
        try:
            bare_rates, adapter_rates, sink_rates = [], [], []
            for round_no in range(1, args.rounds + 1):
                await purge(args.amqp_url, names)
                bare_rates.append(await bare(args.amqp_url, names, bodies))
                await purge(args.amqp_url, names)
                adapter_rates.append(await adapter(args.amqp_url, names, export, signer, workdir, args.rows))
                await purge(args.amqp_url, names)
                sink_rates.append(await sink_only(args.amqp_url, names, bodies))
                print(
                    f"  round {round_no}: bare {bare_rates[-1]:,.0f} msg/s, adapter {adapter_rates[-1]:,.0f} rows/s, "
                    f"adapter's publisher alone {sink_rates[-1]:,.0f} msg/s"
                )
        finally:
            await teardown(args.amqp_url, names)
    best_bare, best_adapter = max(bare_rates), max(adapter_rates)
    machine = platform.processor() or platform.machine()
    print(f"\nmachine: {machine}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"bare aio-pika publisher (signed bodies ready, confirms, window {WINDOW}): {best_bare:,.0f} msg/s")
    print(f"adapter end to end (CSV -> map -> validate -> sign -> confirm -> state):  {best_adapter:,.0f} rows/s")
    print(f"ratio adapter / bare: {best_adapter / best_bare:.2f}  (target >= 0.80)")
    print(
        f"(the adapter's publishing path alone: {max(sink_rates):,.0f} msg/s; preparation runs in a worker process: "
        "see adapters/prepare.py and adapters/publish_amqp.py for why each is faster than the obvious way)"
    )


if __name__ == "__main__":
    asyncio.run(main())
