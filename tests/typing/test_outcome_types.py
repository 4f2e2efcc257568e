"""What mypy --strict refuses: a message that was not verified, fresh, validated, admitted and
decided cannot be released, and a refused one cannot reach a consumer.

Checked by mypy in CI (``[tool.mypy] files`` lists this folder). Each refused line carries a
``type: ignore[<code>]``; with ``warn_unused_ignores`` (part of ``--strict``) mypy fails the run if
any of those lines ever type-checks, so each line below is an assertion that the mistake is a type
error. The test functions also run under pytest, which checks the well-typed path really works.
"""

from __future__ import annotations

from datetime import UTC, datetime

from broker.policy.decision import Decision
from broker.ports.delivery import Deliverable
from broker.stages.outcome import Accepted, Duplicate, Failed, Rejected
from broker.stages.records import accept
from broker.stages.types import Admitted, Fresh, Inbound, Received, Validated, Verified
from broker.stages.validate import validate
from schemas.errors import Reason

NOW = datetime(2026, 12, 2, tzinfo=UTC)


def refused_by_mypy(
    received: Received,
    verified: Verified,
    validated: Validated,
    admitted: Admitted,
    rejected: Rejected,
    duplicate: Duplicate,
    failed: Failed,
    decision_on_validated: Decision[Validated],
) -> None:
    """Never called: mypy reads it. Every line is a mistake the type checker must refuse."""
    inbound = Inbound(b"{}")
    # A refused, duplicate or failed outcome cannot be released to consumers.
    Deliverable(NOW, accepted=[rejected])  # type: ignore[list-item]
    Deliverable(NOW, accepted=[duplicate])  # type: ignore[list-item]
    Deliverable(NOW, accepted=[failed])  # type: ignore[list-item]
    # Nor quarantined as if refused when it was accepted, nor receipted when it failed.
    Deliverable(NOW, rejected=[duplicate])  # type: ignore[list-item]
    Deliverable(NOW, receipts=[failed])  # type: ignore[list-item]
    # A message that skipped a stage cannot be decided into a release.
    accept(inbound, decision_on_validated)  # type: ignore[arg-type]
    Accepted(inbound, decision_on_validated, ())  # type: ignore[arg-type]
    # An unverified message cannot be validated, and a verified one must pass freshness first.
    validate(received)  # type: ignore[arg-type]
    validate(verified)  # type: ignore[arg-type]
    # The replay guard admits only validated messages.
    Admitted(verified)  # type: ignore[arg-type]
    Admitted(received)  # type: ignore[arg-type]
    del validated, admitted


def test_the_typed_path_builds_a_deliverable() -> None:
    """The well-typed path, for real: an admitted decision becomes an Accepted the delivery takes."""
    from adapters.synthetic import SyntheticGenerator
    from broker.policy.engine import decide
    from broker.registry import load_registry
    from broker.settings import REPO_POLICIES
    from tests.test_policy_support import NOW as IN_FORCE
    from tests.test_policy_support import shipped_policy, validated_event

    policy = shipped_policy(load_registry(REPO_POLICIES))
    gen = SyntheticGenerator(seed=9)
    for _ in range(200):
        record = gen.ae_assault("uhdb-royal-derby-ed")
        admitted = Admitted(validated_event(record.event, record.partner))
        decision = decide(admitted, policy, IN_FORCE)
        if decision.releases:
            break
    assert decision.releases, "no synthetic event released anything under the shipped agreements"
    accepted = accept(Inbound(b"{}"), decision)
    batch = Deliverable(NOW, accepted=[accepted], receipts=[accepted])
    assert batch.accepted[0].decision.subject is admitted
    assert [r.release.record_id for r in accepted.records] == [r.record_id for r in decision.releases]
    assert isinstance(admitted.validated.fresh, Fresh)
    assert not Rejected(Inbound(b"x"), "0" * 64, Reason.DIRECT_IDENTIFIER, "nhs", verified=False).body_kept
