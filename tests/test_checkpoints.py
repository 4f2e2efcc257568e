"""Signed checkpoints catch what the bare hash chain cannot: truncation, a rebuilt chain, forgery.
Verification runs through the CLI, on the store and offline from an export."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from adapters.synthetic import SyntheticGenerator
from broker.audit.chain import Draft, Kind, seal
from broker.audit.checkpoints import checkpoints_document, parse_checkpoints_document, sign_checkpoint
from broker.demo import prepare_environment
from broker.service import Broker
from broker.settings import Settings
from broker.stages.outcome import Inbound


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "broker.cli", *args], capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def trail(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A broker run with checkpoints, stopped; its data dir (store, key) and exports."""
    work = tmp_path_factory.mktemp("trail")
    env = prepare_environment(work / "env")
    settings = Settings(
        policy_dir=env.policy_dir,
        keys_dir=env.keys_dir,
        secrets_file=env.secrets_file,
        data_dir=work / "var",
        http_port=0,
        checkpoint_every=10,
    )

    async def run() -> None:
        broker = Broker(settings)
        await broker.start()
        assert broker.pipeline is not None
        gen = SyntheticGenerator(seed=41)
        for _ in range(4):
            bodies = []
            for rec in gen.mixed(8):
                bodies.append(
                    Inbound(
                        env.signers[rec.partner].sign_bytes(rec.event.EVENT_TYPE, rec.data(), source_key=rec.source_key)
                    )
                )
            await broker.pipeline.process(bodies)
            await broker.checkpoint()
        await broker.stop()  # signs the final head too

    asyncio.run(run())
    data = work / "var"
    assert (
        cli(
            "audit",
            "checkpoints",
            "--data-dir",
            str(data),
            "--out",
            str(work / "cp.json"),
            "--public-key-out",
            str(work / "pub.json"),
        ).returncode
        == 0
    )
    assert cli("audit", "export", "--data-dir", str(data), "--out", str(work / "audit.jsonl")).returncode == 0
    return work


def copy_store(trail: Path, tmp_path: Path) -> Path:
    target = tmp_path / "broker.db"
    source = sqlite3.connect(trail / "var" / "broker.db")
    dest = sqlite3.connect(target)
    source.backup(dest)
    source.close()
    dest.close()
    return target


def verify(db: Path, trail: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return cli(
        "audit",
        "verify",
        "--db",
        str(db),
        "--checkpoints",
        str(trail / "cp.json"),
        "--public-key",
        str(trail / "pub.json"),
        *extra,
    )


def test_intact_trail_verifies_with_checkpoints(trail: Path, tmp_path: Path) -> None:
    checkpoints = parse_checkpoints_document((trail / "cp.json").read_text())
    assert len(checkpoints) >= 4
    result = verify(copy_store(trail, tmp_path), trail)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "signed checkpoints match" in result.stdout


def test_truncation_is_caught_only_with_checkpoints(trail: Path, tmp_path: Path) -> None:
    db = copy_store(trail, tmp_path)
    conn = sqlite3.connect(db)
    head = conn.execute("SELECT MAX(seq) FROM audit").fetchone()[0]
    conn.execute("DELETE FROM audit WHERE seq > ?", (head - 3,))
    conn.commit()
    conn.close()
    bare = cli("audit", "verify", "--db", str(db))
    assert bare.returncode == 0  # the bare chain cannot see a clean truncation
    result = verify(db, trail)
    assert result.returncode == 1
    assert f"BROKEN at sequence {head - 2}" in result.stdout
    assert "entries were removed" in result.stdout


def test_rebuilt_chain_is_caught_only_with_checkpoints(trail: Path, tmp_path: Path) -> None:
    db = copy_store(trail, tmp_path)
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT seq, body FROM audit ORDER BY seq").fetchall()
    # Edit entry 5, then recompute every hash and link after it: a perfect forgery of the chain.
    prev = conn.execute("SELECT hash FROM audit WHERE seq = 4").fetchone()[0]
    for seq, body in rows[4:]:
        doc = json.loads(body)
        if seq == 5:
            doc["source"] = "someone-else"
        doc["prev"] = prev
        attrs = {k: v for k, v in doc.items() if k not in ("seq", "prev", "at", "kind")}
        entry = seal(
            Draft(Kind(doc["kind"]), attrs),
            seq=seq,
            prev=prev,
            at=datetime.fromisoformat(doc["at"].replace("Z", "+00:00")),
        )
        conn.execute(  # a thorough forger keeps the indexed column in step with the body
            "UPDATE audit SET body = ?, hash = ?, source = ? WHERE seq = ?",
            (entry.body, entry.hash, doc.get("source"), seq),
        )
        prev = entry.hash
    conn.commit()
    conn.close()
    assert cli("audit", "verify", "--db", str(db)).returncode == 0  # the rebuilt chain is self-consistent
    result = verify(db, trail)
    assert result.returncode == 1
    first_checkpoint = min(cp.seq for cp in parse_checkpoints_document((trail / "cp.json").read_text()) if cp.seq >= 5)
    assert f"BROKEN at sequence {first_checkpoint}" in result.stdout
    assert "rebuilt" in result.stdout


def test_checkpoint_signed_by_the_wrong_key_is_caught(trail: Path, tmp_path: Path) -> None:
    checkpoints = parse_checkpoints_document((trail / "cp.json").read_text())
    impostor = Ed25519PrivateKey.generate()
    last = checkpoints[-1]
    forged = sign_checkpoint(impostor, last.kid, last.seq, last.head_hash, datetime.now(UTC))
    (tmp_path / "cp.json").write_text(json.dumps(checkpoints_document([*checkpoints[:-1], forged])))
    result = cli(
        "audit", "verify", "--db", str(copy_store(trail, tmp_path)),
        "--checkpoints", str(tmp_path / "cp.json"), "--public-key", str(trail / "pub.json"),
    )  # fmt: skip
    assert result.returncode == 1
    assert f"BROKEN at sequence {last.seq}" in result.stdout
    assert "not signed by the broker key" in result.stdout


def test_offline_verification_from_an_export(trail: Path, tmp_path: Path) -> None:
    args = ["--checkpoints", str(trail / "cp.json"), "--public-key", str(trail / "pub.json")]
    result = cli("audit", "verify", "--export", str(trail / "audit.jsonl"), *args)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = (trail / "audit.jsonl").read_text().splitlines()
    item = json.loads(lines[6])
    item["entry"]["source"] = "edited"
    lines[6] = json.dumps(item)
    (tmp_path / "edited.jsonl").write_text("\n".join(lines) + "\n")
    result = cli("audit", "verify", "--export", str(tmp_path / "edited.jsonl"), *args)
    assert result.returncode == 1
    assert f"BROKEN at sequence {item['seq']}" in result.stdout


def test_checkpoints_need_a_public_key(trail: Path) -> None:
    result = cli("audit", "verify", "--export", str(trail / "audit.jsonl"), "--checkpoints", str(trail / "cp.json"))
    assert result.returncode == 2
    assert "--public-key" in result.stderr
