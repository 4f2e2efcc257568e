"""Registry load refusals: each with its reason, and a message naming the file and the entry."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.errors import RegistryError
from broker.registry import load_registry, parse_key_entry
from broker.settings import REPO_POLICIES
from schemas.errors import Reason
from schemas.keyfile import KeyEntry, public_bytes
from schemas.signing import P, _add, _decode_point, b64u_encode

VALID_FROM = datetime(2026, 1, 1, tzinfo=UTC)
IDENTITY = bytes.fromhex("01" + "00" * 31)
ORDER_8 = bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05")


def _good_key() -> bytes:
    return public_bytes(Ed25519PrivateKey.generate())


def _mixed_order_key() -> bytes:
    x, y, z, _ = _add(_decode_point(_good_key()), _decode_point(ORDER_8))
    inv = pow(z, P - 2, P)
    x, y = x * inv % P, y * inv % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _entry(kid: str, partner: str = "uhdb-royal-derby-ed", public_key: bytes | None = None, **extra: Any) -> str:
    entry = KeyEntry(kid=kid, partner=partner, public_key=public_key or _good_key(), valid_from=VALID_FROM)
    text = entry.to_toml()
    for name, value in extra.items():
        text += f"{name} = {value}\n"
    return text


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    policy = tmp_path / "policies"
    policy.mkdir()
    shutil.copy(REPO_POLICIES / "parties.toml", policy / "parties.toml")
    keys = tmp_path / "keys"
    keys.mkdir()
    return policy, keys


def refused(policy: Path, keys: Path, reason: Reason, path: Path, entry: str) -> RegistryError:
    with pytest.raises(RegistryError) as info:
        load_registry(policy, keys)
    exc = info.value
    assert exc.reason is reason, exc.message
    assert exc.path == str(path)
    assert exc.message.startswith(f"{path}: ")  # the message names the file ...
    assert entry in exc.message  # ... and the entry
    assert entry in exc.entry
    return exc


def test_a_good_key_file_loads(dirs: tuple[Path, Path]) -> None:
    policy, keys = dirs
    raw = _good_key()
    (keys / "a.toml").write_text(_entry("uhdb-k1", public_key=raw) + _entry("police-k1", "derbyshire-police"))
    registry = load_registry(policy, keys)
    assert set(registry.keys) == {"uhdb-k1", "police-k1"}
    key = registry.key("uhdb-k1")
    assert key is not None
    assert key.public_key == raw
    assert key.partner == "uhdb-royal-derby-ed"
    assert key.valid_from == VALID_FROM
    assert not key.revoked
    assert [k.kid for k in registry.partners["uhdb-royal-derby-ed"].keys] == ["uhdb-k1"]
    assert "derbyshire-vru" in registry.consumers


def test_a_date_valid_from_is_midnight_utc(dirs: tuple[Path, Path]) -> None:
    policy, keys = dirs
    text = _entry("k1").replace("valid_from = 2026-01-01T00:00:00Z", "valid_from = 2026-02-03")
    (keys / "a.toml").write_text(text)
    key = load_registry(policy, keys).key("k1")
    assert key is not None
    assert key.valid_from == datetime(2026, 2, 3, tzinfo=UTC)


# --- key material ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make_key", "reason"),
    [
        (lambda: IDENTITY, Reason.KEY_LOW_ORDER),
        (lambda: ORDER_8, Reason.KEY_LOW_ORDER),
        (lambda: b"\x00" * 32, Reason.KEY_LOW_ORDER),
        (lambda: (P + 1).to_bytes(32, "little"), Reason.KEY_NON_CANONICAL),  # identity, y not reduced
        (lambda: b"\xff" * 32, Reason.KEY_NON_CANONICAL),
        (lambda: bytes.fromhex("01" + "00" * 30 + "80"), Reason.KEY_NON_CANONICAL),  # x = 0 with sign bit
        (lambda: (2).to_bytes(32, "little"), Reason.KEY_MALFORMED),  # y = 2 is not on the curve
        (_mixed_order_key, Reason.KEY_NOT_PRIME_ORDER),
    ],
    ids=["identity", "order-8", "zero", "y-equals-p-plus-1", "all-ones", "x0-sign", "off-curve", "mixed-order"],
)
def test_bad_public_key(dirs: tuple[Path, Path], make_key: Callable[[], bytes], reason: Reason) -> None:
    policy, keys = dirs
    path = keys / "bad.toml"
    path.write_text(_entry("ok-k1") + _entry("bad-k1", public_key=make_key()))
    refused(policy, keys, reason, path, "key[1] (kid bad-k1)")


@pytest.mark.parametrize(
    "encoded",
    [
        "not base64!",
        b64u_encode(b"\x01" * 31),  # wrong length
        b64u_encode(b"\x01" * 33),
        b64u_encode(_good_key()) + "=",  # padded
        b64u_encode(_good_key())[:-1] + "B",  # stray bits in the last character
        "",
    ],
    ids=["bad-chars", "31-bytes", "33-bytes", "padded", "stray-bits", "empty"],
)
def test_malformed_public_key_text(dirs: tuple[Path, Path], encoded: str) -> None:
    policy, keys = dirs
    path = keys / "bad.toml"
    text = _entry("bad-k1")
    good = text.split('public_key = "')[1].split('"')[0]
    path.write_text(text.replace(good, encoded))
    reason = Reason.REGISTRY_INVALID if encoded == "" else Reason.KEY_MALFORMED
    exc = refused(policy, keys, reason, path, "key[0] (kid bad-k1)")
    assert "public_key" in exc.message


def test_public_key_not_a_string(dirs: tuple[Path, Path]) -> None:
    policy, keys = dirs
    path = keys / "bad.toml"
    path.write_text('[[key]]\nkid = "k1"\npartner = "derby-pubwatch"\npublic_key = 5\nvalid_from = 2026-01-01\n')
    refused(policy, keys, Reason.REGISTRY_INVALID, path, "key[0] (kid k1)")


# --- duplicates and ownership ---------------------------------------------------------------------


def test_duplicate_key_id_within_one_file(dirs: tuple[Path, Path]) -> None:
    policy, keys = dirs
    path = keys / "a.toml"
    path.write_text(_entry("k1") + _entry("k2") + _entry("k1", "derby-pubwatch"))
    exc = refused(policy, keys, Reason.DUPLICATE_KEY_ID, path, "key[2]")
    assert "'k1' is already registered" in exc.message


def test_duplicate_key_id_across_two_files(dirs: tuple[Path, Path]) -> None:
    policy, keys = dirs
    (keys / "a.toml").write_text(_entry("shared-k1"))
    second = keys / "b.toml"
    second.write_text(_entry("shared-k1", "derbyshire-police"))
    exc = refused(policy, keys, Reason.DUPLICATE_KEY_ID, second, "key[0]")
    assert "'shared-k1'" in exc.message


def test_duplicate_key_id_even_for_the_same_key(dirs: tuple[Path, Path]) -> None:
    policy, keys = dirs
    raw = _good_key()
    (keys / "a.toml").write_text(_entry("k1", public_key=raw))
    (keys / "b.toml").write_text(_entry("k1", public_key=raw))
    exc = refused(policy, keys, Reason.DUPLICATE_KEY_ID, keys / "b.toml", "key[0]")
    assert "'k1'" in exc.message


def test_key_for_unknown_partner(dirs: tuple[Path, Path]) -> None:
    policy, keys = dirs
    path = keys / "a.toml"
    path.write_text(_entry("k1", "nottingham-police"))
    exc = refused(policy, keys, Reason.REGISTRY_INVALID, path, "key[0]")
    assert "nottingham-police" in exc.message


def test_key_for_a_consumer_is_refused(dirs: tuple[Path, Path]) -> None:
    # Consumers do not sign events; a key naming one is a mistake, not a new partner.
    policy, keys = dirs
    path = keys / "a.toml"
    path.write_text(_entry("k1", "derbyshire-vru"))
    exc = refused(policy, keys, Reason.REGISTRY_INVALID, path, "key[0]")
    assert "derbyshire-vru" in exc.message


# --- fields ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "entry", "words"),
    [
        (lambda t: t.replace('kid = "k1"\n', ""), "key[0]", "'kid'"),
        (lambda t: t.replace('kid = "k1"', 'kid = "has space"'), "key[0]", "not a valid key id"),
        (lambda t: t.replace('kid = "k1"', "kid = 7"), "key[0]", "'kid'"),
        (lambda t: t.replace('partner = "uhdb-royal-derby-ed"\n', ""), "key[0] (kid k1)", "'partner'"),
        (lambda t: t.split("public_key")[0] + "valid_from" + t.split("valid_from")[1], "key[0] (kid k1)", "public_key"),
        (lambda t: t.replace("valid_from = 2026-01-01T00:00:00Z\n", ""), "key[0] (kid k1)", "valid_from"),
        (
            lambda t: t.replace("valid_from = 2026-01-01T00:00:00Z", "valid_from = 2026-01-01T00:00:00"),
            "key[0] (kid k1)",
            "UTC offset",
        ),
        (
            lambda t: t.replace("valid_from = 2026-01-01T00:00:00Z", 'valid_from = "2026-01-01"'),
            "key[0] (kid k1)",
            "valid_from",
        ),
        (lambda t: t + "valid_until = 2025-12-31T00:00:00Z\n", "key[0] (kid k1)", "valid_until"),
        (lambda t: t + "valid_until = 2026-01-01T00:00:00Z\n", "key[0] (kid k1)", "valid_until"),
        (lambda t: t.replace("revoked = false", 'revoked = "no"'), "key[0] (kid k1)", "revoked"),
        (lambda t: t + 'algorithm = "rsa"\n', "key[0] (kid k1)", "algorithm"),
    ],
    ids=[
        "missing-kid",
        "bad-kid",
        "kid-not-string",
        "missing-partner",
        "missing-public-key",
        "missing-valid-from",
        "naive-valid-from",
        "string-valid-from",
        "until-before-from",
        "until-equals-from",
        "revoked-not-bool",
        "unknown-setting",
    ],
)
def test_missing_or_invalid_key_field(
    dirs: tuple[Path, Path], edit: Callable[[str], str], entry: str, words: str
) -> None:
    policy, keys = dirs
    path = keys / "a.toml"
    text = edit(_entry("k1"))
    path.write_text(text)
    exc = refused(policy, keys, Reason.REGISTRY_INVALID, path, entry)
    assert words in exc.message


def test_bad_toml_key_file(dirs: tuple[Path, Path]) -> None:
    policy, keys = dirs
    path = keys / "a.toml"
    path.write_text('[[key]]\nkid = "k1\n')
    exc = refused(policy, keys, Reason.REGISTRY_INVALID, path, "file")
    assert "not valid TOML" in exc.message


def test_bad_toml_parties_file(dirs: tuple[Path, Path]) -> None:
    policy, keys = dirs
    path = policy / "parties.toml"
    path.write_text(path.read_text() + "\n[[partner]\n")
    refused(policy, keys, Reason.REGISTRY_INVALID, path, "file")


def test_missing_parties_file(tmp_path: Path) -> None:
    refused(tmp_path, tmp_path, Reason.REGISTRY_INVALID, tmp_path / "parties.toml", "file")


def test_files_other_than_toml_are_ignored(dirs: tuple[Path, Path]) -> None:
    policy, keys = dirs
    (keys / "README.md").write_text("not toml [[[")
    (keys / "a.toml").write_text(_entry("k1"))
    assert set(load_registry(policy, keys).keys) == {"k1"}


# --- parties.toml ---------------------------------------------------------------------------------

PARTNER = """
[[partner]]
id = "{id}"
name = "Test partner"
organisation = "Test"
kind = "test"
event_types = {types}
"""


@pytest.mark.parametrize(
    ("pid", "types", "entry", "words"),
    [
        ("new-partner", '["made_up_event"]', "partner 'new-partner'", "made_up_event"),
        ("new-partner", "[]", "partner 'new-partner'", "event_types"),
        ("new-partner", '"ae_assault"', "partner 'new-partner'", "event_types"),
        ("Bad_Id", '["ae_assault"]', "partner 'Bad_Id'", "lower-case"),
        ("derby-pubwatch", '["nte_incident"]', "partner 'derby-pubwatch'", "used twice"),
        ("derbyshire-vru", '["nte_incident"]', "consumer 'derbyshire-vru'", "used twice"),
    ],
)
def test_invalid_partner(dirs: tuple[Path, Path], pid: str, types: str, entry: str, words: str) -> None:
    policy, keys = dirs
    path = policy / "parties.toml"
    path.write_text(path.read_text() + PARTNER.format(id=pid, types=types))
    exc = refused(policy, keys, Reason.REGISTRY_INVALID, path, entry)
    assert words in exc.message


def test_consumer_with_unknown_role(dirs: tuple[Path, Path]) -> None:
    policy, keys = dirs
    path = policy / "parties.toml"
    path.write_text(
        path.read_text() + '\n[[consumer]]\nid = "press"\nname = "Press"\norganisation = "Press"\nrole = "journalist"\n'
    )
    exc = refused(policy, keys, Reason.REGISTRY_INVALID, path, "consumer 'press'")
    assert "role" in exc.message


def test_partner_inline_keys_are_checked_too(dirs: tuple[Path, Path]) -> None:
    policy, keys = dirs
    path = policy / "parties.toml"
    path.write_text(
        path.read_text()
        + PARTNER.format(id="new-partner", types='["ae_assault"]')
        + f'[[partner.keys]]\nkid = "np-k1"\npublic_key = "{b64u_encode(IDENTITY)}"\nvalid_from = 2026-01-01\n'
    )
    refused(policy, keys, Reason.KEY_LOW_ORDER, path, "partner 'new-partner' keys[0] (kid np-k1)")


# --- parse_key_entry directly ---------------------------------------------------------------------


def test_parse_key_entry_accepts_a_good_entry() -> None:
    raw = _good_key()
    until = VALID_FROM + timedelta(days=30)
    key = parse_key_entry(
        {"kid": "k1", "partner": "p1", "public_key": b64u_encode(raw), "valid_from": VALID_FROM, "valid_until": until},
        Path("x.toml"),
        "key[0]",
    )
    assert (key.kid, key.partner, key.public_key, key.valid_until, key.revoked) == ("k1", "p1", raw, until, False)


def test_parse_key_entry_owner_overrides_partner_field() -> None:
    key = parse_key_entry(
        {"kid": "k1", "public_key": b64u_encode(_good_key()), "valid_from": VALID_FROM}, Path("x.toml"), "e", "owner"
    )
    assert key.partner == "owner"


# --- one key, two partners; tables the loader does not know (issue 11 item 13) -------------------


@pytest.mark.parametrize("where", ["one_file", "two_files", "inline_then_file"])
def test_one_public_key_under_two_partners_is_refused(dirs: tuple[Path, Path], where: str) -> None:
    # The attack: the pub-watch adapter's key also registered for the police, so it can sign
    # "police" envelopes (or a copied key file registered twice by mistake).
    policy, keys = dirs
    raw = _good_key()
    if where == "one_file":
        path, entry = keys / "a.toml", "key[1]"
        path.write_text(_entry("pub-k1", "derby-pubwatch", public_key=raw) + _entry("pol-k1", "derbyshire-police", raw))
    elif where == "two_files":
        (keys / "a.toml").write_text(_entry("pub-k1", "derby-pubwatch", public_key=raw))
        path, entry = keys / "b.toml", "key[0]"
        path.write_text(_entry("pol-k1", "derbyshire-police", public_key=raw))
    else:
        parties = policy / "parties.toml"
        parties.write_text(
            parties.read_text()
            + PARTNER.format(id="new-partner", types='["ae_assault"]')
            + f'[[partner.keys]]\nkid = "np-k1"\npublic_key = "{b64u_encode(raw)}"\nvalid_from = 2026-01-01\n'
        )
        path, entry = keys / "a.toml", "key[0]"
        path.write_text(_entry("pol-k1", "derbyshire-police", public_key=raw))
    exc = refused(policy, keys, Reason.DUPLICATE_PUBLIC_KEY, path, entry)
    assert "already registered for partner" in exc.message


def test_one_public_key_under_two_kids_of_one_partner_loads(dirs: tuple[Path, Path]) -> None:
    # A re-registration of a partner's own key (new validity) proves nothing new: allowed.
    policy, keys = dirs
    raw = _good_key()
    (keys / "a.toml").write_text(
        _entry("pol-k1", "derbyshire-police", raw) + _entry("pol-k2", "derbyshire-police", raw)
    )
    assert set(load_registry(policy, keys).keys) == {"pol-k1", "pol-k2"}


@pytest.mark.parametrize(
    ("text", "table"),
    [
        (
            "[[key]]\n"
            + 'kid = "x-k1"\npartner = "derbyshire-police"\npublic_key = "{key}"\nvalid_from = 2026-01-01\n',
            "key",
        ),
        ('[[partners]]\nid = "x"\n', "partners"),
        ("[settings]\nstrict = false\n", "settings"),
        ("revoked = true\n", "revoked"),
    ],
    ids=["key_outside_a_partner", "misspelt_partners", "settings_table", "top_level_value"],
)
def test_unknown_top_level_tables_in_parties_toml_are_refused(dirs: tuple[Path, Path], text: str, table: str) -> None:
    policy, keys = dirs
    path = policy / "parties.toml"
    path.write_text(text.format(key=b64u_encode(_good_key())) + "\n" + path.read_text())
    exc = refused(policy, keys, Reason.REGISTRY_INVALID, path, table)
    assert f"unknown top-level table {table!r}" in exc.message


def test_unknown_top_level_table_in_a_key_file_is_refused(dirs: tuple[Path, Path]) -> None:
    policy, keys = dirs
    path = keys / "a.toml"
    path.write_text(_entry("k1") + '\n[[keys]]\nkid = "k2"\n')
    exc = refused(policy, keys, Reason.REGISTRY_INVALID, path, "keys")
    assert "unknown top-level table 'keys'" in exc.message


# --- every problem, not only the first (issue 12 item 5) -----------------------------------------


def test_every_problem_of_every_file_and_entry_is_reported_together(dirs: tuple[Path, Path]) -> None:
    policy, keys = dirs
    parties = policy / "parties.toml"
    raw = _good_key()
    parties.write_text(
        "[settings]\nstrict = false\n\n"  # an unknown top-level table
        + parties.read_text()
        + PARTNER.format(id="new-partner", types='["made_up_event"]')  # an unknown event type
    )
    (keys / "a.toml").write_text(
        _entry("a-k1", public_key=IDENTITY)  # low order
        + _entry("a-k2", public_key=raw)
        + _entry("a-k3", "nottingham-police")  # an unknown partner
    )
    text = _entry("b-k1")
    good = text.split('public_key = "')[1].split('"')[0]
    (keys / "b.toml").write_text(
        text.replace(good, "not base64!")  # malformed
        + _entry("a-k2", "derbyshire-police")  # a key id used twice
        + _entry("b-k3", "derbyshire-police", public_key=raw)  # one public key, two partners
        + _entry("b-k4").replace('kid = "b-k4"', 'kid = "b-k4"\ncolour = "red"')  # an unknown setting
    )
    with pytest.raises(RegistryError) as info:
        load_registry(policy, keys)
    found = [(p.path, p.entry, p.reason) for p in info.value.problems]
    assert found == [
        (str(parties), "settings", Reason.REGISTRY_INVALID),
        (str(parties), "partner 'new-partner'", Reason.REGISTRY_INVALID),
        (str(keys / "a.toml"), "key[0] (kid a-k1)", Reason.KEY_LOW_ORDER),
        (str(keys / "a.toml"), "key[2] (kid a-k3)", Reason.REGISTRY_INVALID),
        (str(keys / "b.toml"), "key[3] (kid b-k4)", Reason.REGISTRY_INVALID),
        (str(keys / "b.toml"), "key[0] (kid b-k1)", Reason.KEY_MALFORMED),
        (str(keys / "b.toml"), "key[1] (kid a-k2)", Reason.DUPLICATE_KEY_ID),
        (str(keys / "b.toml"), "key[2] (kid b-k3)", Reason.DUPLICATE_PUBLIC_KEY),
    ]
    assert all(p.sentence for p in info.value.problems)
    # the first is the error's own, as before; the sentence says more follow
    exc = info.value
    assert (exc.path, exc.entry, exc.reason) == found[0]
    assert "and 7 more problem(s)" in str(exc)
    assert "'colour'" in info.value.problems[4].sentence
    assert "nottingham-police" in info.value.problems[3].sentence


def test_a_refused_entry_does_not_also_make_what_names_it_unknown(dirs: tuple[Path, Path]) -> None:
    # A partner refused for its shape still owns its id: its keys are not "for an unknown partner"
    # as well (one mistake, one problem); and a malformed key still claims its kid.
    policy, keys = dirs
    parties = policy / "parties.toml"
    parties.write_text(parties.read_text() + PARTNER.format(id="new-partner", types='["ae_assault"]') + "colour = 1\n")
    (keys / "a.toml").write_text(
        _entry("k1", "new-partner", public_key=IDENTITY) + _entry("k1", "new-partner") + _entry("k2", "new-partner")
    )
    with pytest.raises(RegistryError) as info:
        load_registry(policy, keys)
    assert [(p.entry, p.reason) for p in info.value.problems] == [
        ("partner 'new-partner'", Reason.REGISTRY_INVALID),
        ("key[0] (kid k1)", Reason.KEY_LOW_ORDER),
        ("key[1] (kid k1)", Reason.DUPLICATE_KEY_ID),
    ]
