"""Partner adapters POSTing to the embedded broker (HTTP ingest, SQLite store), on a real loopback server."""

from __future__ import annotations

import csv
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
from tests.helpers import audit_entries


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


# -- corrections and withdrawals (issue 12 item 3) ---------------------------------------------------------


def read_csv(export: Path) -> tuple[list[str], list[dict[str, str]]]:
    with export.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def write_csv(export: Path, columns: list[str], rows: list[dict[str, str]]) -> None:
    with export.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def released_to(broker: Broker, message_id: str) -> dict[str, str]:
    """consumer -> record id, for each release of one message."""
    db = broker.settings.data_dir / "broker.db"
    return {e["consumer"]: e["record_id"] for e in audit_entries(db, "released", message_id=message_id)}


async def feed_latest(broker: Broker, consumer: str) -> dict[str, tuple[str, int]]:
    """record id -> (kind, revision) of the latest entry for it in a consumer's feed."""
    assert broker.store is not None
    rows = await broker.store.feed_page(consumer, after=0, limit=10_000, history=True)
    return {row.record_id: (row.kind, row.revision) for row in rows}


async def test_an_edited_export_sends_exactly_the_changed_rows_as_corrections_and_removed_rows_as_withdrawals(
    broker: Broker, env: DemoEnvironment, tmp_path: Path
) -> None:
    """Issue 12 item 3, the adapter's must-show: push a sample export, edit 3 rows (one field each),
    push again: exactly those 3 go, each as revision 2 under its first message id, accepted, and
    every consumer that held the record has revision 2 under the same record id; a third push
    sends nothing; 2 rows removed with --withdraw-missing: exactly 2 withdrawals, every holder told.
    A truncated export is refused with nothing sent."""
    signer = env.signers["uhdb-royal-derby-ed"]
    export = tmp_path / "ae-istv.csv"
    export.write_bytes((SAMPLES_DIR / "ae-istv.csv").read_bytes())
    state = tmp_path / "state.jsonl"
    first = await http_push(export, signer, broker.url, state, "ae-istv")
    assert (first.exit_code, first.sent, first.accepted) == (ExitCode.OK, 300, 300)
    columns, rows = read_csv(export)
    # three rows whose records reached consumers, one field each
    held = [i for i, row in enumerate(rows) if released_to(broker, signer.message_id(row["Attendance No"]))]
    edited = held[:3]
    for index in edited:
        rows[index]["Gender"] = "2" if rows[index]["Gender"] == "1" else "1"
    write_csv(export, columns, rows)
    before = {i: released_to(broker, signer.message_id(rows[i]["Attendance No"])) for i in edited}

    second = await http_push(export, signer, broker.url, state, "ae-istv")
    assert second.exit_code == ExitCode.OK, read_report(export.with_suffix(".report.csv"))
    assert (second.sent, second.corrections, second.accepted, second.skipped) == (3, 3, 3, 297)
    report = read_report(export.with_suffix(".report.csv"))
    assert sorted((int(r["row"]), r["revision"], r["reason"]) for r in report) == [
        (i + 2, "2", "corrected") for i in edited
    ]
    db = broker.settings.data_dir / "broker.db"
    for index in edited:
        first_id = signer.message_id(rows[index]["Attendance No"])
        [received] = audit_entries(db, "received", message_id=f"{first_id}:r2")
        assert (received["revision"], received["supersedes"]) == (2, first_id)
        for consumer, record in before[index].items():
            latest = await feed_latest(broker, consumer)
            assert latest[record] == ("record", 2)  # the same record id, now at revision 2
    with StateFile(state, partner=signer.partner, event_type="ae_assault") as loaded:
        revisions = Counter(e.revision for e in loaded)
    assert revisions == {1: 297, 2: 3}

    third = await http_push(export, signer, broker.url, state, "ae-istv")
    assert (third.sent, third.skipped) == (0, 300)

    # a truncated export (a third of the file): refused, nothing sent
    write_csv(tmp_path / "cut.csv", columns, rows[:100])
    received_before = audit_counts(broker)["received"]
    cut = await http_push(tmp_path / "cut.csv", signer, broker.url, state, "ae-istv", withdraw_missing=True)
    assert (cut.exit_code, cut.sent) == (ExitCode.FILE_REFUSED, 0)
    assert [r["reason"] for r in read_report(tmp_path / "cut.report.csv")] == ["too_many_withdrawals"]
    assert audit_counts(broker)["received"] == received_before

    # two rows removed: exactly two withdrawals; every consumer that held them is told
    removed = [rows[held[5]], rows[held[6]]]
    holders = {row["Attendance No"]: released_to(broker, signer.message_id(row["Attendance No"])) for row in removed}
    write_csv(export, columns, [row for row in rows if row not in removed])
    gone = await http_push(export, signer, broker.url, state, "ae-istv", withdraw_missing=True)
    assert gone.exit_code == ExitCode.OK
    assert (gone.sent, gone.withdrawals, gone.withdrawn, gone.skipped) == (2, 2, 2, 298)
    assert gone.notices == sum(len(h) for h in holders.values())
    for key, by_consumer in holders.items():
        [entry] = audit_entries(db, "received", message_id=signer.message_id(key) + ":r2")
        assert entry["withdrawn"] == "removed_from_source"
        for consumer, record in by_consumer.items():
            assert (await feed_latest(broker, consumer))[record] == ("withdrawn", 2)
    again = await http_push(export, signer, broker.url, state, "ae-istv", withdraw_missing=True)
    assert (again.sent, again.skipped) == (0, 298)
