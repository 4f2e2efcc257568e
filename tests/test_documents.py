"""The model layer of the configuration documents: every document refuses an unknown key, and a
wrong type, at every level, naming the file and the key (a misspelt key silently ignored would
be a setting nobody applied, e.g. a ``revoked`` that leaves a withdrawn key trusted)."""

from __future__ import annotations

import shutil
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.errors import PolicyError, RegistryError, SecretsError
from broker.policy.loader import build_policy, read_lock
from broker.policy.secrets import load_secrets
from broker.registry import load_registry
from broker.settings import REPO_POLICIES
from schemas.documents import key_path
from schemas.errors import CheckCode, Reason
from schemas.keyfile import KeyEntry, public_bytes
from tests.test_policy_lint import BASE

PARTNER = '[[partner]]\nid = "new-partner"\nname = "n"\norganisation = "o"\nkind = "k"\nevent_types = ["ae_assault"]\n'
CONSUMER = '[[consumer]]\nid = "new-consumer"\nname = "n"\norganisation = "o"\nrole = "analyst"\n'


def _key_text(kid: str = "k1") -> str:
    key = public_bytes(Ed25519PrivateKey.generate())
    entry = KeyEntry(
        kid=kid, partner="uhdb-royal-derby-ed", public_key=key, valid_from=datetime(2026, 1, 1, tzinfo=UTC)
    )
    return entry.to_toml()


def _inline_key() -> str:
    return (
        "[[partner.keys]]\n"
        + "\n".join(_key_text("np-k1").splitlines()[1:]).replace('partner = "uhdb-royal-derby-ed"\n', "")
        + "\n"
    )


def _dirs(tmp_path: Path, parties_extra: str = "", key_text: str | None = None) -> tuple[Path, Path]:
    policy = tmp_path / "policies"
    policy.mkdir()
    keys = tmp_path / "keys"
    keys.mkdir()
    shutil.copy(REPO_POLICIES / "parties.toml", policy / "parties.toml")
    (policy / "parties.toml").write_text((policy / "parties.toml").read_text() + parties_extra)
    if key_text is not None:
        (keys / "a.toml").write_text(key_text)
    return policy, keys


# (where the document is, its text, the file it lands in, the entry the error names, the key)
UNKNOWN_KEY = [
    ("parties-top", "surplus = 1\n", "parties", "surplus", "surplus"),
    ("partner", PARTNER + "colour = 'red'\n", "parties", "partner 'new-partner'", "colour"),
    ("consumer", CONSUMER + "colour = 'red'\n", "parties", "consumer 'new-consumer'", "colour"),
    ("partner-key", PARTNER + _inline_key() + "colour = 'red'\n", "parties", "keys[0] (kid np-k1)", "colour"),
]


@pytest.mark.parametrize(
    ("text", "file", "entry", "key"), [u[1:] for u in UNKNOWN_KEY], ids=[u[0] for u in UNKNOWN_KEY]
)
def test_parties_refuse_an_unknown_key_at_every_level(
    tmp_path: Path, text: str, file: str, entry: str, key: str
) -> None:
    # A top-level key must come before any table: put it first.
    extra = text if not text.startswith("surplus") else ""
    policy, keys = _dirs(tmp_path, extra)
    if text.startswith("surplus"):
        path = policy / "parties.toml"
        path.write_text(text + path.read_text())
    with pytest.raises(RegistryError) as info:
        load_registry(policy, keys)
    assert info.value.reason is Reason.REGISTRY_INVALID
    assert info.value.path == str(policy / "parties.toml")
    assert entry in info.value.entry
    assert repr(key) in info.value.message


@pytest.mark.parametrize(
    ("text", "entry", "words"),
    [
        ("surplus = 1\n" + _key_text(), "surplus", "'surplus'"),
        (_key_text() + "colour = 'red'\n", "key[0] (kid k1)", "'colour'"),
        ("key = 3\n", "key", "key"),
        (_key_text().replace("revoked = false", "revoked = 0"), "key[0] (kid k1)", "revoked"),
        (_key_text().replace('partner = "uhdb-royal-derby-ed"', "partner = 7"), "key[0] (kid k1)", "'partner'"),
    ],
    ids=["top-unknown", "entry-unknown", "top-wrong-type", "entry-wrong-type", "partner-wrong-type"],
)
def test_key_files_refuse_unknown_keys_and_wrong_types(tmp_path: Path, text: str, entry: str, words: str) -> None:
    policy, keys = _dirs(tmp_path, key_text=text)
    with pytest.raises(RegistryError) as info:
        load_registry(policy, keys)
    assert info.value.path == str(keys / "a.toml")
    assert entry in info.value.entry
    assert words in info.value.message


@pytest.mark.parametrize(
    ("text", "entry", "words"),
    [
        ("partner = 3\n", "partner", "partner"),
        (PARTNER.replace('kind = "k"', "kind = 3"), "partner 'new-partner'", "'kind'"),
        (PARTNER.replace('["ae_assault"]', "[3]"), "partner 'new-partner'", "event_types"),
        (CONSUMER.replace('name = "n"', "name = true"), "consumer 'new-consumer'", "'name'"),
        (PARTNER + _inline_key().replace("revoked = false", 'revoked = "no"'), "keys[0] (kid np-k1)", "revoked"),
    ],
    ids=["top", "partner", "partner-list-item", "consumer", "partner-key"],
)
def test_parties_refuse_a_wrong_type_at_every_level(tmp_path: Path, text: str, entry: str, words: str) -> None:
    policy, keys = _dirs(tmp_path)
    path = policy / "parties.toml"
    path.write_text(text if text.startswith("partner =") else path.read_text() + text)  # "partner = 3" alone
    with pytest.raises(RegistryError) as info:
        load_registry(policy, keys)
    assert info.value.path == str(path)
    assert entry in info.value.entry
    assert words in info.value.message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[pseudonym_secret]\n", "unknown table(s) ['pseudonym_secret']"),
        ("pseudonym_secrets = 3\n", "pseudonym_secrets must be a table"),
        ("[pseudonym_secrets]\ndsa-x = 7\n", "pseudonym_secrets.dsa-x: the secret must be a hex string"),
    ],
    ids=["unknown-table", "table-wrong-type", "value-wrong-type"],
)
def test_secrets_file_shape(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "secrets.toml"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(SecretsError) as info:
        load_secrets(path, {})
    assert str(info.value).startswith(f"{path}: ")
    assert words in str(info.value)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o666])
def test_a_secrets_file_readable_by_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    # The attack: another local user reads the pseudonymisation secrets and re-derives pseudonyms.
    path = tmp_path / "secrets.toml"
    path.write_text('[pseudonym_secrets]\n"dsa-x" = "' + "ab" * 32 + '"\n')
    path.chmod(mode)
    with pytest.raises(SecretsError) as info:
        load_secrets(path, {})
    assert "readable by group or others" in str(info.value)
    assert "chmod 600" in str(info.value)
    assert "ab" * 32 not in str(info.value)
    path.chmod(0o600)
    assert load_secrets(path, {}) == {"dsa-x": b"\xab" * 32}


def test_key_path_reads_like_the_file() -> None:
    assert key_path(("flows", 0, "rules", 2, "to")) == "flows[0].rules[2].to"
    assert key_path(("bands", "sv-age", 1)) == "bands.sv-age[1]"
    assert key_path(()) == ""


@pytest.mark.parametrize(
    ("text", "keys", "lock"),
    [
        ("x = 1\n[revisions]\na-b = 2\n", ["x"], {"a-b": 2}),
        ("revisions = 3\n", ["revisions"], None),
        (
            '[revisions]\na-b = 3\nc-d = 0\ne-f = true\ng-h = "1"\n',
            ["revisions.c-d", "revisions.e-f", "revisions.g-h"],
            {"a-b": 3},
        ),
    ],
    ids=["unknown-key", "table-wrong-type", "entries-wrong-type"],
)
def test_lock_shape_reports_every_problem(
    tmp_path: Path, text: str, keys: list[str], lock: dict[str, int] | None
) -> None:
    (tmp_path / "revisions.lock").write_text(text)
    found, problems = read_lock(tmp_path)
    assert found == lock  # good entries still lock their agreements
    assert [p.key for p in problems] == keys
    assert {p.code for p in problems} == {CheckCode.LOCK_INVALID}
    assert all(p.path == str(tmp_path / "revisions.lock") for p in problems)


FLOW = "flows['ae-to-csp']"


def _agreement() -> dict[str, Any]:
    return tomllib.loads(BASE)


@pytest.mark.parametrize(
    ("where", "change", "key", "code"),
    [
        ((), {"whne": 1}, "whne", CheckCode.UNKNOWN_KEY),
        (("flows", 0), {"whne": []}, "flows['ae-to-csp'].whne", CheckCode.UNKNOWN_KEY),
        (("flows", 0, "rules", 0), {"resaon": "x"}, "flows['ae-to-csp'].rules['method']", CheckCode.UNKNOWN_KEY),
        (("flows", 0, "when", 0), {"nin": ["x"]}, "flows['ae-to-csp'].when[0]", CheckCode.UNKNOWN_KEY),
        ((), {"revision": "3"}, "revision", CheckCode.BAD_VALUE),
        ((), {"retention_days": True}, "retention_days", CheckCode.BAD_VALUE),
        (("flows", 0), {"versions": ["1"]}, "flows['ae-to-csp'].versions", CheckCode.BAD_VALUE),
        (("flows", 0), {"cadence_days": 0}, "flows['ae-to-csp'].cadence_days", CheckCode.BAD_VALUE),
        (("flows", 0), {"cadence_days": "7"}, "flows['ae-to-csp'].cadence_days", CheckCode.BAD_VALUE),
        (
            ("flows", 0, "when", 0),
            {"present": 1, "in": None},
            "flows['ae-to-csp'].when[0].present",
            CheckCode.BAD_CONDITION,
        ),
    ],
    ids=[
        "top-unknown",
        "flow-unknown",
        "rule-unknown",
        "condition-unknown",
        "str-not-int",
        "bool-not-int",
        "str-not-int-in-list",
        "cadence-zero",
        "cadence-str",
        "int-not-bool",
    ],
)
def test_agreements_refuse_unknown_keys_and_wrong_types_at_every_level(
    where: tuple[Any, ...], change: dict[str, Any], key: str, code: CheckCode
) -> None:
    doc = _agreement()
    table = doc
    for step in where:
        table = table[step]
    for name, value in change.items():
        if value is None:
            del table[name]
        else:
            table[name] = value
    registry = load_registry(REPO_POLICIES, REPO_POLICIES / "keys")
    with pytest.raises(PolicyError) as info:
        build_policy([("<doc>", doc)], registry, {"dsa-lint-test": b"\x01" * 32})
    assert [(p.key, p.code) for p in info.value.problems] == [(key, code)]
