"""Issue 12 item 2: a partner is told, per message, why nothing was released (like MESH's
non-delivery reports): an accepted message with no record carries ``withheld``, one entry per
agreement and reason, over HTTP, over RabbitMQ, and in the adapter's receipts report."""

from __future__ import annotations

import io
import json
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from adapters.receipts import ReceiptRow, to_rows, write_rows
from adapters.synthetic import SyntheticGenerator
from broker.demo import DemoEnvironment
from broker.service import Broker
from broker.settings import Settings
from tests import test_broker_amqp
from tests.test_broker_amqp import Starter

start_broker = test_broker_amqp.start_broker


def overdue_copy(env: DemoEnvironment, tmp_path: Path, agreement: str) -> Path:
    """The demo's policies with ``agreement`` past its review date (review_by = valid_from)."""
    folder = tmp_path / "policies"
    shutil.copytree(env.policy_dir, folder)
    path = folder / "agreements" / f"{agreement}.toml"
    text = path.read_text(encoding="utf-8")
    valid_from = re.search(r"^valid_from = (\S+)$", text, re.M)
    assert valid_from is not None
    assert datetime.fromisoformat(valid_from.group(1)).date() < datetime.now(UTC).date()
    path.write_text(re.sub(r"^review_by = \S+$", f"review_by = {valid_from.group(1)}", text, flags=re.M), "utf-8")
    return folder


async def test_an_overdue_agreement_accepts_releases_nothing_and_the_receipt_says_why(
    env: DemoEnvironment, tmp_path: Path
) -> None:
    policy = overdue_copy(env, tmp_path, "dsa-istv-ae-2026")
    settings = Settings(
        policy_dir=policy, keys_dir=env.keys_dir, secrets_file=env.secrets_file, data_dir=tmp_path / "d", http_port=0
    )
    broker = Broker(settings)
    await broker.start()
    gen = SyntheticGenerator(seed=12)
    answers: list[dict[str, Any]] = []
    try:
        async with aiohttp.ClientSession() as session:
            for n in range(20):
                record = gen.ae_assault()
                body = env.signers["uhdb-royal-derby-ed"].sign_bytes("ae_assault", record.data(), source_key=f"W-{n}")
                headers = {"Content-Type": "application/json"}
                async with session.post(broker.url + "/v1/events", data=body, headers=headers) as resp:
                    assert resp.status == 202
                    answers.append(await resp.json())
    finally:
        await broker.stop()
    assert all(a["status"] == "accepted" and a["records"] == 0 for a in answers)
    for answer in answers:
        reasons = {(w["reason"], w["agreement_id"]) for w in answer["withheld"]}
        assert ("review_overdue", "dsa-istv-ae-2026") in reasons
        assert all("derby-csp" not in w["message"] for w in answer["withheld"])  # no consumer is named


async def test_a_released_message_carries_no_withheld_list(env: DemoEnvironment, broker: Broker) -> None:
    record = SyntheticGenerator(seed=13).ae_assault()
    body = env.signers["uhdb-royal-derby-ed"].sign_bytes("ae_assault", record.data(), source_key="W-R")
    async with (
        aiohttp.ClientSession() as session,
        session.post(broker.url + "/v1/events", data=body, headers={"Content-Type": "application/json"}) as resp,
    ):
        answer = await resp.json()
    assert answer["records"] > 0
    assert "withheld" not in answer


async def test_over_rabbitmq_the_receipt_says_why_and_the_adapter_report_shows_it(
    start_broker: Starter, env: DemoEnvironment
) -> None:
    harness = await start_broker(user_map={"guest": "derby-city-education"})
    gen = SyntheticGenerator(seed=14)
    record = gen.school_exclusion("derby-city-education")
    data = record.data() | {"pupil_age": 8}  # no flow's condition holds (11-17)
    body = env.signers["derby-city-education"].sign_bytes("school_exclusion", data, source_key="W-A")
    await harness.publish(body, "derby-city-education.school_exclusion", user_id="guest")
    await harness.wait_processed(1)
    queue = harness.names.receipts_queue("derby-city-education")
    receipts = [r for m in await harness.drain(queue) for r in json.loads(m.body)["receipts"]]
    [receipt] = receipts
    assert receipt["status"] == "accepted", receipt
    assert receipt["records"] == 0
    assert [w["reason"] for w in receipt["withheld"]] == ["row_condition_false"]
    rows = to_rows(receipts, [])
    assert rows[0].withheld == "row_condition_false (dsa-education-exclusions-2026)"
    out = io.StringIO()
    write_rows(rows, None, "text", out)
    assert "0 record(s), withheld: row_condition_false (dsa-education-exclusions-2026)" in out.getvalue()
    csv_out = io.StringIO()
    write_rows(rows, None, "csv", csv_out)
    assert "withheld" in csv_out.getvalue().splitlines()[0]


def test_rows_without_withheld_read_as_before() -> None:
    rows = to_rows([{"status": "accepted", "message_id": "m", "records": 2, "at": "t", "body_sha256": "h"}], [])
    assert rows == [ReceiptRow("t", "accepted", "", "", "", "", None, "m", 2, "h", "")]
    assert json.dumps(rows[0].withheld) == '""'
