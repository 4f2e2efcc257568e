"""The flow map: who sends what, under which agreement and flow, to whom, and in what form.

Three columns: partners → flows (grouped in their agreement) → consumers. The middle nodes are
*flows*, not agreements: one agreement may carry A&E events from two hospitals to three consumers
under different rules, and a hub per agreement would draw paths no flow has (partner P under flow 1
"reaching" the consumer of flow 2). With a node per flow, every edge is exactly one flow's, so
"every flow an edge, no edge without a flow" holds for every path in the picture, not just for the
edges' labels (ICO Data Sharing Code: know exactly what goes where).

Each edge carries what it carries: partner → flow the event type and versions; flow → consumer the
released fields and how (kept, generalised, pseudonymised) and the schema fields dropped, the
agreement's state at ``at`` (a lapsed agreement's edges are marked lapsed: it releases nothing),
and an optional volume (the console passes released counts over a period).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from broker.dpia.facts import AgreementState, FlowFacts, How, agreement_states, flows_of, local_day
from broker.policy.model import PolicySet
from broker.registry import Registry

VolumeKey = tuple[str, str, str]
"""(agreement id, flow id, party id): the partner for a partner → flow edge (messages received),
the consumer for a flow → consumer edge (records released)."""


class Side(StrEnum):
    SENDS = "sends"  # partner → flow
    RECEIVES = "receives"  # flow → consumer


@dataclass(frozen=True, slots=True)
class PartyNode:
    id: str  # "partner:<id>" or "consumer:<id>"
    party_id: str
    name: str  # the registry's display name (the id when unregistered)
    organisation: str
    kind: str  # a partner's kind (health, education, ...) or a consumer's role
    in_flows: bool  # registered but named by no flow: drawn apart, "in no flow"


@dataclass(frozen=True, slots=True)
class FlowNode:
    id: str  # "flow:<agreement>/<flow>"
    facts: FlowFacts


@dataclass(frozen=True, slots=True)
class AgreementNode:
    id: str  # "agreement:<id>"
    agreement_id: str
    title: str
    revision: int
    state: AgreementState
    flows: tuple[FlowNode, ...]


@dataclass(frozen=True, slots=True)
class Edge:
    source: str  # node id
    target: str  # node id
    side: Side
    party: str  # the partner (sends) or consumer (receives)
    flow: FlowFacts
    state: AgreementState
    volume: int | None = None

    @property
    def ref(self) -> str:
        return self.flow.ref

    @property
    def id(self) -> str:
        return f"{self.side.value}:{self.flow.ref}:{self.party}"

    @property
    def label(self) -> str:
        """The edge's whole label (DOT, Mermaid, the SVG's <title>): what it carries and how."""
        parts = [self.flow.event]
        if self.side is Side.RECEIVES:
            parts += release_lines(self.flow)
            if self.flow.dropped:
                parts.append(f"dropped: {', '.join(self.flow.dropped)}")
        if self.volume is not None:
            parts.append(f"{self.volume:,} {'received' if self.side is Side.SENDS else 'released'}")
        if not self.state.releases:
            parts.insert(0, self.state.label.upper() + ": releases nothing")
        return "; ".join(parts)


@dataclass(frozen=True, slots=True)
class FlowMap:
    at: datetime
    partners: tuple[PartyNode, ...]
    agreements: tuple[AgreementNode, ...]
    consumers: tuple[PartyNode, ...]
    edges: tuple[Edge, ...]

    @property
    def flows(self) -> tuple[FlowFacts, ...]:
        return tuple(f.facts for a in self.agreements for f in a.flows)

    @property
    def title(self) -> str:
        return f"Data flows under the data sharing agreements, as at {local_day(self.at)}"

    @property
    def description(self) -> str:
        """A sentence for a screen reader (the SVG's <desc>) and a caption."""
        lapsed = [a for a in self.agreements if not a.state.releases]
        lapsed_text = (
            "; not in force: " + ", ".join(f"{a.agreement_id} ({a.state.label})" for a in lapsed)
            if lapsed
            else "; all in force"
        )
        return (
            f"{sum(1 for p in self.partners if p.in_flows)} partners send to {len(self.flows)} flows under "
            f"{len(self.agreements)} agreements, which release to {sum(1 for c in self.consumers if c.in_flows)} "
            f"consumers{lapsed_text}. Each edge is one flow: partner to flow carries the event type, flow to "
            "consumer the fields released and how; fields not named are dropped."
        )


def release_lines(flow: FlowFacts) -> list[str]:
    """``kept: a, b``, ``generalised: c (week)``, ``pseudonymised: d``: one line per treatment."""
    lines = []
    for how in (How.KEPT, How.GENERALISED, How.PSEUDONYMISED):
        outs = flow.by_how(how)
        if outs:
            names = (o.output for o in outs) if how is How.PSEUDONYMISED else (o.short for o in outs)
            lines.append(f"{how.value}: {', '.join(names)}")
    return lines


def node_id(kind: str, key: str) -> str:
    return f"{kind}:{key}"


def build_flow_map(
    policy: PolicySet,
    registry: Registry,
    at: datetime,
    volumes: Mapping[VolumeKey, int] | None = None,
) -> FlowMap:
    """The map of ``policy`` at ``at``; ``volumes`` (optional) labels the edges with counts."""
    states = agreement_states(policy, at)
    volumes = volumes or {}
    agreements: list[AgreementNode] = []
    edges: list[Edge] = []
    for ag_id in sorted(policy.agreements):
        ag = policy.agreements[ag_id]
        flows = tuple(FlowNode(node_id("flow", f.ref), f) for f in flows_of(policy, ag_id))
        agreements.append(
            AgreementNode(node_id("agreement", ag_id), ag_id, ag.title, ag.revision, states[ag_id], flows)
        )
        for node in flows:
            facts = node.facts
            for partner in facts.partners:
                volume = volumes.get((ag_id, facts.flow_id, partner))
                edges.append(
                    Edge(node_id("partner", partner), node.id, Side.SENDS, partner, facts, states[ag_id], volume)
                )
            for consumer in facts.consumers:
                volume = volumes.get((ag_id, facts.flow_id, consumer))
                edges.append(
                    Edge(node.id, node_id("consumer", consumer), Side.RECEIVES, consumer, facts, states[ag_id], volume)
                )
    sending = {e.party for e in edges if e.side is Side.SENDS}
    receiving = {e.party for e in edges if e.side is Side.RECEIVES}
    partners = [
        PartyNode(node_id("partner", p.id), p.id, p.name, p.organisation, p.kind, p.id in sending)
        for p in registry.partners.values()
    ]
    # A flow's party the registry does not know cannot load (the loader refuses it), but the map
    # never drops an edge's end: it is drawn under its id.
    partners += [PartyNode(node_id("partner", p), p, p, "", "", True) for p in sending - set(registry.partners)]
    consumers = [
        PartyNode(node_id("consumer", c.id), c.id, c.name, c.organisation, c.role, c.id in receiving)
        for c in registry.consumers.values()
    ]
    consumers += [PartyNode(node_id("consumer", c), c, c, "", "", True) for c in receiving - set(registry.consumers)]
    order = {a.agreement_id: i for i, a in enumerate(agreements)}

    def first_agreement(party: PartyNode, side: Side) -> tuple[int, int, str]:
        # Parties in flows first, in the order of the first agreement they take part in; those in
        # no flow last (they are drawn apart).
        seen = [order[e.flow.agreement_id] for e in edges if e.side is side and e.party == party.party_id]
        return (0 if seen else 1, min(seen, default=0), party.party_id)

    return FlowMap(
        at=at,
        partners=tuple(sorted(partners, key=lambda p: first_agreement(p, Side.SENDS))),
        agreements=tuple(agreements),
        consumers=tuple(sorted(consumers, key=lambda c: first_agreement(c, Side.RECEIVES))),
        edges=tuple(edges),
    )
