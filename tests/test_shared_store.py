"""Broker processes sharing one store (``--workers``): a message id is claimed under SQLite's
write lock, so two processes racing on one id with different content release one of them only."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path

from adapters.synthetic import SyntheticGenerator
from broker.demo import DemoEnvironment
from broker.pipeline import Pipeline
from broker.policy.loader import load_policy
from broker.policy.secrets import load_secrets
from broker.ports.delivery import StoreDelivery
from broker.ports.sqlite_store import SqliteStore, verify_audit_file
from broker.ports.store import NOT_SEEN, ReplayKey, Seen
from broker.registry import load_registry
from broker.settings import REPO_POLICIES, Settings
from broker.stages.outcome import Status
from broker.stages.types import Inbound
from tests.helpers import audit_entries, quarantined, stored_records


class BlindStore(SqliteStore):
    """The replay read of a process that looked before the other one committed."""

    async def replay_states(self, keys: Sequence[ReplayKey]) -> dict[ReplayKey, Seen]:
        return dict.fromkeys(keys, NOT_SEEN)


async def pipelines_on(env: DemoEnvironment, tmp_path: Path, stores: list[SqliteStore]) -> list[Pipeline]:
    """One pipeline per store, as in separate broker processes sharing ``broker.db``."""
    registry = load_registry(REPO_POLICIES, env.keys_dir)
    policy = load_policy(env.policy_dir, registry, load_secrets(env.secrets_file, os.environ))
    settings = Settings(
        policy_dir=env.policy_dir, keys_dir=env.keys_dir, secrets_file=env.secrets_file, data_dir=tmp_path
    )
    for store in stores:
        await store.open()
    return [Pipeline(settings, registry, policy, store, StoreDelivery()) for store in stores]


async def test_two_processes_racing_on_one_id_with_different_content_release_one(
    env: DemoEnvironment, tmp_path: Path
) -> None:
    db = tmp_path / "broker.db"
    first_store, second_store = SqliteStore(db), BlindStore(db)
    first, second = await pipelines_on(env, tmp_path, [first_store, second_store])

    gen = SyntheticGenerator(seed=3)
    signer = env.signers["uhdb-royal-derby-ed"]
    original, other = gen.ae_assault("uhdb-royal-derby-ed"), gen.ae_assault("uhdb-royal-derby-ed")
    assert original.data() != other.data()
    body_a = signer.sign_bytes("ae_assault", original.data(), source_key="ED-0001")
    body_b = signer.sign_bytes("ae_assault", other.data(), source_key="ED-0001")  # same id, other content

    [got_a] = await first.process([Inbound(body_a)])
    [got_b] = await second.process([Inbound(body_b)])
    # The same content again through the blind process: a duplicate claim, not a conflict.
    [again] = await second.process([Inbound(body_a)])
    await first_store.close()
    await second_store.close()

    assert got_a.status is Status.ACCEPTED
    assert got_a.releases
    assert got_b.status is Status.REJECTED
    assert got_b.reason == "replayed"
    assert again.status is Status.ACCEPTED  # same record ids: released and audited once (below)
    released = audit_entries(db, "released")
    assert sorted(e["record_id"] for e in released) == sorted(r.record_id for r in got_a.releases)
    held = stored_records(db)
    assert len(held) == len(got_a.releases)
    assert {h.record["record_id"] for h in held} == {r.record_id for r in got_a.releases}
    assert [e["reason"] for e in audit_entries(db, "rejected")] == ["replayed"]
    assert [item.reason for item in quarantined(db)] == ["replayed"]
    assert verify_audit_file(db).ok


async def test_interleaved_commits_of_many_processes_keep_one_claim_per_id(
    env: DemoEnvironment, tmp_path: Path
) -> None:
    db = tmp_path / "broker.db"
    stores: list[SqliteStore] = [BlindStore(db) for _ in range(3)]
    pipelines = await pipelines_on(env, tmp_path, stores)
    gen = SyntheticGenerator(seed=4)
    signer = env.signers["uhdb-royal-derby-ed"]
    # Each process gets its own content for the same 20 ids.
    batches = [
        [
            Inbound(signer.sign_bytes("ae_assault", gen.ae_assault("uhdb-royal-derby-ed").data(), source_key=f"K{i}"))
            for i in range(20)
        ]
        for _ in pipelines
    ]
    results = await asyncio.gather(*(p.process(b) for p, b in zip(pipelines, batches, strict=True)))
    for store in stores:
        await store.close()
    for i in range(20):
        statuses = sorted(result[i].status.value for result in results)
        assert statuses == ["accepted", "rejected", "rejected"], (i, statuses)
    released_messages = {e["message_id"] for e in audit_entries(db, "released")}
    assert len(released_messages) == 20
    assert verify_audit_file(db).ok
