"""Sample agreements on any date: the demo and the tests must not stop working on a fixed day.

The attack (issue 11, "a time bomb"): four of the five sample agreements are due for review on
2027-03-31; after that, a demo or test run on the shipped policies with the real clock releases
nothing. These tests run the renewal on dates years apart, and the demo itself with the
process's clock moved years ahead (libfaketime).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.policy.loader import load_policy
from broker.policy.model import LONDON
from broker.policy.renewal import MARGIN_DAYS, renewal_shift, renewed_copy
from broker.registry import load_registry
from broker.settings import REPO_POLICIES
from tests.test_policy_support import TEST_SECRETS

SHIPPED = sorted((REPO_POLICIES / "agreements").glob("*.toml"))


def test_every_shipped_agreement_is_a_sample_the_renewal_understands() -> None:
    # A new sample with dates the renewal cannot find would bring the time bomb back.
    copy_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"renewal-{os.getpid()}"
    try:
        renewals = renewed_copy(REPO_POLICIES, copy_dir, date(2099, 1, 1))
        assert sorted(r.file for r in renewals) == sorted(p.name for p in SHIPPED)
    finally:
        shutil.rmtree(copy_dir, ignore_errors=True)


@settings(max_examples=25, deadline=None)
@given(today=st.dates(min_value=date(2001, 1, 1), max_value=date(2900, 12, 31)))
def test_on_any_date_every_sample_agreement_is_in_force_in_the_copy(today: date) -> None:
    dest = Path(os.environ.get("TMPDIR", "/tmp")) / f"renewal-{os.getpid()}-{today}"
    try:
        renewals = renewed_copy(REPO_POLICIES, dest, today)
        registry = load_registry(dest, dest / "keys")
        policy = load_policy(dest, registry, TEST_SECRETS)  # the loader's every check still holds
        noon = datetime.combine(today, time(12), tzinfo=LONDON)
        for agreement in policy.agreements.values():
            assert agreement.state(noon) is None, (agreement.id, today)
            assert agreement.review_by - today > timedelta(days=MARGIN_DAYS) or agreement.valid_to - today > timedelta(
                days=MARGIN_DAYS
            )
        for renewal in renewals:  # lengths kept: only the position in time moves
            (f0, t0, r0), (f1, t1, r1) = renewal.was, renewal.now
            assert (t1 - f1, r1 - f1) == (t0 - f0, r0 - f0)
            assert "renewed for this run" in renewal.describe()
        renewed = {r.file for r in renewals}
        for path in SHIPPED:  # what was not renewed is byte for byte the shipped file
            if path.name not in renewed:
                assert (dest / "agreements" / path.name).read_bytes() == path.read_bytes()
            else:
                assert (dest / "agreements" / path.name).read_text().startswith("# Renewed for a run on")
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def test_an_agreement_comfortably_in_force_is_left_alone() -> None:
    assert renewal_shift(date(2026, 4, 1), date(2028, 3, 31), date(2027, 3, 31), date(2026, 12, 2)) == 0
    # inside the margin before review: renewed, so a run does not cross the review date midway
    assert renewal_shift(date(2026, 4, 1), date(2028, 3, 31), date(2027, 3, 31), date(2027, 3, 1)) != 0
    # not yet started: renewed too
    assert renewal_shift(date(2026, 4, 1), date(2028, 3, 31), date(2027, 3, 31), date(2025, 1, 1)) != 0


def test_the_demo_works_years_from_now() -> None:
    faketime = shutil.which("faketime")
    if faketime is None:
        message = "libfaketime's `faketime` is not installed (apt-get install faketime; .ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    future = datetime.now(UTC) + timedelta(days=365 * 7 + 100)
    env = os.environ | {"FAKETIME_DONT_FAKE_MONOTONIC": "1", "FAKETIME_DONT_RESET": "1"}
    result = subprocess.run(
        [faketime, "-f", f"@{future:%Y-%m-%d %H:%M:%S}", sys.executable, "-m", "broker.cli", "demo", "--events", "60"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "renewed for this run" in out  # said, not hidden
    assert "accepted 60" in out
    released = int(out.split("records released ")[1].split()[0])
    assert released > 0  # the time bomb: on the shipped dates this would be 0
    assert "review_overdue" not in out
    assert "hash chain verified" in out
