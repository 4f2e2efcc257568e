"""The party registry: partners (who may send what, under which keys) and consumers.

Loaded from ``policies/parties.toml`` and key files (``policies/keys/*.toml``, or a directory the
operator names).  Every refusal names the file and entry, so an operator can fix it at once; the
broker refuses to start on any, because a registry half-loaded is a registry that lies.

Two layers: the pydantic models (:class:`PartiesDoc`, :class:`KeyFileDoc`, :class:`KeyEntryDoc`)
say each document's shape (keys, types, id syntax, roles, a key's validity window); unknown keys
are refused at every level, so a misspelt ``revoked`` cannot leave a withdrawn key trusted.
:func:`load_registry` keeps what a model cannot say: ids unique across the documents, event
types the schema has, key material that is safe to verify under, and each key's partner known.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, Field, PlainValidator, ValidationError, ValidationInfo, field_validator

from broker.errors import RegistryError
from schemas.documents import DocumentModel, ErrorDetails, sentence
from schemas.envelope import KEY_ID_RE, PARTY_ID_RE
from schemas.errors import ContractError, Reason
from schemas.events import EVENT_TYPES
from schemas.signing import b64u_decode, check_public_key

CONSUMER_ROLES = frozenset({"analyst", "licensing", "youth_justice", "early_help", "vru", "police"})
_Doc = TypeVar("_Doc", bound="DocumentModel")


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


# --- the documents' shape --------------------------------------------------------------------------


def _utc_moment(value: Any) -> datetime:
    # A naive time would be read in the broker's zone, moving a key's validity by hours.
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("needs a UTC offset")
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    raise ValueError("must be a TOML date or date-time")


def _id(pattern: re.Pattern[str], sentence: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(sentence.format(value=value))
        return value

    return check


def _role(value: str) -> str:
    if value not in CONSUMER_ROLES:
        raise ValueError(f"role must be one of {sorted(CONSUMER_ROLES)}")
    return value


NonEmpty = Annotated[str, Field(min_length=1)]
Moment = Annotated[datetime, PlainValidator(_utc_moment)]
KeyId = Annotated[NonEmpty, AfterValidator(_id(KEY_ID_RE, "key id {value!r} is not a valid key id"))]
PartyId = Annotated[NonEmpty, AfterValidator(_id(PARTY_ID_RE, "id must be lower-case letters, digits, '-'"))]


class KeyEntryDoc(DocumentModel):
    """One ``[[key]]`` (key file) or ``[[partner.keys]]`` (parties.toml) entry.

    Unknown keys are refused: a misspelt ``revoked`` would leave a withdrawn key trusted."""

    kid: KeyId
    partner: PartyId | None = None  # required in key files; inline keys belong to their partner
    public_key: NonEmpty
    valid_from: Moment
    valid_until: Moment | None = None
    revoked: bool = False

    @field_validator("valid_until")
    @classmethod
    def _after_valid_from(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        valid_from = info.data.get("valid_from")
        if value is not None and valid_from is not None and value <= valid_from:
            raise ValueError("valid_until is not after valid_from")
        return value


class PartnerDoc(DocumentModel):
    id: PartyId
    name: NonEmpty
    organisation: NonEmpty
    kind: NonEmpty
    event_types: Annotated[list[NonEmpty], Field(min_length=1)]
    keys: list[KeyEntryDoc] = Field(default_factory=list)


class ConsumerDoc(DocumentModel):
    id: PartyId
    name: NonEmpty
    organisation: NonEmpty
    role: Annotated[NonEmpty, AfterValidator(_role)]


class PartiesDoc(DocumentModel):
    """``parties.toml``: ``[[partner]]`` and ``[[consumer]]`` tables, nothing else."""

    partner: list[PartnerDoc] = Field(default_factory=list)
    consumer: list[ConsumerDoc] = Field(default_factory=list)


class KeyFileDoc(DocumentModel):
    """A key file: ``[[key]]`` tables, nothing else."""

    key: list[KeyEntryDoc] = Field(default_factory=list)


_SENTENCES = {
    "kid": "'kid' must be a non-empty string",
    "partner": "'partner' must be a non-empty string",
    "public_key": "'public_key' must be a non-empty string",
    "name": "'name' must be a non-empty string",
    "organisation": "'organisation' must be a non-empty string",
    "kind": "'kind' must be a non-empty string",
    "role": "'role' must be a non-empty string",
    "id": "'id' must be a non-empty string",
    "event_types": "event_types must be a non-empty list",
    "valid_from": "valid_from must be a TOML date or date-time",
    "valid_until": "valid_until must be a TOML date or date-time",
    "revoked": "revoked must be true or false",
}


def _entry(raw: Any, loc: tuple[int | str, ...], top: str) -> str:
    """The entry an error is in, named as an operator finds it: ``partner 'x' keys[0] (kid k1)``."""

    def named(table: Any, kind: str, index: int, field: str) -> str:
        value = table.get(field) if isinstance(table, dict) else None
        if kind != "kid":  # a party is named by its id as written, even a malformed one
            return f"{kind} {value!r}" if isinstance(value, str) and value else f"{kind}[{index}]"
        if isinstance(value, str) and KEY_ID_RE.fullmatch(value) and loc[-1:] != (field,):
            return f"{top}[{index}] (kid {value})"
        return f"{top}[{index}]"

    if len(loc) < 2 or not isinstance(loc[1], int):
        return str(loc[0]) if loc else "file"
    section, index = str(loc[0]), loc[1]
    table = raw.get(section, [])[index] if isinstance(raw.get(section), list) else None
    if section == "key":
        return named(table, "kid", index, "kid")
    entry = named(table, section, index, "id")
    if len(loc) >= 4 and loc[2] == "keys" and isinstance(loc[3], int):
        keys = table.get("keys") if isinstance(table, dict) else None
        key = keys[loc[3]] if isinstance(keys, list) and loc[3] < len(keys) else None
        kid = key.get("kid") if isinstance(key, dict) else None
        entry += f" keys[{loc[3]}]"
        if isinstance(kid, str) and KEY_ID_RE.fullmatch(kid) and loc[4:] != ("kid",):
            entry += f" (kid {kid})"
    return entry


def _message(error: ErrorDetails) -> str:
    """One pydantic error as the sentence operators have always read for it."""
    field = next((str(p) for p in reversed(error["loc"]) if isinstance(p, str)), "")
    if error["type"] == "extra_forbidden" and len(error["loc"]) == 1:
        # Threat: a table the loader does not know is not ignored. A [[key]] pasted into
        # parties.toml (instead of under its [[partner]]) would otherwise be silently dropped, and
        # the operator would believe a key registered (or a revocation applied) that is not.
        return (
            f"unknown top-level table {field!r}: a parties file holds only [[partner]] (keys under it as "
            "[[partner.keys]]) and [[consumer]]; a key file holds only [[key]]"
        )
    if error["type"] == "extra_forbidden":
        return f"unknown setting(s) [{field!r}]"
    if error["type"] == "value_error":
        text = sentence(error)
        return text if field in ("kid", "id") or text.startswith(field) else f"{field} {text}"
    return _SENTENCES.get(field, f"{field} {sentence(error)}")


def _validate(model: type[_Doc], raw: dict[str, Any], path: Path, top: str) -> _Doc:
    """A registry document's shape; the first error as a :class:`RegistryError` naming its entry."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        entry = _entry(raw, tuple(error["loc"]), top)
        raise RegistryError(Reason.REGISTRY_INVALID, path, entry, _message(error)) from None


def _key(doc: KeyEntryDoc, path: Path, entry: str, partner_id: str | None) -> PartnerKey:
    """A shape-checked key entry -> a key, refusing malformed, non-canonical, small-order and
    mixed-order keys.

    Why here and not at verification: ``cryptography`` verifies signatures under such keys, and a
    small-order key lets a signature verify for messages the key holder never signed.
    """
    entry = f"{entry} (kid {doc.kid})"
    partner = partner_id or doc.partner
    if partner is None:
        raise RegistryError(Reason.REGISTRY_INVALID, path, entry, "'partner' must be a non-empty string")
    try:
        raw = b64u_decode(doc.public_key, expected_len=32)
    except ValueError as exc:
        raise RegistryError(
            Reason.KEY_MALFORMED, path, entry, f"public_key is not 32 bytes of base64url: {exc}"
        ) from None
    try:
        check_public_key(raw)
    except ContractError as exc:
        raise RegistryError(exc.reason, path, entry, exc.message) from None
    return PartnerKey(doc.kid, partner, raw, doc.valid_from, doc.valid_until, doc.revoked)


def parse_key_entry(table: dict[str, Any], path: Path, entry: str, partner_id: str | None = None) -> PartnerKey:
    """One key entry (shape, then key material); see :func:`_key`."""
    try:
        doc = KeyEntryDoc.model_validate(table)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        kid = table.get("kid")
        if isinstance(kid, str) and KEY_ID_RE.fullmatch(kid) and tuple(error["loc"]) != ("kid",):
            entry = f"{entry} (kid {kid})"
        raise RegistryError(Reason.REGISTRY_INVALID, path, entry, _message(error)) from None
    return _key(doc, path, entry, partner_id)


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(Reason.REGISTRY_INVALID, path, "file", f"not valid TOML: {exc}") from None
    except OSError as exc:
        raise RegistryError(Reason.REGISTRY_INVALID, path, "file", f"cannot read: {exc.strerror}") from None


def load_registry(policy_dir: Path, keys_dir: Path | None = None) -> Registry:
    """Load ``parties.toml`` from ``policy_dir`` and every ``*.toml`` key file in ``keys_dir``.

    The models check each document's shape; this checks what they cannot: party ids unique
    across partners and consumers, event types the schema has, key ids unique across files, and
    each key's partner registered."""
    path = policy_dir / "parties.toml"
    parties = _validate(PartiesDoc, _load_toml(path), path, "parties")
    partners: dict[str, Partner] = {}
    consumers: dict[str, Consumer] = {}
    seen_ids: set[str] = set()
    key_docs: list[tuple[Path, str, KeyEntryDoc, str | None]] = []

    def unique(pid: str, entry: str) -> None:
        if pid in seen_ids:
            raise RegistryError(Reason.REGISTRY_INVALID, path, entry, "party id is used twice")
        seen_ids.add(pid)

    for partner in parties.partner:
        entry = f"partner {partner.id!r}"
        unique(partner.id, entry)
        unknown_types = sorted(set(partner.event_types) - EVENT_TYPES)
        if unknown_types:
            raise RegistryError(Reason.REGISTRY_INVALID, path, entry, f"unknown event type(s) {unknown_types}")
        key_docs.extend((path, f"{entry} keys[{j}]", key, partner.id) for j, key in enumerate(partner.keys))
        partners[partner.id] = Partner(
            partner.id, partner.name, partner.organisation, partner.kind, frozenset(partner.event_types)
        )
    for consumer in parties.consumer:
        unique(consumer.id, f"consumer {consumer.id!r}")
        consumers[consumer.id] = Consumer(consumer.id, consumer.name, consumer.organisation, consumer.role)

    kdir = keys_dir if keys_dir is not None else policy_dir / "keys"
    for key_path in sorted(kdir.glob("*.toml")) if kdir.is_dir() else []:
        key_file = _validate(KeyFileDoc, _load_toml(key_path), key_path, "key")
        key_docs.extend((key_path, f"key[{j}]", key, None) for j, key in enumerate(key_file.key))

    keys: dict[str, PartnerKey] = {}
    owners: dict[bytes, PartnerKey] = {}  # public key -> the first entry registering it
    by_partner: dict[str, list[PartnerKey]] = {}
    for kpath, entry, key_doc, owner in key_docs:
        key = _key(key_doc, kpath, entry, owner)
        if key.kid in keys:
            # Two keys under one id: which one verifies would depend on load order.
            raise RegistryError(Reason.DUPLICATE_KEY_ID, kpath, entry, f"key id {key.kid!r} is already registered")
        if key.partner not in partners:
            raise RegistryError(Reason.REGISTRY_INVALID, kpath, entry, f"unknown partner {key.partner!r}")
        holder = owners.setdefault(key.public_key, key)
        if holder.partner != key.partner:
            # Threat: one key under two partners lets whoever holds it sign as either, so an
            # envelope "from" the police could come from a pub-watch adapter (or a copied key
            # file): the source a signature proves would be ambiguous.
            raise RegistryError(
                Reason.DUPLICATE_PUBLIC_KEY,
                kpath,
                entry,
                f"this public key is already registered for partner {holder.partner!r} (kid {holder.kid!r}); "
                "every partner needs its own key",
            )
        keys[key.kid] = key
        by_partner.setdefault(key.partner, []).append(key)
    for pid, plist in by_partner.items():
        p = partners[pid]
        partners[pid] = Partner(p.id, p.name, p.organisation, p.kind, p.event_types, tuple(plist))
    return Registry(partners=partners, consumers=consumers, keys=keys)
