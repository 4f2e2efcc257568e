"""Ingest workers (``serve --workers``) and the one primary per store: what a worker refuses, and
what ``serve`` refuses. (Workers at work, killed and restarted: ``test_crash_recovery.py``.)"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from broker.demo import DemoEnvironment
from broker.errors import StartupError
from broker.service import Broker, config_fingerprint
from broker.settings import Settings
from broker.workers import WorkerSpec


def settings(env: DemoEnvironment, tmp_path: Path, amqp_url: str | None = None) -> Settings:
    return Settings(
        policy_dir=env.policy_dir,
        keys_dir=env.keys_dir,
        secrets_file=env.secrets_file,
        data_dir=tmp_path,
        amqp_url=amqp_url,
    )


async def test_a_worker_refuses_a_configuration_changed_since_the_primary_started(
    env: DemoEnvironment, tmp_path: Path
) -> None:
    s = settings(env, tmp_path, amqp_url="amqp://guest:guest@127.0.0.1:1/")  # never reached
    with pytest.raises(StartupError, match="changed since the primary started"):
        await Broker(s, ingest_only=True, expected_config="0" * 64).start()


async def test_a_worker_needs_rabbitmq(env: DemoEnvironment, tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="needs a RabbitMQ URL"):
        await Broker(settings(env, tmp_path), ingest_only=True).start()


def test_workers_need_rabbitmq_and_a_positive_count(env: DemoEnvironment, tmp_path: Path) -> None:
    common = [
        sys.executable,
        "-m",
        "broker.cli",
        "serve",
        "--policy-dir",
        str(env.policy_dir),
        "--keys-dir",
        str(env.keys_dir),
    ]
    common += ["--secrets", str(env.secrets_file), "--data-dir", str(tmp_path), "--port", "0"]
    embedded = subprocess.run([*common, "--workers", "2"], capture_output=True, text=True, timeout=60, check=False)
    assert embedded.returncode == 2
    assert "--workers needs --amqp-url" in embedded.stderr
    zero = subprocess.run([*common, "--workers", "0"], capture_output=True, text=True, timeout=60, check=False)
    assert zero.returncode == 2
    assert "must be 1 or more" in zero.stderr


def test_a_worker_process_reports_a_refusal_and_exits_2(env: DemoEnvironment, tmp_path: Path) -> None:
    s = settings(env, tmp_path, amqp_url="amqp://guest:guest@127.0.0.1:1/")
    spec = WorkerSpec(s, {}, "0" * 64)
    assert config_fingerprint(s) != spec.config_sha256
    done = subprocess.run(
        [sys.executable, "-m", "broker.workers"], input=pickle.dumps(spec), capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert b"changed since the primary started" in done.stderr
    assert done.stdout == b""  # never reported ready


async def test_one_primary_per_store(broker: Broker, env: DemoEnvironment) -> None:
    data_dir = broker.settings.data_dir
    second = Broker(
        Settings(
            policy_dir=env.policy_dir,
            keys_dir=env.keys_dir,
            secrets_file=env.secrets_file,
            data_dir=data_dir,
            http_port=0,
        )
    )
    with pytest.raises(StartupError, match=f"in use by a running broker \\(pid {os.getpid()}\\)"):
        await second.start()
    await broker.stop()  # releases it (as a crash would: the kernel drops the lock with the process)
    third = Broker(
        Settings(
            policy_dir=env.policy_dir,
            keys_dir=env.keys_dir,
            secrets_file=env.secrets_file,
            data_dir=data_dir,
            http_port=0,
        )
    )
    await third.start()
    await third.stop()
    await broker.start()  # the fixture stops it again
