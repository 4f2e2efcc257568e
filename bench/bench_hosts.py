"""Several processes and two store backends, on the same RabbitMQ and preloaded messages.

Run: .venv/bin/python bench/bench_hosts.py [--events 6000] [--pg-url postgresql://…/test]

In one run, each beside the naive relays measured in the same run (bench_broker.py's two shapes):
  - throughput over preloaded signed events (each entitling two consumers) for: SQLite with 1
    process and with ``--workers 2``; PostgreSQL with 1, 2 and 4 ``serve`` processes (own data
    dirs, one shared store and ingest queue, as on several hosts);
  - p50/p99 end-to-end latency (publish with confirm -> record in a consumer queue) at 25% and
    50% of *that system's own* measured peak (this machine's speed varies threefold from day to
    day: a fixed rate would saturate it on a slow day and idle it on a fast one);
  - commit latency per backend: one unit of a typical message (received + two releases, two
    records, replay state), one committer at a time, then 64 concurrent committers in each of 1,
    2 and 4 store instances (separate connections: processes) to show the chain head's queue.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aio_pika
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_broker import (
    delete_topology,
    latencies_at_rates,
    naive_relay,
    peak_rss_mb,
    preload,
    relay_latency,
    two_consumer_bodies,
    worker_pids,
)
from broker.audit.chain import Draft, Kind
from broker.demo import DemoEnvironment, prepare_environment
from broker.ports.rabbitmq.topology import Names
from broker.ports.store import CommitUnit, Seen, Store, StoredRecord
from broker.ports.stores import store_for
from broker.stages.replay import ReplayState

ROOT = Path(__file__).resolve().parent.parent


def serve(
    env: DemoEnvironment,
    url: str,
    prefix: str,
    data_dir: Path,
    store: str | None,
    workers: int = 1,
    *,
    wait: bool = True,
) -> subprocess.Popen[bytes]:
    ready = data_dir.with_suffix(".ready")
    ready.unlink(missing_ok=True)
    args = [
        sys.executable, "-m", "broker.cli", "serve", "--amqp-url", url, "--amqp-prefix", prefix,
        "--data-dir", str(data_dir), "--keys-dir", str(env.keys_dir), "--secrets", str(env.secrets_file),
        "--port", "0", "--no-user-id-check", "--workers", str(workers), "--ready-file", str(ready),
        "--log-level", "WARNING",
    ]  # fmt: skip
    if store:
        args += ["--store", store]
    proc = subprocess.Popen(args, cwd=ROOT)
    proc.ready_file = ready  # type: ignore[attr-defined]
    if wait:
        wait_ready([proc])
    return proc


def wait_ready(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        while not proc.ready_file.exists():  # type: ignore[attr-defined]
            if proc.poll() is not None:
                raise RuntimeError("broker exited")
            time.sleep(0.05)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.wait(timeout=60)


async def fresh_schema(pg_url: str) -> str:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()
    return f"{pg_url}?search_path={schema}"


async def drop_schema(pg_url: str, store_url: str) -> None:
    schema = store_url.rsplit("search_path=", 1)[1]
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


async def run_system(
    env: DemoEnvironment,
    url: str,
    bodies: list[tuple[str, bytes]],
    work: Path,
    label: str,
    *,
    store: str | None,
    processes: int,
    workers: int = 1,
) -> tuple[float, dict[float, tuple[float, float]], float]:
    """Throughput over the preloaded bodies, then latency at 25% and 50% of it."""
    prefix = f"bench-hosts-{uuid.uuid4().hex[:8]}"
    first = work / f"{prefix}-0"
    stop([serve(env, url, prefix, first, store)])  # declares the topology
    await preload(url, Names(prefix).ingest_exchange, bodies)
    location = store if store else first / "broker.db"
    # All processes start together (each takes about a second), so none drains the queue alone.
    procs = [serve(env, url, prefix, work / f"{prefix}-{i}", store, workers, wait=False) for i in range(processes)]
    wait_ready(procs)
    view: Store = store_for(location, readonly=True)
    await view.open()
    # Timed from the first settled message, not from process start (start-up is not throughput).
    first_seen: tuple[float, int] | None = None
    try:
        while True:
            done = (await view.counts()).audit_by_kind.get("received", 0)
            now = time.perf_counter()
            if first_seen is None and done > 0:
                first_seen = (now, done)
            if done >= len(bodies):
                break
            await asyncio.sleep(0.05)
    finally:
        await view.close()
    assert first_seen is not None
    if now - first_seen[0] < 0.5 or len(bodies) - first_seen[1] < len(bodies) // 2:
        raise RuntimeError("too few events to time: run with more --events")
    throughput = (len(bodies) - first_seen[1]) / (now - first_seen[0])
    print(f"  {label:<34} {throughput:8.0f} msg/s", flush=True)
    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(Names(prefix).ingest_exchange)
    reader = await connection.channel()
    await reader.set_qos(prefetch_count=1000)
    for consumer in ("derbyshire-vru", "derby-csp-analysts", "derbyshire-csp-analysts"):
        await (await reader.get_queue(Names(prefix).consumer_queue(consumer))).purge()
    queue = await reader.get_queue(Names(prefix).consumer_queue("derbyshire-vru"))
    rates = relative_rates(throughput)
    latencies = await latencies_at_rates(
        env, channel, exchange.name, "uhdb-royal-derby-ed.ae_assault", queue, "produced_at", rates
    )
    rss = max(peak_rss_mb(pid) for proc in procs for pid in [proc.pid, *worker_pids(proc.pid)])
    stop(procs)
    await connection.close()
    await delete_topology(url, prefix)
    return throughput, latencies, rss


def relative_rates(peak: float) -> tuple[tuple[float, int], ...]:
    """25% and 50% of a system's own peak, each for about four seconds."""
    return tuple((round(peak * share), max(500, round(peak * share * 4))) for share in (0.25, 0.5))


def unit(n: int, tag: str) -> CommitUnit:
    now = datetime.now(UTC)
    mid = f"{tag}-{n:012d}"
    base = {"message_id": mid, "source": "uhdb-royal-derby-ed", "body_sha256": "0" * 64}
    drafts = [Draft(Kind.RECEIVED, base | {"transport": "amqp", "verified": True})]
    records = []
    for consumer in ("derbyshire-vru", "derby-csp-analysts"):
        rid = f"rec-{tag}-{consumer}-{n}"
        drafts.append(
            Draft(Kind.RELEASED, base | {"consumer": consumer, "agreement_id": "dsa-istv-ae-2026", "record_id": rid})
        )
        records.append(
            StoredRecord(
                rid,
                consumer,
                "dsa-istv-ae-2026",
                1,
                "ae_assault",
                "uhdb-royal-derby-ed",
                mid,
                now,
                now + timedelta(days=365),
                b"{}" * 200,
            )
        )
    seen = [(("uhdb-royal-derby-ed", mid), Seen(ReplayState.DONE, "a" * 64))]
    return CommitUnit(drafts=drafts, records=records, seen=seen)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000


async def commit_latency(location: str | Path, label: str) -> None:
    store = store_for(location)
    await store.open()
    samples = []
    for n in range(300):
        t0 = time.perf_counter()
        await store.commit(unit(n, "one"))
        samples.append(time.perf_counter() - t0)
    await store.close()
    print(
        f"  {label:<11} one committer:        p50 {pct(samples, 0.5):6.2f} ms  p99 {pct(samples, 0.99):6.2f} ms",
        flush=True,
    )
    for instances in (1, 2, 4):
        stores = [store_for(location) for _ in range(instances)]
        for s in stores:
            await s.open()
        per: list[float] = []

        async def committer(s: Store, k: int, per: list[float] = per, tag: str = f"c{instances}") -> None:
            for n in range(40):
                t0 = time.perf_counter()
                await s.commit(unit(k * 1000 + n, tag))
                per.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(committer(s, i * 64 + k) for i, s in enumerate(stores) for k in range(64)))
        elapsed = time.perf_counter() - t0
        for s in stores:
            await s.close()
        print(
            f"  {label:<11} 64 committers x {instances} instance{'s' if instances > 1 else ' '}: "
            f"p50 {pct(per, 0.5):6.2f} ms  p99 {pct(per, 0.99):6.2f} ms  "
            f"{len(per) / elapsed:8.0f} units/s",
            flush=True,
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=6000)
    parser.add_argument("--amqp-url", default=os.environ.get("SV_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"))
    parser.add_argument(
        "--pg-url", default=os.environ.get("SV_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sv-bench-hosts-") as tmp:
        work = Path(tmp)
        env = prepare_environment(work / "env")
        bodies = two_consumer_bodies(env, args.events)
        machine = f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs"
        print(f"machine: {machine}, Python {platform.python_version()}")
        print(f"messages: {len(bodies)} signed ae_assault events, each entitling two consumers\n")
        print("commit latency per backend (a typical message's unit):")
        await commit_latency(work / "commit.db", "SQLite")
        pg_commit = await fresh_schema(args.pg_url)
        await commit_latency(pg_commit, "PostgreSQL")
        await drop_schema(args.pg_url, pg_commit)

        print("\nbaselines (naive relays, same RabbitMQ, same bodies):")
        sequential = await naive_relay(args.amqp_url, bodies, concurrent=False)
        print(f"  (a1) sequential iterator relay      {sequential:8.0f} msg/s")
        concurrent = await naive_relay(args.amqp_url, bodies, concurrent=True)
        print(f"  (a2) consume-callback relay         {concurrent:8.0f} msg/s")
        relay = await relay_latency(env, args.amqp_url, relative_rates(concurrent))
        print("\nbroker throughput, then latency at 25% / 50% of its own peak:")
        results = []
        systems: list[tuple[str, str | None, int, int]] = [
            ("SQLite, 1 process", None, 1, 1),
            ("SQLite, --workers 2", None, 1, 2),
            ("PostgreSQL, 1 process", "pg", 1, 1),
            ("PostgreSQL, 2 processes", "pg", 2, 1),
            ("PostgreSQL, 4 processes", "pg", 4, 1),
        ]
        for label, kind, processes, workers in systems:
            store = await fresh_schema(args.pg_url) if kind == "pg" else None
            try:
                results.append(
                    (
                        label,
                        *await run_system(
                            env, args.amqp_url, bodies, work, label, store=store, processes=processes, workers=workers
                        ),
                    )
                )
            finally:
                if store:
                    await drop_schema(args.pg_url, store)
        print("\nsummary (ratio = broker / relay a2, same run):")
        print(f"  {'system':<26} {'msg/s':>7} {'÷a1':>5} {'÷a2':>5}  {'p50/p99 @25%':>16}  {'p50/p99 @50%':>16}  RSS")
        r25, r50 = sorted(relay)
        print(
            f"  {'relay a2':<26} {concurrent:7.0f} {concurrent / sequential:5.2f} {1.0:5.2f}  "
            f"{relay[r25][0]:6.1f}/{relay[r25][1]:6.1f} ms  {relay[r50][0]:6.1f}/{relay[r50][1]:6.1f} ms"
        )
        for label, throughput, latencies, rss in results:
            low, high = sorted(latencies)
            print(
                f"  {label:<26} {throughput:7.0f} {throughput / sequential:5.2f} {throughput / concurrent:5.2f}  "
                f"{latencies[low][0]:6.1f}/{latencies[low][1]:6.1f} ms  "
                f"{latencies[high][0]:6.1f}/{latencies[high][1]:6.1f} ms  "
                f"{rss:.0f} MB"
            )


if __name__ == "__main__":
    asyncio.run(main())
