"""Shared fixtures: a registry with keys generated at run time for every partner."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.signer import Signer, generate_keyring
from broker.demo import DemoEnvironment, partner_ids, prepare_environment
from broker.registry import Registry, load_registry
from broker.service import Broker
from broker.settings import REPO_POLICIES, Settings
from tests.browser import SESSION as BROWSER_SESSION
from tests.browser import browser, page  # noqa: F401  (fixtures for the browser tests: tests/browser.py)
from tests.rabbitmq_cluster import skip_or_fail

SHARED = Path(__file__).resolve().parents[2] / "shared"
TESTVECTORS = SHARED / "testvectors"
PARTNERS = partner_ids()


@pytest.fixture(scope="session")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys")


@pytest.fixture(scope="session")
def signers(keys_dir: Path) -> dict[str, Signer]:
    return generate_keyring(PARTNERS, keys_dir)


@pytest.fixture(scope="session")
def registry(signers: dict[str, Signer], keys_dir: Path) -> Registry:
    return load_registry(REPO_POLICIES, keys_dir)


@pytest.fixture(scope="session")
def env(tmp_path_factory: pytest.TempPathFactory) -> DemoEnvironment:
    """Partner keys (plus a revoked and an unregistered one) and pseudonym secrets, made at run time."""
    return prepare_environment(tmp_path_factory.mktemp("env"))


@pytest.fixture
async def broker(env: DemoEnvironment, tmp_path: Path) -> AsyncIterator[Broker]:
    """An embedded broker on a free loopback port with its own store."""
    settings = Settings(
        policy_dir=env.policy_dir, keys_dir=env.keys_dir, secrets_file=env.secrets_file, data_dir=tmp_path, http_port=0
    )
    instance = Broker(settings)
    await instance.start()
    try:
        yield instance
    finally:
        await instance.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Where the browser tests' screenshots went (a scratch folder, never committed)."""
    if BROWSER_SESSION.taken and BROWSER_SESSION.screenshot_dir is not None:
        terminalreporter.write_line(
            f"browser screenshots: {len(BROWSER_SESSION.taken)} in {BROWSER_SESSION.screenshot_dir}"
        )


# -- RabbitMQ -------------------------------------------------------------------------------------

AMQP_URL = os.environ.get("SV_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def _problem(probe: Callable[[], Coroutine[Any, Any, None]]) -> str | None:
    """None if ``probe`` connects, else what went wrong."""
    try:
        asyncio.run(probe())
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _amqp_reachable(url: str) -> str | None:
    import aio_pika

    async def probe() -> None:
        connection = await aio_pika.connect(url, timeout=5)
        await connection.close()

    return _problem(probe)


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """The real RabbitMQ. Unreachable: skipped on a laptop, a failure in CI (CI=true)."""
    problem = _amqp_reachable(AMQP_URL)
    if problem is not None:
        skip_or_fail(f"RabbitMQ is not reachable at {AMQP_URL} ({problem}); start it with `rabbitmq-server -detached`")
    return AMQP_URL


@pytest.fixture
def amqp_prefix(amqp_url: str) -> Iterator[str]:
    """A unique exchange/queue prefix for one test; everything under it is deleted afterwards."""
    prefix = f"sv-test-{uuid.uuid4().hex[:10]}"
    yield prefix
    asyncio.run(delete_prefixed(amqp_url, prefix))


async def delete_prefixed(url: str, prefix: str) -> None:
    """Delete every queue and exchange the topology under ``prefix`` can hold (read from the
    contract's own topology, so a new queue is cleaned up too), each on a channel of its own and
    with a time limit: a failed test must not leave its teardown waiting for ever."""
    import aio_pika

    from schemas.topology import Names, topology_spec

    registry = load_registry(REPO_POLICIES, None)
    spec = topology_spec(Names(prefix), partners=registry.partners, consumers=registry.consumers, delivery_limit=1)
    connection = await aio_pika.connect(url, timeout=10)

    async def attempt(action: str, name: str) -> None:
        try:
            channel = await asyncio.wait_for(connection.channel(), 10)
            call = channel.queue_delete(name) if action == "queue" else channel.exchange_delete(name)
            await asyncio.wait_for(call, 10)
            if not channel.is_closed:
                await asyncio.wait_for(channel.close(), 10)
        except Exception:  # never declared (a 404 closes the channel), or RabbitMQ was the test's victim
            return

    try:
        for name, _ in spec.queues:
            await attempt("queue", name)
        for name, _ in spec.exchanges:
            await attempt("exchange", name)
    finally:
        await asyncio.wait_for(connection.close(), 10)


# -- PostgreSQL -----------------------------------------------------------------------------------

PG_URL = os.environ.get("SV_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _pg_reachable(url: str) -> str | None:
    import asyncpg

    async def probe() -> None:
        connection = await asyncpg.connect(url, timeout=5)
        await connection.close()

    return _problem(probe)


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The real PostgreSQL. Unreachable: skipped on a laptop, a failure in CI (CI=true)."""
    problem = _pg_reachable(PG_URL)
    if problem is not None:
        skip_or_fail(
            f"PostgreSQL is not reachable at {PG_URL} ({problem}); start it with "
            "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`"
        )
    return PG_URL


@pytest.fixture
def pg_store_url(pg_url: str) -> Iterator[str]:
    """A store URL on a schema of its own (``search_path``), dropped afterwards."""
    import asyncpg

    schema = f"svt_{uuid.uuid4().hex[:12]}"

    async def run(sql: str) -> None:
        connection = await asyncpg.connect(pg_url, timeout=5)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{pg_url}?search_path={schema}"
    finally:
        asyncio.run(run(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
