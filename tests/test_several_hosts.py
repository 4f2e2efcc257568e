"""Several broker processes on one PostgreSQL store: one leader for the singleton jobs (elected
through PostgreSQL, moved within seconds when it goes), every process serving the analysts' and
IG API from the shared store, and one audit chain for all of them.

Brokers here run in this test's process (embedded HTTP ingest) on separate data dirs, as on
separate hosts; ``test_no_loss_across_hosts.py`` runs real ``serve`` processes and kills them.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from adapters.synthetic import SyntheticGenerator
from broker.auth.broker_key import load_or_create_broker_key
from broker.auth.tokens import DEFAULT_AUDIENCE, DEFAULT_ISSUER, issue_token
from broker.demo import DemoEnvironment
from broker.pipeline.trail import verify_store
from broker.ports.store import AuditQuery
from broker.ports.stores import store_for
from broker.service import LEADER_ROLE, Broker
from broker.settings import Settings

# HTTP ingest takes JSON only (415 otherwise).
JSON = {"Content-Type": "application/json"}

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(180)


async def eventually(check: Callable[[], bool], timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


@pytest.fixture
async def hosts(env: DemoEnvironment, tmp_path: Path, pg_store_url: str) -> AsyncIterator[list[Broker]]:
    """Two brokers on one store, each with its own data dir and port; one broker key (a Secret
    shared by every host, so any leader's checkpoints verify with the one published key)."""
    key = tmp_path / "broker-key.pem"
    load_or_create_broker_key(key)
    brokers = []
    for name in ("host-a", "host-b"):
        settings = Settings(
            policy_dir=env.policy_dir,
            keys_dir=env.keys_dir,
            secrets_file=env.secrets_file,
            data_dir=tmp_path / name,
            http_port=0,
            store_url=pg_store_url,
            broker_key_file=key,
            leader_check_interval=0.2,
            checkpoint_every=5,
            checkpoint_interval=timedelta(seconds=1),
        )
        broker = Broker(settings)
        await broker.start()
        brokers.append(broker)
    try:
        yield brokers
    finally:
        for broker in brokers:
            await broker.stop()


def bearer(broker: Broker, role: str, consumer: str | None = None) -> dict[str, str]:
    kid, key = load_or_create_broker_key(broker.settings.effective_broker_key)
    tok = issue_token(
        key,
        kid,
        sub=f"{role}@example.org",
        role=role,
        consumer=consumer,
        ttl=timedelta(minutes=5),
        issuer=DEFAULT_ISSUER,
        audience=DEFAULT_AUDIENCE,
    )
    return {"Authorization": f"Bearer {tok}"}


async def post_events(broker: Broker, env: DemoEnvironment, count: int, seed: int) -> None:
    gen = SyntheticGenerator(seed=seed)
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            rec = gen.nte_incident("derby-pubwatch")
            body = env.signers["derby-pubwatch"].sign_bytes("nte_incident", rec.data(), source_key=rec.source_key)
            async with session.post(broker.url + "/v1/events", data=body, headers=JSON) as resp:
                assert resp.status == 202, await resp.text()


async def get_json(broker: Broker, path: str, headers: dict[str, str]) -> Any:
    async with aiohttp.ClientSession() as session, session.get(broker.url + path, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_one_leader_at_a_time_and_it_moves_when_the_leader_goes(
    hosts: list[Broker], env: DemoEnvironment
) -> None:
    a, b = hosts
    await eventually(lambda: a.leading or b.leading)
    assert [a.leading, b.leading].count(True) == 1
    leader, other = (a, b) if a.leading else (b, a)
    await post_events(other, env, 12, seed=1)  # ingest on the follower; the leader signs
    assert leader.store is not None
    await eventually(lambda: leader.store is not None and bool(leader._checkpoints and leader._checkpoints.last_seq))
    await leader.stop()
    hosts.remove(leader)
    await eventually(lambda: other.leading, timeout=10)
    await post_events(other, env, 12, seed=2)
    assert other._checkpoints is not None
    before = other._checkpoints.last_seq
    await eventually(lambda: other._checkpoints is not None and other._checkpoints.last_seq > before)
    # every checkpoint (signed by either leader, with the one shared key) verifies with the chain
    ig = bearer(other, "ig")
    report = await get_json(other, "/v1/audit/verify", ig)
    assert report["ok"], report
    assert report["checkpoints_checked"] >= 2


async def test_every_host_serves_the_feeds_and_the_audit_from_the_shared_store(
    hosts: list[Broker], env: DemoEnvironment
) -> None:
    a, b = hosts
    await post_events(a, env, 10, seed=3)
    await post_events(b, env, 10, seed=4)
    analyst = bearer(a, "analyst", "derby-csp-analysts")
    page_a = await get_json(a, "/v1/feeds/derby-csp-analysts/records?limit=1000", analyst)
    page_b = await get_json(b, "/v1/feeds/derby-csp-analysts/records?limit=1000", analyst)
    assert b.store is not None
    released = await b.store.audit_page(AuditQuery(kind="released", consumer="derby-csp-analysts", limit=1000))
    assert page_a["count"] == page_b["count"] == len(released) > 0
    assert [r["record_id"] for r in page_a["records"]] == [r["record_id"] for r in page_b["records"]]
    record_id = page_a["records"][0]["record_id"]
    trace = await get_json(b, f"/v1/audit/trace/{record_id}", bearer(b, "ig"))
    kinds = [e["kind"] for e in trace["entries"]]
    assert kinds[0] == "received"
    assert "released" in kinds
    assert kinds.count("accessed") == 2  # read once through each host, both in the one trail
    report = await verify_store(b.store)
    assert report.ok, report.problem


async def test_a_killed_leader_process_loses_the_role_within_seconds(pg_store_url: str) -> None:
    """SIGKILL: no clean-up runs, yet PostgreSQL ends the session and frees the lock."""
    script = f"""
import asyncio, sys
from broker.ports.stores import store_for

async def main():
    store = store_for(sys.argv[1])
    await store.open()
    leadership = store.leadership({LEADER_ROLE!r})
    assert await leadership.check()
    print("leading", flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""
    proc = subprocess.Popen(  # noqa: ASYNC220 - a child to SIGKILL; its stdout is read once
        [sys.executable, "-c", script, pg_store_url], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), timeout=60)
        assert line.strip() == "leading"
        store = store_for(pg_store_url)
        await store.open()
        try:
            mine = store.leadership(LEADER_ROLE)
            assert not await mine.check()  # the child holds it
            other_role = store.leadership("another-role")
            assert await other_role.check()  # roles are elected separately
            await other_role.release()
            proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait)
            loop = asyncio.get_running_loop()
            started = loop.time()
            while not await mine.check():
                assert loop.time() - started < 15, "the lock of a killed process was not freed"
                await asyncio.sleep(0.2)
            await mine.release()
        finally:
            await store.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


async def test_two_stores_on_one_server_elect_separately(pg_url: str) -> None:
    import uuid

    import asyncpg

    schemas = [f"svt_{uuid.uuid4().hex[:12]}" for _ in range(2)]
    conn = await asyncpg.connect(pg_url)
    try:
        for schema in schemas:
            await conn.execute(f"CREATE SCHEMA {schema}")
        stores = [store_for(f"{pg_url}?search_path={schema}") for schema in schemas]
        for store in stores:
            await store.open()
        leaders = [store.leadership(LEADER_ROLE) for store in stores]
        assert [await leader.check() for leader in leaders] == [True, True]
        second = stores[0].leadership(LEADER_ROLE)
        assert not await second.check()  # but within one store, one holder
        for leader in leaders:
            await leader.release()
        assert await second.check()
        await second.release()
        for store in stores:
            await store.close()
    finally:
        for schema in schemas:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()
