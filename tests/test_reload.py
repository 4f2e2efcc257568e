"""Issue 12 item 5: the registry, keys and agreements change without a restart.

A valid change takes effect for the next batch (a revoked key is refused from then on; a new
revision of an agreement governs the next release, and no message is lost or decided under a
mixture of the two sets); an invalid change keeps the running set, reports every problem and is
audited. ``sv-broker reload`` checks, then signals a running ``sv-broker serve``.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import aio_pika
import aiohttp

from adapters.synthetic import SyntheticGenerator
from broker.demo import DemoEnvironment
from broker.ports.rabbitmq.topology import Names
from broker.service import Broker
from broker.settings import Settings
from broker.stages.outcome import Status
from broker.stages.types import Inbound
from schemas.signing import b64u_encode
from tests import test_broker_amqp
from tests.helpers import audit_entries
from tests.streams import Host

start_broker = test_broker_amqp.start_broker
LOW_ORDER = bytes.fromhex("01" + "00" * 31)  # the identity point: a signature would verify for anyone


def own_copy(env: DemoEnvironment, tmp_path: Path) -> tuple[Path, Path]:
    """A policy directory and a keys directory of this test's own, to edit while a broker runs."""
    policy, keys = tmp_path / "policies", tmp_path / "keys"
    shutil.copytree(env.policy_dir, policy)
    shutil.copytree(env.keys_dir, keys, ignore=shutil.ignore_patterns("private"))
    return policy, keys


def revoke(keys: Path, kid: str) -> None:
    path = keys / "partners.toml"
    text = path.read_text(encoding="utf-8")
    entry = re.compile(rf'(kid = "{re.escape(kid)}"\n(?:.*\n)*?)revoked = false')
    changed = entry.sub(r"\1revoked = true", text, count=1)
    assert changed != text
    path.write_text(changed, encoding="utf-8")


def three_mistakes(policy: Path, keys: Path) -> dict[str, str]:
    """Independent mistakes in three files: a malformed key entry in the key file, a low-order key
    in a second key file, and an agreement's flow to a consumer nobody registered. Returns the
    reason code each file's problem must carry."""
    partners = keys / "partners.toml"
    text = partners.read_text(encoding="utf-8")
    entry = re.compile(r'(kid = "chesterfield-pubwatch-k1"\n(?:.*\n)*?)public_key = "[^"]*"')
    broken = entry.sub(r'\1public_key = "not base64!"', text, count=1)
    assert broken != text
    partners.write_text(broken, encoding="utf-8")
    (keys / "extra.toml").write_text(
        f'[[key]]\nkid = "extra-k1"\npartner = "derby-pubwatch"\npublic_key = "{b64u_encode(LOW_ORDER)}"\n'
        "valid_from = 2026-01-01\n",
        encoding="utf-8",
    )
    agreement = policy / "agreements" / "dsa-nte-police-licensing-2026.toml"
    text = agreement.read_text(encoding="utf-8")
    broken = text.replace('"derbyshire-police-licensing"', '"nobody-registered"')
    assert broken != text
    agreement.write_text(broken, encoding="utf-8")
    return {str(partners): "key_malformed", str(keys / "extra.toml"): "key_low_order", str(agreement): "unknown_party"}


def assert_every_mistake(lines: list[str] | tuple[str, ...], expected: dict[str, str]) -> None:
    """Each file's problem is among ``lines`` (a line names the file, the entry and the code)."""
    for path, code in expected.items():
        assert any(path in line and code in line for line in lines), (path, code, lines)
    assert any("chesterfield-pubwatch-k1" in line for line in lines)
    assert any("extra-k1" in line for line in lines)


def bump_revision(policy: Path, agreement: str) -> int:
    path = policy / "agreements" / f"{agreement}.toml"
    text = path.read_text(encoding="utf-8")
    match = re.search(r"^revision = (\d+)$", text, re.M)
    assert match is not None
    new = int(match.group(1)) + 1
    path.write_text(text.replace(match.group(0), f"revision = {new}", 1), encoding="utf-8")
    return new


def broker_on(env: DemoEnvironment, policy: Path, keys: Path, data: Path) -> Broker:
    return Broker(Settings(policy_dir=policy, keys_dir=keys, secrets_file=env.secrets_file, data_dir=data, http_port=0))


def body(env: DemoEnvironment, partner: str, event_type: str, key: str, seed: int) -> bytes:
    gen = SyntheticGenerator(seed=seed)
    record = gen.for_partner(partner, event_type)
    return env.signers[partner].sign_bytes(event_type, record.data(), source_key=key)


async def test_a_revoked_key_is_refused_from_the_next_batch_without_a_restart(
    env: DemoEnvironment, tmp_path: Path
) -> None:
    policy, keys = own_copy(env, tmp_path)
    broker = broker_on(env, policy, keys, tmp_path / "data")
    await broker.start()
    try:
        assert broker.pipeline is not None
        kid = env.signers["derby-pubwatch"].kid
        [before] = await broker.pipeline.process([Inbound(body(env, "derby-pubwatch", "nte_incident", "R-1", 1))])
        assert before.status is Status.ACCEPTED
        old = broker.fingerprint
        revoke(keys, kid)
        report = await broker.reload()
        assert report.ok, report.problems
        assert report.before == old != report.after == broker.fingerprint
        [after] = await broker.pipeline.process([Inbound(body(env, "derby-pubwatch", "nte_incident", "R-2", 2))])
        assert after.status is Status.REJECTED
        assert after.reason == "key_revoked"  # type: ignore[union-attr]
    finally:
        await broker.stop()
    [changed] = audit_entries(tmp_path / "data" / "broker.db", "config_changed")
    assert (changed["config_sha256_before"], changed["config_sha256"]) == (report.before, report.after)


async def test_an_invalid_change_keeps_the_running_set_reports_every_problem_and_is_audited(
    env: DemoEnvironment, tmp_path: Path
) -> None:
    policy, keys = own_copy(env, tmp_path)
    broker = broker_on(env, policy, keys, tmp_path / "data")
    await broker.start()
    try:
        assert broker.pipeline is not None
        running = broker.fingerprint
        path = policy / "agreements" / "dsa-nte-police-licensing-2026.toml"
        text = path.read_text(encoding="utf-8")
        # two mistakes in one file: an unknown setting, and a flow to a consumer nobody registered
        broken = text.replace("revision = 1", "revision = 2\nretention = 5", 1).replace(
            '"derbyshire-police-licensing"', '"nobody-registered"'
        )
        assert broken != text
        path.write_text(broken, encoding="utf-8")
        report = await broker.reload()
        assert not report.ok
        assert len(report.problems) >= 2, report.problems
        assert all(str(path) in p for p in report.problems)
        assert broker.fingerprint == running
        # the old set still governs: a licensing release still happens
        [outcome] = await broker.pipeline.process([Inbound(body(env, "derby-pubwatch", "nte_incident", "I-1", 3))])
        assert outcome.status is Status.ACCEPTED
        assert any(r.consumer == "derbyshire-police-licensing" for r in outcome.releases)  # type: ignore[union-attr]
    finally:
        await broker.stop()
    [rejected] = audit_entries(tmp_path / "data" / "broker.db", "config_rejected")
    assert rejected["config_sha256"] == running
    assert rejected["problems"] >= 2
    assert audit_entries(tmp_path / "data" / "broker.db", "config_changed") == []


async def test_a_reload_reports_every_problem_of_the_registry_and_the_agreements_together(
    env: DemoEnvironment, tmp_path: Path
) -> None:
    policy, keys = own_copy(env, tmp_path)
    broker = broker_on(env, policy, keys, tmp_path / "data")
    await broker.start()
    try:
        assert broker.pipeline is not None
        running = broker.fingerprint
        expected = three_mistakes(policy, keys)
        report = await broker.reload()
        assert not report.ok
        assert_every_mistake(report.problems, expected)
        assert broker.fingerprint == running
        # the running set stays in force: the pub-watch's key, and the very key the new set breaks
        for partner, event_type, seed in (
            ("derby-pubwatch", "nte_incident", 41),
            ("chesterfield-pubwatch", "nte_incident", 42),
        ):
            [outcome] = await broker.pipeline.process([Inbound(body(env, partner, event_type, f"E-{seed}", seed))])
            assert outcome.status is Status.ACCEPTED, (partner, outcome)
    finally:
        await broker.stop()
    [rejected] = audit_entries(tmp_path / "data" / "broker.db", "config_rejected")
    assert rejected["config_sha256"] == running
    assert rejected["problems"] == len(report.problems) >= 3
    assert set(expected.values()) <= set(rejected["codes"])
    assert audit_entries(tmp_path / "data" / "broker.db", "config_changed") == []


def test_the_cli_a_running_serve_and_a_refused_start_report_every_problem(env: DemoEnvironment, tmp_path: Path) -> None:
    policy, keys = own_copy(env, tmp_path)
    common = ["--policy-dir", str(policy), "--keys-dir", str(keys), "--secrets", str(env.secrets_file)]
    host = Host("several", [sys.executable, "-m", "broker.cli", "serve", *common, "--port", "0"], tmp_path)
    host.start()
    data = tmp_path / "several"
    try:
        expected = three_mistakes(policy, keys)
        args = [sys.executable, "-m", "broker.cli", "reload", *common, "--data-dir", str(data)]
        refused = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
        assert refused.returncode == 2
        lines = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
        assert_every_mistake(lines, expected)
        assert f"{len(lines)} problem(s) (" in refused.stderr
        assert all(code in refused.stderr.splitlines()[-1] for code in expected.values())
        assert audit_entries(data / "broker.db", "config_rejected") == []  # nothing was signalled
        assert host.proc is not None
        host.proc.send_signal(signal.SIGHUP)  # the broker checks for itself (as after a race)
        rejected: list[dict[str, object]] = []
        for _ in range(600):
            if rejected := audit_entries(data / "broker.db", "config_rejected"):
                break
            time.sleep(0.05)
        [entry] = rejected
        assert entry["problems"] == len(lines)
        assert set(expected.values()) <= set(entry["codes"])  # type: ignore[arg-type]
        log = host.log_path.read_text(encoding="utf-8")
        for path in expected:
            assert path in log
        assert host.alive()
    finally:
        assert host.stop() == 0
    # A start on the same files is refused with every problem, too.
    args = [sys.executable, "-m", "broker.cli", "serve", *common, "--port", "0", "--data-dir", str(tmp_path / "fresh")]
    start = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert start.returncode == 2
    lines = [line for line in start.stderr.splitlines() if line.startswith("error: ")]
    assert_every_mistake(lines, expected)
    assert f"{len(lines)} problem(s): the broker did not start" in start.stderr


async def test_a_new_revision_mid_stream_loses_nothing_and_never_mixes_revisions(
    env: DemoEnvironment, tmp_path: Path
) -> None:
    policy, keys = own_copy(env, tmp_path)
    broker = broker_on(env, policy, keys, tmp_path / "data")
    await broker.start()
    assert broker.pipeline is not None
    pipeline = broker.pipeline
    bodies = [body(env, "derby-pubwatch", "nte_incident", f"S-{n}", 100 + n) for n in range(120)]
    new_revision = bump_revision(policy, "dsa-nte-police-licensing-2026")
    outcomes = []

    async def stream() -> None:
        for start in range(0, len(bodies), 8):
            outcomes.extend(await pipeline.process([Inbound(b) for b in bodies[start : start + 8]]))
            await asyncio.sleep(0)

    try:
        streaming = asyncio.create_task(stream())
        await asyncio.sleep(0.05)
        report = await broker.reload()
        assert report.ok, report.problems
        await streaming
        [late] = await pipeline.process([Inbound(body(env, "derby-pubwatch", "nte_incident", "S-late", 999))])
    finally:
        await broker.stop()
    assert len(outcomes) == len(bodies)
    assert all(o.status is Status.ACCEPTED for o in outcomes)  # nothing lost
    licensing = [
        r.agreement_revision
        for o in outcomes
        for r in o.releases  # type: ignore[union-attr]
        if r.agreement_id == "dsa-nte-police-licensing-2026"
    ]
    assert len(licensing) == len(bodies)  # every one released once
    # revisions only ever go forward in stream order: old ones, then new ones (never a mix back)
    assert licensing == sorted(licensing)
    assert {r.agreement_revision for r in late.releases if r.agreement_id == "dsa-nte-police-licensing-2026"} == {  # type: ignore[union-attr]
        new_revision
    }


def test_sv_broker_reload_checks_then_signals_a_running_serve(env: DemoEnvironment, tmp_path: Path) -> None:
    policy, keys = own_copy(env, tmp_path)
    common = ["--policy-dir", str(policy), "--keys-dir", str(keys), "--secrets", str(env.secrets_file)]
    host = Host("reload", [sys.executable, "-m", "broker.cli", "serve", *common, "--port", "0"], tmp_path)
    host.start()
    data = tmp_path / "reload"

    def reload_cli() -> subprocess.CompletedProcess[str]:
        args = [sys.executable, "-m", "broker.cli", "reload", *common, "--data-dir", str(data)]
        return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)

    async def post(payload: bytes) -> dict[str, object]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(host.url + "/v1/events", data=payload, headers={"Content-Type": "application/json"}) as r,
        ):
            answer: dict[str, object] = await r.json()
            return answer

    try:
        assert asyncio.run(post(body(env, "derby-pubwatch", "nte_incident", "C-1", 7)))["status"] == "accepted"
        # an invalid file: the command reports it and signals nothing
        (keys / "broken.toml").write_text("[[key]]\nkid = 'x'\n", encoding="utf-8")
        refused = reload_cli()
        assert refused.returncode == 2
        assert "broken.toml" in refused.stderr
        (keys / "broken.toml").unlink()
        revoke(keys, env.signers["derby-pubwatch"].kid)
        done = reload_cli()
        assert done.returncode == 0, done.stderr
        for _ in range(200):  # the broker reloads on its own loop, right after the signal
            if audit_entries(data / "broker.db", "config_changed"):
                break
            asyncio.run(asyncio.sleep(0.05))
        answer = asyncio.run(post(body(env, "derby-pubwatch", "nte_incident", "C-2", 8)))
        assert (answer["status"], answer["reason"]) == ("rejected", "key_revoked")
        assert host.alive()
    finally:
        assert host.stop() == 0
    assert len(audit_entries(data / "broker.db", "config_changed")) == 1


async def test_over_rabbitmq_a_reload_revokes_a_key_and_gives_a_new_consumer_its_queue(
    amqp_url: str, amqp_prefix: str, env: DemoEnvironment, tmp_path: Path
) -> None:
    policy, keys = own_copy(env, tmp_path)
    settings = Settings(
        policy_dir=policy,
        keys_dir=keys,
        secrets_file=env.secrets_file,
        data_dir=tmp_path / "data",
        http_port=0,
        amqp_url=amqp_url,
        amqp_prefix=amqp_prefix,
    )
    broker = Broker(settings, user_map={"guest": "derby-pubwatch"})
    await broker.start()
    names = Names(amqp_prefix)
    new_queue = names.consumer_queue("derby-new-analysts")
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(names.ingest_exchange)

        async def publish(key: str, seed: int) -> None:
            payload = body(env, "derby-pubwatch", "nte_incident", key, seed)
            message = aio_pika.Message(payload, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, user_id="guest")
            await exchange.publish(message, "derby-pubwatch.nte_incident", mandatory=True, timeout=10)

        async def processed(count: int) -> None:
            assert broker.pipeline is not None
            for _ in range(600):
                if broker.pipeline.stats.processed >= count:
                    return
                await asyncio.sleep(0.05)
            raise AssertionError("not processed")

        await publish("Q-1", 21)
        await processed(1)
        revoke(keys, env.signers["derby-pubwatch"].kid)
        parties = policy / "parties.toml"
        parties.write_text(
            parties.read_text(encoding="utf-8")
            + '\n[[consumer]]\nid = "derby-new-analysts"\nname = "n"\norganisation = "o"\nrole = "analyst"\n',
            encoding="utf-8",
        )
        report = await broker.reload()
        assert report.ok, report.problems
        await channel.get_queue(new_queue, ensure=False)  # passive: fails unless the reload declared it
        await publish("Q-2", 22)
        await processed(2)
        queue = await channel.get_queue(names.receipts_queue("derby-pubwatch"), ensure=False)
        receipts = []
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            receipts.extend(json.loads(message.body)["receipts"])
        assert [(r["status"], r.get("reason")) for r in receipts] == [("accepted", None), ("rejected", "key_revoked")]
    finally:
        await broker.stop()
        cleanup = await connection.channel()
        await cleanup.queue_delete(new_queue)  # not in the repository's registry: the fixture would miss it
        await connection.close()


def test_with_workers_every_process_reloads_before_the_reload_is_audited(
    amqp_url: str, amqp_prefix: str, env: DemoEnvironment, tmp_path: Path
) -> None:
    # Three processes consuming one ingest queue, a few messages at a time each (so each worker
    # takes its share); SIGHUP (through sv-broker reload) reaches the primary only.
    policy, keys = own_copy(env, tmp_path)
    common = ["--policy-dir", str(policy), "--keys-dir", str(keys), "--secrets", str(env.secrets_file)]
    amqp = ["--amqp-url", amqp_url, "--amqp-prefix", amqp_prefix, "--no-user-id-check"]
    serve = [sys.executable, "-m", "broker.cli", "serve", *common, *amqp, "--port", "0", "--workers", "3"]
    host = Host("workers", [*serve, "--prefetch", "2", "--batch-max", "2"], tmp_path)
    host.start()
    data = tmp_path / "workers"
    db = data / "broker.db"
    kid = env.signers["derby-pubwatch"].kid
    names = Names(amqp_prefix)

    def publish(bodies: list[bytes]) -> None:
        async def run() -> None:
            connection = await aio_pika.connect(amqp_url)
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(names.ingest_exchange)
            for payload in bodies:
                message = aio_pika.Message(payload, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
                await exchange.publish(message, "derby-pubwatch.nte_incident", mandatory=True, timeout=10)
            await connection.close()

        asyncio.run(run())

    def decided(ids: set[str]) -> dict[str, dict[str, object]]:
        out = {}
        for entry in audit_entries(db, None):
            if entry.get("message_id") in ids and entry["kind"] in ("rejected", "released", "withheld"):
                out[entry["message_id"]] = entry
        return out

    def wait_for(ids: set[str]) -> dict[str, dict[str, object]]:
        for _ in range(1200):
            if len(found := decided(ids)) == len(ids):
                return found
            time.sleep(0.05)
        raise AssertionError(f"decided {len(decided(ids))} of {len(ids)}")

    try:
        assert host.proc is not None
        children = Path(f"/proc/{host.proc.pid}/task/{host.proc.pid}/children").read_text().split()
        workers = {int(pid) for pid in children}
        assert len(workers) == 2
        before = [body(env, "derby-pubwatch", "nte_incident", f"W-{n}", 500 + n) for n in range(12)]
        publish(before)
        assert {e["kind"] for e in wait_for({json.loads(b)["id"] for b in before}).values()} == {"released"}

        revoke(keys, kid)
        args = [sys.executable, "-m", "broker.cli", "reload", *common, "--data-dir", str(data)]
        done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        changed: list[dict[str, object]] = []
        for _ in range(1200):
            if changed := audit_entries(db, "config_changed"):
                break
            time.sleep(0.05)
        [entry] = changed
        # the primary audits the reload only once both workers said they put the new set in force
        assert (entry["workers"], entry["workers_reloaded"]) == (2, 2)
        lines = [json.loads(line) for line in host.log_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        reloaded = {
            line["pid"]: line["role"]
            for line in lines
            if line.get("event") == "configuration_reloaded" and line.get("config_sha256") == entry["config_sha256"]
        }
        assert reloaded == {host.proc.pid: "primary", **dict.fromkeys(workers, "ingest-worker")}

        # Everything sent after the audit entry under the revoked key is refused, by every process.
        after = [body(env, "derby-pubwatch", "nte_incident", f"X-{n}", 700 + n) for n in range(60)]
        publish(after)
        outcomes = wait_for({json.loads(b)["id"] for b in after})
        assert {(e["kind"], e.get("reason")) for e in outcomes.values()} == {("rejected", "key_revoked")}
        assert host.alive()
        assert set(Path(f"/proc/{host.proc.pid}/task/{host.proc.pid}/children").read_text().split()) == set(children)
    finally:
        assert host.stop() == 0
    # No release of the old set's key after the reload's entry, by any process.
    chain = audit_entries(db, None)
    at = next(i for i, e in enumerate(chain) if e["kind"] == "config_changed")
    assert [e for e in chain[at:] if e["kind"] == "released"] == []
