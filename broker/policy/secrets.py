"""Pseudonymisation secrets: one per agreement, from a secrets file or the environment, never
from the repository.

Secrets file (TOML, kept outside the repository, readable by the broker's account only)::

    [pseudonym_secrets]
    dsa-education-exclusions-2026 = "<64 or more hex characters>"

Environment: ``SV_BROKER_SECRET_<AGREEMENT_ID>`` with the id upper-cased and ``-`` as ``_``, e.g.
``SV_BROKER_SECRET_DSA_EDUCATION_EXCLUSIONS_2026``.  The environment wins over the file, so an
orchestrator's secret store can override a file without editing it.

The file's shape is :class:`SecretsDoc` (unknown tables refused); this module keeps what the
model cannot say: ids that are agreement ids, hex of at least 32 bytes, the file outside the
repository, and the environment's overrides.

Make a secret with ``python -c "import secrets; print(secrets.token_hex(32))"``.

Why a secret per agreement: records then link within one agreement but pseudonyms cannot be
joined across two (ICO Data Sharing Code: each arrangement shares only what it names).  Why not in
the repository: anyone holding the secret can test a guessed URN or licence ref against a
pseudonym, so the secret is as sensitive as the identifiers it protects.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path

from pydantic import Field, ValidationError

from broker.errors import SecretsError
from schemas.documents import DocumentModel, ErrorDetails, key_path

ENV_PREFIX = "SV_BROKER_SECRET_"
MIN_SECRET_BYTES = 32
_HEX_RE = re.compile(r"^[0-9a-fA-F]+$")
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9\-]{1,62}$")
_REPO_POLICIES = Path(__file__).resolve().parents[2] / "policies"


def env_name(agreement_id: str) -> str:
    return ENV_PREFIX + agreement_id.upper().replace("-", "_")


def _decode(value: object, where: str) -> bytes:
    # Refuses anything but a long hex string, which is also what makes the placeholders in
    # policies/secrets.example.toml unusable: a copied example never becomes a live key.
    if not isinstance(value, str) or not _HEX_RE.fullmatch(value) or len(value) % 2:
        raise SecretsError(f"{where}: the secret must be a hex string (e.g. from secrets.token_hex(32))")
    raw = bytes.fromhex(value)
    if len(raw) < MIN_SECRET_BYTES:
        raise SecretsError(f"{where}: the secret is {len(raw)} bytes; at least {MIN_SECRET_BYTES} are required")
    return raw


class SecretsDoc(DocumentModel):
    """The secrets file's shape: one ``[pseudonym_secrets]`` table of id = "hex", nothing else
    (a misspelt table name would otherwise load no secret, and the agreement would not start
    for a reason nobody can see in the file)."""

    pseudonym_secrets: dict[str, str] = Field(default_factory=dict)


def _read(path: Path) -> SecretsDoc:
    """Read and shape-check the secrets file; TOML and pydantic errors become :class:`SecretsError`
    (never with the value: pydantic's error carries the input, and the input is a secret)."""
    try:
        with path.open("rb") as fh:
            # Threat: a pseudonymisation secret readable by another local user lets them re-derive
            # every pseudonym of the agreement (and link it back to the source values). Checked on
            # the open file, so a swap between the check and the read changes nothing.
            mode = os.fstat(fh.fileno()).st_mode & 0o077
            if mode:
                raise SecretsError(
                    f"{path}: readable by group or others (mode {oct(mode)}); a secrets file must be "
                    f"private to the broker's user: chmod 600 {path}"
                )
            doc = tomllib.load(fh)
    except OSError as exc:
        raise SecretsError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SecretsError(f"{path}: not valid TOML: {exc}") from None
    try:
        return SecretsDoc.model_validate(doc)
    except ValidationError as exc:
        raise SecretsError(_message(path, exc.errors(include_url=False)[0])) from None


def _message(path: Path, error: ErrorDetails) -> str:
    loc = tuple(error["loc"])
    if error["type"] == "extra_forbidden":
        return f"{path}: unknown table(s) [{loc[0]!r}]; expected [pseudonym_secrets]"
    if len(loc) >= 2:
        where = f"{path}: {key_path(loc[:2])}"
        return f"{where}: the secret must be a hex string (e.g. from secrets.token_hex(32))"
    return f'{path}: pseudonym_secrets must be a table of agreement-id = "hex"'


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder)
    except ValueError:
        return False
    return True


def load_secrets(path: Path | None, environ: Mapping[str, str]) -> dict[str, bytes]:
    """Agreement id -> secret bytes, from ``path`` (if given) and then ``environ``."""
    secrets: dict[str, bytes] = {}
    if path is not None:
        if _inside(path, _REPO_POLICIES):
            # The policies folder is committed; a secret there is a secret in git history.
            raise SecretsError(f"{path}: a secrets file must not live in the repository's policies folder")
        for agreement_id, value in _read(path).pseudonym_secrets.items():
            if not _ID_RE.fullmatch(agreement_id):
                raise SecretsError(f"{path}: {agreement_id!r} is not an agreement id")
            secrets[agreement_id] = _decode(value, f"{path}: pseudonym_secrets.{agreement_id}")
    for name, value in environ.items():
        if name.startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX):
            agreement_id = name[len(ENV_PREFIX) :].lower().replace("_", "-")
            if not _ID_RE.fullmatch(agreement_id):
                raise SecretsError(f"environment {name}: does not name an agreement id")
            secrets[agreement_id] = _decode(value, f"environment {name}")
    return secrets
