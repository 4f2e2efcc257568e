"""The push loop, the state file, the report and the progress bar, without a broker.

The sink here is an in-memory implementation of the adapter's own ``Sink`` port (it stands for
"the transport confirmed it"); RabbitMQ and the embedded broker are exercised for real in
``test_adapter_amqp.py`` and ``test_adapter_http.py``.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from adapters.exports import rows as export_rows_of
from adapters.exports import scan
from adapters.mapping import load_mapping
from adapters.prepare import Item, PrepareWorker, Ready, prepare
from adapters.progress import Progress
from adapters.push import ExitCode, PushOptions, PushSummary, push
from adapters.receipts import record_verdicts, to_rows
from adapters.report import read_report
from adapters.sample_exports import KINDS, export_rows, sample_records, write_rows, write_sample
from adapters.signer import Signer
from adapters.sink import OnResult, Outgoing, Result, Verdict
from adapters.state import Entry, Known, StateError, StateFile, Status, next_revision, withdrawal_content
from schemas.envelope import encode, envelope_from_document


class ListSink:
    """Confirms everything (or fails the items whose key is in ``fail``, or answers a refusal for
    those in ``reject``, as the broker's HTTP ingest would) and keeps the bodies."""

    transport = "amqp"
    description = "memory"

    def __init__(self, on_result: OnResult, fail: set[str] | None = None, reject: dict[str, str] | None = None) -> None:
        self.on_result = on_result
        self.fail = fail or set()
        self.reject = reject or {}
        self.sent: list[Outgoing] = []

    @property
    def broken(self) -> str | None:
        return None

    async def open(self) -> None:
        pass

    async def send(self, item: Outgoing) -> None:
        self.sent.append(item)
        if item.key in self.reject:
            self.on_result(Result(item, Verdict.REJECTED, self.reject[item.key], "refused"))
            return
        verdict = Verdict.FAILED if item.key in self.fail else Verdict.CONFIRMED
        self.on_result(Result(item, verdict, "" if verdict is Verdict.CONFIRMED else "not_confirmed", "nacked"))

    async def drain(self) -> None:
        pass

    async def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer.create("uhdb-royal-derby-ed", "uhdb-royal-derby-ed-k1", Ed25519PrivateKey.generate())


def run_push(
    export: Path | None,
    signer: Signer,
    tmp: Path,
    *,
    fail: set[str] | None = None,
    reject: dict[str, str] | None = None,
    **options: Any,
) -> tuple[PushSummary, list[Outgoing], list[dict[str, str]]]:
    sinks: list[ListSink] = []

    def factory(on_result: OnResult) -> ListSink:
        sinks.append(ListSink(on_result, fail, reject))
        return sinks[-1]

    opts = PushOptions(
        export=export,
        mapping=load_mapping(options.pop("mapping", "ae-istv")),
        signer=signer,
        state_path=tmp / "state.jsonl",
        report_path=tmp / "report.csv",
        progress=False,
        **options,
    )
    summary = asyncio.run(push(opts, factory))
    return summary, (sinks[0].sent if sinks else []), read_report(tmp / "report.csv")


def ae_rows(count: int, seed: int = 3) -> list[dict[str, Any]]:
    kind = KINDS["ae-istv"]
    return export_rows(kind, sample_records(kind, count, seed=seed), seed=seed)


def test_good_rows_are_sent_bad_rows_reported_with_row_column_reason(signer: Signer, tmp_path: Path) -> None:
    rows = ae_rows(40)
    rows[4]["Arrival Date"] = "31/02/2026"  # spreadsheet row 6
    rows[9]["Assault Method"] = "42"  # row 11: not in the ED's code table
    rows[14]["Site Code"] = ""  # row 16: a required value missing
    rows[19]["Attendance No"] = rows[18]["Attendance No"]  # row 21: the same record key twice
    write_rows(KINDS["ae-istv"], rows, tmp_path / "ed.csv")
    summary, sent, report = run_push(tmp_path / "ed.csv", signer, tmp_path)
    assert summary.rows == 40
    assert summary.rejected_locally == 4
    assert summary.sent == summary.confirmed == 36
    assert summary.exit_code == ExitCode.ROWS_FAILED
    assert [(r["row"], r["column"], r["reason"], r["stage"]) for r in report] == [
        ("6", "Arrival Date", "bad_date", "row"),
        ("6", "Arrival Date", "bad_date", "row"),
        ("6", "Arrival Date + Arrival Time", "bad_date", "row"),
        ("11", "Assault Method", "unknown_code", "row"),
        ("16", "Site Code", "missing_value", "row"),
        ("21", "Attendance No", "duplicate_record_key", "row"),
    ]
    assert "'31/02/2026' is not a real date" in report[0]["message"]
    assert report[3]["record_key"] == rows[9]["Attendance No"]
    # nothing that failed locally was sent
    bad_keys = {rows[i]["Attendance No"] for i in (4, 9, 14)}
    assert not bad_keys & {item.key for item in sent}
    assert sum(1 for item in sent if item.key == rows[18]["Attendance No"]) == 1


def test_a_direct_identifier_column_refuses_the_whole_file(signer: Signer, tmp_path: Path) -> None:
    rows = ae_rows(20)
    for row in rows:
        row["NHS No."] = "943 476 5919"  # a synthetic number, never a real one
    write_rows(KINDS["ae-istv"], rows, tmp_path / "ed.csv")
    summary, sent, report = run_push(tmp_path / "ed.csv", signer, tmp_path)
    assert summary.refused
    assert summary.exit_code == ExitCode.FILE_REFUSED
    assert sent == []
    assert not (tmp_path / "state.jsonl").exists()  # nothing recorded either
    assert [(r["row"], r["column"], r["reason"], r["stage"]) for r in report] == [
        ("1", "NHS No.", "direct_identifier_column", "file")
    ]
    assert "943" not in (tmp_path / "report.csv").read_text()  # the value never reaches the report


def test_an_identifier_key_on_the_last_json_line_stops_the_file_before_the_first_row(
    signer: Signer, tmp_path: Path
) -> None:
    kind = KINDS["premises-incidents"]
    rows = export_rows(kind, sample_records(kind, 30))
    rows[-1]["door_staff"] = {"sia_badge_number": "1013 4567 8901 2345"}  # nested, last line
    write_rows(kind, rows, tmp_path / "log.jsonl")
    pubwatch = Signer.create("derby-pubwatch", "derby-pubwatch-k1", Ed25519PrivateKey.generate())
    summary, sent, report = run_push(tmp_path / "log.jsonl", pubwatch, tmp_path, mapping="premises-incidents")
    assert summary.refused
    assert sent == []
    assert [(r["row"], r["column"], r["reason"]) for r in report] == [
        ("30", "sia_badge_number", "direct_identifier_column")
    ]


def test_a_missing_mapped_column_refuses_the_file(signer: Signer, tmp_path: Path) -> None:
    rows = ae_rows(5)
    for row in rows:
        del row["Gender"]
    kind = KINDS["ae-istv"]
    kind_without = type(kind)(kind.name, kind.title, kind.partner, kind.event_type, kind.format,
                              tuple(c for c in kind.columns if c != "Gender"), kind.row)  # fmt: skip
    write_rows(kind_without, rows, tmp_path / "ed.csv")
    summary, sent, report = run_push(tmp_path / "ed.csv", signer, tmp_path)
    assert summary.exit_code == ExitCode.FILE_REFUSED
    assert sent == []
    assert [(r["column"], r["reason"]) for r in report] == [("Gender", "missing_column")]


def test_an_export_in_another_encoding_is_refused_unless_the_mapping_says_so(signer: Signer, tmp_path: Path) -> None:
    rows = ae_rows(12)
    rows[5]["Location Desc"] = "outside the café"
    write_rows(KINDS["ae-istv"], rows, tmp_path / "ed.csv")
    (tmp_path / "ed.csv").write_bytes((tmp_path / "ed.csv").read_text(encoding="utf-8").encode("cp1252"))
    summary, sent, report = run_push(tmp_path / "ed.csv", signer, tmp_path)
    assert summary.refused
    assert sent == []
    assert [(r["reason"], r["stage"]) for r in report] == [("unreadable_file", "file")]
    assert "cp1252" in report[0]["message"]
    text = Path(load_mapping("ae-istv").origin).read_text(encoding="utf-8")
    (tmp_path / "cp1252.toml").write_text(text.replace('format = "csv"\n', 'format = "csv"\nencoding = "cp1252"\n'))
    summary, sent, _ = run_push(tmp_path / "ed.csv", signer, tmp_path, mapping=str(tmp_path / "cp1252.toml"))
    assert summary.exit_code == ExitCode.OK
    assert len(sent) == 12
    assert json.loads(sent[5].body)["data"]["assault_location_text"] == "outside the café"


def test_a_rerun_sends_only_what_was_not_confirmed(signer: Signer, tmp_path: Path) -> None:
    rows = ae_rows(50)
    failing = {rows[6]["Attendance No"], rows[30]["Attendance No"]}
    write_rows(KINDS["ae-istv"], rows, tmp_path / "ed.csv")
    first, sent1, _ = run_push(tmp_path / "ed.csv", signer, tmp_path, fail=failing)
    assert first.confirmed == 48
    assert first.not_confirmed == 2
    assert first.exit_code == ExitCode.NOT_CONFIRMED
    second, sent2, report2 = run_push(tmp_path / "ed.csv", signer, tmp_path)
    assert second.skipped == 48
    assert {item.key for item in sent2} == failing
    assert second.exit_code == ExitCode.OK
    assert report2 == []
    # the same message id for the same record, whichever run sent it
    ids1 = {item.key: item.message_id for item in sent1}
    assert all(ids1[item.key] == item.message_id for item in sent2)
    third, sent3, _ = run_push(tmp_path / "ed.csv", signer, tmp_path)
    assert sent3 == []
    assert third.skipped == 50
    resent, sent4, _ = run_push(tmp_path / "ed.csv", signer, tmp_path, resend=True)
    assert len(sent4) == 50
    assert resent.skipped == 0


def test_a_changed_record_is_sent_as_a_correction_under_its_first_message_id(signer: Signer, tmp_path: Path) -> None:
    rows = ae_rows(10)
    write_rows(KINDS["ae-istv"], rows, tmp_path / "ed.csv")
    _, first, _ = run_push(tmp_path / "ed.csv", signer, tmp_path)
    ids = {item.key: item.message_id for item in first}
    rows[2]["Age at Arrival"] = "19"
    write_rows(KINDS["ae-istv"], rows, tmp_path / "ed.csv")
    summary, sent, report = run_push(tmp_path / "ed.csv", signer, tmp_path)
    key = rows[2]["Attendance No"]
    [item] = sent
    assert (item.key, item.row, item.revision, item.message_id) == (key, 4, 2, ids[key] + ":r2")
    doc = json.loads(item.body)
    assert (doc["supersedes"], doc["revision"], doc["data"]["patient_age"]) == (ids[key], 2, 19)
    assert "withdrawn" not in doc
    envelope_from_document(doc)  # the contract's own reading accepts it
    assert (summary.skipped, summary.sent, summary.corrections, summary.corrected) == (9, 1, 1, 1)
    assert summary.exit_code == ExitCode.OK
    assert [(r["row"], r["record_key"], r["revision"], r["stage"], r["reason"]) for r in report] == [
        ("4", key, "2", "change", "corrected")
    ]
    with StateFile(tmp_path / "state.jsonl", partner=signer.partner, event_type="ae_assault") as state:
        entry = state.get(key)
        assert entry is not None
        assert (entry.revision, entry.message_id, entry.content, entry.status) == (
            2,
            item.message_id,
            item.content,
            Status.CONFIRMED,
        )
    # unchanged now: nothing sent; a second edit is revision 3
    again, none, _ = run_push(tmp_path / "ed.csv", signer, tmp_path)
    assert (none, again.skipped) == ([], 10)
    rows[2]["Age at Arrival"] = "20"
    write_rows(KINDS["ae-istv"], rows, tmp_path / "ed.csv")
    _, third, _ = run_push(tmp_path / "ed.csv", signer, tmp_path)
    assert [(i.key, i.revision, i.message_id) for i in third] == [(key, 3, ids[key] + ":r3")]


def test_a_state_file_written_before_revisions_reads_as_revision_1(signer: Signer, tmp_path: Path) -> None:
    rows = ae_rows(6)
    write_rows(KINDS["ae-istv"], rows, tmp_path / "ed.csv")
    _, first, _ = run_push(tmp_path / "ed.csv", signer, tmp_path)
    # Rewrite the state as the adapter wrote it before corrections: no "v" member anywhere.
    path = tmp_path / "state.jsonl"
    header = {"sv_adapter_state": 1, "partner": signer.partner, "event_type": "ae_assault"}
    old = [json.dumps(header)] + [
        json.dumps({"k": i.key, "id": i.message_id, "c": i.content, "s": "accepted", "f": "ed.csv", "r": i.row})
        for i in first
    ]
    path.write_text("\n".join(old) + "\n")
    rows[0]["Gender"] = "2" if rows[0]["Gender"] != "2" else "1"
    write_rows(KINDS["ae-istv"], rows, tmp_path / "ed.csv")
    summary, sent, _ = run_push(tmp_path / "ed.csv", signer, tmp_path)
    assert [(i.key, i.revision) for i in sent] == [(rows[0]["Attendance No"], 2)]
    assert summary.skipped == 5
    lines = path.read_text().splitlines()
    assert lines[: len(old)] == old  # appended to, never rewritten
    assert json.loads(lines[-1])["v"] == 2


@pytest.mark.parametrize(
    ("known", "content", "expected"),
    [
        (None, "a", 1),
        (Known(1, "a", Status.ACCEPTED, "", "a", 1), "a", None),  # the broker has it
        (Known(1, "a", Status.CONFIRMED, "", "a", 1), "b", 2),  # changed: the next revision
        (Known(2, "b", Status.SENDING, "", "a", 1), "b", 2),  # written ahead, unconfirmed: same content again
        (Known(2, "b", Status.SENDING, "", "a", 1), "a", 3),  # may have arrived: other content never under 2
        (Known(2, "b", Status.SENDING, "", "a", 1), "c", 3),
        (Known(1, "a", Status.REJECTED, "unknown_key", None, 0), "a", 1),  # sent again once the key is fixed
        (Known(2, "b", Status.REJECTED, "schema_invalid", "a", 1), "c", 3),  # a refused number is not lent out
        (Known(2, "b", Status.REJECTED, "schema_invalid", "a", 1), "a", None),  # back to what the broker holds
        (Known(1, "b", Status.REJECTED, "replayed", None, 0), "b", 2),  # the broker holds that id with other content
        (Known(3, "b", Status.REJECTED, "revision_superseded", "a", 2), "b", 4),
        (Known(3, withdrawal_content("sent_in_error"), Status.ACCEPTED, "", None, 3), "a", 4),  # reinstated
    ],
)
def test_next_revision_never_sends_one_revision_with_two_contents(
    known: Known | None, content: str, expected: int | None
) -> None:
    assert next_revision(known, content) == expected


def test_a_refused_correction_does_not_lend_its_revision_to_other_content(signer: Signer, tmp_path: Path) -> None:
    rows = ae_rows(5)
    write_rows(KINDS["ae-istv"], rows, tmp_path / "ed.csv")
    run_push(tmp_path / "ed.csv", signer, tmp_path)
    key = rows[1]["Attendance No"]
    rows[1]["Age at Arrival"] = "21"
    write_rows(KINDS["ae-istv"], rows, tmp_path / "ed.csv")
    refused, sent, report = run_push(tmp_path / "ed.csv", signer, tmp_path, reject={key: "schema_invalid"})
    assert [(i.key, i.revision) for i in sent] == [(key, 2)]
    assert refused.exit_code == ExitCode.ROWS_FAILED
    assert [(r["revision"], r["stage"], r["reason"]) for r in report] == [("2", "broker", "schema_invalid")]
    # the same content again: the same revision (the broker kept nothing of it)
    _, resent, _ = run_push(tmp_path / "ed.csv", signer, tmp_path, reject={key: "schema_invalid"})
    assert [(i.key, i.revision) for i in resent] == [(key, 2)]
    # fixed differently: revision 3, never revision 2 with other content
    rows[1]["Age at Arrival"] = "22"
    write_rows(KINDS["ae-istv"], rows, tmp_path / "ed.csv")
    fixed, again, _ = run_push(tmp_path / "ed.csv", signer, tmp_path)
    assert [(i.key, i.revision) for i in again] == [(key, 3)]
    assert fixed.exit_code == ExitCode.OK


def test_an_unconfirmed_correction_is_written_ahead_so_its_revision_keeps_its_content(
    signer: Signer, tmp_path: Path
) -> None:
    rows = ae_rows(5)
    write_rows(KINDS["ae-istv"], rows, tmp_path / "ed.csv")
    run_push(tmp_path / "ed.csv", signer, tmp_path)
    key = rows[3]["Attendance No"]
    rows[3]["Age at Arrival"] = "23"
    write_rows(KINDS["ae-istv"], rows, tmp_path / "ed.csv")
    lost, sent, _ = run_push(tmp_path / "ed.csv", signer, tmp_path, fail={key})  # it may have reached the broker
    assert lost.exit_code == ExitCode.NOT_CONFIRMED
    with StateFile(tmp_path / "state.jsonl", partner=signer.partner, event_type="ae_assault") as state:
        entry = state.get(key)
        assert entry is not None
        assert (entry.revision, entry.status, entry.content) == (2, Status.SENDING, sent[0].content)
    rows[3]["Age at Arrival"] = "24"  # edited again before the re-run
    write_rows(KINDS["ae-istv"], rows, tmp_path / "ed.csv")
    _, again, _ = run_push(tmp_path / "ed.csv", signer, tmp_path)
    assert [(i.key, i.revision) for i in again] == [(key, 3)]


def test_withdraw_missing_withdraws_exactly_the_records_gone_from_the_export(signer: Signer, tmp_path: Path) -> None:
    rows = ae_rows(10)
    write_rows(KINDS["ae-istv"], rows, tmp_path / "ed.csv")
    _, first, _ = run_push(tmp_path / "ed.csv", signer, tmp_path)
    ids = {item.key: item.message_id for item in first}
    gone = [rows.pop(7), rows.pop(2)]
    write_rows(KINDS["ae-istv"], rows, tmp_path / "ed.csv")
    plain, nothing, _ = run_push(tmp_path / "ed.csv", signer, tmp_path)  # not asked: nothing withdrawn
    assert (nothing, plain.skipped) == ([], 8)
    summary, sent, report = run_push(tmp_path / "ed.csv", signer, tmp_path, withdraw_missing=True)
    keys = sorted(row["Attendance No"] for row in gone)
    assert sorted((i.key, i.revision, i.withdrawn, i.message_id) for i in sent) == [
        (k, 2, "removed_from_source", ids[k] + ":r2") for k in keys
    ]
    for item in sent:
        doc = json.loads(item.body)
        assert (doc["data"], doc["withdrawn"], doc["supersedes"]) == ({}, "removed_from_source", ids[item.key])
        envelope_from_document(doc)
    assert (summary.withdrawals, summary.withdrawn, summary.skipped, summary.exit_code) == (2, 2, 8, ExitCode.OK)
    assert sorted((r["record_key"], r["revision"], r["reason"]) for r in report) == [
        (k, "2", "withdrawn") for k in keys
    ]
    with StateFile(tmp_path / "state.jsonl", partner=signer.partner, event_type="ae_assault") as state:
        entry = state.get(keys[0])
        assert entry is not None
        assert (entry.withdrawn, entry.revision, entry.file, entry.row) == (
            "removed_from_source",
            2,
            "ed.csv",
            entry.row,
        )
        assert entry.row > 0  # where the record was last read
    # withdrawn already: not again
    _, none, _ = run_push(tmp_path / "ed.csv", signer, tmp_path, withdraw_missing=True)
    assert none == []
    # back in the export: reinstated as the next revision
    rows.append(gone[0])
    write_rows(KINDS["ae-istv"], rows, tmp_path / "ed.csv")
    _, back, _ = run_push(tmp_path / "ed.csv", signer, tmp_path, withdraw_missing=True)
    assert [(i.key, i.revision, i.withdrawn) for i in back] == [(gone[0]["Attendance No"], 3, "")]


def test_withdraw_missing_refuses_a_truncated_export_and_sends_nothing(signer: Signer, tmp_path: Path) -> None:
    rows = ae_rows(10)
    write_rows(KINDS["ae-istv"], rows, tmp_path / "ed.csv")
    run_push(tmp_path / "ed.csv", signer, tmp_path)
    rows[0]["Age at Arrival"] = "30"  # a correction too: not sent either
    write_rows(KINDS["ae-istv"], rows[:4], tmp_path / "ed.csv")  # cut short: 6 of 10 missing
    summary, sent, report = run_push(tmp_path / "ed.csv", signer, tmp_path, withdraw_missing=True)
    assert sent == []
    assert summary.exit_code == ExitCode.FILE_REFUSED
    assert [(r["stage"], r["reason"]) for r in report] == [("file", "too_many_withdrawals")]
    assert "6 of the 10 records" in report[0]["message"]
    lax, _, _ = run_push(tmp_path / "ed.csv", signer, tmp_path, withdraw_missing=True, max_withdraw_share=0.6)
    assert (lax.withdrawals, lax.corrections) == (6, 1)


def test_withdraw_missing_refuses_when_a_row_has_no_record_key(signer: Signer, tmp_path: Path) -> None:
    rows = ae_rows(10)
    write_rows(KINDS["ae-istv"], rows, tmp_path / "ed.csv")
    run_push(tmp_path / "ed.csv", signer, tmp_path)
    rows[4]["Attendance No"] = ""
    write_rows(KINDS["ae-istv"], rows[1:], tmp_path / "ed.csv")
    summary, sent, report = run_push(tmp_path / "ed.csv", signer, tmp_path, withdraw_missing=True)
    assert (sent, summary.exit_code) == ([], ExitCode.FILE_REFUSED)
    assert [(r["row"], r["reason"]) for r in report] == [("5", "unkeyed_rows")]


def test_withdraw_by_record_key(signer: Signer, tmp_path: Path) -> None:
    rows = ae_rows(5)
    write_rows(KINDS["ae-istv"], rows, tmp_path / "ed.csv")
    _, first, _ = run_push(tmp_path / "ed.csv", signer, tmp_path)
    ids = {item.key: item.message_id for item in first}
    key = rows[1]["Attendance No"]
    summary, sent, report = run_push(
        None, signer, tmp_path, withdraw_keys=(key, "NO-SUCH-KEY", key), withdraw_reason="sent_in_error"
    )
    assert [(i.key, i.revision, i.withdrawn, i.message_id) for i in sent] == [
        (key, 2, "sent_in_error", ids[key] + ":r2")
    ]
    assert (summary.rows, summary.withdrawn, summary.rejected_locally) == (2, 1, 1)
    assert sorted((r["record_key"], r["reason"]) for r in report) == [
        ("NO-SUCH-KEY", "unknown_record_key"),
        (key, "withdrawn"),
    ]
    again, none, _ = run_push(None, signer, tmp_path, withdraw_keys=(key,), withdraw_reason="sent_in_error")
    assert (none, again.nothing_to_withdraw) == ([], 1)
    # the export still has the row: the next push reinstates it as revision 3
    _, back, _ = run_push(tmp_path / "ed.csv", signer, tmp_path)
    assert [(i.key, i.revision) for i in back] == [(key, 3)]


def test_receipts_name_each_revision_and_a_late_verdict_leaves_the_newest_standing(
    signer: Signer, tmp_path: Path
) -> None:
    rows = ae_rows(3)
    write_rows(KINDS["ae-istv"], rows, tmp_path / "ed.csv")
    _, first, _ = run_push(tmp_path / "ed.csv", signer, tmp_path)
    rows[0]["Age at Arrival"] = "31"
    write_rows(KINDS["ae-istv"], rows, tmp_path / "ed.csv")
    _, [correction], _ = run_push(tmp_path / "ed.csv", signer, tmp_path)
    receipts = [
        {"status": "accepted", "message_id": first[0].message_id, "records": 2, "at": "t"},
        {"status": "accepted", "message_id": correction.message_id, "records": 1, "withdrawn": 1, "at": "t"},
        {"status": "rejected", "message_id": first[1].message_id, "reason": "revision_superseded", "at": "t"},
    ]
    with StateFile(tmp_path / "state.jsonl", partner=signer.partner, event_type="ae_assault") as state:
        got = to_rows(receipts, [state])
        assert [(r.record_key, r.row, r.revision, r.change, r.records, r.withdrawn) for r in got] == [
            (first[0].key, 2, 1, "", 2, 0),
            (first[0].key, 2, 2, "corrected", 1, 1),
            (first[1].key, 3, 1, "", None, 0),
        ]
        assert got[2].reason == "revision_superseded"
        assert record_verdicts([state], got) == 3
        top = state.get(first[0].key)
        assert top is not None
        assert (top.revision, top.status) == (2, Status.ACCEPTED)  # the late receipt of revision 1 did not win


def test_a_broker_rejection_in_the_state_is_sent_again(signer: Signer, tmp_path: Path) -> None:
    rows = ae_rows(5)
    write_rows(KINDS["ae-istv"], rows, tmp_path / "ed.csv")
    run_push(tmp_path / "ed.csv", signer, tmp_path)
    with StateFile(tmp_path / "state.jsonl", partner=signer.partner, event_type="ae_assault") as state:
        entry = state.get(rows[1]["Attendance No"])
        assert entry is not None
        state.add(Entry(entry.key, entry.message_id, entry.content, Status.REJECTED, reason="unknown_key"))
    _, sent, _ = run_push(tmp_path / "ed.csv", signer, tmp_path)
    assert [item.key for item in sent] == [rows[1]["Attendance No"]]


def test_dry_run_maps_and_reports_but_sends_and_records_nothing(signer: Signer, tmp_path: Path) -> None:
    rows = ae_rows(10)
    rows[0]["Gender"] = "7"
    write_rows(KINDS["ae-istv"], rows, tmp_path / "ed.csv")
    summary, sent, report = run_push(tmp_path / "ed.csv", signer, tmp_path, dry_run=True)
    assert sent == []
    assert summary.sent == 0
    assert summary.rejected_locally == 1
    assert [r["reason"] for r in report] == ["unknown_code"]
    assert not (tmp_path / "state.jsonl").exists()


def test_the_worker_process_prepares_exactly_what_the_push_process_would(signer: Signer, tmp_path: Path) -> None:
    rows = ae_rows(300)
    rows[7]["Incident Time"] = "25:61"
    write_rows(KINDS["ae-istv"], rows, tmp_path / "ed.csv")
    local, sent_local, report_local = run_push(tmp_path / "ed.csv", signer, tmp_path / "a", worker=False)
    worker, sent_worker, report_worker = run_push(tmp_path / "ed.csv", signer, tmp_path / "b", worker=True)
    assert (local.sent, local.rejected_locally) == (worker.sent, worker.rejected_locally) == (299, 1)
    assert [(i.key, i.message_id, i.content, i.row) for i in sent_local] == [
        (i.key, i.message_id, i.content, i.row) for i in sent_worker
    ]
    assert report_local == report_worker


@pytest.mark.parametrize("method", ["fork", "spawn"])
async def test_a_worker_started_either_way_yields_the_same_items(signer: Signer, tmp_path: Path, method: str) -> None:
    rows = ae_rows(700, seed=5)
    rows[3]["Gender"] = "7"
    write_rows(KINDS["ae-istv"], rows, tmp_path / "ed.csv")
    mapping = load_mapping("ae-istv")
    result = scan(tmp_path / "ed.csv", mapping)
    done = {rows[0]["Attendance No"]: Known(1, "stale-content", Status.ACCEPTED, "", "stale-content", 1)}
    local = list(prepare(tmp_path / "ed.csv", mapping, signer, result.format, result.columns, done))
    worker = PrepareWorker(
        tmp_path / "ed.csv", mapping, signer, result.format, result.columns, done, batch=64, start_method=method
    )
    worker.start()
    try:
        remote = [item async for batch in worker.items() for item in batch]
    finally:
        worker.stop()

    def key(item: Item) -> tuple[object, ...]:
        return (
            type(item).__name__,
            item.row,
            item.key,
            getattr(item, "message_id", ""),
            getattr(item, "revision", 0),
            getattr(item, "problems", ()),
        )

    assert [key(i) for i in remote] == [key(i) for i in local]
    assert [type(i).__name__ for i in local[:5]] == ["Ready", "Ready", "Ready", "Refused", "Ready"]
    assert key(local[0])[3:5] == (signer.message_id(rows[0]["Attendance No"]) + ":r2", 2)  # changed: a correction
    assert not worker.process.is_alive()


@pytest.mark.parametrize("name", sorted(KINDS))
def test_the_bulk_envelope_writer_is_byte_identical_to_the_contract_path(name: str, tmp_path: Path) -> None:
    """Every sample kind, every row: the bytes the adapter publishes are the contract's bytes."""
    kind = KINDS[name]
    mapping = load_mapping(name)
    partner = Signer.create(kind.partner, f"{kind.partner}-k1", Ed25519PrivateKey.generate())
    writer = partner.envelope_writer(mapping.event_type, mapping.version)
    export = tmp_path / kind.filename
    write_sample(name, export, 150, seed=13)
    result = scan(export, mapping)
    moment = datetime(2026, 11, 25, 9, 10, 11, tzinfo=UTC)
    for source in export_rows_of(export, mapping, result.format, result.columns):
        assert source.values is not None
        mapped = mapping.map_row(source.values)
        assert not isinstance(mapped, list)
        message_id, body = writer.write(mapped.record_key, mapped.data_json, moment)
        doc = partner.sign(mapping.event_type, mapped.data, source_key=mapped.record_key, produced_at=moment)
        assert body == encode(doc)
        assert message_id == doc["id"]


def test_prepare_marks_rows_done_before_with_the_same_content_as_skipped(signer: Signer, tmp_path: Path) -> None:
    write_sample("ae-istv", tmp_path / "ed.csv", 20)
    mapping = load_mapping("ae-istv")
    result = scan(tmp_path / "ed.csv", mapping)
    items = list(prepare(tmp_path / "ed.csv", mapping, signer, result.format, result.columns, {}))
    ready = [i for i in items if isinstance(i, Ready)]
    done = {i.key: Known(1, i.content, Status.CONFIRMED, "", i.content, 1) for i in ready[:15]}
    again = list(prepare(tmp_path / "ed.csv", mapping, signer, result.format, result.columns, done))
    assert [type(i).__name__ for i in again] == ["Skipped"] * 15 + ["Ready"] * 5


# -- state file -------------------------------------------------------------------------------------------


def test_state_survives_a_torn_last_line_and_the_latest_entry_wins(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    with StateFile(path, partner="derby-pubwatch", event_type="nte_incident") as state:
        state.add(Entry("K1", "derby-pubwatch:1", "c1", Status.CONFIRMED, "f.jsonl", 2))
        state.add(Entry("K2", "derby-pubwatch:2", "c2", Status.CONFIRMED, "f.jsonl", 3))
        state.add(Entry("K1", "derby-pubwatch:1", "c1", Status.REJECTED, "f.jsonl", 2, "stale"))
    with path.open("ab") as fh:
        fh.write(b'{"k":"K3","id":"derby-pub')  # kill -9 in the middle of a write
    with StateFile(path, partner="derby-pubwatch", event_type="nte_incident") as state:
        assert {e.key: e.status for e in state} == {"K1": Status.REJECTED, "K2": Status.CONFIRMED}
        assert state.by_message_id("derby-pubwatch:1") == Entry(
            "K1", "derby-pubwatch:1", "c1", Status.REJECTED, "f.jsonl", 2, "stale"
        )
        state.add(Entry("K3", "derby-pubwatch:3", "c3", Status.CONFIRMED))
    assert path.read_bytes().endswith(b"\n")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0] == {"sv_adapter_state": 1, "partner": "derby-pubwatch", "event_type": "nte_incident"}
    assert [line["k"] for line in lines[1:]] == ["K1", "K2", "K1", "K3"]


def test_state_refuses_another_partners_file_and_a_second_user(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    with (
        StateFile(path, partner="derby-pubwatch", event_type="nte_incident"),
        pytest.raises(StateError, match="in use"),
    ):
        StateFile(path, partner="derby-pubwatch", event_type="nte_incident").open()
    with pytest.raises(StateError, match="belongs to partner 'derby-pubwatch'"):
        StateFile(path, partner="derbyshire-police", event_type="nte_incident").open()


# -- progress -----------------------------------------------------------------------------------------------


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_on_a_terminal_and_is_silent_otherwise() -> None:
    quiet = io.StringIO()
    bar = Progress(100, stream=quiet)
    bar.advance(50)
    bar.finish()
    assert quiet.getvalue() == ""
    tty = FakeTty()
    bar = Progress(1000, stream=tty)
    bar.started -= 2.0  # 2 s ago
    bar.advance(500)
    text = bar.render()
    assert "500/1,000 rows" in text
    assert " 50%" in text
    assert "rows/s" in text
    assert "ETA 0:02" in text
    bar.finish()
    assert tty.getvalue().startswith("\r[")
    assert tty.getvalue().endswith("\n")


def test_summary_lines_name_what_happened() -> None:
    summary = PushSummary(rows=10, skipped=2, rejected_locally=1, sent=7, confirmed=7, elapsed=1.0)
    text = "\n".join(summary.lines())
    for expected in ("rows read", "already confirmed", "rejected locally", "sent", "confirmed", "not confirmed"):
        assert expected in text
    assert summary.exit_code == ExitCode.ROWS_FAILED


def test_the_report_is_plain_csv(tmp_path: Path, signer: Signer) -> None:
    rows = ae_rows(3)
    rows[1]["Gender"] = "7"
    write_rows(KINDS["ae-istv"], rows, tmp_path / "ed.csv")
    run_push(tmp_path / "ed.csv", signer, tmp_path)
    with (tmp_path / "report.csv").open(newline="") as fh:
        header = next(csv.reader(fh))
    assert header == ["row", "record_key", "revision", "column", "stage", "reason", "message"]
