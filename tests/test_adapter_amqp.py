"""Partner adapters end to end over the real RabbitMQ, into a real broker (in this process).

Each sample export goes through its mapping, is signed and published with confirms, and the
broker's audit shows every row received and released (or withheld under the agreements), none
rejected. Re-running sends nothing; ``--resend`` makes the broker record duplicates, not new
releases. Bad rows are reported and the good ones accepted. Receipts come back mapped to the
export's rows. A push killed with SIGKILL half-way and run again completes the file, with
nothing lost and nothing released twice.
"""

from __future__ import annotations

import asyncio
import csv
import os
import re
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.mapping import load_mapping
from adapters.publish_amqp import AmqpSink
from adapters.push import ExitCode, PushOptions, PushSummary, push
from adapters.report import read_report
from adapters.sample_exports import KINDS, SAMPLES_DIR, export_rows, sample_records, write_rows, write_sample
from adapters.signer import Signer
from adapters.state import StateFile, Status
from broker.demo import DemoEnvironment, prepare_environment
from broker.service import Broker
from broker.settings import Settings
from schemas.topology import Names
from tests.helpers import audit_entries

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> DemoEnvironment:
    return prepare_environment(tmp_path_factory.mktemp("env"))


Starter = Callable[[], Awaitable[Broker]]


@pytest.fixture
async def start_broker(amqp_url: str, amqp_prefix: str, env: DemoEnvironment, tmp_path: Path) -> AsyncIterator[Starter]:
    brokers: list[Broker] = []

    async def start() -> Broker:
        settings = Settings(
            policy_dir=env.policy_dir,
            keys_dir=env.keys_dir,
            secrets_file=env.secrets_file,
            data_dir=tmp_path / "var",
            http_port=0,
            amqp_url=amqp_url,
            amqp_prefix=amqp_prefix,
            check_user_id=False,  # the tests publish as RabbitMQ's guest user for every partner
        )
        broker = Broker(settings)
        await broker.start()
        brokers.append(broker)
        return broker

    yield start
    for broker in brokers:
        await broker.stop()


def db(broker: Broker) -> Path:
    return broker.settings.data_dir / "broker.db"


async def amqp_push(
    export: Path, signer: Signer, amqp_url: str, prefix: str, state: Path, *, mapping: str, **options: Any
) -> PushSummary:
    loaded = load_mapping(mapping)
    opts = PushOptions(export, loaded, signer, state, export.with_suffix(".report.csv"), progress=False, **options)
    return await push(
        opts,
        lambda on_result: AmqpSink(amqp_url, prefix, signer.partner, loaded.event_type, on_result, user_id="guest"),
    )


async def wait_processed(broker: Broker, count: int, timeout: float = 60) -> None:
    assert broker.pipeline is not None
    for _ in range(int(timeout * 20)):
        if broker.pipeline.stats.processed >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the broker processed {broker.pipeline.stats.processed} of {count}")


def expected_ids(export: Path, mapping_name: str, signer: Signer) -> dict[str, str]:
    """message id -> record key, for every row of the export (computed as the partner would)."""
    mapping = load_mapping(mapping_name)
    if export.suffix == ".jsonl":
        import json

        rows = [json.loads(line) for line in export.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        with export.open(encoding="utf-8-sig", newline="") as fh:
            rows = list(csv.DictReader(fh))
    keys = [mapping.key_of(row) for row in rows]
    return {signer.message_id(key): key for key in keys if key is not None}


def audit_by_kind(broker: Broker) -> dict[str, Counter[str]]:
    """audit kind -> message id -> count."""
    out: dict[str, Counter[str]] = {}
    for entry in audit_entries(db(broker)):
        if entry.get("message_id") is not None:
            out.setdefault(entry["kind"], Counter())[entry["message_id"]] += 1
    return out


async def test_each_sample_export_is_accepted_end_to_end(
    start_broker: Starter, env: DemoEnvironment, amqp_url: str, amqp_prefix: str, tmp_path: Path
) -> None:
    broker = await start_broker()
    expected: dict[str, str] = {}
    for kind in KINDS.values():
        export = tmp_path / kind.filename
        export.write_bytes((SAMPLES_DIR / kind.filename).read_bytes())
        signer = env.signers[kind.partner]
        summary = await amqp_push(
            export, signer, amqp_url, amqp_prefix, tmp_path / f"{kind.name}.state.jsonl", mapping=kind.name
        )
        assert summary.exit_code == ExitCode.OK, (kind.name, summary)
        assert summary.sent == summary.confirmed == summary.rows >= 200
        ids = expected_ids(export, kind.name, signer)
        assert len(ids) == summary.rows
        expected |= ids
    await wait_processed(broker, len(expected))
    assert broker.pipeline is not None
    assert broker.pipeline.stats.accepted == len(expected)
    audit = audit_by_kind(broker)
    assert set(audit["received"]) == set(expected)
    assert "rejected" not in audit
    decided = set(audit.get("released", Counter())) | set(audit.get("withheld", Counter()))
    assert decided == set(expected)  # every row released to its consumers, or withheld by the agreements
    assert len(audit.get("released", {})) > 0


async def test_running_the_same_export_twice_sends_no_new_messages(
    start_broker: Starter, env: DemoEnvironment, amqp_url: str, amqp_prefix: str, tmp_path: Path
) -> None:
    broker = await start_broker()
    export = tmp_path / "police-crime.csv"
    export.write_bytes((SAMPLES_DIR / "police-crime.csv").read_bytes())
    signer = env.signers["derbyshire-police"]
    state = tmp_path / "state.jsonl"
    first = await amqp_push(export, signer, amqp_url, amqp_prefix, state, mapping="police-crime")
    assert first.confirmed == 300
    await wait_processed(broker, 300)
    released_before = len(audit_entries(db(broker), "released"))
    again = await amqp_push(export, signer, amqp_url, amqp_prefix, state, mapping="police-crime")
    assert (again.sent, again.skipped, again.exit_code) == (0, 300, ExitCode.OK)
    # Without the state (another machine, a lost file): everything goes again, and the broker
    # recognises every message as a duplicate: no new release.
    resent = await amqp_push(export, signer, amqp_url, amqp_prefix, state, mapping="police-crime", resend=True)
    assert resent.sent == resent.confirmed == 300
    await wait_processed(broker, 600)
    assert broker.pipeline is not None
    assert broker.pipeline.stats.duplicates == 300
    audit = audit_by_kind(broker)
    assert set(audit["duplicate"]) == set(expected_ids(export, "police-crime", signer))
    assert len(audit_entries(db(broker), "released")) == released_before


async def test_bad_rows_are_reported_and_the_good_rows_accepted(
    start_broker: Starter, env: DemoEnvironment, amqp_url: str, amqp_prefix: str, tmp_path: Path
) -> None:
    broker = await start_broker()
    kind = KINDS["ae-istv"]
    signer = env.signers[kind.partner]
    # A file with a direct-identifier column is refused whole: nothing reaches RabbitMQ.
    leaky = export_rows(kind, sample_records(kind, 30, seed=41), seed=41)
    for row in leaky:
        row["Patient DOB"] = "01/01/2010"
    write_rows(kind, leaky, tmp_path / "leaky.csv")
    refused = await amqp_push(
        tmp_path / "leaky.csv", signer, amqp_url, amqp_prefix, tmp_path / "s.jsonl", mapping="ae-istv"
    )
    assert refused.exit_code == ExitCode.FILE_REFUSED
    assert refused.sent == 0
    assert [(r["column"], r["reason"]) for r in read_report(tmp_path / "leaky.report.csv")] == [
        ("Patient DOB", "direct_identifier_column")
    ]
    rows = export_rows(kind, sample_records(kind, 60, seed=42), seed=42)
    rows[2]["Arrival Time"] = ""  # row 4: a required value missing
    rows[10]["Incident Date"] = "2026-10-09"  # row 12: wrong date format
    rows[20]["Location Type"] = "NIGHTCLUB"  # row 22: not in the code table
    rows[30]["Age at Arrival"] = "200"  # row 32: the schema's limit
    write_rows(kind, rows, tmp_path / "ed.csv")
    summary = await amqp_push(
        tmp_path / "ed.csv", signer, amqp_url, amqp_prefix, tmp_path / "s.jsonl", mapping="ae-istv"
    )
    assert summary.exit_code == ExitCode.ROWS_FAILED
    assert (summary.rejected_locally, summary.sent, summary.confirmed) == (4, 56, 56)
    report = read_report(tmp_path / "ed.report.csv")
    assert [(r["row"], r["column"], r["reason"]) for r in report] == [
        ("4", "Arrival Time", "missing_value"),
        ("12", "Incident Date + Incident Time", "bad_date"),
        ("22", "Location Type", "unknown_code"),
        ("32", "Age at Arrival", "schema_invalid"),
    ]
    await wait_processed(broker, 56)
    await asyncio.sleep(0.3)
    assert broker.pipeline is not None
    assert broker.pipeline.stats.processed == broker.pipeline.stats.accepted == 56  # only the good rows arrived
    bad_ids = {signer.message_id(rows[i]["Attendance No"]) for i in (2, 10, 20, 30)}
    assert not bad_ids & set(audit_by_kind(broker)["received"])


async def run_cli(*args: str | Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker.cli", *map(str, args),
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_receipts_map_the_brokers_verdicts_back_to_rows(
    start_broker: Starter, env: DemoEnvironment, amqp_url: str, amqp_prefix: str, tmp_path: Path
) -> None:
    broker = await start_broker()
    kind = KINDS["police-crime"]
    police = env.signers["derbyshire-police"]
    state = tmp_path / "state" / "derbyshire-police.police_sv_offence.state.jsonl"
    write_sample("police-crime", tmp_path / "good.csv", 40, seed=51)
    write_sample("police-crime", tmp_path / "wrong-key.csv", 10, seed=52)
    await amqp_push(tmp_path / "good.csv", police, amqp_url, amqp_prefix, state, mapping="police-crime")
    # Signed with a key the broker's registry does not know: RabbitMQ confirms, the broker refuses.
    wrong = await amqp_push(
        tmp_path / "wrong-key.csv", env.stranger, amqp_url, amqp_prefix, state, mapping="police-crime"
    )
    assert wrong.confirmed == 10
    await wait_processed(broker, 50)
    code, _out, err = await run_cli(
        "adapter", "receipts", "--partner", "derbyshire-police", "--amqp-url", amqp_url,
        "--amqp-prefix", amqp_prefix, "--state-dir", tmp_path / "state", "--out", tmp_path / "receipts.csv",
        "--wait", "20",
    )  # fmt: skip
    assert code == 1, err  # some were rejected
    assert "accepted 40" in err
    assert "rejected 10 (unknown_key 10)" in err
    with (tmp_path / "receipts.csv").open(newline="") as fh:
        receipts = list(csv.DictReader(fh))
    by_file = Counter((r["file"], r["status"], r["reason"]) for r in receipts)
    assert by_file == {("good.csv", "accepted", ""): 40, ("wrong-key.csv", "rejected", "unknown_key"): 10}
    good_keys = {row["Crime Reference"] for row in export_rows(kind, sample_records(kind, 40, seed=51), seed=51)}
    assert {r["record_key"] for r in receipts if r["status"] == "accepted"} == good_keys
    assert all(r["row"] and int(r["row"]) >= 2 for r in receipts)
    # The verdicts are in the state: the refused rows are sent again by the next push.
    with StateFile(state, partner="derbyshire-police", event_type="police_sv_offence") as loaded:
        assert Counter(e.status for e in loaded) == {Status.ACCEPTED: 40, Status.REJECTED: 10}
    again = await amqp_push(tmp_path / "wrong-key.csv", police, amqp_url, amqp_prefix, state, mapping="police-crime")
    assert (again.sent, again.confirmed) == (10, 10)
    await wait_processed(broker, 60)
    assert broker.pipeline is not None
    assert broker.pipeline.stats.accepted == 50
    # The queue was emptied: a second read finds nothing new.
    code, out, err = await run_cli(
        "adapter", "receipts", "--partner", "derbyshire-police", "--amqp-url", amqp_url,
        "--amqp-prefix", amqp_prefix, "--state-dir", tmp_path / "state", "--wait", "20",
    )  # fmt: skip
    assert code == 0, err
    assert "10 receipt(s): accepted 10" in out


async def drain_queue(amqp_url: str, name: str) -> list[dict[str, Any]]:
    """Every message on a queue, taken off it, as JSON."""
    import json

    import aio_pika

    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(name, ensure=True)
        out = []
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            out.append(json.loads(message.body))
        return out
    finally:
        await connection.close()


def edit_csv(export: Path, change: Callable[[list[dict[str, str]]], list[dict[str, str]]]) -> list[dict[str, str]]:
    with export.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        columns = list(reader.fieldnames or [])
        rows = change(list(reader))
    with export.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return rows


async def test_corrections_and_withdrawals_over_rabbitmq_reach_the_consumer_queues_under_the_same_record_ids(
    start_broker: Starter, env: DemoEnvironment, amqp_url: str, amqp_prefix: str, tmp_path: Path
) -> None:
    broker = await start_broker()
    signer = env.signers["uhdb-royal-derby-ed"]
    export = tmp_path / "ae-istv.csv"
    export.write_bytes((SAMPLES_DIR / "ae-istv.csv").read_bytes())
    state_dir = tmp_path / "state"
    state = state_dir / "uhdb-royal-derby-ed.ae_assault.state.jsonl"
    first = await amqp_push(export, signer, amqp_url, amqp_prefix, state, mapping="ae-istv")
    assert first.confirmed == 300
    await wait_processed(broker, 300)
    released = audit_entries(db(broker), "released")
    holders: dict[str, dict[str, str]] = {}  # first message id -> consumer -> record id
    for entry in released:
        holders.setdefault(entry["message_id"], {})[entry["consumer"]] = entry["record_id"]
    for consumer in {e["consumer"] for e in released}:
        await drain_queue(amqp_url, Names(amqp_prefix).consumer_queue(consumer))  # the first releases

    def flip(rows: list[dict[str, str]]) -> list[dict[str, str]]:
        for row in rows:
            if signer.message_id(row["Attendance No"]) in edited_ids:
                row["Gender"] = "2" if row["Gender"] == "1" else "1"
        return rows

    edited_ids = list(holders)[:3]
    edit_csv(export, flip)
    second = await amqp_push(export, signer, amqp_url, amqp_prefix, state, mapping="ae-istv")
    assert (second.sent, second.corrections, second.confirmed, second.skipped) == (3, 3, 3, 297)
    await wait_processed(broker, 303)
    for first_id in edited_ids:
        entries = audit_entries(db(broker), "released", message_id=f"{first_id}:r2")
        assert {(e["consumer"], e["record_id"], e["revision"]) for e in entries} == {
            (consumer, record, 2) for consumer, record in holders[first_id].items()
        }
    by_consumer: dict[str, set[str]] = {}
    for first_id in edited_ids:
        for consumer in holders[first_id]:
            by_consumer.setdefault(consumer, set()).add(holders[first_id][consumer])
    for consumer, records in by_consumer.items():
        bodies = await drain_queue(amqp_url, Names(amqp_prefix).consumer_queue(consumer))
        assert {(b["record_id"], b["revision"]) for b in bodies} == {(r, 2) for r in records}

    # the receipts say which rows were corrected, at which revision
    code, _out, err = await run_cli(
        "adapter", "receipts", "--partner", signer.partner, "--amqp-url", amqp_url, "--amqp-prefix", amqp_prefix,
        "--state-dir", state_dir, "--out", tmp_path / "receipts.csv", "--wait", "20",
    )  # fmt: skip
    assert code == 0, err
    assert "303 receipt(s): accepted 303 (corrected 3, withdrawn 0), duplicate 0; rejected 0" in err
    with (tmp_path / "receipts.csv").open(newline="") as fh:
        corrected = [r for r in csv.DictReader(fh) if r["change"]]
    assert sorted((r["message_id"], r["revision"], r["change"]) for r in corrected) == sorted(
        (f"{i}:r2", "2", "corrected") for i in edited_ids
    )

    # withdrawn by record key, through the CLI: every holder's queue gets the notice
    gone = edited_ids[0]
    key = expected_ids(export, "ae-istv", signer)[gone]
    code, out, err = await run_cli(
        "adapter", "withdraw", key, "--reason", "sent_in_error", "--mapping", "ae-istv",
        "--key", env.keys_dir / "private" / f"{signer.kid}.key.pem", "--amqp-prefix", amqp_prefix,
        "--state-dir", state_dir, "--no-progress",
        env={**os.environ, "SV_ADAPTER_AMQP_URL": amqp_url},
    )  # fmt: skip
    assert code == 0, err
    assert re.search(r"as withdrawals +1 ", out), out
    await wait_processed(broker, 304)
    for consumer, record in holders[gone].items():
        [notice] = await drain_queue(amqp_url, Names(amqp_prefix).consumer_queue(consumer))
        assert (notice["notice"], notice["record_id"], notice["revision"], notice["reason"]) == (
            "withdrawn",
            record,
            3,
            "sent_in_error",
        )
    assert "rejected" not in audit_by_kind(broker)


def child_pids(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the worker process")
async def test_killed_half_way_and_run_again_completes_the_file_without_loss_or_double_release(
    start_broker: Starter, env: DemoEnvironment, amqp_url: str, amqp_prefix: str, tmp_path: Path
) -> None:
    broker = await start_broker()
    signer = env.signers["uhdb-royal-derby-ed"]
    export = tmp_path / "ed-backfill.csv"
    rows = write_sample("ae-istv", export, 10_000, seed=61, days=120)  # a realistic multi-month backfill
    state = tmp_path / "state.jsonl"
    key = env.keys_dir / "private" / f"{signer.kid}.key.pem"
    command = [
        sys.executable, "-m", "broker.cli", "adapter", "push", str(export), "--mapping", "ae-istv",
        "--key", str(key), "--amqp-prefix", amqp_prefix, "--state", str(state), "--no-progress",
    ]  # fmt: skip
    child_env = {**os.environ, "SV_ADAPTER_AMQP_URL": amqp_url}  # the URL (with its password) not in argv
    proc = await asyncio.create_subprocess_exec(
        *command, cwd=REPO, env=child_env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    workers: set[int] = set()
    for _ in range(3000):
        workers |= set(child_pids(proc.pid))
        lines = state.read_bytes().count(b"\n") if state.exists() else 0
        if lines > 1500 or proc.returncode is not None:
            break
        await asyncio.sleep(0.01)
    assert proc.returncode is None, "the push finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    confirmed_before = state.read_bytes().count(b"\n") - 1
    assert 1500 <= confirmed_before < rows
    assert workers, "a 10,000-row file is prepared in a worker process"
    for _ in range(100):  # the worker notices its parent is gone and exits
        if not any(alive(pid) for pid in workers):
            break
        await asyncio.sleep(0.1)
    assert not any(alive(pid) for pid in workers)

    second = await asyncio.create_subprocess_exec(
        *command, cwd=REPO, env=child_env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(second.communicate(), timeout=120)
    assert second.returncode == 0, err.decode()[-2000:]
    summary = out.decode()
    assert f"already confirmed      {confirmed_before:>9,}" in summary

    expected = expected_ids(export, "ae-istv", signer)
    assert len(expected) == rows
    for _ in range(600):
        audit = audit_by_kind(broker)
        if set(expected) <= set(audit.get("received", {})):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # let the last batch's audit entries land
    audit = audit_by_kind(broker)
    assert set(audit["received"]) == set(expected)  # nothing lost (and nothing else arrived)
    released = Counter((e["message_id"], e["consumer"]) for e in audit_entries(db(broker), "released"))
    assert released
    assert max(released.values()) == 1
    decided = {m for m, _ in released} | set(audit.get("withheld", {}))
    assert decided == set(expected)
    # what the killed run had published but not yet recorded came again, as duplicates
    resent = sum(audit["received"].values()) - len(expected)
    assert sum(audit.get("duplicate", Counter()).values()) == resent
    assert resent <= 256 + 32 + 2 * 256  # at most the window, its queue and the unsynced state batches

    # Corrections killed half-way, and the rows edited again before the re-run: a revision that
    # may have reached the broker is never sent again with other content (it would be "replayed").
    def flip(rows: list[dict[str, str]]) -> list[dict[str, str]]:
        for row in rows:
            row["Gender"] = "2" if row["Gender"] == "1" else "1"
        return rows

    edit_csv(export, flip)
    lines_before = state.read_bytes().count(b"\n")
    proc = await asyncio.create_subprocess_exec(
        *command, cwd=REPO, env=child_env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    for _ in range(3000):
        if state.read_bytes().count(b"\n") - lines_before > 3000 or proc.returncode is not None:
            break
        await asyncio.sleep(0.01)
    assert proc.returncode is None, "the correction push finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    with StateFile(state, partner=signer.partner, event_type="ae_assault") as loaded:
        tops = Counter((e.revision, e.status) for e in loaded)
    assert tops[(2, Status.SENDING)] > 0  # written ahead, no confirm recorded: it may have arrived
    assert tops[(1, Status.CONFIRMED)] > 0  # not reached yet

    def older(rows: list[dict[str, str]]) -> list[dict[str, str]]:
        for row in rows:
            row["Age at Arrival"] = str(int(row["Age at Arrival"]) + 1)
        return rows

    final = edit_csv(export, older)
    third = await asyncio.create_subprocess_exec(
        *command, cwd=REPO, env=child_env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(third.communicate(), timeout=300)
    assert third.returncode == 0, err.decode()[-2000:]
    with StateFile(state, partner=signer.partner, event_type="ae_assault") as loaded:
        latest = {e.key: e for e in loaded}
    assert {e.status for e in latest.values()} == {Status.CONFIRMED}
    revisions = Counter(e.revision for e in latest.values())
    assert set(revisions) == {2, 3}  # 3: where revision 2 may have carried the first edit
    assert sum(revisions.values()) == len(final) == rows
    wanted = {latest[key].message_id for key in latest}
    for _ in range(600):
        if wanted <= set(audit_by_kind(broker).get("received", {})):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    audit = audit_by_kind(broker)
    assert wanted <= set(audit["received"])
    assert "rejected" not in audit  # no revision was ever sent with two contents


@pytest.mark.parametrize(
    ("user_id", "prefix_exists", "expected"),
    [
        ("guest", False, "NOT_FOUND - no exchange"),  # wrong prefix, or the broker never started
        ("derbyshire-police", True, "PRECONDITION_FAILED"),  # RabbitMQ checks user_id against the login
    ],
)
async def test_refused_publishes_stop_the_push_with_the_reason_and_record_nothing(
    start_broker: Starter,
    env: DemoEnvironment,
    amqp_url: str,
    amqp_prefix: str,
    tmp_path: Path,
    user_id: str,
    prefix_exists: bool,
    expected: str,
) -> None:
    if prefix_exists:
        await start_broker()
    export = tmp_path / "police-crime.csv"
    export.write_bytes((SAMPLES_DIR / "police-crime.csv").read_bytes())
    mapping = load_mapping("police-crime")
    signer = env.signers["derbyshire-police"]
    state = tmp_path / "state.jsonl"
    opts = PushOptions(export, mapping, signer, state, tmp_path / "report.csv", progress=False)
    summary = await push(
        opts,
        lambda on_result: AmqpSink(
            amqp_url, amqp_prefix, signer.partner, mapping.event_type, on_result, user_id=user_id, confirm_timeout=10
        ),
    )
    assert summary.exit_code == ExitCode.NOT_CONFIRMED
    assert expected in summary.aborted
    assert summary.confirmed == 0
    with StateFile(state, partner="derbyshire-police", event_type="police_sv_offence") as loaded:
        assert list(loaded) == []
