"""``sv-broker policy check``: one test per kind of error, each checking the message; warnings;
the revision lock; the shipped policies pass; the secrets sources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker.cli import main
from broker.errors import PolicyError, SecretsError
from broker.policy.loader import load_policy
from broker.policy.secrets import load_secrets
from broker.registry import Registry
from broker.settings import REPO_POLICIES
from tests.test_policy_support import TEST_SECRETS, policy_dir_copy, secrets_file

AS_OF = "2026-11-25"

BASE = """\
id = "dsa-lint-test"
title = "Lint test agreement"
revision = 3
parties = ["uhdb-royal-derby-ed", "derby-csp-analysts"]
purpose = "Testing the lint."
lawful_basis = ["UK GDPR Art 6(1)(e)"]
valid_from = 2026-04-01
valid_to = 2028-03-31
review_by = 2027-03-31
retention_days = 365

[bands]
age = ["0-10", "11-17", "18-24", "25+"]

[[flows]]
id = "ae-to-csp"
partners = ["uhdb-royal-derby-ed"]
event_type = "ae_assault"
versions = [1]
consumers = ["derby-csp-analysts"]
when = [{ field = "district", in = ["E06000015"] }]
rules = [
  { id = "method", field = "assault_method", action = "keep" },
  { id = "age-band", field = "patient_age", action = "generalise", to = "band", bands = "age", as = "age_band" },
  { id = "site", field = "site_code", action = "pseudonymise", as = "site_pseudonym" },
]
"""

SECRET = {"dsa-lint-test": bytes.fromhex("5a" * 32)}


def check(
    tmp_path: Path,
    text: str,
    capsys: pytest.CaptureFixture[str],
    *,
    secrets: dict[str, bytes] | None = None,
    lock: str | None = None,
    extra: tuple[str, ...] = (),
) -> tuple[int, str]:
    folder = policy_dir_copy(tmp_path)
    (folder / "agreements" / "dsa-lint-test.toml").write_text(text, encoding="utf-8")
    if lock is not None:
        (folder / "revisions.lock").write_text(lock, encoding="utf-8")
    secret_path = secrets_file(tmp_path, SECRET if secrets is None else secrets)
    rc = main(["policy", "check", "--policy-dir", str(folder), "--secrets", str(secret_path), "--as-of", AS_OF, *extra])
    return rc, capsys.readouterr().out


def replace(old: str, new: str) -> str:
    assert old in BASE
    return BASE.replace(old, new)


def test_base_agreement_is_clean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = check(tmp_path, BASE, capsys, lock="[revisions]\ndsa-lint-test = 3\n")
    assert rc == 0, out
    assert "0 error(s), 0 warning(s)" in out


# --- one test per error -----------------------------------------------------------------------------


def test_field_not_in_the_schema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = check(tmp_path, replace('field = "assault_method"', 'field = "assault_weapon"'), capsys)
    assert rc == 1
    assert "unknown_field: the event has no field 'assault_weapon'" in out
    # File, line and key path: the line of the rule, and the rule by id.
    assert "dsa-lint-test.toml:23: flows['ae-to-csp'].rules['method'].field:" in out


def test_transform_that_does_not_fit_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = check(
        tmp_path, replace('to = "band", bands = "age"', 'to = "week"').replace(', bands = "age"', ""), capsys
    )
    assert rc == 1
    assert "transform_type_mismatch: generalise to 'week' does not fit 'patient_age' (int); it fits: band" in out


def test_group_on_a_field_that_is_not_a_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = replace(
        '{ id = "method", field = "assault_method", action = "keep" }',
        '{ id = "method", field = "arrival_datetime", action = "generalise", to = "district" }',
    )
    rc, out = check(tmp_path, text, capsys)
    assert rc == 1
    assert "does not fit 'arrival_datetime' (datetime)" in out


def test_unknown_partner(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = check(
        tmp_path, replace('partners = ["uhdb-royal-derby-ed"]', 'partners = ["derby-royal-infirmary"]'), capsys
    )
    assert rc == 1
    assert "unknown_party: partner 'derby-royal-infirmary' is not a registered partner" in out
    assert "dsa-lint-test.toml:17: flows['ae-to-csp'].partners:" in out


def test_unknown_consumer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = check(tmp_path, replace('consumers = ["derby-csp-analysts"]', 'consumers = ["derby-csp"]'), capsys)
    assert rc == 1
    assert "unknown_party: consumer 'derby-csp' is not a registered consumer" in out


def test_unknown_party_in_parties(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = replace('parties = ["uhdb-royal-derby-ed", ', 'parties = ["nhs-digital", "uhdb-royal-derby-ed", ')
    rc, out = check(tmp_path, text, capsys)
    assert rc == 1
    assert "parties: unknown_party: party 'nhs-digital' is not in the registry" in out


def test_flow_party_not_listed_in_the_agreement(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = check(tmp_path, replace('consumers = ["derby-csp-analysts"]', 'consumers = ["derbyshire-vru"]'), capsys)
    assert rc == 1
    assert "party_not_in_agreement: consumer 'derbyshire-vru' is not listed in the agreement's parties" in out


def test_overlapping_bands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = check(tmp_path, replace('"11-17", "18-24"', '"11-17", "17-24"'), capsys)
    assert rc == 1
    assert "bands.age: overlapping_bands: bands '11-17' and '17-24' overlap" in out


def test_missing_pseudonym_secret(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = check(tmp_path, BASE, capsys, secrets={})
    assert rc == 1
    assert "secret_missing: agreement dsa-lint-test pseudonymises but no secret is loaded for it" in out
    assert "SV_BROKER_SECRET_DSA_LINT_TEST" in out


def test_revision_that_went_down(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = check(tmp_path, BASE, capsys, lock="[revisions]\ndsa-lint-test = 4\n")
    assert rc == 1
    assert "revision: revision_decreased: revision 3 is below revision 4 recorded in revisions.lock" in out


def test_direct_identifier_named_as_keep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = check(tmp_path, replace('field = "assault_method"', 'field = "nhs_number"'), capsys)
    assert rc == 1
    assert "direct_identifier: 'nhs_number' is a direct identifier and may not be named as 'keep'" in out


def test_free_text_kept_without_a_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = check(tmp_path, replace('field = "assault_method"', 'field = "assault_location_text"'), capsys)
    assert rc == 1
    assert "reason_required: 'assault_location_text' is text (a quasi-identifier)" in out
    with_reason = replace(
        '{ id = "method", field = "assault_method", action = "keep" }',
        '{ id = "method", field = "assault_location_text", action = "keep", reason = "Named hotspot work." }',
    )
    rc, out = check(tmp_path, with_reason, capsys)
    assert rc == 0, out


def test_lsoa_released_without_a_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = replace(
        '{ id = "method", field = "assault_method", action = "keep" }',
        '{ id = "method", field = "patient_lsoa", action = "generalise", to = "lsoa" }',
    )
    rc, out = check(tmp_path, text, capsys)
    assert rc == 1
    assert "reason_required: releasing an LSOA needs reason" in out


def test_misspelt_setting_is_an_error_not_ignored(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A misspelt `when` would otherwise drop the row condition and widen the release.
    rc, out = check(tmp_path, replace("when = [", "whne = ["), capsys)
    assert rc == 1
    assert "flows['ae-to-csp'].whne: unknown_key: unknown flow setting 'whne'" in out


def test_condition_with_a_code_not_in_the_code_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = check(tmp_path, replace('in = ["E06000015"]', 'in = ["E06000016"]'), capsys)
    assert rc == 1
    assert "bad_condition: 'E06000016' is not a code of 'district'" in out


def test_group_set_must_cover_the_code_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (
        replace(
            '{ id = "method", field = "assault_method", action = "keep" }',
            '{ id = "method", field = "assault_method", action = "generalise", to = "group", groups = "weapon" }',
        )
        + '\n[groups.weapon]\nweapon = ["knife_or_sharp", "firearm", "glass_or_bottle"]\n'
    )
    rc, out = check(tmp_path, text, capsys)
    assert rc == 1
    assert "bad_group: group set 'weapon' gives no group for code(s) ['blunt_object', 'body_part'" in out


def test_duplicate_output_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = check(tmp_path, replace('as = "age_band"', 'as = "assault_method"'), capsys)
    assert rc == 1
    assert "duplicate_output: rules 'method' and 'age-band' both release 'assault_method'" in out


def test_file_name_must_match_the_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = check(
        tmp_path, replace('id = "dsa-lint-test"', 'id = "dsa-other"'), capsys, secrets={"dsa-other": b"\x01" * 32}
    )
    assert rc == 1
    assert "file_name_mismatch: the file must be named dsa-other.toml" in out


def test_invalid_toml_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = check(tmp_path, BASE.replace("revision = 3", "revision = = 3"), capsys)
    assert rc == 1
    assert "dsa-lint-test.toml:3: invalid_toml:" in out


# --- warnings -----------------------------------------------------------------------------------


def test_warns_when_valid_to_is_within_30_days(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = replace("valid_to = 2028-03-31", "valid_to = 2026-12-20").replace(
        "review_by = 2027-03-31", "review_by = 2026-12-01"
    )
    rc, out = check(tmp_path, text, capsys, lock="[revisions]\ndsa-lint-test = 3\n")
    assert rc == 0, out
    assert "warning: " in out
    assert "expires_soon: dsa-lint-test expires on 2026-12-20 (25 days)" in out
    assert "review_due_soon: dsa-lint-test is due for review by 2026-12-01 (6 days)" in out
    assert "0 error(s), 2 warning(s)" in out


def test_no_warning_beyond_30_days(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = replace("review_by = 2027-03-31", "review_by = 2026-12-26")
    rc, out = check(tmp_path, text, capsys, lock="[revisions]\ndsa-lint-test = 3\n")
    assert rc == 0
    assert "review_due_soon" not in out


def test_warns_when_already_expired(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = replace("valid_from = 2026-04-01", "valid_from = 2024-04-01")
    text = text.replace("valid_to = 2028-03-31", "valid_to = 2026-03-31").replace(
        "review_by = 2027-03-31", "review_by = 2025-03-31"
    )
    rc, out = check(tmp_path, text, capsys, lock="[revisions]\ndsa-lint-test = 3\n")
    assert rc == 0
    assert "expired: dsa-lint-test expired on 2026-03-31; it releases nothing" in out


# --- the revision lock --------------------------------------------------------------------------


def test_update_lock_then_refuse_a_rollback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], registry: Registry
) -> None:
    rc, out = check(tmp_path, BASE, capsys, extra=("--update-lock",))
    assert rc == 0, out
    assert "revision lock updated" in out
    folder = tmp_path / "policies"
    assert 'dsa-lint-test" = 3' in (folder / "revisions.lock").read_text(encoding="utf-8")
    # Someone restores revision 2 (say, a wider one): check and the broker both refuse it.
    (folder / "agreements" / "dsa-lint-test.toml").write_text(BASE.replace("revision = 3", "revision = 2"))
    rc = main(["policy", "check", "--policy-dir", str(folder), "--secrets", str(tmp_path / "secrets.toml")])
    assert rc == 1
    assert "revision_decreased" in capsys.readouterr().out
    with pytest.raises(PolicyError) as info:
        load_policy(folder, registry, SECRET)
    assert info.value.reason == "revision_decreased"
    assert info.value.key == "revision"


def test_update_lock_refused_with_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _ = check(tmp_path, BASE, capsys, secrets={}, extra=("--update-lock",))
    assert rc == 1
    assert not (tmp_path / "policies" / "revisions.lock").exists()


def test_unlocked_revision_is_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = check(tmp_path, BASE, capsys, lock="[revisions]\ndsa-lint-test = 2\n")
    assert rc == 0
    assert "revision_not_locked: revision 3 of dsa-lint-test is not yet in revisions.lock (at 2)" in out


# --- the shipped policies -----------------------------------------------------------------------


def test_shipped_policies_pass_with_a_secrets_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = secrets_file(tmp_path, TEST_SECRETS)
    rc = main(["policy", "check", "--secrets", str(path), "--as-of", AS_OF])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "checked 6 agreement file(s)" in out
    assert "0 error(s), 0 warning(s)" in out


def test_shipped_policies_pass_with_environment_secrets(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SV_BROKER_SECRET_DSA_EDUCATION_EXCLUSIONS_2026", "7f" * 32)
    rc = main(["policy", "check", "--as-of", AS_OF, "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0, report
    assert report["errors"] == 0
    assert len(report["agreements"]) == 6


def test_shipped_policies_fail_without_secrets(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SV_BROKER_SECRET_DSA_EDUCATION_EXCLUSIONS_2026", raising=False)
    rc = main(["policy", "check", "--as-of", AS_OF])
    assert rc == 1
    assert "secret_missing" in capsys.readouterr().out


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    for command in (["policy", "check", "--help"], ["policy", "explain", "--help"]):
        with pytest.raises(SystemExit) as info:
            main(command)
        assert info.value.code == 0
    assert "--update-lock" in capsys.readouterr().out


# --- secrets sources ----------------------------------------------------------------------------


def test_example_secrets_file_is_not_usable(tmp_path: Path) -> None:
    example = REPO_POLICIES / "secrets.example.toml"
    with pytest.raises(SecretsError, match="must not live in the repository"):
        load_secrets(example, {})
    copied = tmp_path / "secrets.toml"
    copied.write_text(example.read_text(encoding="utf-8"), encoding="utf-8")
    copied.chmod(0o600)
    with pytest.raises(SecretsError, match="must be a hex string"):
        load_secrets(copied, {})


def test_secrets_from_file_and_environment(tmp_path: Path) -> None:
    path = secrets_file(tmp_path, {"dsa-a": b"\x01" * 32, "dsa-b": b"\x02" * 32})
    got = load_secrets(path, {"SV_BROKER_SECRET_DSA_B": "03" * 32, "HOME": "/root"})
    assert got == {"dsa-a": b"\x01" * 32, "dsa-b": b"\x03" * 32}  # the environment wins


def test_short_or_malformed_secrets_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SecretsError, match="at least 32"):
        load_secrets(None, {"SV_BROKER_SECRET_DSA_A": "ab" * 16 + "ab"[:0]})
    with pytest.raises(SecretsError, match="hex"):
        load_secrets(None, {"SV_BROKER_SECRET_DSA_A": "not-hex"})
    with pytest.raises(SecretsError) as info:
        load_secrets(None, {"SV_BROKER_SECRET_DSA_A": "zz" * 40})
    assert "zz" not in str(info.value)  # a message never carries the secret
