"""Issue 11 item 14, as the attack: personal data reaches quarantine in a refused body.

A body is kept only for reasons a person must read it to diagnose, and never when any member
name (at any depth) or any string value looks like a direct identifier, JSON or not.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from adapters.synthetic import SyntheticGenerator
from broker.demo import DemoEnvironment
from broker.pipeline import Pipeline
from broker.policy.loader import load_policy
from broker.policy.secrets import load_secrets
from broker.ports.delivery import StoreDelivery
from broker.ports.sqlite_store import SqliteStore
from broker.registry import load_registry
from broker.settings import Settings
from broker.stages.outcome import DIAGNOSABLE, keep_body
from schemas import envelope
from schemas.errors import Reason
from schemas.identifiers import identifying_value, looks_identifying
from tests.helpers import quarantined

CLEAN = b'{"specversion":"1.0","id":"p:0123456789abcdef0123456789abcdef","data":{"site_code":"RTG01"}}'

# Each looks like a direct identifier: as a member name (any depth) or as a value.
NAMES = ["nhsnumber", "NHS No.", "patientSurname", "dateOfBirth", "home_post_code", "pupil_upn", "email", "mobileNo"]
VALUES = [
    "943 476 5919",  # NHS number, valid check digit
    "9434765919",
    "A123456789012",  # UPN
    "QQ 12 34 56 C",  # National Insurance number
    "someone@example.org",
    "07700 900123",
    "+44 7700 900123",
    "DE1 3AA",  # a full postcode (a district such as DE1 is not an address)
]


@pytest.mark.parametrize("reason", list(Reason))
def test_only_diagnosable_reasons_keep_a_clean_body(reason: Reason) -> None:
    assert keep_body(reason, CLEAN) is (reason in DIAGNOSABLE)
    assert keep_body(Reason.DIRECT_IDENTIFIER, CLEAN) is False


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("depth", [0, 1, 3])
def test_an_identifier_like_name_at_any_depth_drops_the_body(name: str, depth: int) -> None:
    inner: Any = {name: "x"}
    for _ in range(depth):
        inner = {"data": [inner]}
    body = json.dumps({"id": "p:1", **inner}).encode()
    assert keep_body(Reason.SCHEMA_INVALID, body) is False
    broken = body[:-1]  # not JSON any more: scanned as text
    assert keep_body(Reason.MALFORMED_JSON, broken) is False


@pytest.mark.parametrize("value", VALUES)
def test_an_identifier_like_value_drops_the_body(value: str) -> None:
    body = json.dumps({"data": {"assault_location_text": f"seen at {value} today"}}).encode()
    assert keep_body(Reason.SCHEMA_INVALID, body) is False
    assert keep_body(Reason.TRAILING_DATA, body + b" trailing") is False


@pytest.mark.parametrize(
    "value",
    [
        "E01019434",
        "E06000015",
        "DE1",
        "RTG01",
        "DCC/PL/0588",
        "DP/709851/26",
        "112999",
        "2026-11-21T23:40:00+00:00",
        "943 476 5910",
    ],  # the last: an NHS-shaped number with a wrong check digit
)
def test_the_contracts_own_values_do_not_look_identifying(value: str) -> None:
    assert identifying_value(value) is None


def test_an_envelopes_own_attributes_are_not_scanned_but_its_extra_ones_are() -> None:
    gen = SyntheticGenerator(seed=5)
    key = Ed25519PrivateKey.generate()
    for n in range(50):  # ids and signatures hold digit runs: none may drop a clean body
        record = gen.ae_assault()
        doc = envelope.build_signed(
            private_key=key,
            partner_id="uhdb-royal-derby-ed",
            keyid="k",
            event_type="ae_assault",
            version=1,
            message_id=envelope.message_id("uhdb-royal-derby-ed", f"ED-{n}", b"k" * 32),
            data=record.data(),
            produced_at=datetime.now(UTC),
        )
        assert looks_identifying(doc, frozenset(doc) - {"data"}) is None
        assert keep_body(Reason.BAD_SIGNATURE, envelope.encode(doc))
        assert not keep_body(Reason.ENVELOPE_INVALID, envelope.encode(doc | {"nhs_no": "x"}))


@given(st.text(alphabet="0123456789 ", min_size=10, max_size=14))
def test_every_nhs_number_with_a_valid_check_digit_is_found(text: str) -> None:
    digits = text.replace(" ", "")
    if len(digits) != 10 or "  " in text or text != text.strip():
        return
    weights = sum(int(d) * w for d, w in zip(digits[:9], range(10, 1, -1), strict=True))
    check = (11 - weights % 11) % 11
    plain = identifying_value(digits)
    if check != 10 and check == int(digits[9]):
        assert plain == "nhs_number"


async def test_through_the_pipeline_quarantine_keeps_only_clean_diagnosable_bodies(
    env: DemoEnvironment, tmp_path: Path
) -> None:
    registry = load_registry(env.policy_dir, env.keys_dir)
    policy = load_policy(env.policy_dir, registry, load_secrets(env.secrets_file, os.environ))
    settings = Settings(
        policy_dir=env.policy_dir, keys_dir=env.keys_dir, secrets_file=env.secrets_file, data_dir=tmp_path
    )
    store = SqliteStore(tmp_path / "broker.db")
    await store.open()
    pipeline = Pipeline(settings, registry, policy, store, StoreDelivery())
    signer = env.signers["uhdb-royal-derby-ed"]
    gen = SyntheticGenerator(seed=8)

    def signed(extra: dict[str, Any], key: str) -> bytes:
        return signer.sign_bytes("ae_assault", gen.ae_assault().data() | extra, source_key=key)

    bodies = {
        "clean_schema_invalid": signed({"colour": "red"}, "Q-1"),  # kept: a person must see the field
        "value_in_unknown_field": signed({"note": "NHS 943 476 5919"}, "Q-2"),
        "nested_name": signed({"extra": {"patient": {"nhsnumber": "x"}}}, "Q-3"),
        "variant_name_top_level": signed({"nhsnumber": "9434765919"}, "Q-4"),  # refused as direct_identifier
        "unknown_key": env.stranger.sign_bytes("police_sv_offence", gen.police_sv_offence().data(), source_key="Q-5"),
    }
    outcomes = await pipeline.process(
        [__import__("broker.stages.types", fromlist=["Inbound"]).Inbound(b) for b in bodies.values()]
    )
    await store.close()
    reasons = {name: o.reason for name, o in zip(bodies, outcomes, strict=True)}  # type: ignore[union-attr]
    assert reasons == {
        "clean_schema_invalid": Reason.SCHEMA_INVALID,
        "value_in_unknown_field": Reason.SCHEMA_INVALID,
        "nested_name": Reason.SCHEMA_INVALID,
        "variant_name_top_level": Reason.DIRECT_IDENTIFIER,
        "unknown_key": Reason.UNKNOWN_KEY,
    }
    kept = {item.reason + ":" + item.body_sha256: item.body for item in quarantined(tmp_path / "broker.db")}
    by_name = {name: kept[f"{reasons[name].value}:{hashlib.sha256(b).hexdigest()}"] for name, b in bodies.items()}
    assert by_name["clean_schema_invalid"] == bodies["clean_schema_invalid"]
    assert [n for n, b in by_name.items() if b is not None] == ["clean_schema_invalid"]
