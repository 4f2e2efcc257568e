"""Issue 14 item 1: figures-only flows. The broker counts each event under the flow's rules, and
releases, per quarter by event date, disclosure-controlled count tables: audited, traced,
recounted and re-released as a new revision after a correction or withdrawal; a figures-only
consumer never receives a record.

Embedded broker on the shipped sample agreements (``dsa-sv-board-figures-2026``: police and A&E
figures to the Serious Violence Board and the VRU). The events' own dates fall in the quarter
before today's (so it has ended), and the job is run at that quarter's due time or now, whichever
is later: no fixed date.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest

from adapters.synthetic import SyntheticGenerator
from broker.demo import DemoEnvironment
from broker.errors import PolicyError
from broker.figures.board import board_from_json, period_of
from broker.figures.specs import Quarter, quarter_end, quarter_start
from broker.pipeline.figures import due_at
from broker.pipeline.trail import trace_entries
from broker.policy.decision import contribution_id, figures_id
from broker.policy.loader import load_policy
from broker.registry import load_registry
from broker.service import Broker
from broker.stages.outcome import Accepted
from broker.stages.types import Inbound
from schemas.messages import CONSUMER_FIGURES
from schemas.schema_files import SCHEMA_DIR
from tests import test_broker_amqp
from tests.helpers import audit_entries
from tests.test_broker_amqp import Starter
from tests.test_console import Console
from tests.test_http_access import auth, token
from tests.test_lineage import consumer_bodies
from tests.test_reload import broker_on, own_copy

start_broker = test_broker_amqp.start_broker

POLICE = "derbyshire-police"
BOARD, VRU, COUNTY_CSP = "sv-board", "derbyshire-vru", "derbyshire-csp-analysts"
AGREEMENT, FLOW = "dsa-sv-board-figures-2026", "police-figures-to-board"
DISTRICTS = ("E06000015", "E07000032", "E07000034", "E07000035", "E07000036", "E07000037", "E07000038", "E07000039")


def last_quarter(now: datetime) -> Quarter:
    return Quarter.of(now.date()).previous()


def offence(seed: int, quarter: Quarter, district: str | None = None) -> dict[str, Any]:
    """A police offence dated inside ``quarter`` (UTC noon, so no BST edge moves its day)."""
    rng = random.Random(seed)
    data = SyntheticGenerator(seed=seed).for_partner(POLICE, "police_sv_offence").data()
    start = quarter_start(quarter)
    days = (quarter_end(quarter) - start).days
    day = start + timedelta(days=rng.randrange(days + 1))
    data["offence_datetime"] = f"{day.isoformat()}T{rng.choice(('02', '12', '21'))}:30:00Z"
    data["district"] = district or rng.choice(DISTRICTS)
    return data


def sign(
    env: DemoEnvironment, data: dict[str, Any], key: str, revision: int = 1, withdrawn: str | None = None
) -> bytes:
    return env.signers[POLICE].sign_bytes(
        "police_sv_offence", data, source_key=key, revision=revision, withdrawn=withdrawn
    )


async def send(broker: Broker, bodies: list[bytes]) -> list[Accepted]:
    assert broker.pipeline is not None
    outcomes = await broker.pipeline.process([Inbound(b) for b in bodies])
    assert all(isinstance(o, Accepted) for o in outcomes), [getattr(o, "reason", o) for o in outcomes]
    return [o for o in outcomes if isinstance(o, Accepted)]


async def feed(broker: Broker, consumer: str, *, history: bool = False) -> list[tuple[str, str, int, dict[str, Any]]]:
    assert broker.store is not None
    rows = await broker.store.feed_page(consumer, after=0, limit=1000, history=history)
    return [(r.record_id, r.kind, r.revision, json.loads(r.body)) for r in rows]


def release_time(broker: Broker, quarter: Quarter) -> datetime:
    return max(broker.clock(), due_at(14, quarter).astimezone(UTC) + timedelta(minutes=1))


def district_counts(doc: dict[str, Any]) -> dict[str, int | str]:
    section = next(s for s in doc["sections"] if s["event_type"] == "police_sv_offence")
    table = next(t for t in section["tables"] if t["table"] == "police_sv_offence.where")
    cells: dict[str, int | str] = table["cells"]
    return cells


@pytest.fixture
async def broker(env: DemoEnvironment, tmp_path: Path) -> Any:
    policy, keys = own_copy(env, tmp_path)
    instance = broker_on(env, policy, keys, tmp_path / "data")
    await instance.start()
    try:
        yield instance
    finally:
        await instance.stop()


async def test_a_figures_only_consumer_gets_the_quarter_as_protected_tables_never_a_record(
    env: DemoEnvironment, broker: Broker
) -> None:
    quarter = last_quarter(broker.clock())
    events = [offence(i, quarter) for i in range(120)]
    accepted = await send(broker, [sign(env, e, f"F-{i}") for i, e in enumerate(events)])

    # Counted, never sent: no feed row for the Board or the VRU from the police figures flow.
    assert await feed(broker, BOARD) == []
    assert all(kind != "record" or body["agreement"]["id"] != AGREEMENT for _, kind, _, body in await feed(broker, VRU))
    assert all(not any(r.release.consumer == BOARD for r in o.records) for o in accepted)
    counted = audit_entries(broker.settings.data_dir / "broker.db", "counted")
    fid = figures_id(BOARD, AGREEMENT, FLOW, str(quarter))
    # One entry per message and figures flow, naming each consumer it is counted for.
    assert len(counted) == len(events)
    assert all(e["consumers"] == [BOARD, VRU] and e["figures_ids"][0] == fid for e in counted)
    assert {e["period"] for e in counted} == {str(quarter)}
    # The county CSP still gets its records under its own agreement: the figures flow took nothing away.
    assert any(kind == "record" for _, kind, _, _ in await feed(broker, COUNTY_CSP))

    run = await broker.release_figures(release_time(broker, quarter))
    assert run.released >= 2  # the Board's and the VRU's quarter
    [(rid, kind, revision, doc)] = await feed(broker, BOARD)
    assert (rid, kind, revision) == (fid, "figures", 1)
    CONSUMER_FIGURES.validate_python(doc)  # the message definition holds ...
    schema = json.loads((SCHEMA_DIR / "consumer_figures.v1.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(schema).validate(doc)  # ... and so does the exported file a client reads
    assert not jsonschema.Draft202012Validator(schema).is_valid({k: v for k, v in doc.items() if k != "figures_id"})
    assert doc["period"] == str(quarter)
    assert doc["period_basis"] == "event date"
    assert doc["counted"] == len(events)
    assert doc["agreement"]["id"] == AGREEMENT
    assert doc["disclosure_check"]["protected"] is True

    # Its numbers are the events' own, counted here independently (where a cell is shown).
    truth = Counter(e["district"] for e in events)
    shown = district_counts(doc)
    board = board_from_json(doc)
    where = board.table("police_sv_offence.where")
    assert where.values[0][-1] == len(events)  # the total is never suppressed here
    for label, value in shown.items():
        code = label.rsplit("(", 1)[-1].rstrip(")")
        if value != "[c]":
            assert value == truth[code], label
    # Small cells are never shown (the partnership's rule for police counts: 1..4).
    assert all(v == "[c]" or v == 0 or v > 4 for v in shown.values())

    # Audited once, with the SHA-256 of the very bytes in the feed; traced from a counted event.
    [entry] = [
        e for e in audit_entries(broker.settings.data_dir / "broker.db", "figures_released") if e["record_id"] == fid
    ]
    assert broker.store is not None
    [row] = await broker.store.feed_page(BOARD, after=0, limit=10)
    assert entry["record_sha256"] == hashlib.sha256(row.body).hexdigest()
    assert (entry["revision"], entry["counted"], entry["period"]) == (1, len(events), str(quarter))
    first = accepted[0].validated.envelope
    contribution = contribution_id(POLICE, first.lineage, AGREEMENT, FLOW)
    kinds = [json.loads(b)["kind"] for b in (await trace_entries(broker.store, contribution, first.id)).values()]
    assert kinds[:2] == ["received", "counted"]
    assert "figures_released" in kinds

    # Nothing changed: nothing is released again.
    again = await broker.release_figures(release_time(broker, quarter))
    assert again.released == 0
    assert len(await feed(broker, BOARD, history=True)) == 1


async def test_a_correction_or_withdrawal_recounts_the_quarter_as_a_new_revision(
    env: DemoEnvironment, broker: Broker
) -> None:
    quarter = last_quarter(broker.clock())
    derby, erewash = "E06000015", "E07000036"
    events = [offence(i, quarter, derby if i % 2 else erewash) for i in range(60)]
    await send(broker, [sign(env, e, f"C-{i}") for i, e in enumerate(events)])
    at = release_time(broker, quarter)
    await broker.release_figures(at)
    [(_, _, _, before)] = await feed(broker, BOARD)
    assert before["counted"] == 60

    # Five Erewash offences were really in Derby; three more were sent in error.
    moved = [i for i in range(60) if i % 2 == 0][:5]
    withdrawn = [i for i in range(60) if i % 2 == 0][5:8]
    bodies = [sign(env, events[i] | {"district": derby}, f"C-{i}", revision=2) for i in moved]
    bodies += [sign(env, {}, f"C-{i}", revision=2, withdrawn="sent_in_error") for i in withdrawn]
    await send(broker, bodies)
    # Not re-released before the job runs; then once, as revision 2, under the same figures id.
    assert [r for _, _, r, _ in await feed(broker, BOARD)] == [1]
    run = await broker.release_figures(at + timedelta(minutes=1))
    assert run.released >= 1
    [(fid, kind, revision, after)] = await feed(broker, BOARD)
    assert (fid, kind, revision) == (before["figures_id"], "figures", 2)
    assert after["counted"] == 57
    cells = district_counts(after)
    assert cells["Derby (E06000015)"] == 35
    assert cells["Erewash (E07000036)"] == 22
    assert [r for _, _, r, _ in await feed(broker, BOARD, history=True)] == [1, 2]
    revisions = [e["revision"] for e in audit_entries(broker.settings.data_dir / "broker.db", "figures_released")
                 if e["record_id"] == fid]  # fmt: skip
    assert revisions == [1, 2]


async def test_a_quarter_is_not_released_before_it_is_due(env: DemoEnvironment, broker: Broker) -> None:
    now = broker.clock()
    quarter = Quarter.of(now.date())  # this quarter: not ended, so not due
    data = offence(7, quarter)
    data["offence_datetime"] = (now - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:00Z")
    if Quarter.of((now - timedelta(hours=2)).date()) != quarter:  # the first hours of a quarter
        pytest.skip("the quarter began less than two hours ago")
    await send(broker, [sign(env, data, "N-1")])
    run = await broker.release_figures(now)
    assert run.released == 0
    assert run.waiting >= 1
    assert await feed(broker, BOARD) == []
    # Due 14 days after it ends: then released.
    later = await broker.release_figures(due_at(14, quarter).astimezone(UTC) + timedelta(minutes=1))
    assert later.released >= 1
    assert [k for _, k, _, _ in await feed(broker, BOARD)] == ["figures"]


POLICE_FLOW = (
    '[[flows]]\nid = "board-x"\npartners = ["derbyshire-police"]\nevent_type = "police_sv_offence"\nversions = [1]\n'
)


def write_flow(tmp: Path, flow: str) -> Path:
    src = Path(__file__).resolve().parents[1] / "policies" / "agreements" / "dsa-sv-board-figures-2026.toml"
    text = src.read_text()
    head = text[: text.index("[[flows]]")].replace('"derbyshire-police",', '"derbyshire-police", "derby-pubwatch",', 1)
    (tmp / "agreements").mkdir(parents=True, exist_ok=True)
    (tmp / "agreements" / src.name).write_text(head + flow)
    (tmp / "parties.toml").write_text((src.parents[1] / "parties.toml").read_text())
    return tmp


@pytest.mark.parametrize(
    ("flow", "message"),
    [
        (  # no event date released: there is no quarter by event date
            POLICE_FLOW
            + 'consumers = ["sv-board"]\nrules = [{ id = "x-keep", field = "knife_involved", action = "keep" }]\n'
            "figures = {}\n",
            "must release the event's date",
        ),
        (  # the figures know police and A&E events
            '[[flows]]\nid = "board-x"\npartners = ["derby-pubwatch"]\nevent_type = "nte_incident"\nversions = [1]\n'
            'consumers = ["sv-board"]\nrules = [{ id = "x-keep", field = "category", action = "keep" }]\n'
            "figures = {}\n",
            "figures are computed for",
        ),
        (
            POLICE_FLOW + 'consumers = ["sv-board"]\nrule_set = "police-figures"\nfigures = { round_to = 3 }\n',
            "figures.round_to must be one of",
        ),
        (
            POLICE_FLOW + 'consumers = ["sv-board"]\nrule_set = "police-figures"\nfigures = { rules = "lenient" }\n',
            "figures.rules",
        ),
        (
            POLICE_FLOW
            + 'consumers = ["sv-board"]\nrule_set = "police-figures"\nfigures = { release_after_days = 200 }\n',
            "release_after_days",
        ),
    ],
)
def test_a_figures_flow_that_cannot_give_quarterly_figures_is_refused(
    env: DemoEnvironment, tmp_path: Path, flow: str, message: str
) -> None:
    policy_dir = write_flow(tmp_path / "policies", flow)
    registry = load_registry(policy_dir, env.keys_dir)
    with pytest.raises(PolicyError) as caught:
        load_policy(policy_dir, registry, {})
    assert message in str(caught.value)


async def test_the_board_pack_over_http_is_the_released_figures_for_their_own_consumer_only(
    env: DemoEnvironment, broker: Broker
) -> None:
    quarter = last_quarter(broker.clock())
    events = [offence(i, quarter) for i in range(80)]
    await send(broker, [sign(env, e, f"H-{i}") for i, e in enumerate(events)])
    await broker.release_figures(release_time(broker, quarter))
    [(_, _, _, released)] = await feed(broker, BOARD)
    url = f"{broker.url}/v1/feeds/{BOARD}/board"
    mine = auth(token(broker, "analyst", BOARD))
    async with aiohttp.ClientSession() as session:
        async with session.get(url, params={"quarter": str(quarter)}, headers=mine) as resp:
            assert resp.status == 200
            pack = await resp.json()
        assert pack["built_from"] == "figures"
        assert pack["events"] == {"police_sv_offence": 80}
        [police] = [s for s in pack["sections"] if s["event_type"] == "police_sv_offence"]
        [section] = [s for s in released["sections"] if s["event_type"] == "police_sv_offence"]
        assert police["tables"] == section["tables"]  # the pack is the release, not a recount
        async with session.get(url, params={"quarter": str(quarter), "format": "html"}, headers=mine) as resp:
            assert resp.status == 200
            assert resp.content_type == "text/html"
            page = await resp.text()
        assert page.count("src='data:image/png;base64,") >= 5
        assert "[c]" in page
        # A bad quarter is a 400 with its code; another consumer's pack is a 403, audited.
        async with session.get(url, params={"quarter": "2026-Q5"}, headers=mine) as resp:
            assert resp.status == 400
            assert (await resp.json())["reason"] == "bad_quarter"
        other = auth(token(broker, "analyst", COUNTY_CSP))
        async with session.get(url, params={"quarter": str(quarter)}, headers=other) as resp:
            assert resp.status == 403
            assert (await resp.json())["reason"] == "not_your_feed"
        # The CSV feed of a figures consumer names each release by its figures id.
        async with session.get(
            f"{broker.url}/v1/feeds/{BOARD}/records", params={"format": "csv"}, headers=mine
        ) as resp:
            assert resp.status == 200
            lines = (await resp.text()).splitlines()
        assert lines[1].startswith(released["figures_id"] + ",")
        assert ",figures," in lines[1]
    reads = [
        e for e in audit_entries(broker.settings.data_dir / "broker.db", "accessed") if e.get("resource") == "board"
    ]
    assert reads
    assert reads[0]["record_ids"] == [released["figures_id"]]


async def test_a_feed_is_read_by_event_date_not_release_time(env: DemoEnvironment, broker: Broker) -> None:
    quarter = last_quarter(broker.clock())
    events = [offence(i, quarter, "E07000032") for i in range(30)]  # Amber Valley: the county CSP's
    events += [offence(100 + i, quarter.previous(), "E07000032") for i in range(10)]
    await send(broker, [sign(env, e, f"P-{i}") for i, e in enumerate(events)])
    rows = await feed(broker, COUNTY_CSP)
    # The county CSP's records release the offence week: a week counts in the quarter of its Thursday.
    expected = sum(
        1 for _, kind, _, body in rows if kind == "record" and period_of(body["data"]["offence_week"]) == quarter
    )
    assert 20 <= expected <= 30
    mine = auth(token(broker, "analyst", COUNTY_CSP))
    url = f"{broker.url}/v1/feeds/{COUNTY_CSP}/records"
    async with aiohttp.ClientSession() as session:
        async with session.get(url, params={"period": str(quarter), "limit": "1000"}, headers=mine) as resp:
            assert resp.status == 200
            page = await resp.json()
        async with session.get(url, params={"period": "2026-13"}, headers=mine) as resp:
            assert resp.status == 400
            assert (await resp.json())["reason"] == "bad_quarter"
    assert page["count"] == expected
    assert all(period_of(r["data"]["offence_week"]) == quarter for r in page["records"])


async def test_the_console_shows_each_figures_release_and_its_pack_as_released(
    env: DemoEnvironment, broker: Broker
) -> None:
    quarter = last_quarter(broker.clock())
    await send(broker, [sign(env, offence(i, quarter), f"K-{i}") for i in range(60)])
    await broker.release_figures(release_time(broker, quarter))
    console = Console(broker)
    try:
        status, _ = await console.sign_in(token(broker, "ig", sub="ig.lead@example.org"))
        assert status == 303
        status, page, headers = await console.get("/console/figures")
        assert status == 200
        assert "sv-board" in page
        assert str(quarter) in page
        assert headers["Content-Security-Policy"].startswith("default-src 'none'; style-src 'self'")
        status, pack, headers = await console.get("/console/figures/pack", consumer=BOARD, quarter=str(quarter))
        assert status == 200
        assert "<style>" not in pack
        assert "/console/static/board.css" in pack
        assert "data:image/png;base64," in pack
        assert "60 events counted" in pack
        assert "style-src 'self'" in headers["Content-Security-Policy"]  # no inline style, no script
        status, css, _ = await console.get("/console/static/board.css")
        assert status == 200
        assert "@page" in css
        status, _, _ = await console.get("/console/figures/pack", consumer=BOARD, quarter="2019-Q1")
        assert status == 404
        status, _, _ = await console.get("/console/figures/pack", consumer="<script>", quarter=str(quarter))
        assert status == 400
    finally:
        await console.close()


def test_round_to_rounds_every_shown_figure_and_says_so() -> None:
    from broker.figures.board import build_board

    quarter = Quarter(2026, 3)
    records = [
        {"event_type": "police_sv_offence", "data": {k: v for k, v in offence(i, quarter).items() if k != "lsoa"}
         | {"offence_quarter": str(quarter), "offence_group": ("robbery", "violence_with_injury")[i % 2]}}
        for i in range(200)
    ]  # fmt: skip
    board = build_board(records, quarter, rules="source", rounding_base=5)
    shown = [v for t in board.release.tables for row in t.values for v in row if v is not None]
    assert shown
    assert all(v % 5 == 0 for v in shown)
    what = board.table("police_sv_offence.what")
    assert any("rounded to the nearest 5" in note for note in what.footnotes())


async def test_over_rabbitmq_a_figures_consumer_s_queue_holds_figures_only_each_revision_once(
    start_broker: Starter, env: DemoEnvironment
) -> None:
    harness = await start_broker(user_map={"guest": POLICE})
    quarter = last_quarter(harness.broker.clock())
    events = [offence(i, quarter, "E07000034") for i in range(40)]  # Chesterfield
    key = f"{POLICE}.police_sv_offence"
    for i, data in enumerate(events):
        await harness.publish(sign(env, data, f"Q-{i}"), key, user_id="guest")
    await harness.wait_processed(40)
    assert await consumer_bodies(harness, BOARD) == []  # counted, nothing sent
    assert len(await consumer_bodies(harness, COUNTY_CSP)) == 40  # its records, as ever
    at = release_time(harness.broker, quarter)
    await harness.broker.release_figures(at)
    [first] = await consumer_bodies(harness, BOARD)
    assert (first["period"], first["revision"], first["counted"]) == (str(quarter), 1, 40)
    assert "data" not in first
    assert "record_id" not in first
    # A withdrawal recounts the quarter: revision 2 on the queue, under the same figures id.
    await harness.publish(sign(env, {}, "Q-0", revision=2, withdrawn="sent_in_error"), key, user_id="guest")
    await harness.wait_processed(41)
    await harness.broker.release_figures(at + timedelta(minutes=1))
    [second] = await consumer_bodies(harness, BOARD)
    assert (second["figures_id"], second["revision"], second["counted"]) == (first["figures_id"], 2, 39)
    vru = [b for b in await consumer_bodies(harness, VRU) if "figures_id" in b]
    assert [b["revision"] for b in vru] == [1, 2]
    # Nothing changed since: nothing new on the queue.
    await harness.broker.release_figures(at + timedelta(minutes=2))
    assert await consumer_bodies(harness, BOARD) == []


async def test_the_cli_pack_of_a_figures_consumer_is_its_released_figures(env: DemoEnvironment, broker: Broker) -> None:
    quarter = last_quarter(broker.clock())
    events = [offence(i, quarter) for i in range(50)]
    await send(broker, [sign(env, e, f"R-{i}") for i, e in enumerate(events)])
    await broker.release_figures(release_time(broker, quarter))
    [(_, _, _, released)] = await feed(broker, BOARD)
    out = broker.settings.data_dir.parent / "pack"
    args = [sys.executable, "-m", "broker.cli", "report", "quarterly", "--quarter", str(quarter), "--consumer", BOARD,
            "--data-dir", str(broker.settings.data_dir), "--out", str(out)]  # fmt: skip
    run = await asyncio.to_thread(subprocess.run, args, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "50 events counted in its figures" in run.stdout
    doc = json.loads((out / "board.json").read_text())
    [section] = [s for s in released["sections"] if s["event_type"] == "police_sv_offence"]
    assert doc["sections"][0]["tables"] == section["tables"]  # as released, never recounted
    assert (out / "police_sv_offence.where.png").read_bytes().startswith(b"\x89PNG")


def test_a_board_consumer_in_a_records_flow_is_refused(env: DemoEnvironment, tmp_path: Path) -> None:
    flow = POLICE_FLOW + 'consumers = ["sv-board"]\nrule_set = "police-figures"\n'  # no figures table
    policy_dir = write_flow(tmp_path / "policies", flow)
    with pytest.raises(PolicyError) as caught:
        load_policy(policy_dir, load_registry(policy_dir, env.keys_dir), {})
    assert "receives figures only" in str(caught.value)


async def test_the_released_figures_say_nothing_the_tables_hide(env: DemoEnvironment, broker: Broker) -> None:
    """Few events: the totals are small cells too. Neither the body nor the pack may give them
    (or say which suppressed cells are the small ones); the IG lead's audit entry has them."""
    quarter = last_quarter(broker.clock())
    await send(broker, [sign(env, offence(i, quarter, "E06000015"), f"S-{i}") for i in range(3)])
    await send(broker, [sign(env, offence(50 + i, quarter.previous(), "E06000015"), f"T-{i}") for i in range(30)])
    await broker.release_figures(release_time(broker, quarter))
    [(_, _, _, doc)] = [row for row in await feed(broker, BOARD) if row[3]["period"] == str(quarter)]
    assert doc["counted"] == "[c]"
    assert "not_counted" not in doc
    assert all(set(c) == {"table", "row", "col"} for c in doc["disclosure_check"]["cells"])
    assert doc["disclosure_check"]["suppressed"] == len(doc["disclosure_check"]["cells"]) > 0
    [entry] = [
        e
        for e in audit_entries(broker.settings.data_dir / "broker.db", "figures_released")
        if e["period"] == str(quarter) and e["consumer"] == BOARD
    ]
    assert entry["counted"] == 3
    assert any(c["kind"] == "primary" for c in entry["disclosure_check"]["cells"])
    # A figures consumer asking for a quarter not released: a 404 that says so, not an empty pack.
    mine = auth(token(broker, "analyst", BOARD))
    async with aiohttp.ClientSession() as session:
        url = f"{broker.url}/v1/feeds/{BOARD}/board"
        async with session.get(url, params={"quarter": "2019-Q1"}, headers=mine) as resp:
            assert resp.status == 404
            assert (await resp.json())["reason"] == "figures_not_released"
        async with session.get(url, params={"quarter": str(quarter), "format": "html"}, headers=mine) as resp:
            assert resp.status == 200
            assert "style-src 'sha256-" in resp.headers["Content-Security-Policy"]
            assert resp.headers["X-Content-Type-Options"] == "nosniff"


async def test_a_held_event_released_later_changes_only_its_own_agreement_s_count() -> None:
    from broker.audit.commit_plan import replaced
    from broker.ports.store import ContributionChange

    existing = [("cnt-a", "dsa-a", "fq-a", "f", "2026-Q3"), ("cnt-b", "dsa-b", "fq-b", "g", "2026-Q3")]
    held = ContributionChange("p", "m", "m:r2", True, only_agreement="dsa-a")
    gone, pending = replaced(held, existing)
    assert gone == ["cnt-a"]
    assert [p.figures_id for p in pending] == ["fq-a"]
    live = ContributionChange("p", "m", "m:r2", True, frozenset({"dsa-b"}))
    assert replaced(live, existing)[0] == ["cnt-a"]
