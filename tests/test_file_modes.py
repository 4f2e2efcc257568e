"""Issue 11 item 13, as the attack: another local user reads the broker's files.

The broker's data directory is 0700 and every store file 0600 however permissive the umask, an
existing too-open store is tightened, and what operators hand the broker (pseudonym secrets,
private keys, the broker key) is refused at start when group or others can read it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.auth.broker_key import load_or_create_broker_key
from broker.demo import DemoEnvironment
from broker.errors import SecretsError
from broker.ports.sqlite_store import SqliteStore
from broker.service import Broker
from broker.settings import Settings
from schemas.keyfile import load_or_create_id_key, load_private_key, write_private_key


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The worst common umask: files 0666, directories 0777 unless the code says otherwise."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def readable_by_others(root: Path) -> list[str]:
    return [f"{p} {oct(mode(p))}" for p in [root, *root.rglob("*")] if mode(p) & 0o077]


async def test_a_new_store_is_private_under_any_umask(tmp_path: Path, open_umask: None) -> None:
    data = tmp_path / "var" / "data"
    store = SqliteStore(data / "broker.db")
    await store.open()
    try:
        assert mode(data) == 0o700
        for name in ("broker.db", "broker.db-wal", "broker.db-shm"):
            assert (data / name).exists(), name
        assert readable_by_others(data) == []
    finally:
        await store.close()


async def test_an_existing_open_store_is_tightened(tmp_path: Path, open_umask: None) -> None:
    data = tmp_path / "data"
    store = SqliteStore(data / "broker.db")
    await store.open()
    await store.close()
    os.chmod(data, 0o755)
    for p in data.iterdir():
        os.chmod(p, 0o644)
    store = SqliteStore(data / "broker.db")
    await store.open()
    try:
        assert readable_by_others(data) == []
    finally:
        await store.close()


async def test_a_running_broker_leaves_nothing_readable_by_others(
    env: DemoEnvironment, tmp_path: Path, open_umask: None
) -> None:
    data = tmp_path / "data"
    settings = Settings(
        policy_dir=env.policy_dir, keys_dir=env.keys_dir, secrets_file=env.secrets_file, data_dir=data, http_port=0
    )
    broker = Broker(settings)
    await broker.start()
    try:
        assert {p.name for p in data.iterdir()} >= {"broker.db", "broker.lock"}
        assert readable_by_others(data) == []
    finally:
        await broker.stop()
    assert readable_by_others(data) == []


@pytest.mark.parametrize("bits", [0o040, 0o004, 0o044, 0o060, 0o006])
def test_secrets_and_keys_readable_by_group_or_others_are_refused(
    env: DemoEnvironment, tmp_path: Path, bits: int
) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key_path = tmp_path / "partner.key.pem"
    write_private_key(Ed25519PrivateKey.generate(), key_path)
    broker_key = tmp_path / "broker-key.pem"
    load_or_create_broker_key(broker_key)
    id_dir = tmp_path / "ids"
    load_or_create_id_key(id_dir, "derbyshire-police")
    secrets = tmp_path / "secrets.toml"
    secrets.write_bytes(env.secrets_file.read_bytes())
    for path in (key_path, broker_key, id_dir / "derbyshire-police.idkey", secrets):
        os.chmod(path, 0o600 | bits)
    with pytest.raises(PermissionError, match="readable by group/others"):
        load_private_key(key_path)
    with pytest.raises(PermissionError, match="readable by group/others"):
        load_or_create_broker_key(broker_key)
    with pytest.raises(PermissionError, match="readable by group/others"):
        load_or_create_id_key(id_dir, "derbyshire-police")
    from broker.policy.secrets import load_secrets

    with pytest.raises(SecretsError, match="readable by group or others"):
        load_secrets(secrets, {})


async def test_serve_refuses_a_readable_secrets_file(env: DemoEnvironment, tmp_path: Path) -> None:
    from broker.cli import main

    secrets = tmp_path / "secrets.toml"
    secrets.write_bytes(env.secrets_file.read_bytes())
    os.chmod(secrets, 0o644)
    settings = Settings(
        policy_dir=env.policy_dir, keys_dir=env.keys_dir, secrets_file=secrets, data_dir=tmp_path / "d", http_port=0
    )
    broker = Broker(settings)
    with pytest.raises(SecretsError, match="chmod 600"):
        await broker.start()
    code = main(
        [
            "policy",
            "check",
            "--policy-dir",
            str(env.policy_dir),
            "--keys-dir",
            str(env.keys_dir),
            "--secrets",
            str(secrets),
        ]
    )
    assert code == 2
