"""The verify stage, one test per reason code; freshness and the replay decision."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from adapters.signer import Signer
from adapters.synthetic import SyntheticGenerator
from broker.registry import Registry, load_registry
from broker.settings import REPO_POLICIES
from broker.stages.freshness import FreshnessWindow, check_freshness
from broker.stages.parse import parse
from broker.stages.replay import ReplayState, is_duplicate
from broker.stages.types import Received, Verified
from broker.stages.verify import verify
from schemas.envelope import encode, format_time
from schemas.errors import ContractError, Reason
from schemas.keyfile import KeyEntry, public_bytes
from schemas.signing import b64u_decode, b64u_encode
from schemas.strictjson import DEFAULT_MAX_BYTES

ED = "uhdb-royal-derby-ed"
NOW = datetime.now(UTC).replace(microsecond=0)
WINDOW_FROM = datetime(2026, 1, 1, tzinfo=UTC)
WINDOW_UNTIL = datetime(2026, 2, 1, tzinfo=UTC)


@dataclass(frozen=True)
class World:
    registry: Registry
    signers: dict[str, Signer]  # the session keyring (one good key per partner)
    special: dict[str, Signer]  # by kid: revoked, expired, ...


def _special_key(
    kid: str, valid_from: datetime, valid_until: datetime | None = None, *, revoked: bool = False
) -> tuple[Signer, KeyEntry]:
    private = Ed25519PrivateKey.generate()
    entry = KeyEntry(kid, ED, public_bytes(private), valid_from, valid_until, revoked)
    return Signer.create(ED, kid, private), entry


@pytest.fixture(scope="module")
def world(signers: dict[str, Signer], keys_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> World:
    specs = {
        "ed-revoked": _special_key("ed-revoked", NOW - timedelta(days=1), revoked=True),
        "ed-expired": _special_key("ed-expired", NOW - timedelta(days=30), NOW - timedelta(days=1)),
        "ed-future": _special_key("ed-future", NOW + timedelta(days=1)),
        "ed-window": _special_key("ed-window", WINDOW_FROM, WINDOW_UNTIL),
    }
    kdir = tmp_path_factory.mktemp("verify-keys")
    shutil.copy(keys_dir / "partners.toml", kdir / "partners.toml")
    (kdir / "special.toml").write_text("\n".join(entry.to_toml() for _, entry in specs.values()))
    registry = load_registry(REPO_POLICIES, kdir)
    return World(registry, signers, {kid: signer for kid, (signer, _) in specs.items()})


def _data(event_type: str = "ae_assault") -> dict[str, Any]:
    return SyntheticGenerator(seed=42).for_partner(ED, event_type).data()


def received_from(doc: dict[str, Any], now: datetime = NOW) -> Received:
    return parse(encode(doc), max_bytes=DEFAULT_MAX_BYTES, now=now)


def signed(signer: Signer, *, event_type: str = "ae_assault", at: datetime = NOW, **changes: Any) -> Received:
    doc = signer.sign(event_type, _data(event_type), source_key="ATT-1", produced_at=at)
    return received_from(doc | changes)


def rejected(received: Received, registry: Registry, reason: Reason, field: str, **kwargs: Any) -> ContractError:
    with pytest.raises(ContractError) as info:
        verify(received, registry, **kwargs)
    exc = info.value
    assert exc.reason is reason, exc.message
    assert exc.field == field
    assert exc.message.endswith(".")
    return exc


def test_good_message_is_verified(world: World) -> None:
    received = signed(world.signers[ED])
    verified = verify(received, world.registry)
    assert isinstance(verified, Verified)
    assert verified.kid == f"{ED}-k1"
    assert verified.envelope is received.envelope
    assert verify(received, world.registry, publisher=ED).kid == verified.kid


def test_every_partner_key_verifies_its_own_type(world: World) -> None:
    gen = SyntheticGenerator(seed=1)
    for partner, signer in world.signers.items():
        (event_type,) = world.registry.partners[partner].event_types
        doc = signer.sign(event_type, gen.for_partner(partner, event_type).data(), source_key="X", produced_at=NOW)
        assert verify(received_from(doc), world.registry).kid == signer.kid


# --- who ------------------------------------------------------------------------------------------


def test_unknown_partner(world: World) -> None:
    stranger = Signer.create("leicester-ed", "leicester-ed-k1", Ed25519PrivateKey.generate())
    exc = rejected(signed(stranger), world.registry, Reason.UNKNOWN_PARTNER, "source")
    assert "leicester-ed" in exc.message


def test_unknown_key_id(world: World) -> None:
    impostor = Signer.create(ED, f"{ED}-k9", Ed25519PrivateKey.generate())
    exc = rejected(signed(impostor), world.registry, Reason.UNKNOWN_KEY, "keyid")
    assert f"{ED}-k9" in exc.message


def test_key_id_of_another_partner_is_unknown_for_this_one(world: World) -> None:
    # Signed with the police's real key and naming the police's key id, but claiming to be the ED.
    police = world.signers["derbyshire-police"]
    as_ed = Signer.create(ED, police.kid, police.private_key)
    exc = rejected(signed(as_ed), world.registry, Reason.UNKNOWN_KEY, "keyid")
    assert police.kid in exc.message


def test_publisher_mismatch(world: World) -> None:
    received = signed(world.signers[ED])
    exc = rejected(received, world.registry, Reason.PUBLISHER_MISMATCH, "source", publisher="derby-pubwatch")
    assert "derby-pubwatch" in exc.message


def test_publisher_mismatch_even_when_the_publisher_has_no_key_for_it(world: World) -> None:
    # A consumer's account (or anything else) publishing a partner's captured message.
    rejected(signed(world.signers[ED]), world.registry, Reason.PUBLISHER_MISMATCH, "source", publisher="derbyshire-vru")


@pytest.mark.parametrize(
    "routing_key",
    [
        "derbyshire-police.ae_assault",  # another partner's key
        f"{ED}.police_sv_offence",  # its own partner, another type
        f"{ED}.ae_assault.x",  # extra parts
        f"{ED}",  # no type
        "",  # nothing at all
        f"{ED.upper()}.ae_assault",  # case is not folded
        f"{ED}.ae_assault ",  # nor is whitespace trimmed
        f"{ED}.ae_аssault",  # Cyrillic a: looks the same, is not
    ],
)
def test_routing_key_that_is_not_source_and_type_is_refused(world: World, routing_key: str) -> None:
    exc = rejected(
        signed(world.signers[ED]), world.registry, Reason.ROUTING_KEY_MISMATCH, "source", routing_key=routing_key
    )
    assert f"{ED}.ae_assault" in exc.message


def test_routing_key_of_its_own_source_and_type_passes(world: World) -> None:
    verify(signed(world.signers[ED]), world.registry, routing_key=f"{ED}.ae_assault")


# --- key state ------------------------------------------------------------------------------------


def test_key_revoked(world: World) -> None:
    exc = rejected(signed(world.special["ed-revoked"]), world.registry, Reason.KEY_REVOKED, "keyid")
    assert "ed-revoked" in exc.message


def test_revoked_key_is_refused_whatever_the_time(world: World) -> None:
    for at in (NOW - timedelta(hours=23), NOW + timedelta(days=365)):
        rejected(signed(world.special["ed-revoked"], at=at), world.registry, Reason.KEY_REVOKED, "keyid")


def test_key_expired(world: World) -> None:
    rejected(signed(world.special["ed-expired"]), world.registry, Reason.KEY_EXPIRED, "keyid")


def test_key_not_yet_valid(world: World) -> None:
    rejected(signed(world.special["ed-future"]), world.registry, Reason.KEY_NOT_YET_VALID, "keyid")


def test_key_validity_boundaries(world: World) -> None:
    signer = world.special["ed-window"]
    # valid_from is inclusive, valid_until exclusive.
    assert verify(signed(signer, at=WINDOW_FROM), world.registry).kid == "ed-window"
    assert verify(signed(signer, at=WINDOW_UNTIL - timedelta(milliseconds=1)), world.registry).kid == "ed-window"
    rejected(
        signed(signer, at=WINDOW_FROM - timedelta(milliseconds=1)), world.registry, Reason.KEY_NOT_YET_VALID, "keyid"
    )
    rejected(signed(signer, at=WINDOW_UNTIL), world.registry, Reason.KEY_EXPIRED, "keyid")


# --- signature ------------------------------------------------------------------------------------


def test_bad_signature_tampered_data(world: World) -> None:
    doc = world.signers[ED].sign("ae_assault", _data(), source_key="ATT-1", produced_at=NOW)
    doc["data"] = doc["data"] | {
        "assault_location_type": "home" if doc["data"]["assault_location_type"] != "home" else "workplace"
    }
    exc = rejected(received_from(doc), world.registry, Reason.BAD_SIGNATURE, "signature")
    assert "does not match" in exc.message


def test_bad_signature_tampered_attribute(world: World) -> None:
    doc = world.signers[ED].sign("ae_assault", _data(), source_key="ATT-1", produced_at=NOW)
    rejected(
        received_from(doc | {"time": format_time(NOW - timedelta(seconds=1))}),
        world.registry,
        Reason.BAD_SIGNATURE,
        "signature",
    )


def test_bad_signature_from_another_key(world: World) -> None:
    # Right key id, wrong private key: what an attacker without the partner's key can produce.
    forger = Signer.create(ED, f"{ED}-k1", Ed25519PrivateKey.generate())
    rejected(signed(forger), world.registry, Reason.BAD_SIGNATURE, "signature")


def test_bad_signature_from_the_partners_other_key(world: World) -> None:
    # Both keys belong to the ED, but the signature must be checked under the named one.
    doc = world.special["ed-window"].sign("ae_assault", _data(), source_key="ATT-1", produced_at=NOW)
    rejected(received_from(doc | {"keyid": f"{ED}-k1"}), world.registry, Reason.BAD_SIGNATURE, "signature")


def test_signature_moved_to_another_message(world: World) -> None:
    signer = world.signers[ED]
    first = signer.sign("ae_assault", _data(), source_key="ATT-1", produced_at=NOW)
    second = signer.sign("ae_assault", _data(), source_key="ATT-2", produced_at=NOW)
    rejected(
        received_from(second | {"signature": first["signature"]}), world.registry, Reason.BAD_SIGNATURE, "signature"
    )


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: "!" * 86,  # not base64url
        lambda s: s[:-2],  # 63 bytes
        lambda s: s + "AA",  # 65 bytes
        lambda s: s + "==",  # padded
        lambda s: s[:-1] + ("B" if s[-1] == "A" else "A"),  # stray low bits (or a different signature)
        lambda s: "",
        lambda s: s.replace("-", "+").replace("_", "/") if ("-" in s or "_" in s) else "+" + s[1:],  # base64, not url
    ],
    ids=["not-base64", "short", "long", "padded", "last-char", "empty", "std-alphabet"],
)
def test_bad_signature_malformed_base64(world: World, mangle: Any) -> None:
    doc = world.signers[ED].sign("ae_assault", _data(), source_key="ATT-1", produced_at=NOW)
    rejected(
        received_from(doc | {"signature": mangle(doc["signature"])}), world.registry, Reason.BAD_SIGNATURE, "signature"
    )


def test_signature_base64_is_strict() -> None:
    sig = b64u_encode(bytes(range(64)))
    assert b64u_decode(sig, expected_len=64) == bytes(range(64))


# --- rights ---------------------------------------------------------------------------------------


def test_type_not_registered(world: World) -> None:
    # A genuine, correctly signed message of a type the ED may not send.
    data = SyntheticGenerator(seed=2).school_exclusion(ED).data()
    doc = world.signers[ED].sign("school_exclusion", data, source_key="EXC-1", produced_at=NOW)
    exc = rejected(received_from(doc), world.registry, Reason.TYPE_NOT_REGISTERED, "type")
    assert "school_exclusion" in exc.message


def test_type_rights_are_checked_after_the_signature(world: World) -> None:
    # An unauthenticated sender learns nothing about a partner's rights: bad signature first.
    forger = Signer.create(ED, f"{ED}-k1", Ed25519PrivateKey.generate())
    data = SyntheticGenerator(seed=2).school_exclusion(ED).data()
    doc = forger.sign("school_exclusion", data, source_key="EXC-1", produced_at=NOW)
    rejected(received_from(doc), world.registry, Reason.BAD_SIGNATURE, "signature")


# --- freshness ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def verified(world: World) -> Verified:
    return verify(signed(world.signers[ED]), world.registry)


def _freshness(verified: Verified, now: datetime) -> ContractError:
    with pytest.raises(ContractError) as info:
        check_freshness(verified, now, FreshnessWindow())
    assert info.value.field == "time"
    return info.value


def test_fresh_message_is_accepted(verified: Verified) -> None:
    produced = verified.envelope.time
    window = FreshnessWindow()
    for now in (produced, produced + timedelta(seconds=1), produced - timedelta(minutes=1)):
        check_freshness(verified, now, window)
    check_freshness(verified, produced + window.max_age, window)  # boundary, inclusive
    check_freshness(verified, produced - window.max_future, window)  # boundary, inclusive


def test_stale(verified: Verified) -> None:
    produced = verified.envelope.time
    exc = _freshness(verified, produced + FreshnessWindow().max_age + timedelta(milliseconds=1))
    assert exc.reason is Reason.STALE
    assert _freshness(verified, produced + timedelta(days=365)).reason is Reason.STALE


def test_from_the_future(verified: Verified) -> None:
    produced = verified.envelope.time
    exc = _freshness(verified, produced - FreshnessWindow().max_future - timedelta(milliseconds=1))
    assert exc.reason is Reason.FROM_THE_FUTURE
    assert _freshness(verified, produced - timedelta(days=1)).reason is Reason.FROM_THE_FUTURE


def test_configured_window(verified: Verified) -> None:
    produced = verified.envelope.time
    tight = FreshnessWindow(max_age=timedelta(seconds=10), max_future=timedelta(seconds=0))
    check_freshness(verified, produced + timedelta(seconds=10), tight)
    with pytest.raises(ContractError) as info:
        check_freshness(verified, produced + timedelta(seconds=11), tight)
    assert info.value.reason is Reason.STALE
    with pytest.raises(ContractError) as info:
        check_freshness(verified, produced - timedelta(milliseconds=1), tight)
    assert info.value.reason is Reason.FROM_THE_FUTURE


def test_freshness_compares_instants_not_offsets(world: World) -> None:
    # 13:00+01:00 and 12:00Z are the same moment.
    doc = world.signers[ED].sign("ae_assault", _data(), source_key="ATT-1", produced_at=NOW)
    received = received_from(doc)
    v = verify(received, world.registry)
    check_freshness(
        v, received.envelope.time.astimezone(UTC), FreshnessWindow(max_age=timedelta(0), max_future=timedelta(0))
    )


# --- replay ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "duplicate"),
    [(ReplayState.NEW, False), (ReplayState.IN_PROGRESS, False), (ReplayState.DONE, True)],
)
def test_is_duplicate(state: ReplayState, duplicate: bool) -> None:
    assert is_duplicate(state) is duplicate


def test_replay_states_are_stable_codes() -> None:
    # Stored in the replay guard: renaming one would misread every remembered id.
    assert {s.value for s in ReplayState} == {"new", "in_progress", "done"}
