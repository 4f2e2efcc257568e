"""The contract test vectors (``schemas/testvectors/contract.v1.json``) hold for this code.

Each value is re-derived from the file's own inputs the way another implementation would (and
the README says to): the key pair from the seed, the record key from its column values through
the adapter's real mapping, the message id, the canonical bytes, the signature, and the receipt
from the real pipeline. Then the whole file is compared with what the generator writes now.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from adapters.mapping import compile_mapping
from broker.contract_vectors import BROKER_CLOCK, VECTOR_FILE, VectorKey, broker_receipts, build_vectors, render
from broker.stages.parse import parse
from schemas import envelope
from schemas.canonical import canonicalize
from schemas.keyfile import public_bytes
from schemas.messages import receipts_message
from schemas.signing import b64u_decode, b64u_encode, verify_raw
from tests.test_adapter_mapping import base_doc

VECTORS: dict[str, Any] = json.loads(VECTOR_FILE.read_text(encoding="utf-8"))
KEYS = {k["partner"]: k for k in VECTORS["keys"]}


@pytest.mark.parametrize("key", VECTORS["keys"], ids=lambda k: k["partner"])
def test_key_pairs_and_registry_entries(key: dict[str, Any]) -> None:
    private = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(key["ed25519_seed_hex"]))
    assert b64u_encode(public_bytes(private)) == key["public_key_b64u"]
    derived = VectorKey.for_partner(key["partner"])
    assert derived.entry.to_toml() == key["registry_entry"]
    assert bytes.fromhex(key["id_key_file"].strip()) == derived.id_key  # the file holds the key hex-encoded


def mapping_with(columns: int) -> Any:
    """A real mapping (the adapter tests' own) whose record key is ``columns`` columns."""
    names = [f"Key{i}" for i in range(columns)]
    doc = base_doc()
    doc["mapping"]["record_key"] = names
    return compile_mapping(doc), names


@pytest.mark.parametrize("case", VECTORS["message_ids"], ids=lambda c: c["note"][:40])
def test_record_keys_and_message_ids(case: dict[str, Any]) -> None:
    mapping, names = mapping_with(len(case["record_key_values"]))
    # The adapter's own mapping reads the record key from the row's cells.
    assert mapping.key_of(dict(zip(names, case["record_key_values"], strict=True))) == case["record_key"]
    if case["record_key"] is None:
        assert case["message_id"] is None
        return
    id_key = bytes.fromhex(case["id_key_hex"])
    assert envelope.message_id(case["partner"], case["record_key"], id_key) == case["message_id"]
    # The definition, spelled out as another language would write it.
    mac = hmac.new(id_key, case["partner"].encode() + b"\x00" + case["record_key"].encode("utf-8"), "sha256")
    assert case["message_id"] == f"{case['partner']}:{mac.hexdigest()[:32]}"


@given(st.integers(min_value=1, max_value=3), st.data())
def test_the_record_key_is_injective(columns: int, data: st.DataObject) -> None:
    # Two different rows of one mapping (after trimming) never share a record key, so never a
    # message id.
    row = st.lists(st.text(alphabet="ab/\\ ", max_size=4), min_size=columns, max_size=columns)
    parts, other = data.draw(row), data.draw(row)
    trimmed = [envelope.record_key_part(p) for p in parts], [envelope.record_key_part(p) for p in other]
    if trimmed[0] != trimmed[1]:
        assert envelope.join_record_key(trimmed[0]) != envelope.join_record_key(trimmed[1])


@pytest.mark.parametrize("case", VECTORS["envelopes"], ids=lambda c: c["name"])
def test_envelope_bytes_and_signatures(case: dict[str, Any]) -> None:
    body = case["body"].encode("utf-8")
    assert hashlib.sha256(body).hexdigest() == case["body_sha256"]
    if case["document"] is None:  # not an envelope at all (refused by the strict parser)
        assert case["canonical_unsigned"] is None
        return
    doc = case["document"]
    assert json.loads(body) == doc
    unsigned = {k: v for k, v in doc.items() if k != "signature"}
    assert canonicalize(unsigned).decode("utf-8") == case["canonical_unsigned"]
    assert (
        parse(body, max_bytes=64 * 1024, now=BROKER_CLOCK).envelope.signed_bytes == case["canonical_unsigned"].encode()
    )
    key = KEYS[doc["source"]]
    public = b64u_decode(key["public_key_b64u"], expected_len=32)
    signed_ok = verify_raw(public, case["canonical_unsigned"].encode(), b64u_decode(doc["signature"], expected_len=64))
    # Only the tampered vector's signature fails (Ed25519 is deterministic, so it is also reproducible).
    assert signed_ok is (case["name"] != "tampered_after_signing")
    if signed_ok:
        private = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(key["ed25519_seed_hex"]))
        assert b64u_encode(private.sign(case["canonical_unsigned"].encode())) == doc["signature"]


def test_the_broker_answers_each_envelope_with_its_receipt() -> None:
    keys = {k["partner"]: VectorKey.for_partner(k["partner"]) for k in VECTORS["keys"]}
    cases = [{k: c[k] for k in ("name", "body", "routing_key")} for c in VECTORS["envelopes"]]
    got = asyncio.run(broker_receipts(cases, keys))
    assert [(c["name"], r) for c, r in zip(cases, got, strict=True)] == [
        (c["name"], c["receipt"]) for c in VECTORS["envelopes"]
    ]
    statuses = {r["status"] for r in got}
    assert statuses == {"accepted", "duplicate", "rejected"}  # every kind of receipt is shown
    mine = [c["receipt"] for c in VECTORS["envelopes"] if c["receipt"]["source"] == "uhdb-royal-derby-ed"]
    assert receipts_message(mine).decode() == VECTORS["receipts_message"]["body"]


def test_the_file_is_what_the_generator_writes() -> None:
    # `sv-broker schemas vectors` rewrites it; a change here is a change of the wire contract.
    assert render(build_vectors()) == VECTOR_FILE.read_text(encoding="utf-8")
