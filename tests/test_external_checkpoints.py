"""Issue 11 item 11, as the attack: the store is rebuilt (or truncated) and re-signed with the
broker's own key, so the checkpoints *inside* it agree with it.

Every checkpoint is published outside the store as it is signed (the checkpoint log, and the
checkpoints exchange on RabbitMQ); verification against those copies catches the forgery where
the store's own checkpoints cannot, and the broker refuses to start on such a store.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import sqlite3
import stat
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from adapters.synthetic import SyntheticGenerator
from broker.audit.checkpoints import checkpoint_line, parse_checkpoints_document, sign_checkpoint
from broker.auth.broker_key import broker_public_jwks, load_or_create_broker_key
from broker.cli import main
from broker.demo import DemoEnvironment
from broker.errors import StartupError
from broker.ports.checkpoint_log import CheckpointLog
from broker.ports.sqlite_store import SqliteStore
from broker.ports.store import CommitUnit
from broker.service import Broker
from broker.settings import Settings
from broker.stages.types import Inbound
from tests import test_broker_amqp
from tests.test_broker_amqp import Starter
from tests.test_http_access import token

INVALID = "checkpoints_invalid"
start_broker = test_broker_amqp.start_broker  # a real RabbitMQ, a prefix of this test's own


def settings_for(env: DemoEnvironment, data: Path, **extra: object) -> Settings:
    return Settings(
        policy_dir=env.policy_dir,
        keys_dir=env.keys_dir,
        secrets_file=env.secrets_file,
        data_dir=data,
        http_port=0,
        **extra,  # type: ignore[arg-type]
    )


async def run_some(env: DemoEnvironment, data: Path, messages: int, checkpoints: int) -> Broker:
    """A broker that processed ``messages`` messages and signed ``checkpoints`` checkpoints, stopped."""
    broker = Broker(settings_for(env, data))
    await broker.start()
    gen = SyntheticGenerator(seed=len(str(data)))
    assert broker.pipeline is not None
    for n in range(checkpoints):
        for record in gen.mixed(messages):
            signer = env.signers[record.partner]
            body = signer.sign_bytes(record.event.EVENT_TYPE, record.data(), source_key=record.source_key)
            await broker.pipeline.process([Inbound(body)])
        assert await broker.checkpoint() is not None, n
    await broker.stop()
    return broker


def forge_shorter_store(data: Path, keep: int) -> None:
    """The attacker's store: the first ``keep`` entries of the real one, the rest gone, and the
    store's own checkpoints replaced by fresh ones signed with the (stolen) broker key."""
    db = data / "broker.db"
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM audit WHERE seq > ?", (keep,))
    conn.execute("DELETE FROM audit_records WHERE seq > ?", (keep,))
    conn.execute("DELETE FROM checkpoints")
    seq, head = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    kid, key = load_or_create_broker_key(data / "broker-key.pem")
    cp = sign_checkpoint(key, kid, seq, head, datetime.now(UTC))
    conn.execute(
        "INSERT INTO checkpoints(seq, head_hash, at, kid, signature) VALUES (?, ?, ?, ?, ?)",
        (cp.seq, cp.head_hash, cp.at, cp.kid, cp.signature),
    )
    conn.commit()
    conn.close()


async def test_every_checkpoint_is_appended_to_the_log_as_it_is_signed(env: DemoEnvironment, tmp_path: Path) -> None:
    data = tmp_path / "data"
    await run_some(env, data, messages=3, checkpoints=3)
    log = data / "checkpoints.jsonl"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    store = SqliteStore(data / "broker.db", readonly=True)
    await store.open()
    try:
        stored = await store.checkpoints()
    finally:
        await store.close()
    assert log.read_text().splitlines() == [checkpoint_line(cp) for cp in stored]
    assert len(stored) >= 3  # (and one more at a graceful stop)


async def test_a_rebuilt_store_reads_ok_against_itself_but_not_against_the_published_checkpoints(
    env: DemoEnvironment, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    await run_some(env, data, messages=4, checkpoints=3)
    published = (data / "checkpoints.jsonl").read_text()
    last = parse_checkpoints_document(published)[-1]
    forge_shorter_store(data, keep=last.seq - 5)
    os.rename(data / "checkpoints.jsonl", tmp_path / "kept-elsewhere.jsonl")  # else serve refuses (below)

    broker = Broker(settings_for(env, data))
    await broker.start()
    try:
        ig = {"Authorization": f"Bearer {token(broker, 'ig', sub='ig-lead')}"}
        async with aiohttp.ClientSession() as session:
            async with session.get(broker.url + "/v1/audit/verify", headers=ig) as resp:
                own = await resp.json()
            headers = ig | {"Content-Type": "application/x-ndjson"}
            async with session.post(broker.url + "/v1/audit/verify", data=published, headers=headers) as resp:
                external = await resp.json()
                assert resp.status == 200
            doc = {"format": "sv-broker-checkpoints/1", "checkpoints": [json.loads(x) for x in published.split()]}
            async with session.post(broker.url + "/v1/audit/verify", json=doc, headers=ig) as resp:
                as_document = await resp.json()
            for body, kind, status, reason in [
                ("not json", "application/json", 400, INVALID),
                (
                    '{"format": "sv-broker-checkpoints/1", "checkpoints": []}',
                    "application/json",
                    400,
                    "checkpoints_invalid",
                ),
                ('{"seq": true}', "application/x-ndjson", 400, INVALID),
                (published, "text/plain", 415, "unsupported_media_type"),
                ("x" * (4 * 1024 * 1024 + 1), "application/json", 413, "body_too_large"),
            ]:
                async with session.post(
                    broker.url + "/v1/audit/verify", data=io.BytesIO(body.encode()), headers=ig | {"Content-Type": kind}
                ) as resp:
                    assert (resp.status, (await resp.json())["reason"]) == (status, reason), body[:40]
    finally:
        await broker.stop()
    assert own["ok"] is True  # the store's own (re-signed) checkpoints vouch for it
    assert own["checkpoints_source"] == "store"
    for report in (external, as_document):
        assert report["ok"] is False
        assert report["checkpoints_source"] == "external"
        assert "entries were removed" in report["problem"]

    # The CLI, with the checkpoints kept elsewhere and the broker's public key obtained out of band.
    kid, key = load_or_create_broker_key(data / "broker-key.pem")
    (tmp_path / "pub.json").write_text(json.dumps(broker_public_jwks(kid, key)))
    args = ["--checkpoints", str(tmp_path / "kept-elsewhere.jsonl"), "--public-key", str(tmp_path / "pub.json")]
    assert await asyncio.to_thread(main, ["audit", "verify", "--db", str(data / "broker.db"), *args]) == 1
    assert await asyncio.to_thread(main, ["audit", "verify", "--db", str(data / "broker.db")]) == 0  # bare: "ok"


@pytest.mark.parametrize("forgery", ["truncated", "rebuilt"])
async def test_serve_refuses_a_store_behind_its_published_checkpoint(
    env: DemoEnvironment, tmp_path: Path, forgery: str
) -> None:
    data = tmp_path / "data"
    await run_some(env, data, messages=3, checkpoints=2)
    last = CheckpointLog(data / "checkpoints.jsonl").last()
    assert last is not None
    if forgery == "truncated":
        forge_shorter_store(data, keep=last.seq - 2)
        words = "entries were removed"
    else:
        conn = sqlite3.connect(data / "broker.db")
        conn.execute("UPDATE audit SET hash = ? WHERE seq = ?", ("f" * 64, last.seq))
        conn.commit()
        conn.close()
        words = "does not have the hash this broker signed"
    broker = Broker(settings_for(env, data))
    with pytest.raises(StartupError, match=words) as caught:
        await broker.start()
    assert "move" in str(caught.value)  # says what to do (with the IG lead)
    # and it wrote nothing: the forged store was not extended
    conn = sqlite3.connect(data / "broker.db")
    kinds = [k for (k,) in conn.execute("SELECT kind FROM audit ORDER BY seq DESC LIMIT 1")]
    conn.close()
    assert kinds != ["started"]


async def test_a_log_line_cut_short_by_a_crash_is_skipped_and_a_foreign_log_refused(
    env: DemoEnvironment, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    await run_some(env, data, messages=2, checkpoints=2)
    log = data / "checkpoints.jsonl"
    with log.open("a") as fh:
        fh.write('{"at":"2026-')  # the crash
    broker = Broker(settings_for(env, data))
    await broker.start()  # the last whole line is what counts
    await broker.stop()
    lines = log.read_text().splitlines()
    # a checkpoint signed by another key: not this broker's log
    real = parse_checkpoints_document(lines[0])[0]
    other = sign_checkpoint(
        Ed25519PrivateKey.generate(),
        real.kid,
        real.seq,
        real.head_hash,
        datetime.now(UTC),
    )
    with log.open("a") as fh:
        fh.write("\n" + checkpoint_line(other) + "\n")
    with pytest.raises(StartupError, match="not signed by this broker's key"):
        await Broker(settings_for(env, data)).start()


async def test_checkpoints_reach_every_partys_queue_on_rabbitmq(start_broker: Starter, env: DemoEnvironment) -> None:
    harness = await start_broker()
    broker = harness.broker
    assert broker.store is not None
    await broker.store.commit(CommitUnit())
    signed = await broker.checkpoint()
    assert signed is not None
    assert broker.registry is not None
    parties = sorted({*broker.registry.partners, *broker.registry.consumers})
    for party in parties:
        got = await harness.drain(harness.names.checkpoints_queue(party))
        assert [m.body.decode() for m in got] == [checkpoint_line(signed)], party
    assert (broker.settings.data_dir / "checkpoints.jsonl").read_text() == checkpoint_line(signed) + "\n"
