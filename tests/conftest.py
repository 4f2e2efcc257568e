"""Shared fixtures: a registry with keys generated at run time for every partner."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.signer import Signer, generate_keyring
from broker.registry import Registry, load_registry
from broker.settings import REPO_POLICIES

SHARED = Path(__file__).resolve().parents[2] / "shared"
TESTVECTORS = SHARED / "testvectors"
PARTNERS = (
    "uhdb-royal-derby-ed",
    "crh-chesterfield-ed",
    "derby-city-education",
    "derbyshire-cc-education",
    "derby-pubwatch",
    "chesterfield-pubwatch",
    "derbyshire-police",
)


@pytest.fixture(scope="session")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys")


@pytest.fixture(scope="session")
def signers(keys_dir: Path) -> dict[str, Signer]:
    return generate_keyring(PARTNERS, keys_dir)


@pytest.fixture(scope="session")
def registry(signers: dict[str, Signer], keys_dir: Path) -> Registry:
    return load_registry(REPO_POLICIES, keys_dir)
