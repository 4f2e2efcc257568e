"""``sv-broker adapter ...`` run as a partner would: help, samples, mappings, keys, push exit codes."""

from __future__ import annotations

import csv
import json
import re
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from adapters.sample_exports import KINDS
from broker.cli import build_parser
from schemas.keyfile import load_private_key, public_bytes
from schemas.signing import b64u_decode
from tests.test_cli_contract import command_paths

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "sv-broker"
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "broker.cli"]


def cli(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=120, check=False, env=env
    )


ADAPTER_PATHS = [p for p in command_paths(build_parser()) if p[0] == "adapter"]


def test_the_adapter_commands_exist() -> None:
    assert {
        ("adapter",),
        ("adapter", "push"),
        ("adapter", "withdraw"),
        ("adapter", "receipts"),
        ("adapter", "sample"),
        ("adapter", "mappings"),
        ("adapter", "keys"),
        ("adapter", "keys", "generate"),
        ("adapter", "keys", "entry"),
    } <= set(ADAPTER_PATHS)


def test_help_works_for_every_adapter_command() -> None:
    procs = {
        path: subprocess.Popen(
            [*COMMAND, *path, "--help"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for path in ADAPTER_PATHS
    }
    failures = []
    for path, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        if proc.returncode != 0 or "usage: sv-broker adapter" not in out or err:
            failures.append(f"{' '.join(path)}: exit {proc.returncode}, stderr {err[-300:]!r}")
    assert failures == []


def test_sample_writes_a_large_export_in_the_partners_columns(tmp_path: Path) -> None:
    out = tmp_path / "crimes.csv"
    result = cli("adapter", "sample", "police-crime", "--rows", "12000", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "12,000 synthetic rows" in result.stdout
    with out.open(newline="") as fh:
        reader = csv.reader(fh)
        assert next(reader) == list(KINDS["police-crime"].columns)
        assert sum(1 for _ in reader) == 12000


def test_mappings_lists_prints_and_checks(tmp_path: Path) -> None:
    listing = cli("adapter", "mappings")
    assert listing.returncode == 0
    for name in KINDS:
        assert name in listing.stdout
    printed = cli("adapter", "mappings", "ae-istv")
    assert printed.returncode == 0
    mine = tmp_path / "mine.toml"
    mine.write_text(printed.stdout)
    assert tomllib.loads(printed.stdout)["mapping"]["event_type"] == "ae_assault"
    assert cli("adapter", "mappings", "--check", mine).returncode == 0
    mine.write_text(printed.stdout.replace('patient_age = "Age at Arrival"', 'patient_age = "Date of Birth"'))
    checked = cli("adapter", "mappings", "--check", mine)
    assert checked.returncode == 1
    assert "looks like a direct identifier" in checked.stderr


def test_keys_generate_and_entry_print_the_registry_entry(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    generated = cli("adapter", "keys", "generate", "--partner", "derby-pubwatch", "--out", out, "--kid", "pubwatch-k7")
    assert generated.returncode == 0, generated.stderr
    entry = tomllib.loads(generated.stdout)["key"][0]
    key_path = out / "pubwatch-k7.key.pem"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert b64u_decode(entry["public_key"]) == public_bytes(load_private_key(key_path))
    again = cli("adapter", "keys", "entry", "--key", key_path, "--partner", "derby-pubwatch")
    assert again.returncode == 0, again.stderr
    second = tomllib.loads(again.stdout)["key"][0]
    assert (second["kid"], second["public_key"]) == ("pubwatch-k7", entry["public_key"])
    assert "PRIVATE" not in generated.stdout + again.stdout


@pytest.fixture(scope="module")
def police_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("k")
    result = cli("adapter", "keys", "generate", "--partner", "derbyshire-police", "--out", out, "--kid", "police-k1")
    assert result.returncode == 0
    return out / "police-k1.key.pem"


def test_push_dry_run_on_a_committed_sample_is_clean(tmp_path: Path) -> None:
    export = tmp_path / "police-crime.csv"
    export.write_bytes((REPO / "adapters" / "samples" / "police-crime.csv").read_bytes())
    result = cli("adapter", "push", export, "--mapping", "police-crime", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "rows read                    300" in result.stdout
    assert "(dry run: nothing is sent)" in result.stderr


def test_push_exit_codes_say_what_happened(tmp_path: Path, police_key: Path) -> None:
    export = tmp_path / "crimes.csv"
    rows = (REPO / "adapters" / "samples" / "police-crime.csv").read_text().splitlines()
    export.write_text("\n".join([rows[0], rows[1].replace(",Y,", ",maybe,"), *rows[2:10]]) + "\n")
    bad = cli("adapter", "push", export, "--mapping", "police-crime", "--dry-run")
    assert bad.returncode == 1
    assert "report:" in bad.stderr
    leaky = tmp_path / "leaky.csv"
    leaky.write_text(rows[0] + ",Suspect Name\n" + rows[1] + ",A Person\n")
    refused = cli("adapter", "push", leaky, "--mapping", "police-crime", "--dry-run")
    assert refused.returncode == 3
    assert "THE FILE WAS REFUSED" in refused.stdout
    unreachable = cli(
        "adapter", "push", export, "--mapping", "police-crime", "--key", police_key,
        "--amqp-url", "amqp://guest:secret@127.0.0.1:9/", "--state-dir", tmp_path / "state",
    )  # fmt: skip
    assert unreachable.returncode == 4
    assert "secret" not in unreachable.stdout + unreachable.stderr  # the password is never echoed
    usage = cli("adapter", "push", export, "--mapping", "police-crime")
    assert usage.returncode == 2
    assert "--amqp-url" in usage.stderr
    no_mapping = cli("adapter", "push", export, "--mapping", "no-such-mapping", "--dry-run")
    assert no_mapping.returncode == 2
    assert "built-in mappings" in no_mapping.stderr


def test_withdraw_checks_its_keys_against_a_state_file_written_before_revisions(tmp_path: Path) -> None:
    """A state file as the adapter wrote it before corrections (no revision on any line) is read
    as revision 1: a dry-run withdrawal of two of its keys would send revision 2 of each; a key it
    does not know is reported, not guessed at."""
    state = tmp_path / "derbyshire-police.police_sv_offence.state.jsonl"
    header = {"sv_adapter_state": 1, "partner": "derbyshire-police", "event_type": "police_sv_offence"}
    lines = [header] + [
        {
            "k": key,
            "id": f"derbyshire-police:{n:032x}",
            "c": f"{n:064x}",
            "s": "accepted",
            "f": "crimes.csv",
            "r": n + 1,
        }
        for n, key in enumerate(["21/1001/26", "21/1002/26", "21/1003/26"], 1)
    ]
    state.write_text("".join(json.dumps(line) + "\n" for line in lines))
    keys = tmp_path / "keys.txt"
    keys.write_text("21/1001/26\n\n21/1003/26\n21/9999/26\n")
    result = cli(
        "adapter", "withdraw", "--keys-file", keys, "--reason", "sent_in_error", "--mapping", "police-crime",
        "--state", state, "--dry-run", "--report", tmp_path / "withdraw.csv",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr  # one key refused
    assert re.search(r"as withdrawals +2 ", result.stdout), result.stdout
    assert re.search(r"rejected locally +1 ", result.stdout)
    with (tmp_path / "withdraw.csv").open(newline="") as fh:
        report = list(csv.DictReader(fh))
    assert [(r["record_key"], r["reason"]) for r in report] == [("21/9999/26", "unknown_record_key")]
    assert state.read_text().count("\n") == 4  # a dry run appends nothing
    missing = cli("adapter", "withdraw", "--reason", "sent_in_error", "--mapping", "police-crime", "--state", state)
    assert (missing.returncode, "give the record keys" in missing.stderr) == (2, True)
    no_state = cli(
        "adapter", "withdraw", "K", "--reason", "duplicate_record", "--mapping", "police-crime",
        "--state", tmp_path / "none.jsonl", "--dry-run",
    )  # fmt: skip
    assert (no_state.returncode, "no state file" in no_state.stderr) == (2, True)
    bad_reason = cli("adapter", "withdraw", "K", "--reason", "changed_my_mind", "--mapping", "police-crime")
    assert bad_reason.returncode == 2
    bad_share = cli("adapter", "push", state, "--mapping", "police-crime", "--dry-run", "--max-withdraw-share", "2")
    assert (bad_share.returncode, "a share from 0 to 1" in bad_share.stderr) == (2, True)


def test_message_id_prints_the_id_the_adapter_gives_a_record(tmp_path: Path) -> None:
    from schemas.envelope import message_id
    from schemas.keyfile import load_or_create_id_key

    key = load_or_create_id_key(tmp_path, "derby-pubwatch")
    result = cli("adapter", "message-id", "--partner", "derby-pubwatch", "--id-key",
                 tmp_path / "derby-pubwatch.idkey", "INC-1", "INC-2")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [message_id("derby-pubwatch", k, key) for k in ("INC-1", "INC-2")]
    (tmp_path / "derby-pubwatch.idkey").chmod(0o644)
    refused = cli("adapter", "message-id", "--partner", "derby-pubwatch", "--id-key",
                  tmp_path / "derby-pubwatch.idkey", "INC-1")  # fmt: skip
    assert refused.returncode != 0
    assert "chmod 600" in refused.stderr
