"""The README's first command, end to end: the demo on the embedded default and over RabbitMQ."""

from __future__ import annotations

import subprocess
import sys


def demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", "demo", "--events", "120", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def test_embedded_demo() -> None:
    result = demo()
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = result.stdout
    assert "accepted 120" in out
    assert "derbyshire-fire-analysts            0 records" in out
    for reason in ("bad_signature", "unknown_key", "key_revoked", "direct_identifier", "type_not_registered"):
        assert reason in out
    assert "HTTP 403 not_your_feed" in out
    assert "2 record(s) as revision 2" in out
    assert "1 consumer told it is withdrawn (no longer entitled)" in out
    assert "2 consumer(s) told to delete it" in out
    assert "hash chain verified" in out


def test_amqp_demo(amqp_url: str) -> None:
    result = demo("--amqp-url", amqp_url)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Quarantine: 6 messages" in result.stdout
    assert "hash chain verified" in result.stdout
