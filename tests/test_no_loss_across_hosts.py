"""No loss across hosts: three ``serve`` processes (own data dirs and ports) share PostgreSQL and
the RabbitMQ ingest queue; a publisher sends 3,000 signed events with confirms while processes
are SIGKILLed in turn (the current leader every other time) and restarted.

Afterwards, for each consumer its agreements entitle, every confirmed event is released exactly
once in the audit (or quarantined): 0 lost, 0 released twice; the one chain verifies end to end;
after every leader change another process took the role and checkpoints kept being signed.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker.auth.broker_key import load_or_create_broker_key
from broker.demo import prepare_environment
from broker.pipeline.trail import verify_store
from broker.ports.rabbitmq.topology import Names
from broker.ports.store import Checkpoint, Store
from tests.helpers import audit_entries, read_store
from tests.streams import Host, PacedPublisher, entitled, released_counts, signed_bodies, wait_released

EVENTS = 3000
KILLS = 6  # in turn: the leader, then a follower, then the (new) leader, ...
pytestmark = pytest.mark.timeout(600)


def leads(host: Host) -> bool:
    async def scrape() -> bool:
        async with aiohttp.ClientSession() as session, session.get(host.url + "/metrics", timeout=5) as resp:
            text = await resp.text()
        for family in text_string_to_metric_families(text):
            if family.name == "sv_broker_leader":
                return family.samples[0].value == 1
        return False

    try:
        return asyncio.run(scrape())
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False


def checkpoints(store_url: str) -> list[Checkpoint]:
    return read_store(store_url, lambda store: store.checkpoints())


def wait_for(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_no_loss_across_hosts_under_sigkill(amqp_url: str, amqp_prefix: str, pg_store_url: str, tmp_path: Path) -> None:
    env = prepare_environment(tmp_path / "env")
    broker_key = tmp_path / "broker-key.pem"  # one key for every host (a mounted Secret)
    load_or_create_broker_key(broker_key)
    common = [
        sys.executable, "-m", "broker.cli", "serve",
        "--amqp-url", amqp_url, "--amqp-prefix", amqp_prefix, "--store", pg_store_url,
        "--policy-dir", str(env.policy_dir), "--keys-dir", str(env.keys_dir),
        "--secrets", str(env.secrets_file), "--broker-key", str(broker_key),
        "--port", "0", "--no-user-id-check", "--log-level", "WARNING",
        "--checkpoint-every", "50", "--checkpoint-interval", "1",
    ]  # fmt: skip
    hosts = [Host(name, common, tmp_path) for name in ("host-a", "host-b", "host-c")]
    publisher = PacedPublisher(amqp_url, Names(amqp_prefix).ingest_exchange, signed_bodies(env, EVENTS, 41), pause=0.12)
    for host in hosts:
        host.start()  # the first declares the topology; all share it
    wait_for(lambda: sum(leads(h) for h in hosts) == 1, 20, "no single leader at the start")
    publisher.start()  # ~200 msg/s offered: the kills land mid-stream
    leader_changes = 0
    for n in range(KILLS):
        time.sleep(0.8)
        leader = next(h for h in hosts if leads(h))
        victim = leader if n % 2 == 0 else next(h for h in hosts if h is not leader)
        signed_before = max((cp.seq for cp in checkpoints(pg_store_url)), default=0)
        victim.kill()
        if victim is leader:
            leader_changes += 1
            survivors = [h for h in hosts if h is not victim]
            wait_for(lambda: sum(leads(h) for h in survivors) == 1, 20, "no survivor took the role")  # noqa: B023
            # the new leader signs: a checkpoint beyond the last one of the killed leader
            wait_for(
                lambda: max((cp.seq for cp in checkpoints(pg_store_url)), default=0) > signed_before,  # noqa: B023
                20,
                "no checkpoint after the leader change",
            )
        victim.start()
    confirmed = publisher.join()
    assert len(confirmed) == EVENTS
    expected = entitled(env, confirmed)  # (message id, consumer)
    ids = {json.loads(body)["id"] for body in confirmed}

    rejected = {e["message_id"] for e in audit_entries(pg_store_url, "rejected")}
    wait_released(pg_store_url, expected, settled=rejected)
    for host in hosts:
        assert host.stop() == 0, host.log_path.read_text()[-2000:]

    async def chain(store: Store) -> tuple[bool, int, list[Checkpoint]]:
        cps = await store.checkpoints()
        kid, key = load_or_create_broker_key(broker_key)
        # the chain end to end, and every checkpoint (whichever host signed it) against it
        report = await verify_store(store, cps, {kid: key.public_key()})
        assert report.ok, report.problem
        assert report.checkpoints is not None
        assert report.checkpoints.checked == len(cps)
        return report.ok, report.chain.entries, cps

    counts = released_counts(pg_store_url)
    rejected = {e["message_id"] for e in audit_entries(pg_store_url, "rejected")}
    chain_ok, entries, cps = read_store(pg_store_url, chain)
    quarantined = {m for m in rejected if m in ids}
    exactly_once = sum(1 for key in expected if counts[key] == 1)
    twice_or_more = sum(1 for key in expected if counts[key] > 1)
    lost = sum(1 for key in expected if counts[key] == 0 and key[0] not in quarantined)
    unexpected = [key for key in counts if key not in expected]
    print(
        f"\n3 hosts, {sum(h.starts for h in hosts)} starts, {KILLS} SIGKILLs ({leader_changes} of the leader): "
        f"confirmed {len(confirmed)} events -> {len(expected)} entitled releases: exactly once {exactly_once}, "
        f"quarantined {len(quarantined)}, lost {lost}, double-released {twice_or_more}; "
        f"chain {entries} entries, {len(cps)} checkpoints"
    )
    assert sum(h.starts for h in hosts) == 3 + KILLS
    assert leader_changes >= 3
    assert lost == 0
    assert twice_or_more == 0
    assert unexpected == []
    assert len(quarantined) == 0  # every event was valid
    assert exactly_once == len(expected)
    assert chain_ok
    assert len(cps) >= leader_changes + 1
