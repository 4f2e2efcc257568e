"""The party registry: partners (who may send what, under which keys) and consumers.

Loaded from ``policies/parties.toml`` and key files (``policies/keys/*.toml``, or a directory the
operator names).  Every refusal names the file and entry, so an operator can fix it at once, and
every problem of every file and entry is reported together, not only the first; the broker
refuses to start (or to reload) on any, because a registry half-loaded is a registry that lies.

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

from broker.errors import RegistryError, RegistryProblem
from schemas.documents import DocumentModel, ErrorDetails, sentence
from schemas.envelope import KEY_ID_RE, PARTY_ID_RE
from schemas.errors import ContractError, Reason
from schemas.events import EVENT_TYPES
from schemas.signing import b64u_decode, check_public_key

FIGURES_ONLY_ROLE = "board"  # a consumer of this role may be named only in figures flows (the loader)
CONSUMER_ROLES = frozenset({"analyst", "licensing", "youth_justice", "early_help", "vru", "police", FIGURES_ONLY_ROLE})
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


class _Found:
    """Every problem found so far (each once), in the order the checks meet them."""

    def __init__(self) -> None:
        self.problems: list[RegistryProblem] = []

    def add(self, reason: Reason, path: Path, entry: str, sentence: str) -> None:
        problem = RegistryProblem(str(path), entry, reason, sentence)
        if problem not in self.problems:
            self.problems.append(problem)


def _shape(model: type[_Doc], raw: dict[str, Any], path: Path, top: str, found: _Found) -> None:
    """A registry document's shape: every error pydantic finds, each naming its entry."""
    try:
        model.model_validate(raw)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            found.add(Reason.REGISTRY_INVALID, path, _entry(raw, tuple(error["loc"]), top), _message(error))


def _alone(model: type[_Doc], table: Any) -> _Doc | None:
    """One entry validated on its own; None if it is malformed (its errors are reported by :func:`_shape`)."""
    try:
        return model.model_validate(table)
    except ValidationError:
        return None


def _tables(raw: Any, section: str) -> list[tuple[int, dict[str, Any]]]:
    """The ``[[section]]`` tables of a document, by index (a malformed section has none)."""
    value = raw.get(section) if isinstance(raw, dict) else None
    return [(i, t) for i, t in enumerate(value) if isinstance(t, dict)] if isinstance(value, list) else []


def _valid(table: dict[str, Any], name: str, pattern: re.Pattern[str]) -> str | None:
    value = table.get(name)
    return value if isinstance(value, str) and pattern.fullmatch(value) else None


def _material(doc: KeyEntryDoc, path: Path, entry: str, found: _Found) -> bytes | None:
    """A shape-checked entry's public key, refusing malformed, non-canonical, small-order and
    mixed-order keys (None, with the problem recorded, if it is one of those).

    Why here and not at verification: ``cryptography`` verifies signatures under such keys, and a
    small-order key lets a signature verify for messages the key holder never signed.
    """
    try:
        raw = b64u_decode(doc.public_key, expected_len=32)
    except ValueError as exc:
        found.add(Reason.KEY_MALFORMED, path, entry, f"public_key is not 32 bytes of base64url: {exc}")
        return None
    try:
        check_public_key(raw)
    except ContractError as exc:
        found.add(exc.reason, path, entry, exc.message)
        return None
    return raw


def parse_key_entry(table: dict[str, Any], path: Path, entry: str, partner_id: str | None = None) -> PartnerKey:
    """One key entry (shape, then key material); raises :class:`RegistryError` with every problem."""
    found = _Found()
    try:
        doc = KeyEntryDoc.model_validate(table)
    except ValidationError as exc:
        kid = _valid(table, "kid", KEY_ID_RE)
        for error in exc.errors(include_url=False):
            named = f"{entry} (kid {kid})" if kid and tuple(error["loc"]) != ("kid",) else entry
            found.add(Reason.REGISTRY_INVALID, path, named, _message(error))
        raise RegistryError.of(found.problems) from None
    entry = f"{entry} (kid {doc.kid})"
    partner = partner_id or doc.partner
    if partner is None:
        found.add(Reason.REGISTRY_INVALID, path, entry, "'partner' must be a non-empty string")
    raw = _material(doc, path, entry, found)
    if found.problems or raw is None or partner is None:
        raise RegistryError.of(found.problems)
    return PartnerKey(doc.kid, partner, raw, doc.valid_from, doc.valid_until, doc.revoked)


def _load_toml(path: Path, found: _Found) -> dict[str, Any] | None:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        found.add(Reason.REGISTRY_INVALID, path, "file", f"not valid TOML: {exc}")
    except OSError as exc:
        found.add(Reason.REGISTRY_INVALID, path, "file", f"cannot read: {exc.strerror}")
    return None


@dataclass(frozen=True, slots=True)
class _KeyTable:
    path: Path
    entry: str  # "key[2]" or "partner 'x' keys[0]"
    table: dict[str, Any]
    inline: bool  # under a [[partner]]: it belongs to that partner
    owner: str | None  # the partner it is under (None: that partner's id is itself refused)


def load_registry(policy_dir: Path, keys_dir: Path | None = None) -> Registry:
    """Load ``parties.toml`` from ``policy_dir`` and every ``*.toml`` key file in ``keys_dir``;
    raises :class:`RegistryError` carrying every problem of every file and entry (see
    :func:`collect_registry`)."""
    registry, problems = collect_registry(policy_dir, keys_dir)
    if problems:
        raise RegistryError.of(problems)
    return registry


def collect_registry(policy_dir: Path, keys_dir: Path | None = None) -> tuple[Registry, list[RegistryProblem]]:
    """The registry and every problem found, across every file and entry, not only the first
    (issue 12 item 5: an operator fixes all of them in one round, not one per refused reload).

    The models check each document's shape; this checks what they cannot: party ids unique
    across partners and consumers, event types the schema has, key ids unique across files, key
    material safe to verify under, one public key under one partner only, and each key's partner
    registered.

    With problems, the registry returned is what was well-formed (an entry refused for its shape
    but with a readable id stays, as far as it can be read, so that what names it, a key or an
    agreement, is not also reported as naming an unknown party). It is for checking the rest of
    a configuration against, never for putting in force: :func:`load_registry` raises instead."""
    found = _Found()
    path = policy_dir / "parties.toml"
    partners: dict[str, Partner] = {}
    consumers: dict[str, Consumer] = {}
    seen_ids: set[str] = set()
    key_tables: list[_KeyTable] = []

    def unique(pid: str, entry: str) -> bool:
        if pid in seen_ids:
            found.add(Reason.REGISTRY_INVALID, path, entry, "party id is used twice")
            return False
        seen_ids.add(pid)
        return True

    raw = _load_toml(path, found)
    if raw is not None:
        _shape(PartiesDoc, raw, path, "parties", found)
    for index, table in _tables(raw, "partner"):
        doc = _alone(PartnerDoc, table)
        pid = doc.id if doc is not None else _valid(table, "id", PARTY_ID_RE)
        entry = f"partner {pid!r}" if pid is not None else f"partner[{index}]"
        key_tables.extend(_KeyTable(path, f"{entry} keys[{j}]", key, True, pid) for j, key in _tables(table, "keys"))
        if pid is None or not unique(pid, entry):
            continue
        if doc is not None:
            declared: list[Any] = list(doc.event_types)
            name, organisation, kind = doc.name, doc.organisation, doc.kind
        else:  # refused for its shape (reported): kept as far as it reads, for what names it
            types = table.get("event_types")
            declared = [t for t in types if isinstance(t, str)] if isinstance(types, list) else []
            name, organisation, kind = (str(table.get(f, "")) for f in ("name", "organisation", "kind"))
        unknown_types = sorted(set(declared) - EVENT_TYPES)
        if doc is not None and unknown_types:
            found.add(Reason.REGISTRY_INVALID, path, entry, f"unknown event type(s) {unknown_types}")
        known = frozenset(t for t in declared if t in EVENT_TYPES)
        partners[pid] = Partner(pid, name, organisation, kind, known)
    for _index, table in _tables(raw, "consumer"):
        consumer = _alone(ConsumerDoc, table)
        cid = consumer.id if consumer is not None else _valid(table, "id", PARTY_ID_RE)
        if cid is None or not unique(cid, f"consumer {cid!r}"):
            continue
        if consumer is not None:
            consumers[cid] = Consumer(cid, consumer.name, consumer.organisation, consumer.role)
        else:
            consumers[cid] = Consumer(cid, *(str(table.get(f, "")) for f in ("name", "organisation", "role")))

    kdir = keys_dir if keys_dir is not None else policy_dir / "keys"
    key_paths = sorted(kdir.glob("*.toml")) if kdir.is_dir() else []
    for key_path in key_paths:
        key_raw = _load_toml(key_path, found)
        if key_raw is None:
            continue
        _shape(KeyFileDoc, key_raw, key_path, "key", found)
        key_tables.extend(_KeyTable(key_path, f"key[{j}]", t, False, None) for j, t in _tables(key_raw, "key"))

    keys: dict[str, PartnerKey] = {}
    kids: set[str] = set()  # every well-formed kid claimed, even by an entry refused otherwise
    owners: dict[bytes, PartnerKey] = {}  # public key -> the first entry registering it
    by_partner: dict[str, list[PartnerKey]] = {}
    for item in key_tables:
        before = len(found.problems)
        kid = _valid(item.table, "kid", KEY_ID_RE)
        entry = f"{item.entry} (kid {kid})" if kid else item.entry
        key_doc = _alone(KeyEntryDoc, item.table)  # None: its shape problems are reported already
        public_key = _material(key_doc, item.path, entry, found) if key_doc is not None else None
        if kid is not None and kid in kids:
            # Two keys under one id: which one verifies would depend on load order.
            found.add(Reason.DUPLICATE_KEY_ID, item.path, entry, f"key id {kid!r} is already registered")
        elif kid is not None:
            kids.add(kid)
        partner = item.owner if item.inline else (key_doc.partner if key_doc is not None else None)
        if key_doc is not None and not item.inline and partner is None:
            found.add(Reason.REGISTRY_INVALID, item.path, entry, "'partner' must be a non-empty string")
        elif partner is not None and partner not in partners:
            found.add(Reason.REGISTRY_INVALID, item.path, entry, f"unknown partner {partner!r}")
        if key_doc is None or public_key is None or partner is None:
            continue
        key = PartnerKey(key_doc.kid, partner, public_key, key_doc.valid_from, key_doc.valid_until, key_doc.revoked)
        holder = owners.setdefault(public_key, key)
        if holder.partner != partner:
            # Threat: one key under two partners lets whoever holds it sign as either, so an
            # envelope "from" the police could come from a pub-watch adapter (or a copied key
            # file): the source a signature proves would be ambiguous.
            found.add(
                Reason.DUPLICATE_PUBLIC_KEY,
                item.path,
                entry,
                f"this public key is already registered for partner {holder.partner!r} (kid {holder.kid!r}); "
                "every partner needs its own key",
            )
        if len(found.problems) > before or partner not in partners:
            continue
        keys[key.kid] = key
        by_partner.setdefault(partner, []).append(key)
    for pid, plist in by_partner.items():
        p = partners[pid]
        partners[pid] = Partner(p.id, p.name, p.organisation, p.kind, p.event_types, tuple(plist))
    # Reported file by file (parties.toml first, then the key files in name order), each file's
    # problems in the order they were met.
    order = {str(f): i for i, f in enumerate([path, *key_paths])}
    problems = sorted(found.problems, key=lambda p: order.get(p.path, len(order)))
    return Registry(partners=partners, consumers=consumers, keys=keys), problems
