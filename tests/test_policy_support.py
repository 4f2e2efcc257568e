"""Helpers for the policy tests (imported by the other ``test_policy_*`` modules), and the checks
that the helpers themselves build what the broker builds."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from adapters.signer import Signer
from broker.policy.decision import Decision
from broker.policy.engine import decide
from broker.policy.loader import load_policy
from broker.policy.model import PolicySet
from broker.registry import Registry
from broker.settings import REPO_POLICIES
from broker.stages.parse import parse
from broker.stages.types import Fresh, Received, Validated, Verified
from broker.stages.validate import content_sha256, validate
from broker.stages.verify import verify
from schemas.envelope import Envelope
from schemas.events import EVENT_MODELS, EventModel

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
"""A fixed clock inside every shipped agreement's window (tests never read the wall clock)."""

# Test-only pseudonymisation secrets, made up for these tests: one per shipped agreement (only the
# exclusions agreement pseudonymises, but a secret for each is what an operator would hold).
TEST_SECRETS: dict[str, bytes] = {
    "dsa-istv-ae-2026": bytes.fromhex("a1" * 32),
    "dsa-education-exclusions-2026": bytes.fromhex("b2" * 32),
    "dsa-nte-police-licensing-2026": bytes.fromhex("c3" * 32),
    "dsa-nte-csp-2026": bytes.fromhex("d4" * 32),
    "dsa-police-sv-csp-2026": bytes.fromhex("e5" * 32),
    "dsa-sv-board-figures-2026": bytes.fromhex("e6" * 32),
}

NOBODY = "derbyshire-fire-analysts"  # registered, named in no flow: must receive nothing


def validated_event(
    event: EventModel | dict[str, Any],
    source: str,
    *,
    event_type: str | None = None,
    message_id: str = "test-message-0001",
    version: int | None = None,
) -> Validated:
    """A ``Validated`` built directly (no signature): the engine only reads the envelope's
    source, id, type and version, and the event."""
    if isinstance(event, dict):
        assert event_type is not None
        model = EVENT_MODELS[(event_type, 1)]
        event = model.model_validate(event, strict=False)
    envelope = Envelope(
        id=message_id,
        source=source,
        type=type(event).EVENT_TYPE,
        version=version if version is not None else type(event).VERSION,
        time=NOW,
        keyid="test",
        signature="",
        data=event.model_dump(mode="json", exclude_none=True),
        signed_bytes=b"",
    )
    return Validated(Fresh(Verified(Received(envelope, "0" * 64, NOW), "test"), NOW), event, content_sha256(envelope))


def signed_validated(
    signers: dict[str, Signer], registry: Registry, source: str, event_type: str, data: dict[str, Any]
) -> Validated:
    """The real path: sign as the partner, then the broker's parse, verify and validate stages."""
    body = signers[source].sign_bytes(event_type, data, source_key=f"{source}-{sorted(data.items())!r}"[:60])
    now = datetime.now(UTC)
    return validate(Fresh(verify(parse(body, max_bytes=65536, now=now), registry), now))


def shipped_policy(registry: Registry) -> PolicySet:
    return load_policy(REPO_POLICIES, registry, TEST_SECRETS)


def records(decision: Decision[Any]) -> dict[str, dict[str, Any]]:
    """consumer -> released record."""
    out: dict[str, dict[str, Any]] = {}
    for release in decision.releases:
        assert release.consumer not in out, f"{release.consumer} got two records"
        out[release.consumer] = release.record
    return out


def policy_dir_copy(tmp: Path) -> Path:
    """A scratch policy folder: the real registry, no agreements, no lock."""
    folder = tmp / "policies"
    (folder / "agreements").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_POLICIES / "parties.toml", folder / "parties.toml")
    return folder


def secrets_file(tmp: Path, secrets: dict[str, bytes]) -> Path:
    path = tmp / "secrets.toml"
    lines = ["[pseudonym_secrets]", *(f'"{k}" = "{v.hex()}"' for k, v in secrets.items())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


# --- the helpers build what the broker builds ----------------------------------------------------


def test_signed_and_direct_paths_decide_alike(signers: dict[str, Signer], registry: Registry) -> None:
    policy = shipped_policy(registry)
    data = {
        "site_code": "RTG01",
        "reporting_period_start": "2026-10-01",
        "reporting_period_end": "2026-10-31",
        "arrival_datetime": "2026-10-17T23:40:00+01:00",
        "assault_method": "body_part",
        "assault_location_type": "street_public_place",
        "district": "E06000015",
    }
    signed = signed_validated(signers, registry, "uhdb-royal-derby-ed", "ae_assault", data)
    direct = validated_event(data, "uhdb-royal-derby-ed", event_type="ae_assault", message_id=signed.envelope.id)
    assert records(decide(signed, policy, NOW)) == records(decide(direct, policy, NOW))
    assert set(records(decide(signed, policy, NOW))) == {"derby-csp-analysts", "derbyshire-vru"}


def test_shipped_policies_load(registry: Registry) -> None:
    policy = shipped_policy(registry)
    assert sorted(policy.agreements) == sorted(TEST_SECRETS)
    assert NOBODY in registry.consumers
    assert NOBODY not in policy.consumers_in_flows
