"""The partner side of signing: one ``Signer`` per partner key, and a keyring for demos and tests."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas import envelope
from schemas.keyfile import KeyEntry, generate, load_or_create_id_key
from schemas.signing import b64u_encode


@dataclass(frozen=True)
class Signer:
    partner: str
    kid: str
    private_key: Ed25519PrivateKey
    id_key: bytes = field(repr=False, default=b"")

    @classmethod
    def create(cls, partner: str, kid: str, private_key: Ed25519PrivateKey, id_key: bytes | None = None) -> Signer:
        """``id_key``: the partner's message-id secret (``schemas.keyfile.load_or_create_id_key``),
        which survives key rotation. Without it ids are keyed by this signing key: fine for a demo,
        but a rotation would then give old records new ids."""
        return cls(partner, kid, private_key, id_key if id_key is not None else envelope.message_id_key(private_key))

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
        revision: int = 1,
        withdrawn: str | None = None,
    ) -> dict[str, Any]:
        """The signed envelope of a record's revision: 1 (its first message), or a correction
        (``revision`` >= 2) or withdrawal (``withdrawn``, ``data`` {}) under its first message id."""
        first = self.message_id(source_key)
        return envelope.build_signed(
            private_key=self.private_key,
            partner_id=self.partner,
            keyid=self.kid,
            event_type=event_type,
            version=version,
            message_id=first,
            data=data,
            produced_at=produced_at or datetime.now(UTC),
            supersedes=first if revision > 1 else None,
            revision=revision,
            withdrawn=withdrawn,
        )

    def sign_bytes(
        self,
        event_type: str,
        data: dict[str, Any],
        *,
        source_key: str,
        version: int = 1,
        revision: int = 1,
        withdrawn: str | None = None,
    ) -> bytes:
        return envelope.encode(
            self.sign(event_type, data, source_key=source_key, version=version, revision=revision, withdrawn=withdrawn)
        )

    def envelope_writer(self, event_type: str, version: int = 1) -> EnvelopeWriter:
        return EnvelopeWriter(self, event_type, version)


class EnvelopeWriter:
    """Signs many payloads of one event type: the envelope's bytes are assembled around the
    payload's canonical JSON, computed once by the caller (who also hashes it for the state file).

    Exactly what :meth:`Signer.sign_bytes` produces (tests hold them equal for every sample
    export): RFC 8785 orders members by name, every member but ``data`` is ours and ASCII, so the
    canonical envelope is fixed text around ``data``, ``id``, ``time`` and ``signature``. The
    caller's ``data_json`` must be ``json.dumps(data, ensure_ascii=False, sort_keys=True,
    separators=(",", ":"))`` of a payload without floats and with ASCII member names: what a
    mapping produces from the event models, which have no float field.
    """

    def __init__(self, signer: Signer, event_type: str, version: int) -> None:
        self.signer = signer
        dumps = json.dumps
        # Members in RFC 8785 order: data, datacontenttype, dataschema, id, keyid, signature,
        # source, specversion, time, type.
        self._middle = (
            f',"datacontenttype":{dumps(envelope.CONTENT_TYPE)}'
            f',"dataschema":{dumps(envelope.dataschema_for(event_type, version))},"id":'
        )
        self._keyid = f',"keyid":{dumps(signer.kid)},'
        self._tail_head = f'"source":{dumps(signer.partner)},"specversion":{dumps(envelope.SPECVERSION)},"time":'
        self._type = f',"type":{dumps(event_type)}}}'
        self._second = -1
        self._time = ""

    def _now(self) -> str:
        second = int(time.time())
        if second != self._second:  # formatted once a second: it costs as much as the id's HMAC
            self._second = second
            self._time = json.dumps(envelope.format_time(datetime.fromtimestamp(second, UTC)))
        return self._time

    def write(self, source_key: str, data_json: str, produced_at: datetime | None = None) -> tuple[str, bytes]:
        message_id = self.signer.message_id(source_key)
        moment = json.dumps(envelope.format_time(produced_at)) if produced_at is not None else self._now()
        head = '{"data":' + data_json + self._middle + json.dumps(message_id) + self._keyid
        tail = self._tail_head + moment + self._type
        signature = b64u_encode(self.signer.private_key.sign((head + tail).encode()))
        return message_id, (head + '"signature":"' + signature + '",' + tail).encode()


def generate_keyring(partners: Iterable[str], out_dir: Path, *, valid_days: int = 30) -> dict[str, Signer]:
    """Generate a fresh key per partner into ``out_dir`` and write the registry key file
    ``out_dir/partners.toml`` (the demo's and tests' ``--keys-dir``); keys exist only at run time."""
    out_dir.mkdir(parents=True, exist_ok=True)
    signers: dict[str, Signer] = {}
    entries: list[KeyEntry] = []
    for partner in partners:
        private_key, entry, _ = generate(partner, out_dir / "private", kid=f"{partner}-k1", valid_days=valid_days)
        id_key = load_or_create_id_key(out_dir / "private", partner)  # made by generate() beside the key
        signers[partner] = Signer.create(partner, entry.kid, private_key, id_key)
        entries.append(entry)
    (out_dir / "partners.toml").write_text("\n".join(e.to_toml() for e in entries), encoding="utf-8")
    for pub in (out_dir / "private").glob("*.pub.toml"):
        pub.unlink()  # the combined partners.toml is the registry file; avoid duplicate key ids
    return signers
