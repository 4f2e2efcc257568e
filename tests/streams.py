"""Scaffolding for the tests that stream signed events through real ``serve`` processes while
something fails (a process, PostgreSQL, a RabbitMQ node): the processes, the bodies, a paced
publisher with confirms on a thread of its own, and what the agreements entitle."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import aio_pika

from adapters.synthetic import SyntheticGenerator
from broker.demo import DemoEnvironment
from broker.policy.loader import load_policy
from broker.policy.secrets import load_secrets
from broker.registry import load_registry
from broker.settings import REPO_POLICIES
from tests.helpers import audit_entries, expected_records


class Host:
    """One ``sv-broker serve`` process with its own data dir, port and log."""

    def __init__(self, name: str, args: list[str], work: Path) -> None:
        self.name = name
        self.ready_file = work / f"{name}.ready"
        self.log_path = work / f"{name}.log"
        self.args = [*args, "--data-dir", str(work / name), "--ready-file", str(self.ready_file)]
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.starts = 0

    def start(self) -> None:
        self.ready_file.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=log)
        self.starts += 1
        deadline = time.monotonic() + 60
        while not self.ready_file.exists() or not self.ready_file.read_text():
            assert self.proc.poll() is None, f"{self.name} exited: {self.log_path.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"{self.name} did not become ready"
            time.sleep(0.05)
        self.url = self.ready_file.read_text()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def signed_bodies(env: DemoEnvironment, count: int, seed: int) -> list[tuple[str, bytes]]:
    """(routing key, signed body) for ``count`` mixed events from every partner."""
    out = []
    for rec in SyntheticGenerator(seed=seed).mixed(count):
        body = env.signers[rec.partner].sign_bytes(rec.event.EVENT_TYPE, rec.data(), source_key=rec.source_key)
        out.append((f"{rec.partner}.{rec.event.EVENT_TYPE}", body))
    return out


class PacedPublisher:
    """Publishes ``bodies`` with confirms, ``chunk`` at a time with a ``pause`` between chunks, on a
    thread of its own (so the test can kill things meanwhile); ``confirmed`` grows as they land."""

    def __init__(
        self, url: str, exchange: str, bodies: list[tuple[str, bytes]], *, chunk: int = 25, pause: float = 0.1
    ) -> None:
        self.url, self.exchange, self.bodies = url, exchange, bodies
        self.chunk, self.pause = chunk, pause
        self.confirmed: list[bytes] = []
        self.errors: list[BaseException] = []
        self.started = threading.Event()
        self._thread = threading.Thread(target=self._run)

    async def _publish_all(self) -> None:
        connection = await aio_pika.connect_robust(self.url)
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.get_exchange(self.exchange)
        self.started.set()
        for i in range(0, len(self.bodies), self.chunk):
            part = self.bodies[i : i + self.chunk]
            message = aio_pika.DeliveryMode.PERSISTENT
            await asyncio.gather(
                *(
                    exchange.publish(aio_pika.Message(b, delivery_mode=message), k, mandatory=True, timeout=60)
                    for k, b in part
                )
            )
            self.confirmed.extend(b for _, b in part)
            await asyncio.sleep(self.pause)
        await connection.close()

    def _run(self) -> None:
        try:
            asyncio.run(self._publish_all())
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            self.started.set()

    def start(self) -> None:
        self._thread.start()
        self.started.wait(timeout=60)

    def join(self, timeout: float = 300) -> list[bytes]:
        """Wait for every publish; the confirmed bodies (a publish error fails the test)."""
        self._thread.join(timeout=timeout)
        assert not self._thread.is_alive(), "the publisher did not finish"
        assert not self.errors, self.errors
        return self.confirmed


def entitled(env: DemoEnvironment, confirmed: list[bytes]) -> set[tuple[str, str]]:
    """(message id, consumer) for every release the agreements entitle for these bodies."""
    registry = load_registry(REPO_POLICIES, env.keys_dir)
    policy = load_policy(env.policy_dir, registry, load_secrets(env.secrets_file, os.environ))
    return {
        (json.loads(body)["id"], consumer)
        for body in confirmed
        for consumer in expected_records(body, registry, policy)
    }


def released_counts(location: str | Path) -> Counter[tuple[str, str]]:
    """(message id, consumer) -> how many ``released`` entries the audit holds for it."""
    return Counter((e["message_id"], e["consumer"]) for e in audit_entries(location, "released"))


def wait_released(
    location: str | Path, expected: set[tuple[str, str]], timeout: float = 180, settled: set[str] | None = None
) -> Counter[tuple[str, str]]:
    """Poll the audit until every expected release is in it (or its message id is in ``settled``,
    e.g. quarantined), or ``timeout`` passes; the counts found (the caller asserts on them)."""
    deadline = time.monotonic() + timeout
    while True:
        counts = released_counts(location)
        done = all(counts[key] >= 1 or (settled is not None and key[0] in settled) for key in expected)
        if done or time.monotonic() > deadline:
            return counts
        time.sleep(0.5)
