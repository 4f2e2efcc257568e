"""PostgreSQL restarted mid-stream (``pg_ctlcluster … restart``, the real server): the broker
waits, retries and carries on. Nothing acknowledged is lost, nothing is released twice, and
nothing is dead-lettered because of the outage (a retry holds the deliveries unacknowledged
instead of requeueing them, which would count toward the quorum queue's delivery limit)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from broker.demo import prepare_environment
from broker.pipeline.trail import verify_store
from broker.ports.rabbitmq.topology import Names
from tests.helpers import audit_counts, read_store
from tests.streams import Host, PacedPublisher, entitled, released_counts, signed_bodies, wait_released

EVENTS = 1500
pytestmark = pytest.mark.timeout(600)


def restart_postgres() -> float:
    versions = sorted(os.listdir("/etc/postgresql"))
    started = time.monotonic()
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", versions[0], "main", "restart"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return time.monotonic() - started


def test_postgres_restarted_mid_stream_loses_nothing(
    amqp_url: str, amqp_prefix: str, pg_store_url: str, tmp_path: Path
) -> None:
    if not Path("/etc/postgresql").is_dir():
        pytest.skip("no local PostgreSQL cluster to restart (pg_ctlcluster)")
    env = prepare_environment(tmp_path / "env")
    host = Host(
        "host",
        [
            sys.executable, "-m", "broker.cli", "serve",
            "--amqp-url", amqp_url, "--amqp-prefix", amqp_prefix, "--store", pg_store_url,
            "--policy-dir", str(env.policy_dir), "--keys-dir", str(env.keys_dir), "--secrets", str(env.secrets_file),
            "--port", "0", "--no-user-id-check", "--log-level", "WARNING",
        ],
        tmp_path,
    )  # fmt: skip
    publisher = PacedPublisher(amqp_url, Names(amqp_prefix).ingest_exchange, signed_bodies(env, EVENTS, 43), pause=0.08)
    host.start()
    publisher.start()
    time.sleep(1.5)
    outage = restart_postgres()  # mid-stream: every connection of the broker is cut
    confirmed = publisher.join()
    assert len(confirmed) == EVENTS

    expected = entitled(env, confirmed)

    wait_released(pg_store_url, expected)
    assert host.stop() == 0, host.log_path.read_text()[-2000:]
    released = released_counts(pg_store_url)
    kinds = Counter(audit_counts(pg_store_url))
    chain_ok = read_store(pg_store_url, verify_store).ok
    lost = [key for key in expected if released[key] == 0]
    doubled = [key for key in expected if released[key] > 1]
    print(
        f"\nPostgreSQL restart took {outage:.1f} s mid-stream: {len(confirmed)} confirmed events, "
        f"{len(expected)} entitled releases, lost {len(lost)}, double-released {len(doubled)}; audit {dict(kinds)}"
    )
    log = host.log_path.read_text()
    assert "StoreUnavailable" in log  # the outage was felt (a batch waited and was retried) ...
    assert lost == []  # ... and cost nothing
    assert doubled == []
    assert kinds["dead_lettered"] == 0
    assert kinds["rejected"] == 0
    assert kinds["received"] >= EVENTS
    assert chain_ok
