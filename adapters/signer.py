"""The partner side of signing: one ``Signer`` per partner key, and a keyring for demos and tests."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas import envelope
from schemas.keyfile import KeyEntry, generate


@dataclass(frozen=True)
class Signer:
    partner: str
    kid: str
    private_key: Ed25519PrivateKey
    id_key: bytes = field(repr=False, default=b"")

    @classmethod
    def create(cls, partner: str, kid: str, private_key: Ed25519PrivateKey) -> Signer:
        return cls(partner, kid, private_key, envelope.message_id_key(private_key))

    def message_id(self, source_key: str) -> str:
        return envelope.message_id(self.partner, source_key, self.id_key)

    def sign(
        self,
        event_type: str,
        data: dict[str, Any],
        *,
        source_key: str,
        version: int = 1,
        produced_at: datetime | None = None,
    ) -> dict[str, Any]:
        return envelope.build_signed(
            private_key=self.private_key,
            partner_id=self.partner,
            keyid=self.kid,
            event_type=event_type,
            version=version,
            message_id=self.message_id(source_key),
            data=data,
            produced_at=produced_at or datetime.now(UTC),
        )

    def sign_bytes(self, event_type: str, data: dict[str, Any], *, source_key: str, version: int = 1) -> bytes:
        return envelope.encode(self.sign(event_type, data, source_key=source_key, version=version))


def generate_keyring(partners: Iterable[str], out_dir: Path, *, valid_days: int = 30) -> dict[str, Signer]:
    """Generate a fresh key per partner into ``out_dir`` and write the registry key file
    ``out_dir/partners.toml`` (the demo's and tests' ``--keys-dir``); keys exist only at run time."""
    out_dir.mkdir(parents=True, exist_ok=True)
    signers: dict[str, Signer] = {}
    entries: list[KeyEntry] = []
    for partner in partners:
        private_key, entry, _ = generate(partner, out_dir / "private", kid=f"{partner}-k1", valid_days=valid_days)
        signers[partner] = Signer.create(partner, entry.kid, private_key)
        entries.append(entry)
    (out_dir / "partners.toml").write_text("\n".join(e.to_toml() for e in entries), encoding="utf-8")
    for pub in (out_dir / "private").glob("*.pub.toml"):
        pub.unlink()  # the combined partners.toml is the registry file; avoid duplicate key ids
    return signers
