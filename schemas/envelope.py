"""The envelope: CloudEvents 1.0 structured JSON, plus two extension attributes for signing.

```
{
  "specversion": "1.0",
  "id": "<message id: stable per source record>",
  "source": "<partner id>",
  "type": "<event type>",                       e.g. "ae_assault"
  "dataschema": "urn:sv-broker:schema:<type>:v<version>",
  "time": "<RFC 3339 produced-at, with offset>",
  "datacontenttype": "application/json",
  "keyid": "<registered key id>",              extension: which partner key signed
  "signature": "<base64url Ed25519 signature>", extension
  "supersedes": "<message id of revision 1>",  extension, only in a correction or withdrawal
  "revision": 2,                                extension, only with supersedes: 2, 3, ...
  "withdrawn": "sent_in_error",                 extension, only in a withdrawal (data is {})
  "data": { ...event payload... }
}
```

A record's life is a *lineage*: revision 1 is the first message (its id derived from the
partner's record key, ``message_id``); each later revision names that first id in
``supersedes``, counts up in ``revision`` and has the id ``<supersedes>:r<revision>``
(``revision_message_id``), so one revision number has one content (the replay guard refuses the
same id with other content) and a resend of a revision is a duplicate. A correction carries the
whole corrected event; a withdrawal carries ``withdrawn`` (a ``WithdrawalReason``) and ``{}``.

The signature is Ed25519 over the RFC 8785 canonical bytes of the whole envelope *without* the
``signature`` member, so every attribute (id, source, type, time, key id, payload) is bound by it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from schemas.canonical import canonicalize, canonicalize_plain
from schemas.errors import ContractError, Reason
from schemas.signing import b64u_encode

SPECVERSION = "1.0"
CONTENT_TYPE = "application/json"
SIGNATURE_ATTR = "signature"

REQUIRED_ATTRS = ("specversion", "id", "source", "type", "dataschema", "time", "keyid", SIGNATURE_ATTR, "data")
OPTIONAL_ATTRS = ("datacontenttype", "supersedes", "revision", "withdrawn")
MAX_REVISION = 9999
REVISION_SUFFIX = re.compile(r":r[0-9]+$")
MAX_FIRST_ID = 128 - len(f":r{MAX_REVISION}")


class WithdrawalReason(StrEnum):
    """Why a partner withdraws a record it sent (the ``withdrawn`` attribute)."""

    SENT_IN_ERROR = "sent_in_error"  # the record should never have left the partner
    DUPLICATE_RECORD = "duplicate_record"  # the same incident sent under another record key
    NOT_SERIOUS_VIOLENCE = "not_serious_violence"  # reclassified out of scope of the agreements
    REMOVED_FROM_SOURCE = "removed_from_source"  # gone from the partner's system / export


ALLOWED_ATTRS = frozenset(REQUIRED_ATTRS + OPTIONAL_ATTRS)

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{7,127}$")
PARTY_ID_RE = re.compile(r"^[a-z0-9][a-z0-9\-]{1,62}$")
KEY_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$")
TYPE_RE = re.compile(r"^[a-z][a-z0-9_]{1,40}$")
DATASCHEMA_RE = re.compile(r"^urn:sv-broker:schema:(?P<type>[a-z][a-z0-9_]{1,40}):v(?P<version>[1-9][0-9]{0,3})$")
# RFC 3339 with a mandatory offset; fromisoformat alone would accept week dates, no offset, etc.
TIME_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})$")


def dataschema_for(event_type: str, version: int) -> str:
    return f"urn:sv-broker:schema:{event_type}:v{version}"


def format_time(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("time must be timezone-aware")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    if not TIME_RE.fullmatch(text):
        raise ValueError("not an RFC 3339 date-time with offset")
    main, frac, zone = text[:19], "", text[19:]
    if zone.startswith("."):
        cut = max(zone.find("Z"), zone.find("+"), zone.find("-"))
        frac, zone = zone[:cut][:7], zone[cut:]  # Python keeps microseconds
    return datetime.fromisoformat(main + frac + ("+00:00" if zone == "Z" else zone))


@dataclass(frozen=True, slots=True)
class Envelope:
    """A structurally valid envelope: every attribute present, well formed and of the right type.

    It says nothing about authenticity: that is what the broker's verify stage establishes.
    """

    id: str
    source: str
    type: str
    version: int
    time: datetime
    keyid: str
    signature: str
    data: dict[str, Any]
    signed_bytes: bytes  # RFC 8785 bytes of the envelope without ``signature``
    supersedes: str | None = None  # the lineage's first message id (a correction or withdrawal)
    revision: int = 1
    withdrawn: WithdrawalReason | None = None

    @property
    def lineage(self) -> str:
        """The message id of the record's first revision: what its record ids derive from."""
        return self.supersedes if self.supersedes is not None else self.id


def _attr(doc: dict[str, Any], name: str, pattern: re.Pattern[str]) -> str:
    value = doc[name]
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ContractError(Reason.ENVELOPE_INVALID, f"The envelope attribute {name!r} is malformed.", field=name)
    return value


def envelope_from_document(doc: dict[str, Any], *, plain: bool = False) -> Envelope:
    """Check the envelope's shape (not its authenticity) and compute the bytes that were signed.

    ``plain``: the parser found no float and no non-BMP text, so the fast canonical path applies.
    """
    missing = [name for name in REQUIRED_ATTRS if name not in doc]
    if missing:
        raise ContractError(Reason.ENVELOPE_INVALID, f"The envelope lacks {', '.join(missing)}.", field=missing[0])
    extra = sorted(set(doc) - ALLOWED_ATTRS)
    if extra:
        raise ContractError(
            Reason.ENVELOPE_INVALID, f"The envelope has unknown attribute(s) {', '.join(extra)}.", field=extra[0]
        )
    if doc["specversion"] != SPECVERSION:
        raise ContractError(
            Reason.UNSUPPORTED_SPECVERSION, f"specversion must be {SPECVERSION!r}.", field="specversion"
        )
    if "datacontenttype" in doc and doc["datacontenttype"] != CONTENT_TYPE:
        raise ContractError(
            Reason.ENVELOPE_INVALID, f"datacontenttype must be {CONTENT_TYPE!r}.", field="datacontenttype"
        )
    message_id = _attr(doc, "id", ID_RE)
    source = _attr(doc, "source", PARTY_ID_RE)
    event_type = _attr(doc, "type", TYPE_RE)
    schema = _attr(doc, "dataschema", DATASCHEMA_RE)
    keyid = _attr(doc, "keyid", KEY_ID_RE)
    signature = doc[SIGNATURE_ATTR]
    if not isinstance(signature, str) or len(signature) > 128:
        raise ContractError(Reason.ENVELOPE_INVALID, "The signature must be a base64url string.", field="signature")
    match = DATASCHEMA_RE.fullmatch(schema)
    assert match is not None
    if match.group("type") != event_type:
        raise ContractError(
            Reason.ENVELOPE_INVALID, "dataschema names a different event type than 'type'.", field="dataschema"
        )
    try:
        produced = parse_time(doc["time"]) if isinstance(doc["time"], str) else None
    except ValueError:
        produced = None
    if produced is None:
        raise ContractError(Reason.ENVELOPE_INVALID, "time must be an RFC 3339 date-time with an offset.", field="time")
    data = doc["data"]
    if not isinstance(data, dict):
        raise ContractError(Reason.ENVELOPE_INVALID, "data must be a JSON object.", field="data")
    supersedes, revision, withdrawn = _lineage_attrs(doc, message_id, data)
    unsigned = {k: v for k, v in doc.items() if k != SIGNATURE_ATTR}
    return Envelope(
        id=message_id,
        source=source,
        type=event_type,
        version=int(match.group("version")),
        time=produced,
        keyid=keyid,
        signature=signature,
        data=data,
        signed_bytes=canonicalize_plain(unsigned) if plain else canonicalize(unsigned),
        supersedes=supersedes,
        revision=revision,
        withdrawn=withdrawn,
    )


def revision_message_id(first_id: str, revision: int) -> str:
    """The message id of a record's later revision: ``<first id>:r<revision>`` (revision >= 2)."""
    return f"{first_id}:r{revision}"


def first_message_id(message_id: str) -> str:
    """The first message id of the record a (checked) message id belongs to: a revision's id less
    its ``:r<n>``; a first id itself (which never ends so: ``envelope_from_document``)."""
    return REVISION_SUFFIX.sub("", message_id)


def _lineage_attrs(
    doc: dict[str, Any], message_id: str, data: dict[str, Any]
) -> tuple[str | None, int, WithdrawalReason | None]:
    """The correction / withdrawal attributes, checked together.

    Threat: a "correction" that names no earlier record, a revision number that does not count up,
    or an id that does not follow from the two would let one message overwrite another partner
    record's consumers' copies, or two different contents claim one revision; each is refused
    here, before the signature is even checked."""
    has = [name for name in ("supersedes", "revision", "withdrawn") if name in doc]
    if not has:
        # A first message id must leave room for its revisions' ids and never look like one: "X:r2"
        # as a first id would collide with revision 2 of "X".
        if REVISION_SUFFIX.search(message_id) or len(message_id) > MAX_FIRST_ID:
            raise ContractError(
                Reason.ENVELOPE_INVALID,
                f"A first message id must not end in ':r<digits>' (a revision's id) and has at most {MAX_FIRST_ID} "
                "characters (room for ':r<revision>').",
                field="id",
            )
        return None, 1, None
    if "supersedes" not in doc or "revision" not in doc:
        raise ContractError(
            Reason.ENVELOPE_INVALID,
            "A correction or withdrawal needs both 'supersedes' (the record's first message id) and 'revision'.",
            field="supersedes" if "supersedes" not in doc else "revision",
        )
    supersedes = _attr(doc, "supersedes", ID_RE)
    revision = doc["revision"]
    if isinstance(revision, bool) or not isinstance(revision, int) or not 2 <= revision <= MAX_REVISION:
        raise ContractError(
            Reason.ENVELOPE_INVALID,
            f"revision must be an integer from 2 to {MAX_REVISION} (revision 1 is the first message).",
            field="revision",
        )
    expected = revision_message_id(supersedes, revision)
    if message_id != expected:
        raise ContractError(
            Reason.ENVELOPE_INVALID,
            f"A revision's id must be '<supersedes>:r<revision>' ({expected!r}).",
            field="id",
        )
    withdrawn: WithdrawalReason | None = None
    if "withdrawn" in doc:
        try:
            withdrawn = WithdrawalReason(doc["withdrawn"])
        except ValueError:
            codes = ", ".join(r.value for r in WithdrawalReason)
            raise ContractError(
                Reason.ENVELOPE_INVALID, f"withdrawn must be one of {codes}.", field="withdrawn"
            ) from None
        if data:
            raise ContractError(
                Reason.ENVELOPE_INVALID, "A withdrawal carries no event: its data must be {}.", field="data"
            )
    return supersedes, revision, withdrawn


def message_id_key(private_key: Ed25519PrivateKey) -> bytes:
    """A message-id secret derived from a signing key: the fallback for demos and tests. Partners'
    adapters use the id key file instead (``schemas.keyfile.load_or_create_id_key``), which
    survives key rotation."""
    seed = private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return hmac.new(seed, b"sv-broker message-id v1", hashlib.sha256).digest()


# The whitespace trimmed from a record-key value: ASCII only (TAB, LF, VT, FF, CR, SPACE), the same
# set in every language. Python's str.strip() would also trim NBSP and 20-odd other characters
# that another language's trim keeps: one record, two ids (issue 11).
RECORD_KEY_TRIM = "\t\n\x0b\x0c\r "
RECORD_KEY_SEPARATOR = "/"


def record_key_part(value: str | int) -> str:
    """One record-key column's value as it enters the record key: an integer in decimal
    (``str(int)``), a string with leading and trailing ASCII whitespace removed, nothing else
    changed (no case folding, no Unicode normalisation)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise TypeError("a record-key value is a string or an integer")
    return str(value).strip(RECORD_KEY_TRIM)


def join_record_key(parts: Sequence[str]) -> str:
    """The source record key of a row from its record-key parts, in the mapping's column order.

    One part: the part itself, unchanged (so every one-column key, including "CR/51-0000039/26",
    keeps the id it always had). Two or more: each part has ``\\`` escaped as ``\\\\`` and ``/`` as
    ``\\/``, then the parts are joined by ``/``. Injective for a mapping's fixed column count: two
    different rows never share a key, so never a message id (a bare ``/`` join gave ``("a/b", "c")``
    and ``("a", "b/c")`` one id, and the second was refused as a replay).
    """
    if len(parts) == 1:
        return parts[0]
    return RECORD_KEY_SEPARATOR.join(p.replace("\\", "\\\\").replace("/", "\\/") for p in parts)


def message_id(partner_id: str, source_record_key: str, id_key: bytes) -> str:
    """The stable message id of a source record: a resend of the same record has the same id.

    ``<partner>:`` + the first 32 hex digits (16 bytes), lower case, of
    HMAC-SHA256(key = ``id_key``, message = UTF-8(``partner_id`` + U+0000 + ``source_record_key``)).
    ``id_key`` is the raw secret (the id key file holds it hex-encoded: ``schemas.keyfile``).
    The README's "Message ids" section and ``schemas/testvectors/contract.v1.json`` state it for
    other implementations.

    A keyed hash, not a plain one: source record keys (attendance numbers, incident numbers) are
    small spaces that a plain hash would let anyone who sees the id enumerate back to the record.
    The NUL separator keeps ``("ab", "c")`` and ``("a", "bc")`` apart (a partner id never holds one).
    """
    mac = hmac.new(id_key, f"{partner_id}\x00{source_record_key}".encode(), hashlib.sha256).hexdigest()
    return f"{partner_id}:{mac[:32]}"


def build_signed(
    *,
    private_key: Ed25519PrivateKey,
    partner_id: str,
    keyid: str,
    event_type: str,
    version: int,
    message_id: str,
    data: dict[str, Any],
    produced_at: datetime,
    supersedes: str | None = None,
    revision: int = 1,
    withdrawn: str | None = None,
) -> dict[str, Any]:
    """Build and sign an envelope document; ``data`` must already be JSON-ready (model_dump(mode='json')).

    A later revision of a record (``revision`` >= 2) names its first message id in ``supersedes``
    and gets the id ``revision_message_id(supersedes, revision)`` (``message_id`` is ignored
    then); a withdrawal also names its ``withdrawn`` reason and sends ``data={}``."""
    doc: dict[str, Any] = {
        "specversion": SPECVERSION,
        "id": message_id,
        "source": partner_id,
        "type": event_type,
        "dataschema": dataschema_for(event_type, version),
        "time": format_time(produced_at),
        "datacontenttype": CONTENT_TYPE,
        "keyid": keyid,
        "data": data,
    }
    if revision > 1:
        if supersedes is None:
            raise ValueError("a revision after the first names the record's first message id (supersedes)")
        doc["id"] = revision_message_id(supersedes, revision)
        doc["supersedes"] = supersedes
        doc["revision"] = revision
        if withdrawn is not None:
            doc["withdrawn"] = withdrawn
    elif supersedes is not None or withdrawn is not None:
        raise ValueError("supersedes and withdrawn belong to a revision after the first")
    doc[SIGNATURE_ATTR] = b64u_encode(private_key.sign(canonicalize(doc)))
    return doc


def encode(doc: dict[str, Any]) -> bytes:
    """Wire bytes of an envelope (canonical form: compact, and identical however often it is sent)."""
    return canonicalize(doc)
