"""The ``sv-broker`` console script, run as a user would: help, keys, verify, schemas."""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from adapters.signer import Signer
from adapters.synthetic import SyntheticGenerator
from broker.cli import build_parser
from broker.registry import load_registry
from broker.settings import REPO_POLICIES
from schemas.envelope import encode
from schemas.keyfile import load_private_key, public_bytes

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "sv-broker"
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "broker.cli"]


def cli(*args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every (sub-)command path in the argparse tree, e.g. ("keys",), ("keys", "generate")."""
    paths = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.append((*prefix, name))
                paths.extend(command_paths(sub, (*prefix, name)))
    return paths


PATHS = command_paths(build_parser())


def test_the_parser_tree_has_the_contract_commands() -> None:
    assert {("keys",), ("keys", "generate"), ("schemas",), ("schemas", "export"), ("verify",)} <= set(PATHS)


def test_help_works_for_every_command() -> None:
    # All at once (each is a fresh interpreter), then checked one by one.
    procs = {
        path: subprocess.Popen(
            [*COMMAND, *path, "--help"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for path in [(), *PATHS]
    }
    failures = []
    for path, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        if proc.returncode != 0 or "usage: sv-broker" not in out or err:
            failures.append(f"{' '.join(path) or '(top)'}: exit {proc.returncode}, stderr {err[-300:]!r}")
    assert failures == []


def test_no_command_is_a_usage_error() -> None:
    result = cli()
    assert result.returncode == 2
    assert "usage:" in result.stderr


# --- keys generate --------------------------------------------------------------------------------


def test_keys_generate(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = cli("keys", "generate", "--partner", "derby-pubwatch", "--out", out, "--kid", "pubwatch-test-k1")
    assert result.returncode == 0, result.stderr
    key_path = out / "pubwatch-test-k1.key.pem"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert "PRIVATE KEY" not in result.stdout  # the private key is never printed
    assert result.stdout.startswith("[[key]]\n")
    assert 'kid = "pubwatch-test-k1"' in result.stdout
    assert (out / "pubwatch-test-k1.pub.toml").read_text() == result.stdout

    # The printed entry is what the operators paste into a key file: the registry accepts it.
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    (keys_dir / "pubwatch.toml").write_text(result.stdout)
    registry = load_registry(REPO_POLICIES, keys_dir)
    key = registry.key("pubwatch-test-k1")
    assert key is not None
    assert key.partner == "derby-pubwatch"
    assert key.public_key == public_bytes(load_private_key(key_path))
    assert key.valid_until is not None
    assert key.valid_from < datetime.now(UTC) < key.valid_until


def test_keys_generate_refuses_to_overwrite(tmp_path: Path) -> None:
    args = ("keys", "generate", "--partner", "derby-pubwatch", "--out", tmp_path, "--kid", "k1")
    assert cli(*args).returncode == 0
    before = (tmp_path / "k1.key.pem").read_bytes()
    again = cli(*args)
    assert again.returncode == 2
    assert "refusing to overwrite" in again.stderr
    assert again.stdout == ""
    assert (tmp_path / "k1.key.pem").read_bytes() == before


@pytest.mark.parametrize(
    "args",
    [("--partner", "Derby Pubwatch"), ("--partner", "derby-pubwatch", "--kid", "bad kid")],
    ids=["bad-partner", "bad-kid"],
)
def test_keys_generate_refuses_bad_ids(tmp_path: Path, args: tuple[str, ...]) -> None:
    result = cli("keys", "generate", "--out", tmp_path, *args)
    assert result.returncode == 2
    assert "error:" in result.stderr
    assert list(tmp_path.iterdir()) == []


# --- verify ---------------------------------------------------------------------------------------


@pytest.fixture
def envelope_file(signers: dict[str, Signer], tmp_path: Path) -> Path:
    record = SyntheticGenerator(seed=12).ae_assault()
    path = tmp_path / "message.json"
    path.write_bytes(signers[record.partner].sign_bytes("ae_assault", record.data(), source_key=record.source_key))
    return path


def test_verify_accepts_a_good_envelope(envelope_file: Path, keys_dir: Path) -> None:
    result = cli("verify", envelope_file, "--keys-dir", keys_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "accepted" in result.stdout
    assert "uhdb-royal-derby-ed-k1" in result.stdout


def test_verify_json_output(envelope_file: Path, keys_dir: Path) -> None:
    result = cli("verify", envelope_file, "--keys-dir", keys_dir, "--json", "--enforce-freshness")
    assert result.returncode == 0, result.stdout + result.stderr
    verdict = json.loads(result.stdout)
    assert verdict["verdict"] == "accepted"
    assert verdict["freshness"] == "ok"
    assert verdict["source"] == "uhdb-royal-derby-ed"


def test_verify_rejects_a_tampered_envelope(envelope_file: Path, keys_dir: Path) -> None:
    doc = json.loads(envelope_file.read_bytes())
    doc["data"]["assault_location_type"] = "home" if doc["data"]["assault_location_type"] != "home" else "workplace"
    envelope_file.write_bytes(encode(doc))
    result = cli("verify", envelope_file, "--keys-dir", keys_dir, "--json")
    assert result.returncode == 1
    verdict = json.loads(result.stdout)
    assert verdict["verdict"] == "rejected"
    assert verdict["reason"] == "bad_signature"
    assert verdict["stage"] == "verify"
    assert "bad_signature" in cli("verify", envelope_file, "--keys-dir", keys_dir).stdout


def test_verify_rejects_malformed_json(tmp_path: Path, keys_dir: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(b'{"id": 1, "id": 2}')
    result = cli("verify", path, "--keys-dir", keys_dir)
    assert result.returncode == 1
    assert "duplicate_key" in result.stdout


def test_verify_with_the_wrong_keys_is_unknown_key(envelope_file: Path, tmp_path: Path) -> None:
    empty = tmp_path / "no-keys"
    empty.mkdir()
    result = cli("verify", envelope_file, "--keys-dir", empty)
    assert result.returncode == 1
    assert "unknown_key" in result.stdout


def test_verify_missing_file(tmp_path: Path, keys_dir: Path) -> None:
    result = cli("verify", tmp_path / "nope.json", "--keys-dir", keys_dir)
    assert result.returncode == 2
    assert "cannot read" in result.stderr


def test_verify_bad_registry_is_a_configuration_error(envelope_file: Path, tmp_path: Path) -> None:
    keys = tmp_path / "bad-keys"
    keys.mkdir()
    (keys / "a.toml").write_text("[[key]\n")
    result = cli("verify", envelope_file, "--keys-dir", keys)
    assert result.returncode == 2
    assert "not valid TOML" in result.stderr


# --- schemas export -------------------------------------------------------------------------------


def test_schemas_export_check_passes_on_the_repo() -> None:
    result = cli("schemas", "export", "--check")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_schemas_export_check_finds_stale_files(tmp_path: Path) -> None:
    assert cli("schemas", "export", "--out", tmp_path).returncode == 0
    assert cli("schemas", "export", "--check", "--out", tmp_path).returncode == 0
    stale = tmp_path / "ae_assault.v1.json"
    stale.write_text(stale.read_text().replace('"additionalProperties": false', '"additionalProperties": true'))
    result = cli("schemas", "export", "--check", "--out", tmp_path)
    assert result.returncode == 1
    assert "ae_assault.v1.json" in result.stderr
    os.remove(tmp_path / "nte_incident.v1.json")
    assert "nte_incident.v1.json" in cli("schemas", "export", "--check", "--out", tmp_path).stderr
