"""Partner key files: the private key a partner keeps, and the registry entry it sends the broker.

Part of the contract because both sides use it: an adapter generates and loads the private key;
the broker's operators paste the printed ``[[key]]`` entry into a key file of the registry.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from schemas.signing import b64u_encode


@dataclass(frozen=True, slots=True)
class KeyEntry:
    kid: str
    partner: str
    public_key: bytes
    valid_from: datetime
    valid_until: datetime | None = None
    revoked: bool = False

    def to_toml(self) -> str:
        def stamp(moment: datetime) -> str:
            return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

        lines = [
            "[[key]]",
            f'kid = "{self.kid}"',
            f'partner = "{self.partner}"',
            f'public_key = "{b64u_encode(self.public_key)}"',
            f"valid_from = {stamp(self.valid_from)}",
        ]
        if self.valid_until is not None:
            lines.append(f"valid_until = {stamp(self.valid_until)}")
        lines.append(f"revoked = {'true' if self.revoked else 'false'}")
        return "\n".join(lines) + "\n"


def public_bytes(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def write_private_key(private_key: Ed25519PrivateKey, path: Path) -> None:
    """Write PKCS#8 PEM with mode 0600 from the moment the file exists (no umask race)."""
    pem = private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    mode = path.stat().st_mode & 0o077
    if mode:
        # A signing key readable by other local users lets them sign as the partner.
        raise PermissionError(f"{path} is readable by group/others (mode {oct(mode)}); chmod 600 it")
    key = load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    return key


ID_KEY_SUFFIX = ".idkey"


def id_key_path(directory: Path, partner: str) -> Path:
    return directory / f"{partner}{ID_KEY_SUFFIX}"


def load_or_create_id_key(directory: Path, partner: str) -> bytes:
    """The partner's message-id secret: 32 random bytes, kept beside its signing keys (mode 0600).

    Separate from the signing key on purpose: message ids must stay the same for the same source
    record across key rotations (a resend after a rotation is still a duplicate, not a second
    release), and ids keyed by a secret cannot be enumerated back to attendance or incident numbers.
    """
    path = id_key_path(directory, partner)
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # created meanwhile by another process: read it below
        else:
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write(os.urandom(32).hex() + "\n")
    if path.stat().st_mode & 0o077:
        raise PermissionError(f"{path} is readable by group/others; chmod 600 it")
    raw = bytes.fromhex(path.read_text(encoding="ascii").strip())
    if len(raw) < 32:
        raise ValueError(f"{path} does not hold a 32-byte message-id key")
    return raw


def generate(
    partner: str, out_dir: Path, *, kid: str | None = None, valid_days: int | None = 365, now: datetime | None = None
) -> tuple[Ed25519PrivateKey, KeyEntry, Path]:
    """Generate a key pair, write ``<kid>.key.pem`` (0600) and ``<kid>.pub.toml`` in ``out_dir``."""
    moment = (now or datetime.now(UTC)).replace(microsecond=0)
    kid = kid or f"{partner}-{moment.strftime('%Y%m%d%H%M%S')}"
    private_key = Ed25519PrivateKey.generate()
    entry = KeyEntry(
        kid=kid,
        partner=partner,
        public_key=public_bytes(private_key),
        valid_from=moment - timedelta(minutes=5),
        valid_until=None if valid_days is None else moment + timedelta(days=valid_days),
    )
    key_path = out_dir / f"{kid}.key.pem"
    write_private_key(private_key, key_path)
    load_or_create_id_key(out_dir, partner)  # once per partner; kept across rotations
    (out_dir / f"{kid}.pub.toml").write_text(entry.to_toml(), encoding="utf-8")
    return private_key, entry, key_path
