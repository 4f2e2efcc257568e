"""The demo: the whole system on one machine, keys and secrets generated at run time.

Partners' synthetic adapters sign events of all four types (Friday/Saturday night peaks, ages
11-25, the named districts) and send them to a broker started on a free port; a few bad messages
are mixed in; the demo then shows what each consumer received, what was refused and why, and
verifies the audit trail.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from adapters.signer import Signer, generate_keyring
from adapters.synthetic import SyntheticGenerator
from broker.audit.chain import ChainReport
from broker.pipeline.trail import verify_store
from broker.policy.renewal import Renewal, renewed_copy
from broker.ports.store import StoreCounts
from broker.ports.stores import store_for
from broker.registry import load_registry
from broker.service import Broker
from broker.settings import REPO_POLICIES, Settings
from schemas import envelope
from schemas.keyfile import KeyEntry, public_bytes


def partner_ids(policy_dir: Path = REPO_POLICIES) -> tuple[str, ...]:
    """Every partner in the registry (keys are generated for each at run time)."""
    return tuple(sorted(load_registry(policy_dir, policy_dir / "keys").partners))


Print = Callable[[str], None]


@dataclass
class DemoEnvironment:
    """Keys, secrets and the policy directory for a broker run, all made at run time."""

    workdir: Path
    signers: dict[str, Signer]
    keys_dir: Path
    secrets_file: Path
    revoked: Signer
    stranger: Signer  # a key the registry has never heard of
    agreement_ids: list[str] = field(default_factory=list)
    policy_dir: Path = REPO_POLICIES  # a copy of the shipped policies, sample agreements renewed
    renewals: list[Renewal] = field(default_factory=list)

    def renewal_lines(self) -> list[str]:
        """What the run changed in the sample agreements, to be said, not hidden."""
        if not self.renewals:
            return []
        return [
            "The shipped sample agreements would not be in force today (a broker releases nothing under "
            "an agreement past its review date), so this run uses a copy with their dates moved:"
        ] + [f"  {r.describe()}" for r in self.renewals]


def agreement_ids(policy_dir: Path) -> list[str]:
    import tomllib

    ids = []
    for path in sorted((policy_dir / "agreements").glob("*.toml")):
        with path.open("rb") as fh:
            ids.append(str(tomllib.load(fh)["id"]))
    return ids


def prepare_environment(workdir: Path, policy_dir: Path = REPO_POLICIES, today: date | None = None) -> DemoEnvironment:
    # The demo and the tests run on a copy of the policies in which sample agreements that would
    # not be in force today are renewed (all dates moved together, said in the output): they work
    # on any date, with the real clock (broker/policy/renewal.py).
    renewals = renewed_copy(policy_dir, workdir / "policies", today or datetime.now(UTC).date())
    policy_dir = workdir / "policies"
    keys_dir = workdir / "keys"
    signers = generate_keyring(partner_ids(policy_dir), keys_dir)
    # A second police key, revoked: signatures under it must be refused.
    revoked_key = Ed25519PrivateKey.generate()
    now = datetime.now(UTC).replace(microsecond=0)
    revoked_entry = KeyEntry(
        "derbyshire-police-k0", "derbyshire-police", public_bytes(revoked_key), now - timedelta(days=400), revoked=True
    )
    with (keys_dir / "partners.toml").open("a", encoding="utf-8") as fh:
        fh.write("\n" + revoked_entry.to_toml())
    ids = agreement_ids(policy_dir)
    secrets_file = workdir / "secrets.toml"
    fd = os.open(secrets_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write("# generated for this demo run only\n[pseudonym_secrets]\n")
        for agreement_id in ids:
            fh.write(f'"{agreement_id}" = "{secrets.token_hex(32)}"\n')
    return DemoEnvironment(
        workdir=workdir,
        signers=signers,
        keys_dir=keys_dir,
        secrets_file=secrets_file,
        revoked=Signer.create("derbyshire-police", "derbyshire-police-k0", revoked_key),
        stranger=Signer.create("derbyshire-police", "derbyshire-police-k9", Ed25519PrivateKey.generate()),
        agreement_ids=ids,
        policy_dir=policy_dir,
        renewals=renewals,
    )


def bad_messages(env: DemoEnvironment, gen: SyntheticGenerator) -> list[tuple[str, bytes]]:
    """A few messages every broker must refuse, each for its own reason."""
    out: list[tuple[str, bytes]] = []
    rec = gen.police_sv_offence()
    doc = env.signers["derbyshire-police"].sign("police_sv_offence", rec.data(), source_key=rec.source_key)
    # altered after signing (always to a different district than the one signed)
    doc["data"]["district"] = "E07000035" if doc["data"]["district"] != "E07000035" else "E07000036"
    out.append(("tampered after signing", envelope.encode(doc)))
    rec = gen.police_sv_offence()
    out.append(
        (
            "signed with an unregistered key",
            env.stranger.sign_bytes("police_sv_offence", rec.data(), source_key=rec.source_key),
        )
    )
    rec = gen.police_sv_offence()
    out.append(
        (
            "signed with a revoked key",
            env.revoked.sign_bytes("police_sv_offence", rec.data(), source_key=rec.source_key),
        )
    )
    rec = gen.ae_assault()
    data = rec.data() | {"nhs_number": "9434765919"}  # a (synthetic) direct identifier
    out.append(
        (
            "A&E export carrying an NHS number",
            env.signers["uhdb-royal-derby-ed"].sign_bytes("ae_assault", data, source_key=rec.source_key),
        )
    )
    rec = gen.school_exclusion()
    out.append(
        (
            "police key used for a school exclusion",
            env.signers["derbyshire-police"].sign_bytes("school_exclusion", rec.data(), source_key=rec.source_key),
        )
    )
    out.append(("not JSON at all", b'{"specversion": "1.0", "id": '))
    return out


def good_messages(env: DemoEnvironment, gen: SyntheticGenerator, count: int) -> list[tuple[str, bytes]]:
    return [
        (rec.partner, env.signers[rec.partner].sign_bytes(rec.event.EVENT_TYPE, rec.data(), source_key=rec.source_key))
        for rec in gen.mixed(count)
    ]


def lifecycle_messages(env: DemoEnvironment, gen: SyntheticGenerator) -> tuple[list[bytes], list[bytes]]:
    """Two Derby A&E attendances, then their later lives: the first corrected (its district moved to
    Chesterfield: the Derby CSP loses it, the county CSP gains it), the second withdrawn."""
    partner = "uhdb-royal-derby-ed"
    signer = env.signers[partner]
    first, second = (gen.ae_assault(partner) for _ in range(2))
    derby = {"district": "E06000015"}
    originals = [
        signer.sign_bytes("ae_assault", rec.data() | derby, source_key=f"DEMO-{n}")
        for n, rec in enumerate((first, second))
    ]
    later = [
        signer.sign_bytes("ae_assault", first.data() | {"district": "E07000034"}, source_key="DEMO-0", revision=2),
        signer.sign_bytes("ae_assault", {}, source_key="DEMO-1", revision=2, withdrawn="sent_in_error"),
    ]
    return originals, later


async def _post_all(url: str, bodies: list[bytes], concurrency: int = 32) -> list[tuple[int, dict[str, Any]]]:
    results: list[tuple[int, dict[str, Any]]] = [(0, {})] * len(bodies)
    semaphore = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as session:

        async def post(i: int, body: bytes) -> None:
            async with (
                semaphore,
                session.post(
                    f"{url}/v1/events", data=body, headers={"Content-Type": "application/cloudevents+json"}
                ) as resp,
            ):
                results[i] = (resp.status, await resp.json())

        await asyncio.gather(*(post(i, body) for i, body in enumerate(bodies)))
    return results


async def _people(broker: Broker) -> list[str]:
    """An analyst reads their feed and is refused another's; an IG lead traces one record."""
    from broker.auth.broker_key import load_or_create_broker_key
    from broker.auth.tokens import DEFAULT_AUDIENCE, DEFAULT_ISSUER, issue_token

    kid, key = load_or_create_broker_key(broker.settings.effective_broker_key)

    def bearer(role: str, consumer: str | None, sub: str) -> dict[str, str]:
        token = issue_token(
            key, kid, sub=sub, role=role, consumer=consumer, ttl=timedelta(minutes=5),
            issuer=DEFAULT_ISSUER, audience=DEFAULT_AUDIENCE,
        )  # fmt: skip
        return {"Authorization": f"Bearer {token}"}

    lines = []
    analyst = bearer("analyst", "derby-csp-analysts", "analyst@derby.gov.uk")
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{broker.url}/v1/feeds/derby-csp-analysts/records?limit=50", headers=analyst) as resp:
            page = await resp.json()
        lines.append(
            f"analyst@derby.gov.uk reads derby-csp-analysts: HTTP {resp.status}, {page['count']} records "
            f"(next cursor {page['next_cursor']})"
        )
        async with session.get(f"{broker.url}/v1/feeds/derbyshire-vru/records", headers=analyst) as resp:
            body = await resp.json()
        lines.append(f"the same analyst asks for derbyshire-vru's feed: HTTP {resp.status} {body['reason']}")
        async with session.get(f"{broker.url}/v1/feeds/derby-csp-analysts/records") as resp:
            body = await resp.json()
        lines.append(f"no token: HTTP {resp.status} {body['reason']}")
        if page["records"]:
            record_id = page["records"][0]["record_id"]
            ig = bearer("ig", None, "ig.lead@derbyshire.gov.uk")
            async with session.get(f"{broker.url}/v1/audit/trace/{record_id}", headers=ig) as resp:
                trace = await resp.json()
            kinds = " -> ".join(e["kind"] for e in trace["entries"])
            lines.append(f"ig.lead@derbyshire.gov.uk traces {record_id}: {kinds}")
    return lines


@dataclass(frozen=True, slots=True)
class StoreSummary:
    counts: StoreCounts
    samples: dict[str, dict[str, Any]]  # consumer -> its first record
    chain: ChainReport


async def summarise(location: str | Path, consumers: Iterable[str]) -> StoreSummary:
    """What the store holds after the run, read through the store contract (read-only)."""
    store = store_for(location, readonly=True)
    await store.open()
    try:
        samples: dict[str, dict[str, Any]] = {}
        for consumer in consumers:
            first = await store.feed_page(consumer, after=0, limit=1)
            if first:
                samples[consumer] = json.loads(first[0].body)
        return StoreSummary(await store.counts(), samples, (await verify_store(store)).chain)
    finally:
        await store.close()


async def run_embedded(workdir: Path, events: int, say: Print) -> int:
    env = prepare_environment(workdir)
    gen = SyntheticGenerator(seed=int.from_bytes(os.urandom(2), "big"))
    say(
        f"Generated Ed25519 keys for {len(env.signers)} partners and pseudonym secrets for "
        f"{len(env.agreement_ids)} agreements in {workdir} (nothing from the repository)."
    )
    for line in env.renewal_lines():
        say(line)
    settings = Settings(
        policy_dir=env.policy_dir,
        keys_dir=env.keys_dir,
        secrets_file=env.secrets_file,
        data_dir=workdir / "var",
        http_port=0,
    )
    broker = Broker(settings)
    await broker.start()
    try:
        say(f"Broker (embedded: HTTP ingest, SQLite WAL store) listening on {broker.url}\n")
        good = good_messages(env, gen, events)
        bad = bad_messages(env, gen)
        started = asyncio.get_running_loop().time()
        results = await _post_all(broker.url, [body for _, body in good])
        elapsed = asyncio.get_running_loop().time() - started
        replay = await _post_all(broker.url, [good[0][1], good[1][1]])
        originals, later = lifecycle_messages(env, gen)
        first_lives = await _post_all(broker.url, originals, concurrency=1)
        later_lives = await _post_all(broker.url, later, concurrency=1)
        bad_results = await _post_all(broker.url, [body for _, body in bad])
        access_lines = await _people(broker)
    finally:
        await broker.stop()
    registry = load_registry(settings.policy_dir, settings.keys_dir)
    summary = await summarise(settings.store_location, sorted(registry.consumers))
    by_partner = Counter(partner for partner, _ in good)
    accepted = sum(1 for status, _ in results if status == 202)
    say(
        f"Partners sent {len(good)} signed events in {elapsed:.2f} s ({len(good) / elapsed:.0f}/s): "
        + ", ".join(f"{p} {n}" for p, n in sorted(by_partner.items()))
    )
    say(f"  accepted {accepted}, records released {sum(r.get('records', 0) for _, r in results)}\n")

    say("What each consumer received (minimised records only):")
    for consumer in sorted(registry.consumers):
        say(f"  {consumer:<30} {summary.counts.records_by_consumer.get(consumer, 0):>6} records")
    for consumer, sample in sorted(summary.samples.items()):
        say(
            f"\n  sample for {consumer} ({sample['event_type']} under {sample['agreement']['id']} "
            f"rev {sample['agreement']['revision']}):"
        )
        say("    " + json.dumps(sample["data"], sort_keys=True))
    say("\nRefused, with the receipt each sender got:")
    for (label, _), (status, receipt) in zip(bad, bad_results, strict=True):
        say(f"  {label:<42} HTTP {status}  {receipt.get('reason')}: {receipt.get('message')}")
    for status, receipt in replay:
        say(
            f"  {'the same event sent again (replay)':<42} HTTP {status}  {receipt.get('status')}: "
            "acknowledged, not released again"
        )
    say("\nThe life of a record (corrections and withdrawals reach every consumer that holds it):")
    say(f"  two A&E attendances in Derby: records released {sum(r.get('records', 0) for _, r in first_lives)}")
    (_, fixed), (_, gone) = later_lives
    say(
        f"  one corrected (revision 2, district now Chesterfield): {fixed.get('records', 0)} record(s) as revision 2 "
        f"(a holder's under the record id it holds), {fixed.get('withdrawn', 0)} consumer told it is withdrawn "
        "(no longer entitled)"
    )
    say(f"  one withdrawn (revision 2, sent in error): {gone.get('withdrawn', 0)} consumer(s) told to delete it")
    say("\nAnalysts and the IG lead, over the authenticated HTTP API (every read audited):")
    for line in access_lines:
        say("  " + line)
    report = summary.chain
    say("\nAudit trail: " + ", ".join(f"{k} {n}" for k, n in sorted(summary.counts.audit_by_kind.items())))
    if report.ok:
        say(
            f"  hash chain verified: {report.entries} entries intact, head #{report.head_seq} "
            f"{report.head_hash[:16]}…  (--keep DIR keeps the store: sv-broker audit verify --data-dir DIR/var)"
        )
    else:
        say(f"  AUDIT CHAIN BROKEN at #{report.first_bad_seq}: {report.problem}")
    return 0 if report.ok and accepted == len(good) else 1


async def run_amqp(workdir: Path, events: int, amqp_url: str, say: Print) -> int:
    import aio_pika

    from broker.ports.rabbitmq.topology import Names

    env = prepare_environment(workdir)
    gen = SyntheticGenerator(seed=int.from_bytes(os.urandom(2), "big"))
    prefix = f"sv-demo-{uuid.uuid4().hex[:8]}"
    names = Names(prefix)
    for line in env.renewal_lines():
        say(line)
    settings = Settings(
        policy_dir=env.policy_dir,
        keys_dir=env.keys_dir,
        secrets_file=env.secrets_file,
        data_dir=workdir / "var",
        http_port=0,
        amqp_url=amqp_url,
        amqp_prefix=prefix,
        # The demo publishes as one RabbitMQ user for every partner; in production each partner
        # has its own account and this check stays on (see `sv-broker rabbitmq definitions`).
        check_user_id=False,
    )
    say(f"Generated keys for {len(env.signers)} partners; RabbitMQ topology prefix {prefix!r}.")
    broker = Broker(settings)
    await broker.start()
    registry = load_registry(settings.policy_dir, settings.keys_dir)
    connection = await aio_pika.connect_robust(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.get_exchange(names.ingest_exchange)
        good = good_messages(env, gen, events)
        bad = bad_messages(env, gen)
        started = asyncio.get_running_loop().time()

        def bad_route(body: bytes) -> tuple[str, str]:
            # Each bad message travels under the routing key its envelope claims (as a partner's
            # adapter would send it), so the demo shows the refusal it was built to show rather
            # than `routing_key_mismatch`; one that does not parse goes under the police's key.
            try:
                doc = json.loads(body)
                return str(doc["source"]), str(doc["type"])
            except (ValueError, KeyError, TypeError):
                return "derbyshire-police", "unknown"

        async def publish(partner: str, body: bytes, event_type: str) -> None:
            message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await exchange.publish(message, f"{partner}.{event_type}", mandatory=True, timeout=30)

        await asyncio.gather(*(publish(p, b, json.loads(b)["type"]) for p, b in good))
        routes = [bad_route(b) for _, b in bad]
        await asyncio.gather(*(publish(src, b, kind) for (src, kind), (_, b) in zip(routes, bad, strict=True)))
        say(
            f"Published {len(good) + len(bad)} events with publisher confirms "
            f"in {asyncio.get_running_loop().time() - started:.2f} s"
        )
        expected = len(good) + len(bad)
        for _ in range(600):
            if broker.pipeline is not None and broker.pipeline.stats.processed >= expected:
                break
            await asyncio.sleep(0.1)
        say("\nConsumer queues (each holds only its own minimised records):")
        for consumer in sorted(registry.consumers):
            queue = await channel.declare_queue(names.consumer_queue(consumer), passive=True)
            count = queue.declaration_result.message_count
            sample = await queue.get(no_ack=True, fail=False)
            say(f"  {names.consumer_queue(consumer):<48} {count:>6} records")
            if sample is not None:
                say("      e.g. " + json.dumps(json.loads(sample.body)["data"], sort_keys=True))
        quarantine = await channel.declare_queue(names.quarantine_queue, passive=True)
        say(f"\nQuarantine: {quarantine.declaration_result.message_count} messages, reasons in headers:")
        while (msg := await quarantine.get(no_ack=True, fail=False)) is not None:
            headers = msg.headers or {}
            say(f"  {headers.get('reason')!s}: {headers.get('reason_message')!s}")
    finally:
        await broker.stop()
        await _delete_topology(connection, names, registry)
        await connection.close()
    summary = await summarise(settings.store_location, ())
    report = summary.chain
    say("\nAudit trail: " + ", ".join(f"{k} {n}" for k, n in sorted(summary.counts.audit_by_kind.items())))
    say(f"  hash chain {'verified' if report.ok else 'BROKEN'}: {report.entries} entries")
    return 0 if report.ok else 1


async def _delete_topology(connection: Any, names: Any, registry: Any) -> None:
    channel = await connection.channel()
    queues = [names.ingest_queue, names.dead_letter_queue, names.quarantine_queue]
    queues += [names.consumer_queue(c) for c in registry.consumers]
    queues += [names.receipts_queue(p) for p in registry.partners]
    for queue in queues:
        await channel.queue_delete(queue)
    for exchange in (
        names.ingest_exchange,
        names.dead_letter_exchange,
        names.deliver_exchange,
        names.quarantine_exchange,
        names.receipts_exchange,
    ):
        await channel.exchange_delete(exchange)
    await channel.close()


def run(events: int, amqp_url: str | None, keep: Path | None, say: Print = print) -> int:
    workdir = keep or Path(tempfile.mkdtemp(prefix="sv-broker-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        if amqp_url:
            return asyncio.run(run_amqp(workdir, events, amqp_url, say))
        return asyncio.run(run_embedded(workdir, events, say))
    finally:
        if keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
