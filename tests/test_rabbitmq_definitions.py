"""``sv-broker rabbitmq definitions``: the file itself, then its effect on a real RabbitMQ (imported
into a throwaway vhost with throwaway users, connected to as each user, always deleted)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aio_pika
import aiormq.exceptions
import pytest

from broker.cli import main
from broker.ports.rabbitmq.topology import Names, declare_topology, topology_spec
from broker.rabbitmq_definitions import (
    HASHING_ALGORITHM,
    NOTHING,
    build_definitions,
    check_password,
    exactly,
    hash_password,
    one_of,
)
from broker.registry import Registry, load_registry
from broker.settings import REPO_POLICIES

# -- the file -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repo_registry() -> Registry:
    return load_registry(REPO_POLICIES, None)


def test_the_hash_is_rabbitmqs_sha256_scheme() -> None:
    # The worked example of the RabbitMQ docs ("Passwords", computing a hash): salt 908DC60A, "test12".
    assert hash_password("test12", bytes.fromhex("908DC60A")) == "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR"
    fresh = hash_password("test12")
    assert len(base64.b64decode(fresh)) == 36
    assert fresh != hash_password("test12")  # a new salt each time
    assert check_password("test12", fresh)
    assert not check_password("test13", fresh)


def test_the_topology_is_exactly_the_one_the_broker_declares(repo_registry: Registry) -> None:
    doc = build_definitions(repo_registry, vhost="v", prefix="sv", delivery_limit=7).document
    spec = topology_spec(Names("sv"), repo_registry, 7)
    assert [(e["name"], e["type"]) for e in doc["exchanges"]] == list(spec.exchanges)
    assert all(e["durable"] and not e["auto_delete"] and not e["internal"] for e in doc["exchanges"])
    assert [(q["name"], q["arguments"]) for q in doc["queues"]] == list(spec.queues)
    assert all(q["durable"] and not q["auto_delete"] for q in doc["queues"])
    assert [(b["source"], b["destination"], b["routing_key"]) for b in doc["bindings"]] == list(spec.bindings)
    assert {x["vhost"] for x in doc["exchanges"] + doc["queues"] + doc["bindings"] + doc["permissions"]} == {"v"}
    assert doc["vhosts"] == [{"name": "v"}]


def test_permissions_are_least_privilege_and_anchored(repo_registry: Registry) -> None:
    definitions = build_definitions(repo_registry, prefix="sv")
    names = Names("sv")
    perms = {p["user"]: p for p in definitions.document["permissions"]}
    topic = {p["user"]: p for p in definitions.document["topic_permissions"]}
    assert set(perms) == set(repo_registry.partners) | set(repo_registry.consumers) | {"sv-broker"}
    for partner in repo_registry.partners:
        assert perms[partner]["configure"] == NOTHING
        assert perms[partner]["write"] == exactly(names.ingest_exchange)
        assert perms[partner]["read"] == one_of(names.receipts_queue(partner), names.checkpoints_queue(partner))
        assert topic[partner]["exchange"] == names.ingest_exchange
        assert re.fullmatch(topic[partner]["write"], f"{partner}.ae_assault")
    for consumer in repo_registry.consumers:
        assert (perms[consumer]["configure"], perms[consumer]["write"]) == (NOTHING, NOTHING)
        assert perms[consumer]["read"] == one_of(names.consumer_queue(consumer), names.checkpoints_queue(consumer))
    # Anchored and escaped: a regex matches its one name, not a longer one or a "." wildcard.
    read = perms["derby-pubwatch"]["read"]
    assert re.search(read, "sv.receipts.derby-pubwatch")
    assert not re.search(read, "sv.receipts.derby-pubwatch-2")
    assert not re.search(read, "sv.receipts.chesterfield-pubwatch")
    assert not re.search(read, "svXreceiptsXderby-pubwatch")
    assert re.search(read, "sv.checkpoints.derby-pubwatch")
    assert not re.search(read, "sv.checkpoints.chesterfield-pubwatch")
    assert not re.search(read, "sv.checkpoints")
    assert not re.search(topic["derby-pubwatch"]["write"], "derby-pubwatchX.ae_assault")
    assert not re.search(perms["sv-broker"]["configure"], "other.ingest")
    assert re.search(perms["sv-broker"]["configure"], "sv.consumer.derby-vru")


def test_users_carry_only_salted_hashes(repo_registry: Registry) -> None:
    definitions = build_definitions(repo_registry)
    users = {u["name"]: u for u in definitions.document["users"]}
    text = json.dumps(definitions.document)
    assert len({c.password for c in definitions.credentials}) == len(definitions.credentials)
    for credential in definitions.credentials:
        assert credential.password not in text
        assert users[credential.user]["hashing_algorithm"] == HASHING_ALGORITHM
        assert users[credential.user]["tags"] == []
        assert check_password(credential.password, users[credential.user]["password_hash"])


def test_the_broker_user_cannot_be_a_party(repo_registry: Registry) -> None:
    with pytest.raises(ValueError, match="also a party id"):
        build_definitions(repo_registry, broker_user="derbyshire-police")


def test_the_command_writes_0600_files_and_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, secrets_file = tmp_path / "defs.json", tmp_path / "secret" / "passwords.toml"
    args = ["rabbitmq", "definitions", "--out", str(out), "--passwords-out", str(secrets_file), "--vhost", "sv-x"]
    assert main(args) == 0
    assert out.stat().st_mode & 0o777 == 0o600
    assert secrets_file.stat().st_mode & 0o777 == 0o600
    doc = json.loads(out.read_text(encoding="utf-8"))
    creds = tomllib.loads(secrets_file.read_text(encoding="utf-8"))
    assert creds["vhost"] == "sv-x"
    hashes = {u["name"]: u["password_hash"] for u in doc["users"]}
    assert {u["name"] for u in creds["user"]} == set(hashes)
    assert all(check_password(u["password"], hashes[u["name"]]) for u in creds["user"])
    before = (out.read_bytes(), secrets_file.read_bytes())
    capsys.readouterr()
    assert main([*args[:-2], "--vhost", "other"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (out.read_bytes(), secrets_file.read_bytes()) == before
    # Refused as a pair: with only the passwords file new, nothing is written either.
    assert main([*args[:4], "--passwords-out", str(tmp_path / "new.toml")]) == 2
    assert not (tmp_path / "new.toml").exists()


def test_keep_passwords_reuses_earlier_passwords(tmp_path: Path, repo_registry: Registry) -> None:
    first = ["rabbitmq", "definitions", "--out", str(tmp_path / "1.json"), "--passwords-out", str(tmp_path / "1.toml")]
    assert main(first) == 0
    again = ["rabbitmq", "definitions", "--out", str(tmp_path / "2.json"), "--passwords-out", str(tmp_path / "2.toml")]
    assert main([*again, "--keep-passwords", str(tmp_path / "1.toml")]) == 0
    one, two = (tomllib.loads((tmp_path / f"{n}.toml").read_text(encoding="utf-8"))["user"] for n in (1, 2))
    assert one == two
    hashes = {u["name"]: u["password_hash"] for u in json.loads((tmp_path / "2.json").read_text())["users"]}
    assert all(check_password(u["password"], hashes[u["name"]]) for u in two)


# -- against the real server ----------------------------------------------------------------------


def rabbitmqctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=False)


def _unavailable(message: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


DELIVERY_LIMIT = 3


@pytest.fixture
def imported(amqp_url: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A registry of two partners and two consumers with unique ids, its definitions imported into
    a unique vhost; everything (vhost, users) deleted afterwards."""
    if shutil.which("rabbitmqctl") is None:
        _unavailable("rabbitmqctl is not on PATH: cannot import definitions into the test RabbitMQ")
    tag = uuid.uuid4().hex[:8]
    parties = {
        "partner_a": f"tp-{tag}-a",
        "partner_b": f"tp-{tag}-b",
        "consumer_a": f"tc-{tag}-a",
        "consumer_b": f"tc-{tag}-b",
        "broker": f"tb-{tag}",
    }
    policy_dir, keys_dir = tmp_path / "policy", tmp_path / "keys"
    keys_dir.mkdir()
    policy_dir.mkdir()
    entries = [
        f'[[partner]]\nid = "{parties[p]}"\nname = "n"\norganisation = "o"\nkind = "health"\n'
        'event_types = ["ae_assault"]\n'
        for p in ("partner_a", "partner_b")
    ] + [
        f'[[consumer]]\nid = "{parties[c]}"\nname = "n"\norganisation = "o"\nrole = "analyst"\n'
        for c in ("consumer_a", "consumer_b")
    ]
    (policy_dir / "parties.toml").write_text("\n".join(entries), encoding="utf-8")
    vhost, prefix = f"sv-test-{tag}", f"svt{tag}"
    out, pw = tmp_path / "defs.json", tmp_path / "passwords.toml"
    code = main(
        [
            *("rabbitmq", "definitions", "--out", str(out), "--passwords-out", str(pw), "--vhost", vhost),
            *("--prefix", prefix, "--broker-user", parties["broker"], "--delivery-limit", str(DELIVERY_LIMIT)),
            *("--policy-dir", str(policy_dir), "--keys-dir", str(keys_dir)),
        ]
    )
    assert code == 0
    passwords = {u["name"]: u["password"] for u in tomllib.loads(pw.read_text(encoding="utf-8"))["user"]}
    # The packaged rabbitmqctl runs as the rabbitmq user from /var/lib/rabbitmq, so it can read
    # neither a relative path nor our 0600 file in a 0700 temporary directory (and 3.10 does not
    # read definitions from stdin): hand it a readable absolute copy of these throwaway hashes.
    fd, readable = tempfile.mkstemp(prefix="sv-test-definitions-", suffix=".json")
    os.fchmod(fd, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(out.read_bytes())
    result = rabbitmqctl("import_definitions", readable)
    os.unlink(readable)
    try:
        if result.returncode != 0:
            problem = f"rabbitmqctl import_definitions failed: {result.stderr.strip() or result.stdout.strip()}"
            if rabbitmqctl("status").returncode != 0:
                _unavailable(f"{problem} (and rabbitmqctl cannot reach the node)")
            pytest.fail(problem)
        server = urlsplit(amqp_url)
        host = f"{server.hostname}:{server.port or 5672}"

        def url(user: str) -> str:
            return f"amqp://{user}:{passwords[user]}@{host}/{quote(vhost, safe='')}"

        registry = load_registry(policy_dir, keys_dir)
        yield {"names": Names(prefix), "url": url, "registry": registry, "vhost": vhost, **parties}
    finally:
        rabbitmqctl("delete_vhost", vhost)
        for user in passwords:
            rabbitmqctl("delete_user", user)


async def _refused(
    connection: aio_pika.abc.AbstractConnection, expected: type[BaseException], action: Any
) -> BaseException:
    """Run ``action(channel)`` on a fresh channel and return the channel error it raised."""
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    with pytest.raises(expected) as caught:
        await action(channel)
    return caught.value


def _message(body: bytes, user_id: str | None) -> aio_pika.Message:
    return aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, user_id=user_id)


async def _check_permissions(env: dict[str, Any]) -> None:
    names: Names = env["names"]
    pa, pb, ca, cb, broker = env["partner_a"], env["partner_b"], env["consumer_a"], env["consumer_b"], env["broker"]
    refused = aiormq.exceptions.ChannelAccessRefused
    precondition = aiormq.exceptions.ChannelPreconditionFailed

    # The broker owns the prefix: it re-declares the imported topology with its own code (the
    # arguments match, or RabbitMQ would refuse with PRECONDITION_FAILED) and delivers a record.
    async with await aio_pika.connect(env["url"](broker), timeout=10) as connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await declare_topology(channel, names, env["registry"], DELIVERY_LIMIT)
        deliver = await channel.get_exchange(names.deliver_exchange, ensure=False)
        await deliver.publish(_message(b"record-for-a", None), routing_key=ca, mandatory=True, timeout=10)

    # Consumer A reads its own queue, and nothing of consumer B's (neither basic.get nor consume).
    async with await aio_pika.connect(env["url"](ca), timeout=10) as connection:
        channel = await connection.channel()
        own = await channel.get_queue(names.consumer_queue(ca), ensure=False)
        got = await own.get(no_ack=True, fail=False, timeout=10)
        assert got is not None
        assert got.body == b"record-for-a"

        async def get_b(ch: aio_pika.abc.AbstractChannel) -> None:
            queue = await ch.get_queue(names.consumer_queue(cb), ensure=False)
            await queue.get(no_ack=True, fail=False, timeout=10)

        async def ignore(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            return None

        async def consume_b(ch: aio_pika.abc.AbstractChannel) -> None:
            queue = await ch.get_queue(names.consumer_queue(cb), ensure=False)
            await queue.consume(ignore, no_ack=True, timeout=10)

        async def publish_to_deliver(ch: aio_pika.abc.AbstractChannel) -> None:
            deliver = await ch.get_exchange(names.deliver_exchange, ensure=False)
            await deliver.publish(_message(b"x", ca), routing_key=cb, mandatory=True, timeout=10)

        for action, resource in (
            (get_b, names.consumer_queue(cb)),
            (consume_b, names.consumer_queue(cb)),
            (publish_to_deliver, names.deliver_exchange),
        ):
            error = str(await _refused(connection, refused, action))
            assert "ACCESS_REFUSED" in error
            assert f"'{resource}'" in error

    # Partner A publishes to the ingest exchange as itself, with confirms.
    async with await aio_pika.connect(env["url"](pa), timeout=10) as connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        ingest = await channel.get_exchange(names.ingest_exchange, ensure=False)
        await ingest.publish(_message(b"event-a", pa), routing_key=f"{pa}.ae_assault", mandatory=True, timeout=10)
        own = await channel.get_queue(names.receipts_queue(pa), ensure=False)
        assert await own.get(no_ack=True, fail=False, timeout=10) is None  # may read its own receipts

        def publish(exchange: str, user_id: str | None, key: str) -> Any:
            async def action(ch: aio_pika.abc.AbstractChannel) -> None:
                target = await ch.get_exchange(exchange, ensure=False)
                await target.publish(_message(b"forged", user_id), routing_key=key, mandatory=True, timeout=10)

            return action

        async def get_receipts_b(ch: aio_pika.abc.AbstractChannel) -> None:
            queue = await ch.get_queue(names.receipts_queue(pb), ensure=False)
            await queue.get(no_ack=True, fail=False, timeout=10)

        async def declare(ch: aio_pika.abc.AbstractChannel) -> None:
            await ch.declare_queue(f"{names.prefix}.ingest.mine", durable=True)

        # Publishing as partner B: RabbitMQ checks user_id against the authenticated user.
        forged = await _refused(connection, precondition, publish(names.ingest_exchange, pb, f"{pa}.ae_assault"))
        assert "PRECONDITION_FAILED" in str(forged)
        assert "user_id" in str(forged)
        # Publishing under partner B's route (topic permission), to the deliver exchange, or to
        # the default exchange straight into a queue.
        for action, resource in (
            (publish(names.ingest_exchange, pa, f"{pb}.ae_assault"), f"topic '{pb}.ae_assault'"),
            (publish(names.deliver_exchange, pa, ca), f"'{names.deliver_exchange}'"),
            (publish("", pa, names.consumer_queue(ca)), "'amq.default'"),
            (get_receipts_b, f"'{names.receipts_queue(pb)}'"),
            (declare, f"'{names.prefix}.ingest.mine'"),
        ):
            error = str(await _refused(connection, refused, action))
            assert "ACCESS_REFUSED" in error
            assert resource in error

    # What partner A published arrived, stamped with its user id; the forgeries did not.
    async with await aio_pika.connect(env["url"](broker), timeout=10) as connection:
        channel = await connection.channel()
        queue = await channel.get_queue(names.ingest_queue, ensure=False)
        first = await queue.get(no_ack=True, fail=False, timeout=10)
        assert first is not None
        assert (first.body, first.user_id, first.routing_key) == (b"event-a", pa, f"{pa}.ae_assault")
        assert await queue.get(no_ack=True, fail=False, timeout=10) is None


def test_imported_definitions_enforce_least_privilege(imported: dict[str, Any]) -> None:
    asyncio.run(_check_permissions(imported))


def test_the_quarantine_queue_drops_messages_after_the_quarantine_retention(imported: dict[str, Any]) -> None:
    # Issue 11 item 14: refused messages on RabbitMQ are kept no longer than in the store. The
    # policy is RabbitMQ's own, applied to the imported queue (read back from the node).
    names: Names = imported["names"]
    result = rabbitmqctl("list_queues", "-p", imported["vhost"], "--no-table-headers", "name", "policy")
    assert result.returncode == 0, result.stderr
    rows = dict(line.split("\t", 1) for line in result.stdout.splitlines() if "\t" in line)
    assert rows[names.quarantine_queue].endswith("-quarantine-retention")
    assert [name for name, pol in rows.items() if pol.strip() and name != names.quarantine_queue] == []
    policies = rabbitmqctl("list_policies", "-p", imported["vhost"], "--no-table-headers")
    assert policies.returncode == 0, policies.stderr
    [line] = [line for line in policies.stdout.splitlines() if "-quarantine-retention" in line]
    assert f'"message-ttl":{30 * 86_400_000}' in line.replace(" ", "")
