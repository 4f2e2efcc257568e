"""The agreements register: per agreement what a DPIA's data-flow section and the ICO data sharing
code's checklist ask an organisation to record, from the compiled agreements (so the register
says what the broker enforces, not what a document once said).

Per agreement: id, title, revision (the lock's highest accepted revision and the file's own notes
as its history), state at ``at`` and the date alerts, purpose, lawful basis, parties with their
names, dates, retention, hold, and per flow the field inventory: every schema field of the event
type, released as which output and how, or not released (the engine's default deny); the row
conditions; the consumers; the cadence.

The checklist: the ICO Data Sharing Code of Practice (2021) asks a data sharing agreement to
name the purpose, the parties, the data items, the lawful basis, data minimisation, retention
and deletion, security, accuracy, individuals' rights, review, and who is accountable (DOMAIN.md).
Each item says where the answer comes from: the agreement itself, the flows (derived), the
broker's own controls, or "not recorded in the agreement" (for a person to fill in; the register
never invents an answer the agreement does not give).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum

from broker.dpia.facts import AgreementState, FlowFacts, How, agreement_states, flows_of, local_day
from broker.policy.lint import hold_line
from broker.policy.model import Agreement, PolicySet
from broker.registry import Registry


class Source(StrEnum):
    """Where a checklist answer comes from."""

    AGREEMENT = "recorded in the agreement"
    FLOWS = "derived from the agreement's flows"
    BROKER = "enforced by the broker"
    NOT_RECORDED = "not recorded in the agreement"


@dataclass(frozen=True, slots=True)
class ChecklistItem:
    topic: str
    asks: str  # what the code asks to be recorded
    source: Source
    answer: str


@dataclass(frozen=True, slots=True)
class PartyRef:
    id: str
    name: str
    organisation: str
    role: str  # "partner (health)", "consumer (analyst)", or "not in the registry"


@dataclass(frozen=True, slots=True)
class AgreementEntry:
    id: str
    title: str
    revision: int
    locked_revision: int | None  # policies/revisions.lock (None: no lock, or not in it)
    history: str  # the file's notes: its revisions, in the signatories' words
    state: AgreementState
    purpose: str
    lawful_basis: tuple[str, ...]
    parties: tuple[PartyRef, ...]
    valid_from: date
    valid_to: date
    review_by: date
    retention_days: int
    hold: str  # policy check's words, or "holds nothing"
    pseudonymises: bool
    path: str
    flows: tuple[FlowFacts, ...]
    checklist: tuple[ChecklistItem, ...]

    @property
    def inventory_rows(self) -> int:
        return sum(len(f.fields) for f in self.flows)


@dataclass(frozen=True, slots=True)
class Register:
    at: datetime
    agreements: tuple[AgreementEntry, ...]
    unused: tuple[PartyRef, ...]  # registered parties named by no flow

    @property
    def title(self) -> str:
        return f"Register of data sharing agreements, as at {local_day(self.at)}"


def _party(party_id: str, registry: Registry) -> PartyRef:
    partner = registry.partners.get(party_id)
    if partner is not None:
        return PartyRef(party_id, partner.name, partner.organisation, f"partner ({partner.kind})")
    consumer = registry.consumers.get(party_id)
    if consumer is not None:
        return PartyRef(party_id, consumer.name, consumer.organisation, f"consumer ({consumer.role})")
    return PartyRef(party_id, party_id, "", "not in the registry")


def _names(items: list[str]) -> str:
    return ", ".join(items) if items else "none"


def checklist(
    ag: Agreement, state: AgreementState, flows: tuple[FlowFacts, ...], parties: tuple[PartyRef, ...]
) -> tuple[ChecklistItem, ...]:
    """The ICO data sharing code's questions, answered from the agreement where it can be."""
    kept = sorted({o.output for f in flows for o in f.by_how(How.KEPT)})
    generalised = sorted({f"{o.output} ({o.form})" for f in flows for o in f.by_how(How.GENERALISED)})
    pseudonymised = sorted({o.output for f in flows for o in f.by_how(How.PSEUDONYMISED)})
    reasoned = sorted({f"{o.output}: {o.reason}" for f in flows for o in f.outputs if o.reason})
    dropped = [f"{f.flow_id}: {_names(list(f.dropped))}" for f in flows]
    fields = sum(len(f.fields) for f in flows)
    released = sum(1 for f in flows for e in f.fields if e.released)
    bases = " ".join(ag.lawful_basis)
    special = "Art 9" in bases or "Art 10" in bases
    cadences = [f"{f.flow_id}: every {f.cadence_days} days" for f in flows if f.cadence_days]
    no_cadence = [f.flow_id for f in flows if not f.cadence_days]
    rows = [f"{f.flow_id}: {f.rows}" for f in flows]
    items = [
        ChecklistItem(
            "Purpose", "why the data is shared, and the benefit", Source.AGREEMENT, " ".join(ag.purpose.split())
        ),
        ChecklistItem(
            "Parties",
            "the organisations involved and their roles",
            Source.AGREEMENT,
            "; ".join(f"{p.name} ({p.id}, {p.role})" for p in parties),
        ),
        ChecklistItem(
            "Lawful basis",
            "the UK GDPR Art 6 basis, and an Art 9 / Art 10 condition for special category or criminal offence data",
            Source.AGREEMENT,
            "; ".join(ag.lawful_basis)
            + (
                ""
                if special
                else ". No Art 9 or Art 10 condition is listed: confirm that none of the data is special category "
                "or criminal offence data."
            ),
        ),
        ChecklistItem(
            "Data items",
            "exactly which data is shared",
            Source.FLOWS,
            f"{len(flows)} flow(s); {released} of {fields} schema fields (counted per flow) are released; the field "
            "inventory lists each one",
        ),
        ChecklistItem(
            "Data minimisation",
            "only the data needed for the purpose, coarsened where it can be",
            Source.FLOWS,
            f"kept as sent: {_names(kept)}. Generalised: {_names(generalised)}. Pseudonymised (keyed, this "
            f"agreement's own secret): {_names(pseudonymised)}. Never released: {'; '.join(dropped)}."
            + (f" Released with a stated reason: {'; '.join(reasoned)}." if reasoned else ""),
        ),
        ChecklistItem(
            "Whose records",
            "which records are in scope",
            Source.FLOWS,
            "; ".join(rows),
        ),
        ChecklistItem(
            "Frequency",
            "how often data is shared",
            Source.FLOWS if not no_cadence else Source.NOT_RECORDED,
            "; ".join(cadences) + (f"; no schedule declared for {_names(no_cadence)}" if no_cadence else ""),
        ),
        ChecklistItem(
            "Retention and deletion",
            "how long each recipient keeps the data, and how it is deleted",
            Source.AGREEMENT,
            f"{ag.retention_days} days from first release. The broker deletes its copies then and sends each "
            "consumer a deletion notice (README, 'The life of a record'); how recipients delete the copies they "
            "hold is not recorded in the agreement.",
        ),
        ChecklistItem(
            "Validity and review",
            "when the agreement starts and ends, and when it is reviewed",
            Source.AGREEMENT,
            f"valid {ag.valid_from} to {ag.valid_to}; review by {ag.review_by}; now: {state.label}. Past its "
            "review date or its end the broker releases nothing under it.",
        ),
        ChecklistItem(
            "Events refused while not in force",
            "what happens to data sent while the agreement lapses",
            Source.AGREEMENT,
            hold_line(ag) or "holds nothing: events it refuses while not in force are not kept for it",
        ),
        ChecklistItem(
            "Security",
            "the technical and organisational measures of each party",
            Source.NOT_RECORDED,
            "The broker's own controls: every event signed by its partner (Ed25519) and checked; each consumer "
            "reads only its own queue or feed with its own credentials; every release and read audited in a "
            "hash-chained trail. Each party's own measures are not recorded in the agreement.",
        ),
        ChecklistItem(
            "Accountability",
            "a record of who received what, when and why",
            Source.BROKER,
            "every release is an audit entry (consumer, agreement, revision, fields, rules); `sv-broker audit` "
            "and the IG console read it",
        ),
        ChecklistItem(
            "Accuracy",
            "how errors are corrected at every recipient",
            Source.BROKER,
            "a partner's correction or withdrawal reaches each consumer that holds the record (README, 'The life "
            "of a record'); the parties' own procedure is not recorded in the agreement",
        ),
        ChecklistItem(
            "Individuals' rights",
            "privacy information, subject access, objection and complaints",
            Source.NOT_RECORDED,
            "not recorded in the agreement",
        ),
        ChecklistItem(
            "Breaches",
            "who is told, and how fast, when something goes wrong",
            Source.NOT_RECORDED,
            "not recorded in the agreement",
        ),
        ChecklistItem(
            "Sign-off",
            "who approved the agreement (and the DPO's advice)",
            Source.NOT_RECORDED,
            "not recorded in the agreement",
        ),
    ]
    return tuple(items)


def build_register(
    policy: PolicySet,
    registry: Registry,
    at: datetime,
    lock: Mapping[str, int] | None = None,
) -> Register:
    states = agreement_states(policy, at)
    entries = []
    named: set[str] = set()
    for ag_id in sorted(policy.agreements):
        ag = policy.agreements[ag_id]
        flows = flows_of(policy, ag_id)
        parties = tuple(_party(p, registry) for p in ag.parties)
        named.update(p for f in flows for p in (*f.partners, *f.consumers))
        entries.append(
            AgreementEntry(
                id=ag.id,
                title=ag.title,
                revision=ag.revision,
                locked_revision=None if lock is None else lock.get(ag.id),
                history=ag.notes,
                state=states[ag_id],
                purpose=" ".join(ag.purpose.split()),
                lawful_basis=ag.lawful_basis,
                parties=parties,
                valid_from=ag.valid_from,
                valid_to=ag.valid_to,
                review_by=ag.review_by,
                retention_days=ag.retention_days,
                hold=hold_line(ag) or "holds nothing",
                pseudonymises=ag.pseudonymises,
                path=ag.path,
                flows=flows,
                checklist=checklist(ag, states[ag_id], flows, parties),
            )
        )
    unused = tuple(_party(pid, registry) for pid in sorted({*registry.partners, *registry.consumers} - named))
    return Register(at, tuple(entries), unused)
