"""The flow map's geometry: boxes, wrapped text and edge curves, in abstract units (1 unit = 1 CSS
px in the SVG, 1/100 inch in the PNG), computed once so the SVG and the PNG are one picture.

Sized for A4 landscape: 1400 units wide, so the 11-unit body text prints at about 6.6 pt across
297 mm (the height grows with the agreements; a page taller than A4's ratio is scaled to fit).
Text is wrapped by an estimate of its width (no font metrics in a pure module): 0.56 em per
character is the average for the sans-serif faces the renderers ask for (Helvetica, Arial,
DejaVu Sans), with a margin so a wide line does not leave its box.
"""

from __future__ import annotations

import math
import textwrap
from collections import defaultdict
from dataclasses import dataclass

from broker.dpia.flowmap import Edge, FlowMap, PartyNode, Side, release_lines

WIDTH = 1600.0
MARGIN = 24.0
PARTY_W = 215.0
GAP = 95.0  # room for the edges between the columns (and their "lapsed" words)
MIDDLE_X = MARGIN + PARTY_W + GAP
MIDDLE_W = WIDTH - 2 * (MARGIN + PARTY_W + GAP)
CONSUMER_X = WIDTH - MARGIN - PARTY_W
BODY, SMALL, HEAD, TITLE = 12.0, 11.0, 13.0, 19.0
LINE = 1.25  # line height, in em
PAD = 6.0
EM_WIDTH = 0.56
BOLD_WIDER = 1.12  # bold faces run about a tenth wider


@dataclass(frozen=True, slots=True)
class Text:
    x: float
    y: float  # baseline
    text: str
    size: float = BODY
    bold: bool = False
    italic: bool = False
    anchor: str = "start"  # SVG text-anchor: start / middle
    alert: bool = False  # a not-in-force state: drawn in red, and always in words


@dataclass(frozen=True, slots=True)
class Box:
    node_id: str
    kind: str  # partner / consumer / agreement / flow
    x: float
    y: float
    w: float
    h: float
    texts: tuple[Text, ...]
    dashed: bool  # not in force (or a party in no flow): text says so too
    state: str  # the agreement's state (agreement, flow), "" for parties
    title: str  # the box's accessible name

    @property
    def cy(self) -> float:
        return self.y + self.h / 2


@dataclass(frozen=True, slots=True)
class Curve:
    edge: Edge
    start: tuple[float, float]
    c1: tuple[float, float]
    c2: tuple[float, float]
    end: tuple[float, float]
    dashed: bool
    label: Text | None  # "lapsed", a volume: what the curve says besides its <title>

    def point(self, t: float) -> tuple[float, float]:
        """The cubic Bézier at ``t`` (for a label's place)."""
        (x0, y0), (x1, y1), (x2, y2), (x3, y3) = self.start, self.c1, self.c2, self.end
        u = 1 - t
        return (
            u**3 * x0 + 3 * u * u * t * x1 + 3 * u * t * t * x2 + t**3 * x3,
            u**3 * y0 + 3 * u * u * t * y1 + 3 * u * t * t * y2 + t**3 * y3,
        )


@dataclass(frozen=True, slots=True)
class Layout:
    width: float
    height: float
    title: str
    description: str
    texts: tuple[Text, ...]  # title, caption, column headings, legend
    boxes: tuple[Box, ...]
    curves: tuple[Curve, ...]
    legend: tuple[tuple[float, float, float, bool], ...]  # legend line samples: x0, x1, y, dashed


def wrap(text: str, width: float, size: float, *, bold: bool = False) -> list[str]:
    chars = max(8, int(width / (size * EM_WIDTH * (BOLD_WIDER if bold else 1.0))))
    return textwrap.wrap(text, chars, break_on_hyphens=False) or [""]


class _Column:
    """Stacks wrapped lines top-down inside a box."""

    def __init__(self, x: float, y: float, w: float) -> None:
        self.x, self.y, self.w = x, y, w
        self.texts: list[Text] = []

    def add(
        self, text: str, size: float = BODY, *, bold: bool = False, italic: bool = False, alert: bool = False
    ) -> None:
        for line in wrap(text, self.w, size, bold=bold):
            self.y += size * LINE
            self.texts.append(Text(self.x, self.y - size * 0.3, line, size, bold, italic, alert=alert))


def _party_box(node: PartyNode, x: float, kind: str) -> Box:
    col = _Column(x + PAD, 0.0, PARTY_W - 2 * PAD)
    col.add(node.name, BODY, bold=True)
    if node.organisation and node.organisation != node.name:
        col.add(node.organisation, SMALL)
    col.add(node.party_id, SMALL)
    if not node.in_flows:
        col.add("in no flow: " + ("receives nothing" if kind == "consumer" else "sends nothing"), SMALL, italic=True)
    return Box(node.id, kind, x, 0.0, PARTY_W, col.y + PAD, tuple(col.texts), not node.in_flows, "", node.name)


def _moved(box: Box, y: float) -> Box:
    dy = y - box.y
    texts = tuple(Text(t.x, t.y + dy, t.text, t.size, t.bold, t.italic, t.anchor, t.alert) for t in box.texts)
    return Box(box.node_id, box.kind, box.x, y, box.w, box.h, texts, box.dashed, box.state, box.title)


def _place(boxes: list[Box], wanted: dict[str, float], top: float, gap: float) -> list[Box]:
    """Each box as near its wanted centre as the others allow, in order, none overlapping."""
    placed: list[Box] = []
    y = top
    for box in boxes:
        want = wanted.get(box.node_id, y + box.h / 2) - box.h / 2
        placed.append(_moved(box, max(y, want)))
        y = placed[-1].y + box.h + gap
    return placed


def layout(flow_map: FlowMap) -> Layout:
    texts: list[Text] = [Text(MARGIN, MARGIN + TITLE, flow_map.title, TITLE, bold=True)]
    cap = _Column(MARGIN, MARGIN + TITLE * 1.4, WIDTH - 2 * MARGIN)
    cap.add(flow_map.description, BODY)
    texts += cap.texts
    heads_y = cap.y + HEAD * 2.2
    for x, heading in (
        (MARGIN, "Partners (send)"),
        (MIDDLE_X, "Agreements and their flows (what each releases)"),
        (CONSUMER_X, "Consumers (receive)"),
    ):
        texts.append(Text(x, heads_y, heading, HEAD, bold=True))
    top = heads_y + HEAD

    # The middle column: each agreement a box, its flows stacked inside.
    boxes: list[Box] = []
    flow_boxes: dict[str, Box] = {}
    y = top
    for ag in flow_map.agreements:
        lapsed = not ag.state.releases
        head = _Column(MIDDLE_X + PAD, y, MIDDLE_W - 2 * PAD)
        head.add(ag.title, HEAD, bold=True)
        state = ag.state.label.upper() + ": releases nothing" if lapsed else ag.state.label
        head.add(f"{ag.agreement_id}  ·  revision {ag.revision}  ·  {state}", SMALL, bold=lapsed, alert=lapsed)
        inner_y = head.y + PAD / 2
        shown: dict[tuple[object, ...], str] = {}
        for node in ag.flows:
            facts = node.facts
            col = _Column(MIDDLE_X + 2 * PAD, inner_y, MIDDLE_W - 4 * PAD)
            cadence = f"  ·  every {facts.cadence_days} days" if facts.cadence_days else ""
            col.add(f"{facts.flow_id}  ·  {facts.event}{cadence}{facts.mode}", BODY, bold=True)
            col.add(facts.rows, SMALL, italic=True)
            if facts.figures:
                col.add(facts.figures, SMALL, bold=True)
            # Flows of one agreement often share a rule set: say so rather than repeat five lines,
            # so the page stays one A4 sheet (DOT, Mermaid and the register list them in full).
            same = (facts.event_type, facts.outputs, facts.dropped)
            if same in shown:
                col.add(f"releases the same fields, in the same forms, as {shown[same]}", SMALL)
            else:
                shown[same] = facts.flow_id
                for line in release_lines(facts):
                    col.add(line, SMALL)
                if facts.dropped:
                    col.add(f"dropped: {', '.join(facts.dropped)}", SMALL)
            box = Box(
                node.id,
                "flow",
                MIDDLE_X + PAD,
                inner_y,
                MIDDLE_W - 2 * PAD,
                col.y - inner_y + PAD,
                tuple(col.texts),
                lapsed,
                ag.state.state.value,
                f"flow {facts.ref}",
            )
            flow_boxes[node.id] = box
            inner_y += box.h + PAD / 2
        boxes.append(
            Box(
                ag.id,
                "agreement",
                MIDDLE_X,
                y,
                MIDDLE_W,
                inner_y - y + PAD / 2,
                tuple(head.texts),
                lapsed,
                ag.state.state.value,
                f"agreement {ag.agreement_id}",
            )
        )
        y = inner_y + 10.0
    boxes += flow_boxes.values()
    middle_bottom = y

    # The side columns: each party beside the flows it takes part in.
    def column(parties: tuple[PartyNode, ...], x: float, side: Side, kind: str) -> list[Box]:
        party_boxes = [_party_box(p, x, kind) for p in parties]
        wanted: dict[str, float] = {}
        for p in parties:
            ys = [flow_boxes[_flow_end(e)].cy for e in flow_map.edges if e.side is side and e.party == p.party_id]
            if ys:
                wanted[p.id] = sum(ys) / len(ys)
        return _place(party_boxes, wanted, top, 10.0)

    partner_boxes = column(flow_map.partners, MARGIN, Side.SENDS, "partner")
    consumer_boxes = column(flow_map.consumers, CONSUMER_X, Side.RECEIVES, "consumer")
    boxes = partner_boxes + boxes + consumer_boxes
    by_id = {b.node_id: b for b in boxes}
    curves = _curves(flow_map, by_id)

    bottom = max(middle_bottom, *(b.y + b.h for b in (*partner_boxes, *consumer_boxes))) + 16.0
    legend_y = bottom + BODY
    legend = ((MARGIN, MARGIN + 40.0, legend_y - 4.0, False), (MARGIN + 250.0, MARGIN + 290.0, legend_y - 4.0, True))
    texts += [
        Text(MARGIN + 48.0, legend_y, "in force: releases as drawn", BODY),
        Text(
            MARGIN + 298.0,
            legend_y,
            "dashed, marked LAPSED or NOT YET IN FORCE: the agreement releases nothing now",
            BODY,
        ),
        Text(
            MARGIN,
            legend_y + BODY * 1.8,
            "Fields a flow does not name are dropped (default deny). Each flow's field inventory, row conditions "
            "and the ICO checklist: `sv-broker policy register`.",
            SMALL,
            italic=True,
        ),
    ]
    height = float(math.ceil(legend_y + BODY * 1.8 + MARGIN))  # whole units: whole pixels at any dpi
    return Layout(WIDTH, height, flow_map.title, flow_map.description, tuple(texts), tuple(boxes), curves, legend)


def _flow_end(edge: Edge) -> str:
    return edge.target if edge.side is Side.SENDS else edge.source


def _curves(flow_map: FlowMap, boxes: dict[str, Box]) -> tuple[Curve, ...]:
    # Where edges meet a box's side, spread them a little (ordered by the other end's height), so
    # three flows from one hospital read as three lines, not one.
    ends: dict[tuple[str, str], list[tuple[float, int]]] = defaultdict(list)
    for i, edge in enumerate(flow_map.edges):
        src, dst = boxes[edge.source], boxes[edge.target]
        ends[(edge.source, "right")].append((dst.cy, i))
        ends[(edge.target, "left")].append((src.cy, i))
    offset: dict[tuple[str, str, int], float] = {}
    for (node, side), items in ends.items():
        items.sort()
        box = boxes[node]
        step = min(6.0, (box.h - 8.0) / max(1, len(items)))
        for rank, (_, i) in enumerate(items):
            offset[(node, side, i)] = (rank - (len(items) - 1) / 2) * step
    curves = []
    for i, edge in enumerate(flow_map.edges):
        src, dst = boxes[edge.source], boxes[edge.target]
        x0, y0 = src.x + src.w, src.cy + offset[(edge.source, "right", i)]
        x1, y1 = dst.x, dst.cy + offset[(edge.target, "left", i)]
        dx = (x1 - x0) / 2
        dashed = not edge.state.releases
        words = []
        if dashed:
            words.append(edge.state.tag)
        if edge.volume is not None:
            words.append(f"{edge.volume:,}")
        curve = Curve(edge, (x0, y0), (x0 + dx, y0), (x1 - dx, y1), (x1, y1), dashed, None)
        if words:
            # Near the party's end, where the edges of one flow have not yet converged.
            lx, ly = curve.point(0.55 if edge.side is Side.SENDS else 0.78)
            label = Text(lx, ly - 3.0, " · ".join(words), SMALL, bold=dashed, anchor="middle")
            curve = Curve(edge, curve.start, curve.c1, curve.c2, curve.end, dashed, label)
        curves.append(curve)
    return tuple(curves)
