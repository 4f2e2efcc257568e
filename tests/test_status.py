"""The alerts where people and machines see them: ``GET /v1/agreements``, ``/metrics`` and
``sv-broker status`` (text and ``--json``), on a store filled by real pipeline runs.

A started broker runs with the real clock, so the agreement that is about to end here has its
dates set relative to today (never fixed dates); the fixed-date boundaries are in
``tests/test_alerts.py``, on the pure function."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from adapters.synthetic import SyntheticGenerator
from broker.demo import DemoEnvironment
from broker.policy.model import LONDON
from broker.service import Broker
from broker.settings import Settings
from tests.test_http_access import get, token
from tests.test_metrics import scrape, total

JSON = {"Content-Type": "application/json"}
ENDING = "dsa-alert-test"
GOOD, REFUSED = 5, 12


def ending_agreement(today: str, start: str) -> str:
    return f"""\
id = "{ENDING}"
title = "An agreement about to end (alert test)"
revision = 1
parties = ["derby-pubwatch", "derbyshire-vru"]
purpose = "Testing the alerts."
lawful_basis = ["UK GDPR Art 6(1)(e)"]
valid_from = {start}
valid_to = {today}
review_by = {today}
retention_days = 30

[[flows]]
id = "nte-to-vru"
partners = ["derby-pubwatch"]
event_type = "nte_incident"
versions = [1]
consumers = ["derbyshire-vru"]
cadence_days = 3
rules = [{{ id = "category", field = "category", action = "keep" }}]
"""


@pytest.fixture
async def filled(env: DemoEnvironment, tmp_path: Path) -> AsyncIterator[Broker]:
    """A broker whose agreements include one ending in 10 days, after real traffic: a few good
    pubwatch events and a run of police events signed with a revoked key (all refused)."""
    policy_dir = tmp_path / "policies"
    shutil.copytree(env.policy_dir, policy_dir)
    today = datetime.now(LONDON).date()
    text = ending_agreement((today + timedelta(days=10)).isoformat(), (today - timedelta(days=100)).isoformat())
    (policy_dir / "agreements" / f"{ENDING}.toml").write_text(text, encoding="utf-8")
    settings = Settings(
        policy_dir=policy_dir,
        keys_dir=env.keys_dir,
        secrets_file=env.secrets_file,
        data_dir=tmp_path / "data",
        http_port=0,
    )
    broker = Broker(settings)
    await broker.start()
    try:
        gen = SyntheticGenerator(seed=5)
        async with aiohttp.ClientSession() as session:
            for _ in range(GOOD):
                rec = gen.nte_incident("derby-pubwatch")
                body = env.signers["derby-pubwatch"].sign_bytes("nte_incident", rec.data(), source_key=rec.source_key)
                async with session.post(broker.url + "/v1/events", data=body, headers=JSON) as resp:
                    assert resp.status == 202, await resp.text()
            for _ in range(REFUSED):
                rec = gen.police_sv_offence()
                body = env.revoked.sign_bytes("police_sv_offence", rec.data(), source_key=rec.source_key)
                async with session.post(broker.url + "/v1/events", data=body, headers=JSON) as resp:
                    assert resp.status == 401, await resp.text()
        yield broker
    finally:
        await broker.stop()


def keyed(alerts: list[dict[str, object]]) -> set[tuple[object, object, object]]:
    return {(a["code"], a["severity"], a["subject"]) for a in alerts}


EXPECTED = {
    ("agreement_expiring", "warning", ENDING),
    ("agreement_review_due", "warning", ENDING),
    ("rejections_rising", "critical", "derbyshire-police"),  # 12 of 12, none before
    ("rejections_rising", "critical", "*"),  # 12 of 17
}


async def test_agreements_carry_the_alerts_each_caller_may_see(filled: Broker) -> None:
    status, body, _ = await get(filled, "/v1/agreements", token(filled, "ig"))
    assert status == 200
    assert keyed(body["alerts"]) == EXPECTED
    assert body["alerts"][0]["severity"] == "critical"  # most severe first
    (ending,) = [a for a in body["alerts"] if a["code"] == "agreement_expiring"]
    assert f"{ENDING} r1 ends at the end of" in ending["message"]
    assert ending["due"].endswith("Z")
    # An analyst sees the date alerts of its own agreements only; no partner's rates.
    _, vru, _ = await get(filled, "/v1/agreements", token(filled, "analyst", consumer="derbyshire-vru"))
    assert keyed(vru["alerts"]) == {a for a in EXPECTED if a[2] == ENDING}
    _, other, _ = await get(filled, "/v1/agreements", token(filled, "analyst", consumer="derby-csp-analysts"))
    assert other["alerts"] == []


async def test_metrics_carry_alert_counts_and_partners_last_seen(filled: Broker) -> None:
    await filled.refresh_alerts()  # the job's round, now
    text, samples = await scrape(filled)
    assert "# TYPE sv_broker_alerts gauge" in text
    assert total(samples, "sv_broker_alerts", code="rejections_rising", severity="critical") == 2
    assert total(samples, "sv_broker_alerts", code="agreement_expiring", severity="warning") == 1
    assert total(samples, "sv_broker_alerts", code="partner_silent") == 0
    seen = samples["sv_broker_partner_last_seen_timestamp_seconds"]
    assert set(seen) == {(("partner", "derby-pubwatch"),)}  # the police messages were never authenticated
    assert abs(seen[(("partner", "derby-pubwatch"),)] - datetime.now(LONDON).timestamp()) < 600
    cadences = samples["sv_broker_partner_cadence_seconds"]
    assert cadences[(("partner", "derby-pubwatch"),)] == 3 * 86400  # the tightest flow in force
    assert cadences[(("partner", "derby-city-education"),)] == 140 * 86400
    assert total(samples, "sv_broker_alerts_refreshed_timestamp_seconds") > 0


def status_cli(broker: Broker, *extra: str) -> subprocess.CompletedProcess[str]:
    settings = broker.settings
    args = ["status", "--data-dir", str(settings.data_dir), "--policy-dir", str(settings.policy_dir)]
    args += ["--keys-dir", str(settings.keys_dir), *extra]
    return subprocess.run([sys.executable, "-m", "broker.cli", *args], capture_output=True, text=True, check=False)


async def test_status_for_a_person_and_for_a_machine(filled: Broker) -> None:
    # In a thread: the broker under test answers /readyz on this loop meanwhile.
    text = await asyncio.to_thread(status_cli, filled, "--url", filled.url)
    assert text.returncode == 1, text.stderr  # a critical alert
    out = text.stdout
    assert "running broker: ready" in out
    assert f"received {GOOD + REFUSED}" in out
    assert "rejected 12" in out
    assert f"{ENDING:<32} r1   in_force" in out
    (pubwatch,) = [line for line in out.splitlines() if line.startswith("  derby-pubwatch ") and "last seen" in line]
    assert pubwatch.endswith("every 3 days (dsa-alert-test/nte-to-vru)")  # seen just now: not overdue
    assert "derbyshire-police            last seen never" in out
    assert "CRITICAL (2)\n    rejections_rising  *: all sources: 12 of 17 messages rejected" in out
    assert "WARNING (2)" in out
    doc = json.loads((await asyncio.to_thread(status_cli, filled, "--json")).stdout)
    assert keyed(doc["alerts"]) == EXPECTED
    assert doc["store"]["audit_by_kind"]["received"] == GOOD + REFUSED
    partners = {p["id"]: p for p in doc["partners"]}
    assert partners["derby-pubwatch"]["last_seen"] is not None
    assert partners["derby-pubwatch"]["overdue"] is False
    assert partners["derbyshire-police"]["last_seen"] is None
    rates = {r["subject"]: r for r in doc["rates"]}
    assert rates["derbyshire-police"]["recent"]["rejected_share"] == 1.0
    assert rates["derby-pubwatch"]["recent"] == {
        "received": GOOD,
        "accepted": GOOD,
        "rejected": 0,
        "withheld": rates["derby-pubwatch"]["recent"]["withheld"],
        "duplicate": 0,
        "rejected_share": 0.0,
        "withheld_share": rates["derby-pubwatch"]["recent"]["withheld_share"],
    }
    agreements = {a["id"]: a for a in doc["agreements"]}
    assert agreements[ENDING]["state"] == "in_force"
    assert 9 <= agreements[ENDING]["days_to_end"] <= 11


def test_status_without_a_store_says_so(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "broker.cli", "status", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 2
    assert "no audit store" in run.stderr
