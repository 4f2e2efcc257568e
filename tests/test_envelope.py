"""The envelope end to end: sign -> encode -> parse -> verify -> validate, and tamper resistance."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.signer import Signer
from adapters.synthetic import SyntheticGenerator
from broker.registry import Registry
from broker.stages.freshness import FreshnessWindow, check_freshness
from broker.stages.parse import parse
from broker.stages.types import Fresh, Validated
from broker.stages.validate import validate
from broker.stages.verify import verify
from schemas.canonical import canonicalize
from schemas.envelope import (
    ALLOWED_ATTRS,
    ID_RE,
    REQUIRED_ATTRS,
    dataschema_for,
    encode,
    envelope_from_document,
    format_time,
    message_id,
    message_id_key,
    parse_time,
)
from schemas.errors import ContractError, Reason
from schemas.events import EVENT_MODELS, EventModel
from schemas.signing import b64u_encode
from schemas.strictjson import DEFAULT_MAX_BYTES, parse_strict
from tests.strategies import any_event, event_strategy

# The partner registered (policies/parties.toml) for each event type.
PARTNER_FOR = {
    "ae_assault": "uhdb-royal-derby-ed",
    "school_exclusion": "derby-city-education",
    "nte_incident": "derby-pubwatch",
    "police_sv_offence": "derbyshire-police",
}

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def run_pipeline(body: bytes, registry: Registry, now: datetime) -> Validated:
    received = parse(body, max_bytes=DEFAULT_MAX_BYTES, now=now)
    return validate(Fresh(verify(received, registry), now))


def sign_event(
    signers: dict[str, Signer], event: EventModel, now: datetime, *, exclude_none: bool = True, source_key: str = "R-1"
) -> dict[str, Any]:
    signer = signers[PARTNER_FOR[event.EVENT_TYPE]]
    data = event.model_dump(mode="json", exclude_none=exclude_none)
    return signer.sign(event.EVENT_TYPE, data, source_key=source_key, version=event.VERSION, produced_at=now)


def test_partner_map_covers_every_event_type(registry: Registry) -> None:
    assert set(PARTNER_FOR) == {t for t, _ in EVENT_MODELS}
    for event_type, partner in PARTNER_FOR.items():
        assert event_type in registry.partners[partner].event_types


# --- round trip -----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", list(EVENT_MODELS.values()), ids=lambda m: m.EVENT_TYPE)
@FAST
@given(data=st.data())
def test_round_trip_every_type(
    signers: dict[str, Signer], registry: Registry, model: type[EventModel], data: st.DataObject
) -> None:
    event = data.draw(event_strategy(model))
    exclude_none = data.draw(st.booleans())
    now = datetime.now(UTC)
    doc = sign_event(signers, event, now, exclude_none=exclude_none)
    body = encode(doc)
    validated = run_pipeline(body, registry, now)
    assert type(validated.event) is model
    assert validated.event == event
    assert validated.envelope.id == doc["id"]
    assert validated.envelope.source == PARTNER_FOR[model.EVENT_TYPE]
    assert validated.verified.kid == signers[PARTNER_FOR[model.EVENT_TYPE]].kid
    check_freshness(validated.verified, now, FreshnessWindow())
    # The wire form is canonical: re-encoding what was parsed gives the same bytes.
    assert encode(parse_strict(body)) == body


@pytest.mark.parametrize("event_type", sorted(PARTNER_FOR))
def test_synthetic_events_round_trip(signers: dict[str, Signer], registry: Registry, event_type: str) -> None:
    gen = SyntheticGenerator(seed=7)
    now = datetime.now(UTC)
    for _ in range(20):
        record = gen.for_partner(PARTNER_FOR[event_type], event_type)
        body = signers[record.partner].sign_bytes(event_type, record.data(), source_key=record.source_key)
        assert run_pipeline(body, registry, now).event == record.event


# --- single-byte changes --------------------------------------------------------------------------


def _accepted(body: bytes, registry: Registry, now: datetime) -> Validated | None:
    try:
        return run_pipeline(body, registry, now)
    except ContractError:
        return None


@pytest.mark.parametrize("event_type", sorted(PARTNER_FOR))
def test_every_single_byte_flip_is_rejected(signers: dict[str, Signer], registry: Registry, event_type: str) -> None:
    """Exhaustive over positions, for realistic messages: no flipped byte is ever accepted."""
    record = SyntheticGenerator(seed=11).for_partner(PARTNER_FOR[event_type], event_type)
    now = datetime.now(UTC)
    body = signers[record.partner].sign_bytes(event_type, record.data(), source_key=record.source_key)
    assert run_pipeline(body, registry, now).event == record.event  # control: the original passes
    accepted = []
    for i in range(len(body)):
        for mask in (0x01, 0x20, 0x80, 0xFF):
            flipped = bytearray(body)
            flipped[i] ^= mask
            if _accepted(bytes(flipped), registry, now) is not None:
                accepted.append((i, mask))
    assert accepted == []


@FAST
@given(event=any_event(), data=st.data())
def test_random_byte_flip_never_changes_accepted_content(
    signers: dict[str, Signer], registry: Registry, event: EventModel, data: st.DataObject
) -> None:
    """Over arbitrary events (any text): a flipped byte is rejected, or it denotes the very same
    document.  The one way to get the latter is a hex digit's case inside a \\u escape of a
    control character ("\\u001f" -> "\\u001F"): the signature covers the canonical form of the
    content, not the wire bytes, so an equivalent encoding of the signed content verifies.
    """
    now = datetime.now(UTC)
    body = encode(sign_event(signers, event, now))
    i = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
    mask = data.draw(st.integers(min_value=1, max_value=255))
    flipped = bytearray(body)
    flipped[i] ^= mask
    result = _accepted(bytes(flipped), registry, now)
    if result is not None:
        assert parse_strict(bytes(flipped)) == parse_strict(body)
        assert result.event == event
        assert body[i : i + 1].lower() == bytes(flipped)[i : i + 1].lower()  # only hex-digit case


def test_equivalent_escape_is_the_only_benign_change(signers: dict[str, Signer], registry: Registry) -> None:
    # Documents the case above explicitly: same content, different bytes -> accepted as the same.
    record = SyntheticGenerator(seed=3).nte_incident()
    data = record.data() | {"premises_name": "The Bell\x1f"}
    now = datetime.now(UTC)
    body = signers[record.partner].sign_bytes("nte_incident", data, source_key="X-1")
    assert b"\\u001f" in body
    variant = body.replace(b"\\u001f", b"\\u001F")
    assert variant != body
    assert run_pipeline(variant, registry, now).event == run_pipeline(body, registry, now).event
    # ...but a different control character is a different message.
    with pytest.raises(ContractError) as info:
        run_pipeline(body.replace(b"\\u001f", b"\\u001e"), registry, now)
    assert info.value.reason is Reason.BAD_SIGNATURE


# --- attribute and field changes after signing ----------------------------------------------------


def _reject(doc: dict[str, Any], registry: Registry, now: datetime) -> ContractError:
    with pytest.raises(ContractError) as info:
        run_pipeline(encode(doc), registry, now)
    return info.value


@FAST
@given(event=any_event())
def test_removing_any_envelope_attribute_is_rejected(
    signers: dict[str, Signer], registry: Registry, event: EventModel
) -> None:
    now = datetime.now(UTC)
    doc = sign_event(signers, event, now)
    # every attribute a first revision has (the lineage ones belong to corrections: test_lineage.py)
    assert set(doc) == ALLOWED_ATTRS - {"supersedes", "revision", "withdrawn"}
    for name in doc:
        changed = {k: v for k, v in doc.items() if k != name}
        exc = _reject(changed, registry, now)
        # Required attributes fail the shape check; the optional one fails the signature.
        expected = Reason.ENVELOPE_INVALID if name in REQUIRED_ATTRS else Reason.BAD_SIGNATURE
        assert exc.reason is expected, name


@FAST
@given(event=any_event(), name=st.sampled_from(["subject", "extra", "Signature", "dataref", "traceparent"]))
def test_adding_an_envelope_attribute_is_rejected(
    signers: dict[str, Signer], registry: Registry, event: EventModel, name: str
) -> None:
    now = datetime.now(UTC)
    doc = sign_event(signers, event, now) | {name: "x"}
    exc = _reject(doc, registry, now)
    assert exc.reason is Reason.ENVELOPE_INVALID
    assert exc.field == name


def test_adding_the_optional_attribute_after_signing_is_rejected(
    signers: dict[str, Signer], registry: Registry
) -> None:
    now = datetime.now(UTC)
    record = SyntheticGenerator(seed=5).ae_assault()
    signer = signers[record.partner]
    doc = signer.sign("ae_assault", record.data(), source_key="A-1", produced_at=now)
    # Sign a document without the optional attribute: accepted as such ...
    del doc["datacontenttype"], doc["signature"]
    doc["signature"] = b64u_encode(signer.private_key.sign(canonicalize(doc)))
    assert run_pipeline(encode(doc), registry, now).event == record.event
    # ... and adding it afterwards (with its only allowed value) breaks the signature.
    exc = _reject(doc | {"datacontenttype": "application/json"}, registry, now)
    assert exc.reason is Reason.BAD_SIGNATURE


@FAST
@given(event=any_event(), rename=st.sampled_from([str.upper, lambda s: s + "_", lambda s: "x" + s]))
def test_renaming_any_envelope_attribute_is_rejected(
    signers: dict[str, Signer], registry: Registry, event: EventModel, rename: Any
) -> None:
    now = datetime.now(UTC)
    doc = sign_event(signers, event, now)
    for name in doc:
        changed = {(rename(k) if k == name else k): v for k, v in doc.items()}
        exc = _reject(changed, registry, now)
        assert exc.reason is Reason.ENVELOPE_INVALID, name


@FAST
@given(event=any_event(), data=st.data())
def test_removing_or_renaming_any_data_field_is_rejected(
    signers: dict[str, Signer], registry: Registry, event: EventModel, data: st.DataObject
) -> None:
    now = datetime.now(UTC)
    doc = sign_event(signers, event, now, exclude_none=data.draw(st.booleans()))
    for name in doc["data"]:
        removed = doc | {"data": {k: v for k, v in doc["data"].items() if k != name}}
        assert _reject(removed, registry, now).reason is Reason.BAD_SIGNATURE, name
        renamed = doc | {"data": {(k + "x" if k == name else k): v for k, v in doc["data"].items()}}
        assert _reject(renamed, registry, now).reason is Reason.BAD_SIGNATURE, name


@FAST
@given(event=any_event(), data=st.data())
def test_adding_a_data_field_is_rejected(
    signers: dict[str, Signer], registry: Registry, event: EventModel, data: st.DataObject
) -> None:
    now = datetime.now(UTC)
    doc = sign_event(signers, event, now, exclude_none=True)
    # Prefer a field the schema allows (so only the signature can catch it), else an unknown one.
    other = data.draw(event_strategy(type(event))).model_dump(mode="json", exclude_none=True)
    candidates = sorted(set(other) - set(doc["data"]))
    name = data.draw(st.sampled_from(candidates)) if candidates else "added_field"
    value = other.get(name, "x")
    exc = _reject(doc | {"data": doc["data"] | {name: value}}, registry, now)
    assert exc.reason is Reason.BAD_SIGNATURE


@FAST
@given(event=any_event(), data=st.data())
def test_changing_an_envelope_value_is_rejected(
    signers: dict[str, Signer], registry: Registry, event: EventModel, data: st.DataObject
) -> None:
    now = datetime.now(UTC)
    doc = sign_event(signers, event, now)
    name = data.draw(st.sampled_from(["id", "time", "keyid", "source", "dataschema", "type"]))
    new_values = {
        "id": doc["id"][:-1] + ("0" if doc["id"][-1] != "0" else "1"),
        "time": format_time(now - timedelta(seconds=1)),
        "keyid": "derby-pubwatch-k1" if doc["keyid"] != "derby-pubwatch-k1" else "uhdb-royal-derby-ed-k1",
        "source": "chesterfield-pubwatch",
        "dataschema": dataschema_for(doc["type"], 2),
        "type": "school_exclusion" if doc["type"] != "school_exclusion" else "ae_assault",
    }
    exc = _reject(doc | {name: new_values[name]}, registry, now)
    assert exc.reason in {Reason.BAD_SIGNATURE, Reason.UNKNOWN_KEY, Reason.ENVELOPE_INVALID}


# --- message ids ----------------------------------------------------------------------------------


def test_message_id_is_stable_per_partner_and_source_key(signers: dict[str, Signer]) -> None:
    signer = signers["uhdb-royal-derby-ed"]
    first = signer.message_id("ATT-0001")
    assert first == signer.message_id("ATT-0001")
    # The same keys recreated (e.g. the adapter restarted) give the same id: a resend is recognisable.
    again = Signer.create(signer.partner, signer.kid, signer.private_key, signer.id_key)
    assert again.message_id("ATT-0001") == first
    assert ID_RE.fullmatch(first)
    assert first.startswith("uhdb-royal-derby-ed:")
    assert "ATT-0001" not in first


def test_message_id_differs_for_different_records_partners_and_keys(signers: dict[str, Signer]) -> None:
    signer = signers["uhdb-royal-derby-ed"]
    ids = {signer.message_id(f"ATT-{i:04d}") for i in range(200)}
    assert len(ids) == 200
    assert signers["crh-chesterfield-ed"].message_id("ATT-0001") != signer.message_id("ATT-0001")
    other_secret = Signer.create(signer.partner, "uhdb-royal-derby-ed-k2", Ed25519PrivateKey.generate())
    assert other_secret.message_id("ATT-0001") != signer.message_id("ATT-0001")
    # The id is keyed by the partner's secret id key, not the record key hashed in the clear.
    assert message_id("uhdb-royal-derby-ed", "ATT-0001", signer.id_key) == signer.message_id("ATT-0001")
    # Without an id key file (demos), the secret is derived from the signing key.
    derived = Signer.create(signer.partner, signer.kid, signer.private_key)
    assert derived.id_key == message_id_key(signer.private_key)
    assert message_id("uhdb-royal-derby-ed", "ATT-0001", b"\x00" * 32) != signer.message_id("ATT-0001")


def test_resending_the_same_record_gives_the_same_message_id_in_the_envelope(signers: dict[str, Signer]) -> None:
    signer = signers["derby-pubwatch"]
    record = SyntheticGenerator(seed=1).nte_incident()
    a = signer.sign("nte_incident", record.data(), source_key=record.source_key)
    b = signer.sign("nte_incident", record.data(), source_key=record.source_key)
    c = signer.sign("nte_incident", record.data(), source_key=record.source_key + "x")
    assert a["id"] == b["id"] != c["id"]


# --- envelope shape -------------------------------------------------------------------------------


def _good_doc(signers: dict[str, Signer]) -> dict[str, Any]:
    record = SyntheticGenerator(seed=9).police_sv_offence()
    return signers[record.partner].sign("police_sv_offence", record.data(), source_key=record.source_key)


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("specversion", "0.3", Reason.UNSUPPORTED_SPECVERSION),
        ("id", "short", Reason.ENVELOPE_INVALID),
        ("id", 12345678, Reason.ENVELOPE_INVALID),
        ("source", "Derbyshire Police", Reason.ENVELOPE_INVALID),
        ("type", "Police", Reason.ENVELOPE_INVALID),
        ("dataschema", "urn:sv-broker:schema:ae_assault:v1", Reason.ENVELOPE_INVALID),  # names another type
        ("dataschema", "https://example.org/schema", Reason.ENVELOPE_INVALID),
        ("time", "2026-10-01T12:00:00", Reason.ENVELOPE_INVALID),  # no offset
        ("time", "2026-10-01 12:00:00Z", Reason.ENVELOPE_INVALID),
        ("time", "2026-13-01T12:00:00Z", Reason.ENVELOPE_INVALID),
        ("time", 1700000000, Reason.ENVELOPE_INVALID),
        ("datacontenttype", "text/plain", Reason.ENVELOPE_INVALID),
        ("keyid", "", Reason.ENVELOPE_INVALID),
        ("signature", 5, Reason.ENVELOPE_INVALID),
        ("signature", "A" * 129, Reason.ENVELOPE_INVALID),
        ("data", [1], Reason.ENVELOPE_INVALID),
        ("data", None, Reason.ENVELOPE_INVALID),
    ],
)
def test_malformed_envelope_attribute(signers: dict[str, Signer], name: str, value: Any, reason: Reason) -> None:
    doc = _good_doc(signers) | {name: value}
    with pytest.raises(ContractError) as info:
        envelope_from_document(doc)
    assert info.value.reason is reason
    assert info.value.field == name


def test_envelope_signed_bytes_exclude_only_the_signature(signers: dict[str, Signer]) -> None:
    doc = _good_doc(signers)
    env = envelope_from_document(doc)
    assert env.signed_bytes == canonicalize({k: v for k, v in doc.items() if k != "signature"})
    assert b'"signature"' not in env.signed_bytes
    assert env.version == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-10-01T12:00:00Z", datetime(2026, 10, 1, 12, tzinfo=UTC)),
        ("2026-10-01T13:00:00+01:00", datetime(2026, 10, 1, 12, tzinfo=UTC)),
        ("2026-10-01T07:00:00.5-05:00", datetime(2026, 10, 1, 12, 0, 0, 500000, tzinfo=UTC)),
        ("2026-10-01T12:00:00.123456789Z", datetime(2026, 10, 1, 12, 0, 0, 123456, tzinfo=UTC)),
    ],
)
def test_parse_time(text: str, expected: datetime) -> None:
    parsed = parse_time(text)
    assert parsed == expected
    assert parsed.tzinfo is not None


def test_format_time_is_utc_milliseconds() -> None:
    moment = datetime(2026, 3, 29, 1, 30, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    assert format_time(moment) == "2026-03-29T00:30:00.123Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        format_time(datetime(2026, 1, 1))


def test_message_ids_survive_key_rotation(tmp_path: Path) -> None:
    """The message-id secret is the partner's, not the signing key's: after a rotation the same
    source record keeps its id, so a resend is still recognised as a duplicate."""
    import os

    from adapters.signer import Signer
    from schemas.keyfile import generate, id_key_path, load_or_create_id_key

    first_key, first, _ = generate("derbyshire-police", tmp_path, kid="derbyshire-police-2026a")
    second_key, second, _ = generate("derbyshire-police", tmp_path, kid="derbyshire-police-2026b")
    id_key = load_or_create_id_key(tmp_path, "derbyshire-police")
    assert os.stat(id_key_path(tmp_path, "derbyshire-police")).st_mode & 0o777 == 0o600
    before = Signer.create("derbyshire-police", first.kid, first_key, id_key).message_id("CRM-1")
    after = Signer.create("derbyshire-police", second.kid, second_key, id_key).message_id("CRM-1")
    assert before == after
    assert Signer.create("derbyshire-police", second.kid, second_key).message_id("CRM-1") != before
