"""Partner adapters POSTing to the embedded broker (HTTP ingest, SQLite store), on a real loopback server."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from adapters.mapping import load_mapping
from adapters.publish_http import HttpSink
from adapters.push import ExitCode, PushOptions, PushSummary, push
from adapters.report import read_report
from adapters.sample_exports import SAMPLES_DIR, write_sample
from adapters.signer import Signer
from adapters.state import StateFile, Status
from broker.demo import DemoEnvironment, prepare_environment
from broker.service import Broker
from broker.settings import Settings
from tests.helpers import audit_counts as store_audit_counts


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> DemoEnvironment:
    return prepare_environment(tmp_path_factory.mktemp("env"))


@pytest.fixture
async def broker(env: DemoEnvironment, tmp_path: Path) -> AsyncIterator[Broker]:
    settings = Settings(
        policy_dir=env.policy_dir,
        keys_dir=env.keys_dir,
        secrets_file=env.secrets_file,
        data_dir=tmp_path / "var",
        http_port=0,
    )
    running = Broker(settings)
    await running.start()
    yield running
    await running.stop()


async def http_push(export: Path, signer: Signer, url: str, state: Path, mapping: str, **options: Any) -> PushSummary:
    opts = PushOptions(
        export, load_mapping(mapping), signer, state, export.with_suffix(".report.csv"), progress=False, **options
    )
    return await push(opts, lambda on_result: HttpSink(url, on_result, window=16))


def audit_counts(broker: Broker) -> Counter[str]:
    db = broker.settings.data_dir / "broker.db"
    return Counter(store_audit_counts(db))


async def test_a_sample_export_posted_to_the_embedded_broker_is_accepted_once(
    broker: Broker, env: DemoEnvironment, tmp_path: Path
) -> None:
    export = tmp_path / "premises-incidents.jsonl"
    export.write_bytes((SAMPLES_DIR / "premises-incidents.jsonl").read_bytes())
    signer = env.signers["derby-pubwatch"]
    state = tmp_path / "state.jsonl"
    first = await http_push(export, signer, broker.url, state, "premises-incidents")
    assert first.exit_code == ExitCode.OK
    assert (first.sent, first.accepted, first.duplicates) == (200, 200, 0)
    counts = audit_counts(broker)
    assert counts["received"] == 200
    assert counts["rejected"] == 0
    assert counts["released"] > 0
    with StateFile(state, partner="derby-pubwatch", event_type="nte_incident") as loaded:
        assert {e.status for e in loaded} == {Status.ACCEPTED}  # the HTTP answer is the broker's verdict
    again = await http_push(export, signer, broker.url, state, "premises-incidents")
    assert (again.sent, again.skipped) == (0, 200)
    resent = await http_push(export, signer, broker.url, state, "premises-incidents", resend=True)
    assert (resent.sent, resent.accepted, resent.duplicates) == (200, 0, 200)
    after = audit_counts(broker)
    assert after["duplicate"] == 200
    assert after["released"] == counts["released"]  # no new releases


async def test_the_brokers_refusals_are_in_the_report_and_sent_again_next_time(
    broker: Broker, env: DemoEnvironment, tmp_path: Path
) -> None:
    write_sample("police-crime", tmp_path / "crimes.csv", 25, seed=71)
    state = tmp_path / "state.jsonl"
    # a key the registry does not know: the broker refuses every message, with its reason
    refused = await http_push(tmp_path / "crimes.csv", env.stranger, broker.url, state, "police-crime")
    assert refused.exit_code == ExitCode.ROWS_FAILED
    assert (refused.sent, refused.rejected_by_broker, refused.confirmed) == (25, 25, 0)
    report = read_report(tmp_path / "crimes.report.csv")
    assert {(r["stage"], r["reason"]) for r in report} == {("broker", "unknown_key")}
    assert sorted(int(r["row"]) for r in report) == list(range(2, 27))
    fixed = await http_push(
        tmp_path / "crimes.csv", env.signers["derbyshire-police"], broker.url, state, "police-crime"
    )
    assert (fixed.sent, fixed.accepted, fixed.exit_code) == (25, 25, ExitCode.OK)


async def test_an_unreachable_broker_stops_the_push_with_nothing_recorded(env: DemoEnvironment, tmp_path: Path) -> None:
    write_sample("police-crime", tmp_path / "crimes.csv", 30, seed=72)
    state = tmp_path / "state.jsonl"
    summary = await http_push(
        tmp_path / "crimes.csv", env.signers["derbyshire-police"], "http://127.0.0.1:9", state, "police-crime"
    )
    assert summary.exit_code == ExitCode.NOT_CONFIRMED
    assert summary.confirmed == 0
    assert summary.aborted
    with StateFile(state, partner="derbyshire-police", event_type="police_sv_offence") as loaded:
        assert list(loaded) == []
