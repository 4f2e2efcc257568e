"""The flow map as SVG (drawn here, from ``layout.py``), Graphviz DOT and Mermaid: pure functions
returning text.

SVG: self-contained (no fonts, scripts or images fetched), with a <title> and <desc> for screen
readers, a <title> per node and per edge (what it carries, in words), and the state in text as
well as in the line (dashed edges and the words "lapsed" / "not yet in force"; WCAG 2.2, 1.4.1
Use of Color). Every edge is a ``<g class="edge">`` with ``data-flow="<agreement>/<flow>"``,
``data-from``/``data-to`` (node ids) and ``data-state``, so the picture can be checked against
the agreements by a machine as well as a person (``tests/test_policy_map.py``).

DOT and Mermaid carry the same nodes and edges with whole labels, for those who lay them out with
their own tools (Graphviz is not a dependency; Mermaid renders in GitHub and many wikis).
"""

from __future__ import annotations

import re
from xml.sax.saxutils import escape, quoteattr

from broker.dpia.flowmap import AgreementNode, FlowMap, PartyNode, release_lines
from broker.dpia.layout import Box, Curve, Layout, Text, layout

FONT = "Helvetica, Arial, 'DejaVu Sans', sans-serif"
INK, GREY, BLUE, RED, PALE, WHITE = "#0b0c0c", "#505a5f", "#1d70b8", "#d4351c", "#f3f2f1", "#ffffff"
"""GOV.UK design system colours: text, secondary, link blue, error red, light grey, white; the
red of a lapsed agreement always comes with its word and a dashed line."""
FLOW_FILL = "#f8f8f8"
DASH = "7 4"


# --- SVG ---------------------------------------------------------------------------------------


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _text(t: Text, fill: str = INK) -> str:
    weight = ' font-weight="bold"' if t.bold else ""
    style = ' font-style="italic"' if t.italic else ""
    anchor = f' text-anchor="{t.anchor}"' if t.anchor != "start" else ""
    return (
        f'<text x="{_num(t.x)}" y="{_num(t.y)}" font-size="{_num(t.size)}"{weight}{style}{anchor} '
        f'fill="{fill}">{escape(t.text)}</text>'
    )


def _box(box: Box) -> str:
    fill = {"agreement": WHITE, "flow": FLOW_FILL}.get(box.kind, PALE)
    stroke = RED if box.dashed and box.kind in ("agreement", "flow") else BLUE if box.kind == "agreement" else GREY
    dash = f' stroke-dasharray="{DASH}"' if box.dashed else ""
    width = "2" if box.kind == "agreement" else "1"
    data = f" data-state={quoteattr(box.state)}" if box.state else ""
    key = {"agreement": "data-agreement", "flow": "data-flow"}.get(box.kind, "data-node")
    value = box.node_id.split(":", 1)[1] if box.kind in ("agreement", "flow") else box.node_id
    lines = [
        f'<g class="node {box.kind}" {key}={quoteattr(value)}{data}>',
        f"<title>{escape(box.title)}</title>",
        f'<rect x="{_num(box.x)}" y="{_num(box.y)}" width="{_num(box.w)}" height="{_num(box.h)}" rx="3" '
        f'fill="{fill}" stroke="{stroke}" stroke-width="{width}"{dash}/>',
        *(_text(t, RED if t.alert else INK) for t in box.texts),
        "</g>",
    ]
    return "\n".join(lines)


def _curve(curve: Curve, names: dict[str, str]) -> str:
    edge = curve.edge
    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = curve.start, curve.c1, curve.c2, curve.end
    stroke = RED if curve.dashed else GREY
    dash = f' stroke-dasharray="{DASH}"' if curve.dashed else ""
    title = f"{names[edge.source]} → {names[edge.target]} ({edge.ref}): {edge.label}"
    marker = "arrow-lapsed" if curve.dashed else "arrow"
    parts = [
        f'<g class="edge" data-flow={quoteattr(edge.ref)} data-side="{edge.side.value}" '
        f"data-from={quoteattr(edge.source)} data-to={quoteattr(edge.target)} data-party={quoteattr(edge.party)} "
        f'data-state="{edge.state.state.value}" data-releases="{str(edge.state.releases).lower()}"'
        + ("" if edge.volume is None else f' data-volume="{edge.volume}"')
        + ">",
        f"<title>{escape(title)}</title>",
        f'<path d="M{_num(x0)},{_num(y0)} C{_num(x1)},{_num(y1)} {_num(x2)},{_num(y2)} {_num(x3)},{_num(y3)}" '
        f'fill="none" stroke="{stroke}" stroke-width="1.3"{dash} marker-end="url(#{marker})"/>',
    ]
    if curve.label is not None:
        t = curve.label
        weight = ' font-weight="bold"' if t.bold else ""
        # A white halo (paint-order: stroke first) keeps the word readable over crossing lines.
        parts.append(
            f'<text x="{_num(t.x)}" y="{_num(t.y)}" font-size="{_num(t.size)}" text-anchor="middle"{weight} '
            f'fill="{stroke}" stroke="{WHITE}" stroke-width="3" paint-order="stroke">{escape(t.text)}</text>'
        )
    parts.append("</g>")
    return "\n".join(parts)


def _names(flow_map: FlowMap) -> dict[str, str]:
    names = {p.id: p.name for p in (*flow_map.partners, *flow_map.consumers)}
    names.update({f.id: f"flow {f.facts.ref}" for a in flow_map.agreements for f in a.flows})
    return names


def svg_of(lay: Layout, flow_map: FlowMap) -> str:
    w, h = _num(lay.width), _num(lay.height)
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
        f'aria-labelledby="map-title map-desc" font-family="{FONT}" data-at="{flow_map.at.isoformat()}">',
        f'<title id="map-title">{escape(lay.title)}</title>',
        f'<desc id="map-desc">{escape(lay.description)}</desc>',
        "<defs>",
        *(
            f'<marker id="{name}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
            f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{colour}"/></marker>'
            for name, colour in (("arrow", GREY), ("arrow-lapsed", RED))
        ),
        "</defs>",
        f'<rect x="0" y="0" width="{w}" height="{h}" fill="{WHITE}"/>',
        *(_text(t) for t in lay.texts),
    ]
    for x0, x1, y, dashed in lay.legend:
        dash = f' stroke-dasharray="{DASH}"' if dashed else ""
        out.append(
            f'<line x1="{_num(x0)}" y1="{_num(y)}" x2="{_num(x1)}" y2="{_num(y)}" stroke="{RED if dashed else GREY}" '
            f'stroke-width="1.5"{dash}/>'
        )
    out += [_box(b) for b in lay.boxes]
    names = _names(flow_map)
    out += [_curve(c, names) for c in lay.curves]
    out.append("</svg>")
    return "\n".join(out) + "\n"


def to_svg(flow_map: FlowMap) -> str:
    return svg_of(layout(flow_map), flow_map)


# --- DOT ---------------------------------------------------------------------------------------


def _dot_str(text: str) -> str:
    # DOT quoted string: backslash and quote escaped; a line break is "\n" (Graphviz centres it).
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _party_label(p: PartyNode) -> str:
    lines = [p.name, p.party_id]
    if not p.in_flows:
        lines.append("in no flow")
    return "\n".join(lines)


def _flow_label(a: AgreementNode, i: int) -> str:
    facts = a.flows[i].facts
    cadence = f" · every {facts.cadence_days} days" if facts.cadence_days else ""
    lines = [f"{facts.flow_id}", f"{facts.event}{cadence}{facts.mode}", facts.rows, *release_lines(facts)]
    if facts.figures:
        lines.insert(3, facts.figures)
    if facts.dropped:
        lines.append(f"dropped: {', '.join(facts.dropped)}")
    if not a.state.releases:
        lines.insert(0, a.state.label.upper())
    return "\n".join(lines)


def _agreement_label(a: AgreementNode) -> str:
    state = a.state.label.upper() + ": releases nothing" if not a.state.releases else a.state.label
    return f"{a.title}\n{a.agreement_id} · revision {a.revision} · {state}"


def to_dot(flow_map: FlowMap) -> str:
    lines = [
        "digraph flow_map {",
        f"  graph [rankdir=LR, fontname=Helvetica, labelloc=t, label={_dot_str(flow_map.title)}];",
        '  node [shape=box, style="rounded,filled", fillcolor="#f3f2f1", fontname=Helvetica, fontsize=10];',
        "  edge [fontname=Helvetica, fontsize=8];",
    ]
    for name, parties in (("partners", flow_map.partners), ("consumers", flow_map.consumers)):
        lines.append(f"  subgraph {name} {{")
        lines.append("    rank=same;")
        for p in parties:
            style = ', style="rounded,dashed"' if not p.in_flows else ""
            lines.append(f"    {_dot_str(p.id)} [label={_dot_str(_party_label(p))}{style}];")
        lines.append("  }")
    for a in flow_map.agreements:
        lapsed = not a.state.releases
        lines.append(f"  subgraph {_dot_str('cluster_' + a.agreement_id)} {{")
        lines.append(
            f"    label={_dot_str(_agreement_label(a))}; style={'dashed' if lapsed else 'solid'}; "
            f'color="{RED if lapsed else BLUE}";'
        )
        for i, f in enumerate(a.flows):
            style = ', style="rounded,dashed,filled"' if lapsed else ""
            lines.append(f"    {_dot_str(f.id)} [label={_dot_str(_flow_label(a, i))}{style}];")
        lines.append("  }")
    for e in flow_map.edges:
        attrs = [f"label={_dot_str(e.label)}", f"id={_dot_str(e.id)}"]
        if not e.state.releases:
            attrs += ["style=dashed", f'color="{RED}"', f'fontcolor="{RED}"']
        lines.append(f"  {_dot_str(e.source)} -> {_dot_str(e.target)} [{', '.join(attrs)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


# --- Mermaid -----------------------------------------------------------------------------------

_MERMAID_UNSAFE = re.compile(r'["<>#|`]')


def mermaid_id(node_id: str) -> str:
    """A node id Mermaid accepts (letters, digits, '_'): ids are lower-case letters, digits and
    '-' (``schemas/envelope.py`` PARTY_ID_RE, the loader's flow ids), so '-' → '_' and '/' → '__'
    and ':' → '_' after a one-letter kind keep distinct ids distinct."""
    kind, key = node_id.split(":", 1)
    return kind[0] + "_" + key.replace("-", "_").replace("/", "__")


def _mm(text: str) -> str:
    # Mermaid's entity codes for the characters its grammar reads (quotes, brackets, pipes).
    return _MERMAID_UNSAFE.sub(lambda m: f"#{ord(m.group())};", text)


def _mm_lines(text: str) -> str:
    return "<br/>".join(_mm(line) for line in text.split("\n"))


def to_mermaid(flow_map: FlowMap) -> str:
    lines = ["flowchart LR", f"  %% {_mm(flow_map.title)}"]
    for name, heading, parties in (
        ("partners", "Partners (send)", flow_map.partners),
        ("consumers", "Consumers (receive)", flow_map.consumers),
    ):
        lines.append(f'  subgraph {name}["{heading}"]')
        lines += [f'    {mermaid_id(p.id)}["{_mm_lines(_party_label(p))}"]' for p in parties]
        lines.append("  end")
    for a in flow_map.agreements:
        lines.append(f'  subgraph {mermaid_id(a.id)}["{_mm_lines(_agreement_label(a))}"]')
        lines += [f'    {mermaid_id(f.id)}["{_mm_lines(_flow_label(a, i))}"]' for i, f in enumerate(a.flows)]
        lines.append("  end")
    for e in flow_map.edges:
        arrow = "-->" if e.state.releases else "-.->"
        lines.append(f'  {mermaid_id(e.source)} {arrow}|"{_mm(e.label)}"| {mermaid_id(e.target)}')
    lines.append(f"  classDef lapsed stroke:{RED},stroke-dasharray:5 5")
    lapsed = [mermaid_id(a.id) for a in flow_map.agreements if not a.state.releases]
    lapsed += [mermaid_id(f.id) for a in flow_map.agreements if not a.state.releases for f in a.flows]
    if lapsed:
        lines.append(f"  class {','.join(lapsed)} lapsed")
    return "\n".join(lines) + "\n"
