"""The party registry: partners (who may send what, under which keys) and consumers.

Loaded from ``policies/parties.toml`` and key files (``policies/keys/*.toml``, or a directory the
operator names).  Every refusal names the file and entry, so an operator can fix it at once; the
broker refuses to start on any, because a registry half-loaded is a registry that lies.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from broker.errors import RegistryError
from schemas.envelope import KEY_ID_RE, PARTY_ID_RE
from schemas.errors import ContractError, Reason
from schemas.events import EVENT_TYPES
from schemas.signing import b64u_decode, check_public_key

CONSUMER_ROLES = frozenset({"analyst", "licensing", "youth_justice", "early_help", "vru", "police"})


@dataclass(frozen=True, slots=True)
class PartnerKey:
    kid: str
    partner: str
    public_key: bytes
    valid_from: datetime
    valid_until: datetime | None
    revoked: bool


@dataclass(frozen=True, slots=True)
class Partner:
    id: str
    name: str
    organisation: str
    kind: str
    event_types: frozenset[str]
    keys: tuple[PartnerKey, ...] = ()


@dataclass(frozen=True, slots=True)
class Consumer:
    id: str
    name: str
    organisation: str
    role: str


@dataclass(frozen=True, slots=True)
class Registry:
    partners: dict[str, Partner]
    consumers: dict[str, Consumer]
    keys: dict[str, PartnerKey] = field(default_factory=dict)  # by kid, globally unique

    def key(self, kid: str) -> PartnerKey | None:
        return self.keys.get(kid)


def _as_datetime(value: Any, path: Path, entry: str, name: str) -> datetime:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise RegistryError(Reason.REGISTRY_INVALID, path, entry, f"{name} needs a UTC offset")
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    raise RegistryError(Reason.REGISTRY_INVALID, path, entry, f"{name} must be a TOML date or date-time")


def _str(table: dict[str, Any], key: str, path: Path, entry: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value:
        raise RegistryError(Reason.REGISTRY_INVALID, path, entry, f"{key!r} must be a non-empty string")
    return value


def parse_key_entry(table: dict[str, Any], path: Path, entry: str, partner_id: str | None = None) -> PartnerKey:
    """One key entry; refuses malformed, non-canonical, small-order and mixed-order keys.

    Why here and not at verification: ``cryptography`` verifies signatures under such keys, and a
    small-order key lets a signature verify for messages the key holder never signed.
    """
    kid = _str(table, "kid", path, entry)
    if not KEY_ID_RE.fullmatch(kid):
        raise RegistryError(Reason.REGISTRY_INVALID, path, entry, f"key id {kid!r} is not a valid key id")
    entry = f"{entry} (kid {kid})"
    partner = partner_id or _str(table, "partner", path, entry)
    encoded = _str(table, "public_key", path, entry)
    try:
        raw = b64u_decode(encoded, expected_len=32)
    except ValueError as exc:
        raise RegistryError(
            Reason.KEY_MALFORMED, path, entry, f"public_key is not 32 bytes of base64url: {exc}"
        ) from None
    try:
        check_public_key(raw)
    except ContractError as exc:
        raise RegistryError(exc.reason, path, entry, exc.message) from None
    valid_from = _as_datetime(table.get("valid_from"), path, entry, "valid_from")
    until_raw = table.get("valid_until")
    valid_until = None if until_raw is None else _as_datetime(until_raw, path, entry, "valid_until")
    if valid_until is not None and valid_until <= valid_from:
        raise RegistryError(Reason.REGISTRY_INVALID, path, entry, "valid_until is not after valid_from")
    revoked = table.get("revoked", False)
    if not isinstance(revoked, bool):
        raise RegistryError(Reason.REGISTRY_INVALID, path, entry, "revoked must be true or false")
    unknown = set(table) - {"kid", "partner", "public_key", "valid_from", "valid_until", "revoked"}
    if unknown:
        raise RegistryError(Reason.REGISTRY_INVALID, path, entry, f"unknown setting(s) {sorted(unknown)}")
    return PartnerKey(kid, partner, raw, valid_from, valid_until, revoked)


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(Reason.REGISTRY_INVALID, path, "file", f"not valid TOML: {exc}") from None
    except OSError as exc:
        raise RegistryError(Reason.REGISTRY_INVALID, path, "file", f"cannot read: {exc.strerror}") from None


def load_registry(policy_dir: Path, keys_dir: Path | None = None) -> Registry:
    """Load ``parties.toml`` from ``policy_dir`` and every ``*.toml`` key file in ``keys_dir``."""
    path = policy_dir / "parties.toml"
    doc = _load_toml(path)
    partners: dict[str, Partner] = {}
    consumers: dict[str, Consumer] = {}
    seen_ids: set[str] = set()
    key_tables: list[tuple[Path, str, dict[str, Any], str | None]] = []
    for i, table in enumerate(doc.get("partner", [])):
        entry = f"partner[{i}]"
        pid = _str(table, "id", path, entry)
        entry = f"partner {pid!r}"
        if not PARTY_ID_RE.fullmatch(pid):
            raise RegistryError(Reason.REGISTRY_INVALID, path, entry, "id must be lower-case letters, digits, '-'")
        if pid in seen_ids:
            raise RegistryError(Reason.REGISTRY_INVALID, path, entry, "party id is used twice")
        seen_ids.add(pid)
        types = table.get("event_types", [])
        if not isinstance(types, list) or not types or not all(isinstance(t, str) for t in types):
            raise RegistryError(Reason.REGISTRY_INVALID, path, entry, "event_types must be a non-empty list")
        unknown_types = sorted(set(types) - EVENT_TYPES)
        if unknown_types:
            raise RegistryError(Reason.REGISTRY_INVALID, path, entry, f"unknown event type(s) {unknown_types}")
        for j, key_table in enumerate(table.get("keys", [])):
            key_tables.append((path, f"{entry} keys[{j}]", key_table, pid))
        partners[pid] = Partner(
            id=pid,
            name=_str(table, "name", path, entry),
            organisation=_str(table, "organisation", path, entry),
            kind=_str(table, "kind", path, entry),
            event_types=frozenset(types),
        )
    for i, table in enumerate(doc.get("consumer", [])):
        cid = _str(table, "id", path, f"consumer[{i}]")
        entry = f"consumer {cid!r}"
        if not PARTY_ID_RE.fullmatch(cid):
            raise RegistryError(Reason.REGISTRY_INVALID, path, entry, "id must be lower-case letters, digits, '-'")
        if cid in seen_ids:
            raise RegistryError(Reason.REGISTRY_INVALID, path, entry, "party id is used twice")
        seen_ids.add(cid)
        role = _str(table, "role", path, entry)
        if role not in CONSUMER_ROLES:
            raise RegistryError(Reason.REGISTRY_INVALID, path, entry, f"role must be one of {sorted(CONSUMER_ROLES)}")
        consumers[cid] = Consumer(cid, _str(table, "name", path, entry), _str(table, "organisation", path, entry), role)

    kdir = keys_dir if keys_dir is not None else policy_dir / "keys"
    if kdir.is_dir():
        for key_path in sorted(kdir.glob("*.toml")):
            for j, key_table in enumerate(_load_toml(key_path).get("key", [])):
                key_tables.append((key_path, f"key[{j}]", key_table, None))

    keys: dict[str, PartnerKey] = {}
    by_partner: dict[str, list[PartnerKey]] = {}
    for kpath, entry, key_table, owner in key_tables:
        key = parse_key_entry(key_table, kpath, entry, owner)
        if key.kid in keys:
            # Two keys under one id: which one verifies would depend on load order.
            raise RegistryError(Reason.DUPLICATE_KEY_ID, kpath, entry, f"key id {key.kid!r} is already registered")
        if key.partner not in partners:
            raise RegistryError(Reason.REGISTRY_INVALID, kpath, entry, f"unknown partner {key.partner!r}")
        keys[key.kid] = key
        by_partner.setdefault(key.partner, []).append(key)
    for pid, plist in by_partner.items():
        p = partners[pid]
        partners[pid] = Partner(p.id, p.name, p.organisation, p.kind, p.event_types, tuple(plist))
    return Registry(partners=partners, consumers=consumers, keys=keys)
