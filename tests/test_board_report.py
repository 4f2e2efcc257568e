"""The quarterly board pack (issue 14 item 3): tables from a consumer's released records.

Records are ``ConsumerRecord``-shaped dicts built here, with event weeks of our choosing: the
board is a pure function of them and the quarter (no broker, no clock).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import random
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker.figures import board_render
from broker.figures.board import DAYS, Board, Quarter, build_board, district_label, period_of
from broker.figures.table import PublishedTable
from broker.ports.sqlite_store import SqliteStore
from broker.ports.store import CommitUnit, StoredRecord
from tests.browser import BROWSER, axe_violations, browser_errors, readme_screenshot

if TYPE_CHECKING:
    from playwright.async_api import Page

Q3 = Quarter(2026, 3)
PNG = b"\x89PNG\r\n\x1a\n"
GROUPS = ("violence_with_injury", "robbery", "possession_of_weapons", "threats_with_weapon")
DISTRICTS = ("E06000015", "E07000034", "E07000032", "E07000036")


def police(i: int, week: str, **over: Any) -> dict[str, Any]:
    rng = random.Random(i)
    day = rng.choice(DAYS)
    part = rng.choice(("night", "morning", "afternoon", "evening"))
    data = {
        "offence_group": rng.choice(GROUPS),
        "offence_week": week,
        "offence_day_of_week": day,
        "offence_day_part": part,
        "in_nte_peak": (day, part) in {("Friday", "evening"), ("Saturday", "evening"), ("Saturday", "night")},
        "district": rng.choice(DISTRICTS),
        "knife_involved": rng.random() < 0.3,
        "victim_age_band": rng.choice(("11-17", "18-24", "25-34")),
        "victim_sex": rng.choice(("male", "female")),
        "suspect_age_band": rng.choice(("11-17", "18-24")),
        "suspect_sex": "male",
    } | over
    return {
        "record_id": f"rec-p{i}",
        "consumer": "derbyshire-csp-analysts",
        "event_type": "police_sv_offence",
        "source": "derbyshire-police",
        "produced_at": "2026-12-01T00:00:00Z",  # the release-side time: never the period
        "agreement": {"id": "dsa-police-sv-csp-2026", "revision": 2},
        "revision": 1,
        "data": data,
    }


def ae(i: int, week: str) -> dict[str, Any]:
    rng = random.Random(1000 + i)
    return {
        "record_id": f"rec-a{i}",
        "consumer": "derbyshire-csp-analysts",
        "event_type": "ae_assault",
        "source": "crh-chesterfield-ed",
        "produced_at": "2026-12-01T00:00:00Z",
        "agreement": {"id": "dsa-istv-ae-2026", "revision": 3},
        "revision": 1,
        "data": {
            "site_code": "RFSDA",
            "arrival_week": week,
            "assault_day_of_week": rng.choice(("Friday", "Saturday", "Sunday")),
            "assault_day_part": rng.choice(("night", "evening")),
            "assault_in_nte_peak": rng.random() < 0.5,
            "assault_method": rng.choice(("body_part", "knife_or_sharp", "blunt_object")),
            "assault_location_type": "street_public_place",
            "patient_age_band": rng.choice(("18-24", "25-34")),
            "patient_sex": rng.choice(("male", "female")),
            "district": "E07000034",
        },
    }


def records(homicide_group_of_last: str = "homicide") -> list[dict[str, Any]]:
    """240 police records in Q3 (weeks 27..39), 2 homicides and 3 attempted murders (small: suppressed),
    60 in Q2 and 30 in Q4 (outside, for the trend and the exclusions), 80 A&E in Q3, one notice."""
    out = [police(i, f"2026-W{27 + i % 13}") for i in range(240)]
    out += [police(300 + i, "2026-W30", offence_group="homicide") for i in range(1)]
    out += [police(310, "2026-W31", offence_group=homicide_group_of_last)]
    out += [police(320 + i, "2026-W33", offence_group="attempted_murder") for i in range(3)]
    out += [police(400 + i, f"2026-W{14 + i % 12}") for i in range(60)]  # Q2 (W26's Thursday is 25 June)
    out += [police(500 + i, f"2026-W{40 + i % 10}") for i in range(30)]  # Q4 (W40's Thursday is 1 October)
    out += [ae(i, f"2026-W{27 + i % 13}") for i in range(80)]
    out.append({"notice": "withdrawn", "record_id": "rec-x", "consumer": "derbyshire-csp-analysts"})
    return out


def in_q3(rec: dict[str, Any]) -> bool:
    week = rec["data"].get("offence_week") or rec["data"].get("arrival_week")
    year, w = week.split("-W")
    return year == "2026" and 27 <= int(w) <= 39


def expected(t: PublishedTable, recs: list[dict[str, Any]]) -> list[list[int]]:
    """The table's extended matrix counted here, independently, from the raw records."""
    event_type, kind = t.name.split(".", 1)
    mine = [r["data"] for r in recs if "data" in r and r["event_type"] == event_type and in_q3(r)]
    yes_no = {True: "Yes", False: "No"}
    key = {
        ("police_sv_offence", "what"): lambda d: d["offence_group"],
        ("police_sv_offence", "knife"): lambda d: yes_no[d["knife_involved"]],
        ("police_sv_offence", "where"): lambda d: district_label(d["district"]),
        ("police_sv_offence", "when"): lambda d: (d["offence_day_of_week"], d["offence_day_part"]),
        ("police_sv_offence", "who.victims"): lambda d: (d["victim_age_band"], d["victim_sex"]),
        ("police_sv_offence", "who.suspects"): lambda d: (d["suspect_age_band"], d["suspect_sex"]),
        ("ae_assault", "what"): lambda d: d["assault_method"],
        ("ae_assault", "where"): lambda d: district_label(d["district"]),
        ("ae_assault", "when"): lambda d: (d["assault_day_of_week"], d["assault_day_part"]),
        ("ae_assault", "who.patients"): lambda d: (d["patient_age_band"], d["patient_sex"]),
    }
    if kind == "trend":
        every = [r for r in recs if "data" in r and r["event_type"] == event_type]
        counts: Counter[Any] = Counter(
            str(period_of(r["data"].get("offence_week") or r["data"]["arrival_week"])) for r in every
        )
        cells = [counts[c] for c in t.cols]
        return [[*cells, sum(cells)], [*cells, sum(cells)]]
    c: Counter[Any] = Counter(key[(event_type, kind)](d) for d in mine)
    if t.one_way:
        cells = [c[col] for col in t.cols]
        return [[*cells, sum(cells)], [*cells, sum(cells)]]
    body = [[c[(r, col)] for col in t.cols] for r in t.rows]
    ext = [[*row, sum(row)] for row in body]
    return [*ext, [*(sum(col) for col in zip(*body, strict=True)), sum(map(sum, body))]]


def board(recs: list[dict[str, Any]] | None = None) -> Board:
    return build_board(records() if recs is None else recs, Q3, consumer="derbyshire-csp-analysts")


def test_every_shown_number_is_the_count_of_the_records_in_the_quarter() -> None:
    recs = records()
    b = board(recs)
    assert b.included == sum(1 for r in recs if "data" in r and in_q3(r)) == 245 + 80
    assert b.excluded["police_sv_offence: event date outside 2026-Q3"] == 90
    assert b.excluded["notice (withdrawn or deleted)"] == 1
    checked = 0
    for t in b.release.tables:
        want = expected(t, recs)
        for i, row in enumerate(t.values):
            for j, v in enumerate(row):
                if v is not None:
                    assert v == want[i][j], (t.name, i, j)
                    checked += 1
    assert checked > 100
    trend = b.table("police_sv_offence.trend")
    assert trend.cols == ("2026-Q2", "2026-Q3")  # Q4 is after the report's quarter: not in its trend


def test_small_counts_are_suppressed_and_shown_as_c_in_html_csv_and_json() -> None:
    b = board()
    what = b.table("police_sv_offence.what")
    for group in ("homicide", "attempted_murder"):
        assert what.values[0][what.cols.index(group)] is None
    files = board_render.render(b)
    html = files["board.html"].decode()
    assert '<tr><th>homicide</th><td class="c">[c]</td></tr>' in html
    assert "[c] confidential" in html
    assert "<script" not in html.lower()
    assert "http" not in html
    rows = {r[0]: r[1:] for r in csv.reader(io.StringIO(files["police_sv_offence.what.csv"].decode())) if r}
    assert rows["homicide"] == ["[c]"]
    assert rows["attempted_murder"] == ["[c]"]
    doc = json.loads(files["board.json"])
    section = next(s for s in doc["sections"] if s["event_type"] == "police_sv_offence")
    assert section["period_field"] == "offence_week"
    table = next(t for t in section["tables"] if t["table"] == "police_sv_offence.what")
    assert table["cells"]["homicide"] == "[c]"
    report = doc["disclosure_check"]
    assert report["protected"]
    assert report["suppressed"] >= 2
    # which suppressed cells are the small ones is not published (it would narrow them)
    assert all(set(c) == {"table", "row", "col"} for c in report["cells"])
    assert {(c["table"], c["col"]) for c in report["cells"]} >= {
        ("police_sv_offence.what", "homicide"),
        ("police_sv_offence.what", "attempted_murder"),
    }


def test_no_output_depends_on_a_suppressed_value_not_even_the_charts() -> None:
    # Move one record from homicide (2 -> 1) to attempted murder (3 -> 4): both suppressed either
    # way, nothing published changes, so every file (HTML, CSV, JSON and every PNG) must be the same.
    a = board_render.render(board(records("homicide")))
    b = board_render.render(board(records("attempted_murder")))
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []


def test_charts_are_pngs_one_per_table_and_the_html_names_them() -> None:
    b = board()
    files = board_render.render(b)
    names = [n for s in b.sections for n in s.table_names]
    assert {"ae_assault.what", "police_sv_offence.when", "police_sv_offence.who.victims"} <= set(names)
    html = files["board.html"].decode()
    for name in names:
        assert files[f"{name}.png"].startswith(PNG)
        assert f"src='{name}.png'" in html
        assert f"{name}.csv" in files
    assert files["police_sv_offence.where.map.png"].startswith(PNG)


def test_shares_use_published_counts_and_hide_a_share_with_a_suppressed_part() -> None:
    b = board()
    police_section = next(s for s in b.sections if s.event_type == "police_sv_offence")
    knife = next(s for s in police_section.shares if s.name == "knife")
    t = b.table("police_sv_offence.knife")
    assert knife.numerator == t.values[0][0]
    assert knife.denominator == t.values[1][2]
    assert knife.percent is not None
    # a quarter with 3 knife offences: the knife count is suppressed, so is the share
    few = [police(i, "2026-W30", knife_involved=i < 3) for i in range(40)]
    share = next(s for s in board(few).sections[0].shares if s.name == "knife")
    assert share.numerator is None
    assert share.percent is None
    assert share.note is not None


def test_periods_are_by_event_week_thursday_rule() -> None:
    assert period_of("2026-W26") == Quarter(2026, 2)  # Thursday 25 June
    assert period_of("2026-W27") == Quarter(2026, 3)  # Thursday 2 July
    assert period_of("2026-W40") == Quarter(2026, 4)  # Thursday 1 October
    assert period_of("2026-09") == Quarter(2026, 3)
    assert period_of("nonsense") is None


def test_the_cli_writes_the_pack_from_a_real_store(tmp_path: Path) -> None:
    now = datetime.now(UTC)  # store bookkeeping only: the report's periods come from the records

    async def fill() -> None:
        store = SqliteStore(tmp_path / "broker.db")
        await store.open()
        recs = [r for r in records() if "data" in r]
        await store.commit(
            CommitUnit(
                records=[
                    StoredRecord(
                        record_id=r["record_id"],
                        consumer=r["consumer"],
                        agreement_id=r["agreement"]["id"],
                        agreement_revision=r["agreement"]["revision"],
                        event_type=r["event_type"],
                        source=r["source"],
                        message_id=f"m-{r['record_id']}",
                        released_at=now,
                        expires_at=now + timedelta(days=365),
                        body=json.dumps(r).encode(),
                    )
                    for r in recs
                ]
            )
        )
        await store.close()

    asyncio.run(fill())
    out = tmp_path / "pack"
    run = subprocess.run(
        [sys.executable, "-m", "broker.cli", "report", "quarterly", "--quarter", "2026-Q3", "--consumer",
         "derbyshire-csp-analysts", "--data-dir", str(tmp_path), "--out", str(out)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert (out / "board.html").is_file()
    assert (out / "police_sv_offence.what.png").read_bytes().startswith(PNG)
    doc = json.loads((out / "board.json").read_text())
    assert sum(v for v in doc["events"].values() if isinstance(v, int)) == 325
    assert "325 records in 2026-Q3" in run.stdout
    assert doc["quarter"] == "2026-Q3"
    other = subprocess.run(
        [sys.executable, "-m", "broker.cli", "report", "quarterly", "--quarter", "2026-Q9", "--consumer", "x",
         "--data-dir", str(tmp_path), "--out", str(out)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert other.returncode == 2


@BROWSER
async def test_the_html_renders_in_chromium_with_every_chart_loaded(page: Page, tmp_path: Path) -> None:
    for name, body in board_render.render(board()).items():
        (tmp_path / name).write_bytes(body)
    await page.goto((tmp_path / "board.html").as_uri())
    broken = await page.evaluate("[...document.images].filter(i => !i.complete || i.naturalWidth === 0).length")
    assert broken == 0
    assert await page.locator("img").count() == len([n for n in board_render.render(board()) if n.endswith(".png")])
    assert await page.locator("td.c").first.inner_text() == "[c]"
    assert browser_errors(page) == []
    assert await axe_violations(page) == []
    await readme_screenshot(page, "board-pack")  # SV_UPDATE_README_SCREENSHOTS=1 refreshes the README's


def test_source_rules_put_the_a_and_e_tables_under_the_nhs_digital_rule() -> None:
    b = build_board(records(), Q3, rules="source")
    rules = dict(b.release.report.rules)
    assert rules["ae_assault.what"].name == "nhs-digital"
    assert rules["police_sv_offence.what"].name == "partnership"
    shown = [v for t in b.release.tables if t.name.startswith("ae_assault.") for row in t.values for v in row]
    assert all(v is None or v == 0 or v > 7 for v in shown)


def test_a_vru_feed_monthly_with_the_peak_flag_only_gets_its_own_peak_table() -> None:
    recs = []
    for i in range(60):
        rec = ae(i, "2026-W30")
        data = {k: v for k, v in rec["data"].items() if not k.startswith(("arrival_week", "assault_day"))}
        recs.append(rec | {"consumer": "derbyshire-vru", "data": data | {"arrival_month": f"2026-0{7 + i % 3}"}})
    b = build_board(recs, Q3, consumer="derbyshire-vru")
    (section,) = b.sections
    assert section.period_field == "arrival_month"
    assert "ae_assault.nte" in section.table_names
    assert "ae_assault.when" not in section.table_names
    peak = next(s for s in section.shares if s.name == "nte_peak")
    nte = b.table("ae_assault.nte")
    assert peak.numerator == nte.values[0][nte.cols.index("Yes")]
    assert peak.numerator == sum(1 for r in recs if r["data"]["assault_in_nte_peak"])
