"""Ed25519 through OUR verifier: every Wycheproof case, key refusals, malleability, base64url."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.registry import Partner, Registry, parse_key_entry
from broker.stages.types import Received
from broker.stages.verify import verify
from schemas.envelope import Envelope
from schemas.errors import ContractError, Reason
from schemas.keyfile import public_bytes
from schemas.signing import (
    _IDENTITY,
    D,
    L,
    P,
    _add,
    _decode_point,
    _is_identity,
    _mul,
    b64u_decode,
    b64u_encode,
    check_public_key,
    sign_raw,
    verify_raw,
)
from tests.conftest import TESTVECTORS

WYCHEPROOF = TESTVECTORS / "wycheproof" / "ed25519_test.json"
WYCHEPROOF_CASES = 151


def _load_wycheproof() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(WYCHEPROOF.read_text(encoding="utf-8"))
    return doc


# --- Wycheproof -----------------------------------------------------------------------------------


def test_wycheproof_raw_verifier_all_cases() -> None:
    doc = _load_wycheproof()
    assert doc["numberOfTests"] == WYCHEPROOF_CASES
    checked = 0
    wrong: list[str] = []
    for group in doc["testGroups"]:
        pk = bytes.fromhex(group["publicKey"]["pk"])
        for case in group["tests"]:
            assert case["result"] in {"valid", "invalid"}, case  # no "acceptable" cases to interpret
            got = verify_raw(pk, bytes.fromhex(case["msg"]), bytes.fromhex(case["sig"]))
            if got != (case["result"] == "valid"):
                wrong.append(f"tcId {case['tcId']} ({case['comment']}, {case['flags']}): got {got}")
            checked += 1
    assert wrong == []
    assert checked == WYCHEPROOF_CASES


def _wycheproof_registry(doc: dict[str, Any]) -> tuple[Registry, list[tuple[str, dict[str, Any]]]]:
    """One partner, one registry key entry per Wycheproof group (through parse_key_entry)."""
    partner = "wycheproof-partner"
    keys = {}
    cases: list[tuple[str, dict[str, Any]]] = []
    for i, group in enumerate(doc["testGroups"]):
        kid = f"wycheproof-g{i}"
        table = {
            "kid": kid,
            "partner": partner,
            "public_key": b64u_encode(bytes.fromhex(group["publicKey"]["pk"])),
            "valid_from": datetime(2020, 1, 1, tzinfo=UTC),
        }
        key = parse_key_entry(table, Path("wycheproof.toml"), f"key[{i}]")
        assert key.public_key.hex() == group["publicKey"]["pk"]
        keys[kid] = key
        cases.extend((kid, case) for case in group["tests"])
    registry = Registry(
        partners={
            partner: Partner(partner, "Wycheproof", "C2SP", "test", frozenset({"ae_assault"}), tuple(keys.values()))
        },
        consumers={},
        keys=keys,
    )
    return registry, cases


def test_wycheproof_through_the_verify_stage() -> None:
    """The broker's verify stage, given each case's message as the signed bytes, decides the same.

    The envelope's ``signed_bytes`` is set to the Wycheproof message (we cannot produce envelopes
    under these keys without their private keys), so this runs the registry key, the stage's
    base64url decoding of the signature and the verifier exactly as a real message would.
    """
    registry, cases = _wycheproof_registry(_load_wycheproof())
    now = datetime(2026, 1, 1, tzinfo=UTC)
    checked = 0
    for kid, case in cases:
        envelope = Envelope(
            id=f"wycheproof:{case['tcId']:08d}",
            source="wycheproof-partner",
            type="ae_assault",
            version=1,
            time=now,
            keyid=kid,
            signature=b64u_encode(bytes.fromhex(case["sig"])),
            data={},
            signed_bytes=bytes.fromhex(case["msg"]),
        )
        received = Received(envelope=envelope, body_sha256="0" * 64, received_at=now)
        if case["result"] == "valid":
            assert verify(received, registry).kid == kid, case
        else:
            with pytest.raises(ContractError) as info:
                verify(received, registry)
            assert info.value.reason is Reason.BAD_SIGNATURE, case
        checked += 1
    assert checked == WYCHEPROOF_CASES


# --- point helpers for building keys --------------------------------------------------------------


def _encode(point: tuple[int, int, int, int]) -> bytes:
    x, y, z, _ = point
    inv = pow(z, P - 2, P)
    x, y = x * inv % P, y * inv % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _generated_public_key() -> bytes:
    return public_bytes(Ed25519PrivateKey.generate())


SMALL_ORDER_POINTS = [
    "0100000000000000000000000000000000000000000000000000000000000000",  # identity (order 1)
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = -1 (order 2)
    "0000000000000000000000000000000000000000000000000000000000000000",  # y = 0 (order 4)
    "0000000000000000000000000000000000000000000000000000000000000080",  # y = 0, other x (order 4)
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",  # order 8
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",  # order 8
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",  # order 8
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",  # order 8
]


def test_small_order_list_is_the_whole_torsion_subgroup() -> None:
    # Check the test data itself: 8 distinct points, each of order dividing 8, and together
    # closed under addition (the full 8-torsion subgroup, so no small-order key is missed).
    points = [_decode_point(bytes.fromhex(h)) for h in SMALL_ORDER_POINTS]
    encodings = {_encode(p) for p in points}
    assert len(encodings) == 8
    for p in points:
        assert _is_identity(_mul(8, p))
        for q in points:
            assert _encode(_add(p, q)) in encodings
    orders = sorted(next(k for k in (1, 2, 4, 8) if _is_identity(_mul(k, p))) for p in points)
    assert orders == [1, 2, 4, 4, 8, 8, 8, 8]


def _refused(raw: bytes, reason: Reason) -> ContractError:
    with pytest.raises(ContractError) as info:
        check_public_key(raw)
    assert info.value.reason is reason, f"{raw.hex()}: {info.value.reason.value}"
    assert info.value.message.endswith(".")
    return info.value


def test_a_generated_key_is_accepted() -> None:
    for _ in range(5):
        check_public_key(_generated_public_key())


@pytest.mark.parametrize("hex_key", SMALL_ORDER_POINTS)
def test_small_order_keys_are_refused(hex_key: str) -> None:
    _refused(bytes.fromhex(hex_key), Reason.KEY_LOW_ORDER)


# Every y in [p, 2^255): the non-canonical encodings (19 values), with either sign bit.
NON_CANONICAL_Y = [(y | (sign << 255)).to_bytes(32, "little").hex() for y in range(P, 2**255) for sign in (0, 1)]


@pytest.mark.parametrize("hex_key", NON_CANONICAL_Y)
def test_y_not_reduced_mod_p_is_refused(hex_key: str) -> None:
    _refused(bytes.fromhex(hex_key), Reason.KEY_NON_CANONICAL)


def test_non_canonical_encodings_include_the_identity_and_all_ones() -> None:
    assert (P + 1).to_bytes(32, "little").hex() in NON_CANONICAL_Y  # a second encoding of the identity
    assert "ff" * 32 in NON_CANONICAL_Y
    assert len(NON_CANONICAL_Y) == 38


@pytest.mark.parametrize(
    "hex_key",
    [
        "0100000000000000000000000000000000000000000000000000000000000080",  # identity, x = 0 with sign
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",  # y = -1, x = 0 with sign
    ],
)
def test_x_zero_with_sign_bit_is_refused(hex_key: str) -> None:
    exc = _refused(bytes.fromhex(hex_key), Reason.KEY_NON_CANONICAL)
    assert "sign bit" in exc.message


def _not_on_curve_encodings(count: int) -> list[bytes]:
    """y values for which (y^2 - 1) / (d y^2 + 1) has no square root mod p."""
    found = []
    y = 2
    while len(found) < count:
        u, v = (y * y - 1) % P, (D * y * y + 1) % P
        ratio = u * pow(v, P - 2, P) % P
        if pow(ratio, (P - 1) // 2, P) == P - 1:  # Euler's criterion: a non-residue
            found.append(y.to_bytes(32, "little"))
        y += 1
    return found


@pytest.mark.parametrize("raw", _not_on_curve_encodings(4))
def test_point_not_on_the_curve_is_refused(raw: bytes) -> None:
    _refused(raw, Reason.KEY_MALFORMED)


@pytest.mark.parametrize("torsion", SMALL_ORDER_POINTS[1:])
def test_mixed_order_key_is_refused(torsion: str) -> None:
    # A valid key plus a torsion point: verifies under cofactored but not cofactorless checks.
    honest = _decode_point(_generated_public_key())
    mixed = _encode(_add(honest, _decode_point(bytes.fromhex(torsion))))
    assert not _is_identity(_mul(8, _decode_point(mixed)))  # not itself small order
    _refused(mixed, Reason.KEY_NOT_PRIME_ORDER)


def test_mixed_order_helper_round_trips_a_prime_order_key() -> None:
    # Control for the test above: adding the identity must give back an accepted key.
    raw = _generated_public_key()
    assert _encode(_add(_decode_point(raw), _IDENTITY)) == raw
    check_public_key(_encode(_add(_decode_point(raw), _IDENTITY)))


@pytest.mark.parametrize("length", [0, 1, 31, 33, 64])
def test_wrong_length_key_is_refused(length: int) -> None:
    exc = _refused(b"\x01" * length, Reason.KEY_MALFORMED)
    assert str(length) in exc.message


# --- signatures -----------------------------------------------------------------------------------


def test_sign_and_verify() -> None:
    key = Ed25519PrivateKey.generate()
    pk = public_bytes(key)
    sig = sign_raw(key, b"message")
    assert verify_raw(pk, b"message", sig)
    assert not verify_raw(pk, b"messagf", sig)
    assert not verify_raw(public_bytes(Ed25519PrivateKey.generate()), b"message", sig)


def test_s_at_or_above_l_is_refused() -> None:
    key = Ed25519PrivateKey.generate()
    pk = public_bytes(key)
    sig = sign_raw(key, b"message")
    s = int.from_bytes(sig[32:], "little")
    assert s < L
    for forged_s in (s + L, s + 2 * L, L):
        assert forged_s < 2**256
        forged = sig[:32] + forged_s.to_bytes(32, "little")
        assert not verify_raw(pk, b"message", forged)


def test_s_plus_l_is_the_same_scalar() -> None:
    # Why the S < L check matters: S + L is the same scalar mod L, so the "second" signature is
    # mathematically valid for the same message and only the range check tells them apart.
    key = Ed25519PrivateKey.generate()
    sig = sign_raw(key, b"m")
    s = int.from_bytes(sig[32:], "little")
    assert (s + L) % L == s
    assert sig[:32] + (s + L).to_bytes(32, "little") != sig


@pytest.mark.parametrize(("pk_len", "sig_len"), [(32, 63), (32, 65), (31, 64), (33, 64), (32, 0)])
def test_wrong_lengths_are_refused(pk_len: int, sig_len: int) -> None:
    key = Ed25519PrivateKey.generate()
    sig = sign_raw(key, b"m")
    pk = public_bytes(key)
    pk = (pk + b"\x00")[:pk_len] if pk_len >= 32 else pk[:pk_len]
    sig = (sig + b"\x00")[:sig_len] if sig_len >= 64 else sig[:sig_len]
    assert not verify_raw(pk, b"m", sig)


def test_verify_stage_refuses_s_plus_l(signers: Any, registry: Registry) -> None:
    from broker.stages.parse import parse
    from schemas.envelope import encode

    signer = signers["uhdb-royal-derby-ed"]
    now = datetime.now(UTC)
    doc = signer.sign("ae_assault", {"x": 1}, source_key="ATT-1", produced_at=now)
    sig = b64u_decode(doc["signature"], expected_len=64)
    s = int.from_bytes(sig[32:], "little")
    doc["signature"] = b64u_encode(sig[:32] + (s + L).to_bytes(32, "little"))
    received = parse(encode(doc), max_bytes=65536, now=now + timedelta(seconds=1))
    with pytest.raises(ContractError) as info:
        verify(received, registry)
    assert info.value.reason is Reason.BAD_SIGNATURE


# --- base64url ------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"", b"\x00", b"\xff\xfe", b"abc", bytes(range(64))])
def test_b64u_round_trip(raw: bytes) -> None:
    text = b64u_encode(raw)
    assert "=" not in text
    assert "+" not in text
    assert "/" not in text
    assert b64u_decode(text) == raw


@pytest.mark.parametrize(
    "text",
    [
        "AA==",  # padding
        "AB",  # stray bits: decodes to the same byte as "AA" in lenient decoders
        "A",  # impossible length
        "a+b/",  # standard alphabet, not URL-safe
        "aé",  # non-ASCII
        "a b",
    ],
)
def test_b64u_refuses_non_canonical_text(text: str) -> None:
    with pytest.raises(ValueError):
        b64u_decode(text)


def test_b64u_expected_length() -> None:
    with pytest.raises(ValueError, match="expected 32 bytes"):
        b64u_decode(b64u_encode(b"\x00" * 31), expected_len=32)
    assert b64u_decode(b64u_encode(b"\x00" * 32), expected_len=32) == b"\x00" * 32
