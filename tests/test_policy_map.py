"""The DPIA pack (``broker/dpia``): the flow map and the agreements register, on the shipped
sample agreements and on a copy of them with one agreement past its review date.

The map is checked structurally in every text format (every flow an edge, no edge without a flow),
the PNG is rendered for real (matplotlib, Agg) and read back with Pillow, and the register's
facts are checked against the engine's own reading (``policy explain``)."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from broker.dpia.facts import DROPPED, State
from broker.dpia.flowmap import FlowMap, Side, build_flow_map
from broker.dpia.layout import layout
from broker.dpia.register import Register, Source, build_register
from broker.dpia.render_map import mermaid_id, to_dot, to_mermaid, to_svg
from broker.dpia.render_png import png_of
from broker.dpia.render_register import CSV_COLUMNS, to_csv, to_html, to_markdown
from broker.policy.explain import explain, read_event
from broker.policy.loader import load_policy, read_lock
from broker.policy.model import SCHEMA_FIELDS, PolicySet
from broker.registry import Registry
from broker.settings import REPO_POLICIES
from tests.test_policy_explain import EXCLUSION_EVENT
from tests.test_policy_support import NOBODY, NOW, TEST_SECRETS, shipped_policy

SVG = "{http://www.w3.org/2000/svg}"
LAPSED = "dsa-police-sv-csp-2026"
SV_BROKER = Path(sys.executable).with_name("sv-broker")


@pytest.fixture(scope="module")
def policy(registry: Registry) -> PolicySet:
    return shipped_policy(registry)


@pytest.fixture(scope="module")
def flow_map(policy: PolicySet, registry: Registry) -> FlowMap:
    return build_flow_map(policy, registry, NOW)


@pytest.fixture(scope="module")
def lapsed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shipped policies whose police agreement was due for review before NOW."""
    copy = tmp_path_factory.mktemp("policies") / "policies"
    shutil.copytree(REPO_POLICIES, copy)
    path = copy / "agreements" / f"{LAPSED}.toml"
    text = path.read_text(encoding="utf-8")
    assert "review_by = 2027-03-31" in text
    path.write_text(text.replace("review_by = 2027-03-31", "review_by = 2026-10-31"), encoding="utf-8")
    return copy


@pytest.fixture(scope="module")
def lapsed_map(lapsed_dir: Path, registry: Registry) -> FlowMap:
    return build_flow_map(load_policy(lapsed_dir, registry, TEST_SECRETS), registry, NOW)


def expected_edges(policy: PolicySet) -> set[tuple[str, str, str, str]]:
    """(side, agreement/flow, from node, to node) for every partner and consumer of every flow."""
    out = set()
    for f in policy.flows:
        ref = f"{f.agreement.id}/{f.id}"
        out |= {("sends", ref, f"partner:{p}", f"flow:{ref}") for p in f.partners}
        out |= {("receives", ref, f"flow:{ref}", f"consumer:{c}") for c in f.consumers}
    return out


def routes(policy: PolicySet) -> set[tuple[str, str, str, str]]:
    """(agreement, flow, partner, consumer): what the engine would release to whom."""
    return {(f.agreement.id, f.id, p, c) for f in policy.flows for p in f.partners for c in f.consumers}


def joined(edges: set[tuple[str, str, str, str]]) -> set[tuple[str, str, str, str]]:
    """The routes a picture's edges draw: a partner's edge into a flow node joined with that flow
    node's edges out (a path through a flow node is that flow's, and only that flow's)."""
    ins = [(ref, src) for side, ref, src, _ in edges if side == "sends"]
    outs = [(ref, dst) for side, ref, _, dst in edges if side == "receives"]
    return {
        (*ref.split("/"), src.split(":", 1)[1], dst.split(":", 1)[1])
        for ref, src in ins
        for ref2, dst in outs
        if ref == ref2
    }


# --- the model ---------------------------------------------------------------------------------


def test_the_model_has_one_edge_per_flow_partner_and_consumer(policy: PolicySet, flow_map: FlowMap) -> None:
    edges = {(e.side.value, e.ref, e.source, e.target) for e in flow_map.edges}
    assert edges == expected_edges(policy)
    assert len(flow_map.edges) == len(edges)  # no duplicates
    assert joined(edges) == routes(policy)
    assert {f.ref for f in flow_map.flows} == {f"{f.agreement.id}/{f.id}" for f in policy.flows}


def test_nodes_carry_the_registry_names_and_parties_in_no_flow_are_shown_apart(
    flow_map: FlowMap, registry: Registry
) -> None:
    consumers = {c.party_id: c for c in flow_map.consumers}
    assert consumers["derbyshire-vru"].name == registry.consumers["derbyshire-vru"].name
    assert not consumers[NOBODY].in_flows
    assert not any(e.party == NOBODY for e in flow_map.edges)
    partners = {p.party_id: p for p in flow_map.partners}
    assert partners["uhdb-royal-derby-ed"].name == "Royal Derby Hospital Emergency Department"


def test_dropped_fields_are_exactly_the_schema_fields_no_rule_releases(policy: PolicySet, flow_map: FlowMap) -> None:
    by_ref = {f.ref: f for f in flow_map.flows}
    for flow in policy.flows:
        facts = by_ref[f"{flow.agreement.id}/{flow.id}"]
        schema = {name for v in flow.versions for name in SCHEMA_FIELDS[(flow.event_type, v)]}
        named = {rule.field for rule in flow.rules}
        assert set(facts.dropped) == schema - named, facts.ref
        assert {f.name for f in facts.fields} == schema
        assert {o.output for o in facts.outputs} == set(flow.fields)
    # The sample's minimisation, in words: the A&E free text and patient LSOA never leave.
    istv = by_ref["dsa-istv-ae-2026/ae-to-vru"]
    assert {"assault_location_text", "assault_method_other", "patient_lsoa"} <= set(istv.dropped)
    out_edge = next(e for e in flow_map.edges if e.ref == istv.ref and e.side is Side.RECEIVES)
    assert f"dropped: {', '.join(istv.dropped)}" in out_edge.label


def test_volumes_label_the_edges_they_are_given(policy: PolicySet, registry: Registry) -> None:
    volumes = {("dsa-istv-ae-2026", "ae-to-vru", "derbyshire-vru"): 1234}
    flow_map = build_flow_map(policy, registry, NOW, volumes)
    labelled = [e for e in flow_map.edges if e.volume is not None]
    assert [(e.ref, e.party, e.volume) for e in labelled] == [("dsa-istv-ae-2026/ae-to-vru", "derbyshire-vru", 1234)]
    assert "1,234 released" in labelled[0].label
    root = ET.fromstring(to_svg(flow_map))
    volumes_drawn = [g.get("data-volume") for g in root.iter(f"{SVG}g") if g.get("data-volume")]
    assert volumes_drawn == ["1234"]


# --- DOT, SVG, Mermaid: structurally ---------------------------------------------------------------

DOT_EDGE = re.compile(r'^\s*"([^"]+)" -> "([^"]+)" \[(.*)\];$')


def dot_edges(dot: str) -> list[tuple[str, str, str]]:
    return [m.groups() for line in dot.splitlines() if (m := DOT_EDGE.match(line))]  # type: ignore[misc]


def _ref_of(src: str, dst: str) -> tuple[str, str]:
    if src.startswith("flow:"):
        return "receives", src.split(":", 1)[1]
    return "sends", dst.split(":", 1)[1]


def test_dot_every_flow_an_edge_no_edge_without_a_flow(policy: PolicySet, flow_map: FlowMap) -> None:
    dot = to_dot(flow_map)
    assert dot.startswith("digraph flow_map {")
    assert dot.rstrip().endswith("}")
    edges = dot_edges(dot)
    drawn = {(*_ref_of(src, dst), src, dst) for src, dst, _ in edges}
    assert len(edges) == len(drawn) == len(expected_edges(policy))
    assert drawn == expected_edges(policy)
    assert joined(drawn) == routes(policy)
    # The flow nodes are declared inside their agreement's cluster, one per flow.
    declared = set(re.findall(r'^\s*"(flow:[^"]+)" \[label=', dot, re.M))
    assert declared == {f"flow:{f.agreement.id}/{f.id}" for f in policy.flows}
    assert dot.count('subgraph "cluster_') == len(policy.agreements)
    assert all("style=dashed" not in attrs for _, _, attrs in edges)  # all in force at NOW


def svg_edges(svg: str) -> list[ET.Element]:
    root = ET.fromstring(svg)
    return [g for g in root.iter(f"{SVG}g") if g.get("class") == "edge"]


def test_svg_every_flow_an_edge_no_edge_without_a_flow(policy: PolicySet, flow_map: FlowMap) -> None:
    svg = to_svg(flow_map)
    root = ET.fromstring(svg)
    assert root.get("role") == "img"
    assert root.find(f"{SVG}title") is not None
    assert root.find(f"{SVG}desc") is not None
    edges = svg_edges(svg)
    drawn = {(g.get("data-side"), g.get("data-flow"), g.get("data-from"), g.get("data-to")) for g in edges}
    assert len(edges) == len(drawn)
    assert drawn == expected_edges(policy)
    for g in edges:
        side, ref = _ref_of(g.get("data-from", ""), g.get("data-to", ""))
        assert (side, ref) == (g.get("data-side"), g.get("data-flow"))  # the path's ends agree with its flow
        assert g.find(f"{SVG}path") is not None
        title = g.find(f"{SVG}title")
        assert title is not None
        assert title.text
        assert ref in title.text
    flows = {g.get("data-flow") for g in root.iter(f"{SVG}g") if g.get("class") == "node flow"}
    assert flows == {f"{f.agreement.id}/{f.id}" for f in policy.flows}
    agreements = {g.get("data-agreement") for g in root.iter(f"{SVG}g") if g.get("class") == "node agreement"}
    assert agreements == set(policy.agreements)
    assert "<script" not in svg
    assert 'href="http' not in svg


MERMAID_EDGE = re.compile(r'^\s*(\w+) (-->|-\.->)\|"(.*)"\| (\w+)$')


def test_mermaid_every_flow_an_edge_no_edge_without_a_flow(policy: PolicySet, flow_map: FlowMap) -> None:
    text = to_mermaid(flow_map)
    assert text.startswith("flowchart LR\n")
    ids = {mermaid_id(n): n for _, _, src, dst in expected_edges(policy) for n in (src, dst)}
    edges = [m.groups() for line in text.splitlines() if (m := MERMAID_EDGE.match(line))]
    drawn = {(*_ref_of(ids[src], ids[dst]), ids[src], ids[dst]) for src, _, _, dst in edges}
    assert len(edges) == len(drawn) == len(expected_edges(policy))
    assert drawn == expected_edges(policy)
    assert {arrow for _, arrow, _, _ in edges} == {"-->"}
    assert len(set(ids)) == len(set(ids.values()))  # distinct node ids stay distinct


# --- a lapsed agreement --------------------------------------------------------------------------


def test_a_lapsed_agreement_is_drawn_as_lapsed_in_every_format(lapsed_map: FlowMap) -> None:
    (lapsed,) = [a for a in lapsed_map.agreements if a.agreement_id == LAPSED]
    assert lapsed.state.state is State.REVIEW_OVERDUE
    assert lapsed.state.lapsed
    assert not lapsed.state.releases
    assert all(a.state.releases for a in lapsed_map.agreements if a.agreement_id != LAPSED)

    for g in svg_edges(to_svg(lapsed_map)):
        is_lapsed = g.get("data-flow", "").startswith(LAPSED + "/")
        path = g.find(f"{SVG}path")
        assert path is not None
        assert (path.get("stroke-dasharray") is not None) is is_lapsed  # dashed: not colour alone
        words = [t.text for t in g.iter(f"{SVG}text")]
        assert (words == ["lapsed"]) is is_lapsed
        assert g.get("data-state") == ("review_overdue" if is_lapsed else "in_force")
        title = g.find(f"{SVG}title")
        assert title is not None
        assert title.text
        assert ("LAPSED: REVIEW OVERDUE" in title.text) is is_lapsed

    for src, dst, attrs in dot_edges(to_dot(lapsed_map)):
        is_lapsed = LAPSED + "/" in src + dst
        assert ("style=dashed" in attrs) is is_lapsed
        assert ('label="LAPSED: REVIEW OVERDUE' in attrs) is is_lapsed

    for line in to_mermaid(lapsed_map).splitlines():
        if m := MERMAID_EDGE.match(line):
            is_lapsed = mermaid_id(f"flow:{LAPSED}/x").rsplit("__", 1)[0] in line
            assert (m.group(2) == "-.->") is is_lapsed
            assert m.group(3).startswith("LAPSED") is is_lapsed


def test_a_lapsed_agreement_is_lapsed_in_the_register(lapsed_dir: Path, registry: Registry) -> None:
    policy = load_policy(lapsed_dir, registry, TEST_SECRETS)
    register = build_register(policy, registry, NOW, read_lock(lapsed_dir)[0])
    entry = next(a for a in register.agreements if a.id == LAPSED)
    assert entry.state.tag == "lapsed"
    assert any("was due for review by 2026-10-31" in w for w in entry.state.warnings)  # status's words
    page = parse_html(to_html(register))
    assert page.sections[LAPSED]["state"] == "review_overdue"
    assert "lapsed" in page.sections[LAPSED]["tags"]
    rows = list(csv.DictReader(io.StringIO(to_csv(register))))
    assert {r["state"] for r in rows if r["agreement_id"] == LAPSED} == {"review_overdue"}
    assert {r["state"] for r in rows if r["agreement_id"] != LAPSED} == {"in_force"}
    assert "**LAPSED**" in to_markdown(register)


# --- PNG -----------------------------------------------------------------------------------------


def test_png_is_a_real_png_of_the_layout(lapsed_map: FlowMap, tmp_path: Path) -> None:
    lay = layout(lapsed_map)
    data = png_of(lay, dpi=100)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 40_000  # text and lines, not a blank canvas
    (tmp_path / "lapsed.png").write_bytes(data)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        assert image.size == (round(lay.width), round(lay.height))  # 1 unit = 1/100 inch at 100 dpi
        assert image.text.get("Title") == lay.title  # type: ignore[attr-defined]
        # Something is drawn in the lapsed agreement's red (its dashed box, lines and words).
        colours = {c for _, c in image.convert("RGB").getcolors(1 << 20) or []}
        assert (0xD4, 0x35, 0x1C) in colours


# --- the register --------------------------------------------------------------------------------


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, dict[str, object]] = {}
        self.current: str | None = None
        self.in_tag = False
        self.tables: dict[str, int] = {}
        self.table: str | None = None
        self.tags_seen: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in ("script", "link", "img", "iframe"):
            self.external.append(tag)
        if (a.get("href") or "#").startswith(("http", "//")) or a.get("src"):
            self.external.append(str(a))
        if tag == "section" and a.get("class") == "agreement":
            self.current = a.get("id")
            assert self.current
            self.sections[self.current] = {"state": a.get("data-state"), "tags": [], "inventories": {}}
        if tag == "table" and a.get("class") == "inventory":
            self.table = a.get("data-flow")
            assert self.current
            assert self.table
            self.sections[self.current]["inventories"][self.table] = 0  # type: ignore[index]
        if tag == "tr" and self.table and "data-field" in a:
            self.sections[self.current]["inventories"][self.table] += 1  # type: ignore[index]
        if tag == "strong" and (a.get("class") or "").startswith("tag"):
            self.in_tag = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self.table = None
        if tag == "section":
            self.current = None
        if tag == "strong":
            self.in_tag = False

    def handle_data(self, data: str) -> None:
        if self.in_tag and self.current:
            self.sections[self.current]["tags"].append(data)  # type: ignore[attr-defined]


def parse_html(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    page.close()
    return page


@pytest.fixture(scope="module")
def register(policy: PolicySet, registry: Registry) -> Register:
    return build_register(policy, registry, NOW, read_lock(REPO_POLICIES)[0])


def test_html_register_one_section_per_agreement_with_each_flows_inventory(
    register: Register, policy: PolicySet
) -> None:
    html = to_html(register)
    assert html.startswith("<!DOCTYPE html>")
    page = parse_html(html)
    assert page.external == []  # self-contained: no script, stylesheet, image or link out
    assert set(page.sections) == set(policy.agreements)
    for ag_id, section in page.sections.items():
        assert section["state"] == "in_force"
        assert section["tags"] == ["in force"]
        flows = {f"{f.agreement.id}/{f.id}": f for f in policy.flows if f.agreement.id == ag_id}
        inventories = section["inventories"]
        assert isinstance(inventories, dict)
        assert set(inventories) == set(flows)
        for ref, rows in inventories.items():
            flow = flows[ref]
            assert rows == len(SCHEMA_FIELDS[(flow.event_type, 1)])
    assert "ICO data sharing code checklist" in html
    assert NOBODY in html  # registered, in no flow: said so


def test_csv_has_one_row_per_agreement_flow_and_schema_field(register: Register, policy: PolicySet) -> None:
    rows = list(csv.reader(io.StringIO(to_csv(register))))
    assert tuple(rows[0]) == CSV_COLUMNS
    body = [dict(zip(CSV_COLUMNS, r, strict=True)) for r in rows[1:]]
    expected = sum(len(SCHEMA_FIELDS[(f.event_type, v)]) for f in policy.flows for v in f.versions)
    assert len(body) == expected
    assert len({(r["agreement_id"], r["flow_id"], r["field"]) for r in body}) == expected
    released = {(r["flow_id"], r["field"]) for r in body if r["released"] == "true"}
    assert released == {(f.id, rule.field) for f in policy.flows for rule in f.rules}
    # Every cell a spreadsheet could read as a formula is quoted (none should be, but the guard runs).
    assert not any(c.startswith(("=", "+", "-", "@")) for r in rows for c in r)


def test_register_facts_match_policy_explain(register: Register, policy: PolicySet, registry: Registry) -> None:
    """What the register says a flow does with each field is what `policy explain` says the engine
    did with a real event."""
    event = read_event(json.dumps(EXCLUSION_EVENT).encode(), NOW, registry)
    report = explain(event, policy, registry, NOW, "derby-youth-justice")
    (release,) = report["consumers"][0]["releases"]
    said = {}
    for f in release["fields"]:
        said.setdefault(f["field"], set()).add((f["output"], f["action"]))
    entry = next(a for a in register.agreements if a.id == release["agreement_id"])
    flow = next(f for f in entry.flows if f.flow_id == release["flow_id"])
    for field in flow.fields:
        if field.released:
            assert said[field.name] == {(o.output, o.describe) for o in field.outputs}
        else:
            assert said[field.name] == {(None, DROPPED)}


def test_checklist_answers_from_the_agreement_and_marks_what_it_does_not_record(register: Register) -> None:
    entry = next(a for a in register.agreements if a.id == "dsa-education-exclusions-2026")
    items = {i.topic: i for i in entry.checklist}
    assert items["Purpose"].source is Source.AGREEMENT
    assert "mentoring" in items["Purpose"].answer
    assert items["Retention and deletion"].answer.startswith("365 days")
    assert "school_pseudonym" in items["Data minimisation"].answer
    assert "pupil_age" in items["Data minimisation"].answer  # used in a row condition, never released
    for topic in ("Sign-off", "Breaches", "Individuals' rights"):
        assert items[topic].source is Source.NOT_RECORDED
        assert items[topic].answer == "not recorded in the agreement"
    assert entry.locked_revision == entry.revision == 2
    assert entry.history.startswith("Revision 2")


# --- the CLI -------------------------------------------------------------------------------------


def run(*args: str) -> subprocess.CompletedProcess[str]:
    # No SV_BROKER_SECRET_* in the environment and no --secrets: the pack needs no secret.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    return subprocess.run([str(SV_BROKER), *args], capture_output=True, text=True, env=env, timeout=300, check=False)


def test_cli_writes_the_map_and_register_files_without_any_secret(tmp_path: Path, lapsed_dir: Path) -> None:
    png = tmp_path / "x.png"
    done = run("policy", "map", "--format", "png", "--out", str(png), "--dpi", "80", "--policy-dir", str(lapsed_dir))
    assert done.returncode == 0, done.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = tmp_path / "register.html"
    done = run("policy", "register", "--format", "html", "--out", str(html), "--at", "2026-11-25")
    assert done.returncode == 0, done.stderr
    assert set(parse_html(html.read_text(encoding="utf-8")).sections) == {
        p.stem for p in (REPO_POLICIES / "agreements").glob("*.toml")
    }
    done = run("policy", "map", "--format", "mermaid", "--at", "2026-11-25")
    assert done.returncode == 0
    assert done.stdout.startswith("flowchart LR")


def test_cli_refuses_a_png_to_stdout_and_agreements_that_do_not_load(tmp_path: Path, lapsed_dir: Path) -> None:
    done = run("policy", "map", "--format", "png")
    assert done.returncode == 2
    assert "--out" in done.stderr
    broken = tmp_path / "broken"
    shutil.copytree(lapsed_dir, broken)
    (broken / "agreements" / f"{LAPSED}.toml").write_text('id = "dsa-police-sv-csp-2026"\n', encoding="utf-8")
    done = run("policy", "register", "--policy-dir", str(broken))
    assert done.returncode == 2
    assert "do not load" in done.stderr
