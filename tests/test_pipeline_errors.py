"""The pipeline tells "a port is down" (retry, never blame the message) from "a bug of ours"
(poison handling), and the SQLite port translates sqlite3's errors into that vocabulary."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from adapters.synthetic import SyntheticGenerator
from broker.demo import DemoEnvironment
from broker.errors import StoreUnavailable
from broker.ports.sqlite_store import SqliteStore, translated
from broker.stages.outcome import Accepted, Failed
from broker.stages.types import Inbound
from tests.test_shared_store import pipelines_on


@pytest.mark.parametrize(
    "error",
    [sqlite3.OperationalError("database is locked"), sqlite3.DatabaseError("disk I/O error"), OSError(28, "full")],
)
def test_an_unavailable_store_is_unavailable(error: BaseException) -> None:
    out = translated(error)
    assert isinstance(out, StoreUnavailable)
    assert out.__cause__ is error


@pytest.mark.parametrize(
    "error", [sqlite3.IntegrityError("UNIQUE"), sqlite3.ProgrammingError("closed"), ValueError("ours")]
)
def test_a_bug_stays_a_bug(error: BaseException) -> None:
    assert translated(error) is error


def _body(env: DemoEnvironment, key: str) -> bytes:
    record = SyntheticGenerator(seed=4).ae_assault("uhdb-royal-derby-ed")
    return env.signers["uhdb-royal-derby-ed"].sign_bytes("ae_assault", record.data(), source_key=key)


async def test_store_down_propagates_and_a_retry_releases_once(env: DemoEnvironment, tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "broker.db")
    [pipeline] = await pipelines_on(env, tmp_path, [store])
    real_commit = store.commit
    down = True

    async def commit(unit: Any) -> frozenset[Any]:
        if down:
            raise StoreUnavailable("simulated")
        return await real_commit(unit)

    store.commit = commit  # type: ignore[method-assign]
    body = _body(env, "ED-ERR-1")
    with pytest.raises(StoreUnavailable):
        await pipeline.process([Inbound(body)])
    down = False
    [outcome] = await pipeline.process([Inbound(body)])  # the transport's retry
    assert isinstance(outcome, Accepted)
    assert pipeline.stats.failed == 0
    await store.close()


async def test_a_bug_in_a_port_fails_the_batch_without_blaming_the_sender(env: DemoEnvironment, tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "broker.db")
    [pipeline] = await pipelines_on(env, tmp_path, [store])

    async def commit(unit: Any) -> frozenset[Any]:
        raise KeyError("a defect of ours")

    store.commit = commit  # type: ignore[method-assign]
    outcomes = await pipeline.process([Inbound(_body(env, "ED-ERR-2")), Inbound(b"not json")])
    assert all(isinstance(o, Failed) for o in outcomes)  # nacked, redelivered, dead-lettered at the limit
    assert pipeline.stats.failed == 2
    assert pipeline.stats.rejected == 0
    await store.close()
