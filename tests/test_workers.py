"""Ingest workers (``serve --workers``): what a worker refuses, and what ``serve`` refuses.
(The workers at work, killed and restarted, are in ``test_crash_recovery.py``.)"""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from broker.cli import main
from broker.demo import DemoEnvironment
from broker.service import Broker, StartupError, config_fingerprint
from broker.settings import Settings
from broker.workers import WorkerSpec


def settings(env: DemoEnvironment, tmp_path: Path, amqp_url: str | None = None) -> Settings:
    return Settings(keys_dir=env.keys_dir, secrets_file=env.secrets_file, data_dir=tmp_path, amqp_url=amqp_url)


async def test_a_worker_refuses_a_configuration_changed_since_the_primary_started(
    env: DemoEnvironment, tmp_path: Path
) -> None:
    s = settings(env, tmp_path, amqp_url="amqp://guest:guest@127.0.0.1:1/")  # never reached
    with pytest.raises(StartupError, match="changed since the primary started"):
        await Broker(s, ingest_only=True, expected_config="0" * 64).start()


async def test_a_worker_needs_rabbitmq(env: DemoEnvironment, tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="needs a RabbitMQ URL"):
        await Broker(settings(env, tmp_path), ingest_only=True).start()


def test_workers_need_rabbitmq_and_a_positive_count(
    env: DemoEnvironment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["serve", "--keys-dir", str(env.keys_dir), "--secrets", str(env.secrets_file)]
    assert main([*common, "--data-dir", str(tmp_path), "--port", "0", "--workers", "2"]) == 2
    assert "--workers needs --amqp-url" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*common, "--workers", "0"])
    assert "must be 1 or more" in capsys.readouterr().err


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
