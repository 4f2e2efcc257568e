"""``policy check``: every agreement file against the schemas, the registry, the secrets and the
revision lock, plus warnings for agreements near (or past) their end or review date.

Errors are what ``load_policy`` refuses (the broker would not start); warnings are states the
engine handles by failing closed but an IG lead should act on before they bite (ICO Data Sharing
Code: regular review; an agreement that lapses silently stops the partnership's data flowing).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from broker.policy.loader import (
    LOCK_FILE,
    Problem,
    compile_policy,
    read_documents,
    read_lock,
    render_lock,
)
from broker.policy.model import Agreement, PolicySet
from broker.registry import Registry
from schemas.errors import CheckCode as C

WARN_DAYS = 30


@dataclass(frozen=True, slots=True)
class CheckReport:
    files: int
    problems: tuple[Problem, ...]
    policy: PolicySet
    lock: Mapping[str, int] | None

    @property
    def errors(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity == "error")

    @property
    def warnings(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity == "warning")


def _dates(policy: PolicySet, today: date, warn_days: int) -> list[Problem]:
    out: list[Problem] = []
    for ag in sorted(policy.agreements.values(), key=lambda a: a.id):

        def warn(key: str, code: C, message: str, path: str = ag.path) -> None:
            out.append(Problem("warning", path, key, code, message))

        if ag.valid_from > today:
            warn("valid_from", C.NOT_YET_VALID, f"{ag.id} is not valid until {ag.valid_from}; it releases nothing yet")
        if ag.valid_to < today:
            warn("valid_to", C.EXPIRED, f"{ag.id} expired on {ag.valid_to}; it releases nothing")
        elif (ag.valid_to - today).days <= warn_days:
            warn(
                "valid_to",
                C.EXPIRES_SOON,
                f"{ag.id} expires on {ag.valid_to} ({(ag.valid_to - today).days} days); renew it or let it lapse "
                "on purpose",
            )
        if ag.review_by < today:
            warn(
                "review_by",
                C.REVIEW_OVERDUE,
                f"{ag.id} was due for review by {ag.review_by}; it releases nothing until reviewed",
            )
        elif (ag.review_by - today).days <= warn_days:
            warn(
                "review_by",
                C.REVIEW_DUE_SOON,
                f"{ag.id} is due for review by {ag.review_by} ({(ag.review_by - today).days} days); after that it "
                "releases nothing",
            )
    return out


def _lock_warnings(policy: PolicySet, lock: Mapping[str, int] | None, policy_dir: Path) -> list[Problem]:
    path = str(policy_dir / LOCK_FILE)
    if lock is None:
        return [
            Problem(
                "warning",
                path,
                "",
                C.REVISION_NOT_LOCKED,
                "no revision lock: revisions cannot be checked for roll-back; run `policy check --update-lock`",
            )
        ]
    return [
        Problem(
            "warning",
            ag.path,
            "revision",
            C.REVISION_NOT_LOCKED,
            f"revision {ag.revision} of {ag.id} is not yet in {LOCK_FILE} (at {lock.get(ag.id, 'none')}); "
            "run `policy check --update-lock` and commit the lock with the agreement",
        )
        for ag in sorted(policy.agreements.values(), key=lambda a: a.id)
        if lock.get(ag.id, 0) < ag.revision
    ]


def check_policy(
    policy_dir: Path,
    registry: Registry,
    secrets: Mapping[str, bytes],
    today: date,
    warn_days: int = WARN_DAYS,
) -> CheckReport:
    documents, read_problems = read_documents(policy_dir)
    lock, lock_problems = read_lock(policy_dir)
    policy, problems = compile_policy(documents, registry, secrets, lock)
    everything = [*read_problems, *lock_problems, *problems, *_dates(policy, today, warn_days)]
    if not any(p.severity == "error" for p in everything):
        everything += _lock_warnings(policy, lock, policy_dir)
    return CheckReport(len(documents) + len(read_problems), tuple(everything), policy, lock)


def write_lock(policy_dir: Path, report: CheckReport) -> Path:
    """Record each agreement's revision as the highest accepted (never lowering an entry, and
    keeping entries of retired agreements so they cannot return at a lower revision)."""
    if report.errors:
        raise ValueError("refusing to update the revision lock while the agreements have errors")
    revisions = dict(report.lock or {})
    for ag in report.policy.agreements.values():
        revisions[ag.id] = max(revisions.get(ag.id, 0), ag.revision)
    path = policy_dir / LOCK_FILE
    path.write_text(render_lock(revisions), encoding="utf-8")
    return path


def holds(policy: PolicySet) -> dict[str, dict[str, object]]:
    """What each agreement's ``[hold]`` keeps, for ``policy check`` to show (an agreement without
    one holds nothing: an IG lead should see which agreements keep events they refused)."""
    out: dict[str, dict[str, object]] = {}
    for ag in sorted(policy.agreements.values(), key=lambda a: a.id):
        if ag.hold is not None:
            entry: dict[str, object] = {"reasons": sorted(r.value for r in ag.hold.reasons), "days": ag.hold.days}
            if ag.hold.expired_grace_days:
                entry["expired_grace_days"] = ag.hold.expired_grace_days
            out[ag.id] = entry
    return out


def hold_line(ag: Agreement) -> str | None:
    """One agreement's ``[hold]`` in words (None: it holds nothing), as ``policy check`` prints it
    and the DPIA register (``broker/dpia``) records it."""
    if ag.hold is None:
        return None
    reasons = ", ".join(sorted(r.value for r in ag.hold.reasons))
    grace = f" (expired: within {ag.hold.expired_grace_days} days of valid_to)" if ag.hold.expired_grace_days else ""
    return (
        f"hold: {ag.id} keeps events it refuses as {reasons} for {ag.hold.days} days{grace}, sealed, to "
        "release them once a new revision is in force"
    )


def hold_lines(policy: PolicySet) -> list[str]:
    lines = (hold_line(ag) for ag in sorted(policy.agreements.values(), key=lambda a: a.id))
    return [line for line in lines if line is not None]
