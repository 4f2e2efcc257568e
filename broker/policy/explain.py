"""``policy explain``: what each consumer would receive from one event, field by field, and which
rule (or the default deny) decided each field.

It runs the engine itself (:func:`broker.policy.engine.decide`), so the explanation cannot drift
from what the broker does, and then annotates the decision with the compiled rules.

Input is either a signed envelope (as partners send it) or an *unsigned event file*, for trying an
agreement before any partner has a key::

    {
      "type": "ae_assault",               event type
      "version": 1,                        schema version
      "source": "uhdb-royal-derby-ed",     partner id
      "data": { ...event payload... },     validated exactly as the broker validates it
      "id": "optional-message-id"          optional; used for the record ids shown
    }

A signed envelope's signature is NOT verified here (explain has no business needing the partner's
registered key, and a what-if is not a release); the output says so.  The payload is always
validated against its schema, with the broker's own validate stage.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from broker.figures.specs import period_label
from broker.policy.decision import Decision, Refusal
from broker.policy.engine import decide
from broker.policy.model import PolicySet
from broker.registry import Registry
from broker.stages.parse import parse
from broker.stages.types import Received
from broker.stages.validate import validate_payload
from schemas.envelope import ID_RE, PARTY_ID_RE, TYPE_RE, Envelope, format_time
from schemas.errors import ContractError, Reason
from schemas.events import EventModel
from schemas.strictjson import DEFAULT_MAX_BYTES, parse_strict

SIGNED_NOTE = "signed envelope: the signature was NOT verified (explain checks the payload against its schema only)"
UNSIGNED_NOTE = "unsigned event file: there is no signature; the payload was checked against its schema"
UNSIGNED_KEYS = frozenset({"type", "version", "source", "data", "id"})
NOT_SENT = "(not sent)"


@dataclass(frozen=True, slots=True)
class WhatIf:
    """An event to explain: its envelope (signature NOT verified) and its validated payload.

    Its own type, not a hand-built ``Verified``: the engine decides it like any message
    (``Decision[WhatIf]``), but nothing can release from it, because delivery takes only a decision
    on an admitted message (``broker/stages/outcome.py``)."""

    envelope: Envelope
    event: EventModel
    signed: bool

    @property
    def note(self) -> str:
        return SIGNED_NOTE if self.signed else UNSIGNED_NOTE


def _unsigned(doc: dict[str, Any], body: bytes, now: datetime) -> Received:
    def bad(message: str, field: str) -> ContractError:
        return ContractError(Reason.ENVELOPE_INVALID, message, field=field)

    missing = sorted({"type", "version", "source", "data"} - set(doc))
    if missing:
        raise bad(f"An unsigned event file needs {', '.join(missing)}.", missing[0])
    extra = sorted(set(doc) - UNSIGNED_KEYS)
    if extra:
        raise bad(f"An unsigned event file has only type, version, source, data and id; not {extra[0]!r}.", extra[0])
    event_type, version, source, data = doc["type"], doc["version"], doc["source"], doc["data"]
    if not isinstance(event_type, str) or not TYPE_RE.fullmatch(event_type):
        raise bad('type must be an event type like "ae_assault".', "type")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise bad("version must be a positive integer.", "version")
    if not isinstance(source, str) or not PARTY_ID_RE.fullmatch(source):
        raise bad("source must be a partner id.", "source")
    if not isinstance(data, dict):
        raise bad("data must be a JSON object.", "data")
    digest = hashlib.sha256(body).hexdigest()
    message_id = doc.get("id", f"explain-{digest[:24]}")
    if not isinstance(message_id, str) or not ID_RE.fullmatch(message_id):
        raise bad("id must be a message id (8 to 128 letters, digits, '.', '_', ':', '-').", "id")
    envelope = Envelope(
        id=message_id,
        source=source,
        type=event_type,
        version=version,
        time=now,
        keyid="unsigned",
        signature="",
        data=data,
        signed_bytes=b"",
    )
    return Received(envelope=envelope, body_sha256=digest, received_at=now)


def read_event(body: bytes, now: datetime, registry: Registry, *, max_bytes: int = DEFAULT_MAX_BYTES) -> WhatIf:
    """Parse (strictly) and schema-validate an envelope or unsigned event file.

    Raises :class:`ContractError` with the broker's own reason codes, including the sender checks
    the broker would make before any policy (unknown partner, type not registered for it).
    """
    doc = parse_strict(body, max_bytes=max_bytes)
    signed = "specversion" in doc or "signature" in doc
    received = parse(body, max_bytes=max_bytes, now=now) if signed else _unsigned(doc, body, now)
    env = received.envelope
    partner = registry.partners.get(env.source)
    if partner is None:
        raise ContractError(Reason.UNKNOWN_PARTNER, f"No partner {env.source!r} is registered.", field="source")
    if env.type not in partner.event_types:
        raise ContractError(
            Reason.TYPE_NOT_REGISTERED,
            f"Partner {env.source!r} is not registered to send {env.type!r} events.",
            field="type",
        )
    # A what-if never releases anything, so the signature is not checked; the output says so.
    return WhatIf(env, validate_payload(env), signed)


def _consumer_entry(
    consumer_id: str,
    registry: Registry,
    decision: Decision[WhatIf],
    policy: PolicySet,
    event_values: dict[str, Any],
) -> dict[str, Any]:
    consumer = registry.consumers.get(consumer_id)
    releases: list[dict[str, Any]] = []
    for release in (r for r in decision.releases if r.consumer == consumer_id):
        flow = policy.flow(release.agreement_id, release.flow_id)
        assert flow is not None
        fields: list[dict[str, Any]] = [
            {
                "field": rule.field,
                "input": event_values.get(rule.field),
                "output": rule.output,
                "value": release.record[rule.output],
                "rule": rule.id,
                "action": rule.describe(),
                **({"reason": rule.reason} if rule.reason else {}),
            }
            for rule in flow.rules
        ]
        named = {rule.field for rule in flow.rules}
        fields += [
            {
                "field": name,
                "input": value,
                "output": None,
                "value": None,
                "rule": None,
                "action": "drop (default: not named by this flow)",
            }
            for name, value in event_values.items()
            if name not in named
        ]
        releases.append(
            {
                "agreement_id": release.agreement_id,
                "agreement_revision": release.agreement_revision,
                "flow_id": release.flow_id,
                "record_id": release.record_id,
                "purpose": " ".join(release.purpose.split()),
                "lawful_basis": list(release.lawful_basis),
                "retention_days": release.retention_days,
                "cadence_days": flow.cadence_days,
                "record": release.record,
                "fields": fields,
            }
        )
    # A figures flow's consumer gets no record: the event is counted in its quarter's figures.
    counted = []
    for release in (r for r in decision.counted if r.consumer == consumer_id):
        counted.append(
            {
                "agreement_id": release.agreement_id,
                "agreement_revision": release.agreement_revision,
                "flow_id": release.flow_id,
                "quarter": period_label(decision.event_type, release.record),
                "counted_by": release.record,
            }
        )
    refusals = [_refusal(r) for r in decision.refusals if r.consumer == consumer_id]
    if not releases and not counted and not refusals:
        env_part = f"{decision.event_type} from {decision.source}"
        message = (
            f"No flow of any agreement names {consumer_id}."
            if consumer_id not in policy.consumers_in_flows
            else f"No flow names {consumer_id} for {env_part}."
        )
        refusals.append({"reason": Reason.NO_AGREEMENT.value, "agreement_id": None, "message": message})
    return {
        "consumer": consumer_id,
        "name": consumer.name if consumer else None,
        "organisation": consumer.organisation if consumer else None,
        "receives": bool(releases),
        "releases": releases,
        "counted": counted,
        "refusals": refusals,
    }


def _refusal(refusal: Refusal) -> dict[str, Any]:
    return {"reason": refusal.reason, "agreement_id": refusal.agreement_id, "message": refusal.message}


def explain(
    event: WhatIf,
    policy: PolicySet,
    registry: Registry,
    now: datetime,
    consumer: str | None = None,
) -> dict[str, Any]:
    """A JSON-ready report of what each consumer (or just ``consumer``) would receive."""
    env = event.envelope
    decision = decide(event, policy, now)
    dumped = event.event.model_dump(mode="json")
    event_values = {name: dumped.get(name) for name in type(event.event).model_fields}
    consumers = [consumer] if consumer is not None else sorted(registry.consumers)
    return {
        "event": {
            "source": env.source,
            "type": env.type,
            "version": env.version,
            "message_id": env.id,
            "signature": "not verified" if event.signed else "unsigned",
            "note": event.note,
        },
        "decided_at": format_time(now),
        "event_refusals": [_refusal(r) for r in decision.refusals if r.consumer is None],
        # agreements that would hold this event (their [hold]) until a new revision is in force
        "holds": [
            {"agreement_id": h.agreement_id, "reason": h.reason, "held_until": format_time(h.expires_at)}
            for h in decision.holds
        ],
        "consumers": [_consumer_entry(c, registry, decision, policy, event_values) for c in consumers],
    }


def _show(value: Any, missing: str = NOT_SENT) -> str:
    if value is None:
        return missing
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def render_text(report: dict[str, Any]) -> str:
    ev = report["event"]
    lines = [
        f"Event: {ev['type']} v{ev['version']} from {ev['source']} (message {ev['message_id']})",
        f"Note: {ev['note']}",
        f"Agreements evaluated as at {report['decided_at']}",
    ]
    for refusal in report["event_refusals"]:
        lines.append(f"  {refusal['reason']}: {refusal['message']}")
    for hold in report.get("holds", ()):
        lines.append(
            f"  HELD for {hold['agreement_id']} ({hold['reason']}) until {hold['held_until']}: released if a new "
            "revision is in force by then"
        )
    for entry in report["consumers"]:
        lines.append("")
        name = f" ({entry['name']})" if entry["name"] else ""
        if entry["receives"]:
            count = len(entry["releases"])
            lines.append(f"{entry['consumer']}{name}: RECEIVES {count} record{'s' if count != 1 else ''}")
        elif entry.get("counted"):
            lines.append(f"{entry['consumer']}{name}: receives no record; COUNTED in its quarterly figures")
        else:
            lines.append(f"{entry['consumer']}{name}: receives NOTHING")
        for c in entry.get("counted", ()):
            by = ", ".join(f"{k} = {_show(v, 'null')}" for k, v in c["counted_by"].items())
            quarter = c["quarter"] or "no quarter (no event date released): counted nowhere"
            lines += [
                f"  agreement {c['agreement_id']} revision {c['agreement_revision']}, flow {c['flow_id']}: "
                f"figures for {quarter}",
                f"    counted by: {by}",
            ]
        for release in entry["releases"]:
            lines += [
                f"  agreement {release['agreement_id']} revision {release['agreement_revision']}, "
                f"flow {release['flow_id']}, record {release['record_id']}",
                f"  purpose: {release['purpose']}",
                f"  lawful basis: {'; '.join(release['lawful_basis'])}",
                f"  retention: {release['retention_days']} days",
            ]
            if release.get("cadence_days"):
                lines.append(f"  cadence: the partners send at least every {release['cadence_days']} days")
            width = max(len(f["field"]) for f in release["fields"])
            for f in release["fields"]:
                left = f"    {f['field']:<{width}}  {_show(f['input'])}"
                if f["rule"] is None:
                    lines.append(f"{left}\n      -> dropped  [default deny: not named by this flow]")
                else:
                    reason = f"; reason: {f['reason']}" if f.get("reason") else ""
                    output = f"{f['output']} = {_show(f['value'], 'null')}"
                    lines.append(f"{left}\n      -> {output}  [rule {f['rule']}: {f['action']}{reason}]")
        for refusal in entry["refusals"]:
            where = f" (agreement {refusal['agreement_id']})" if refusal["agreement_id"] else ""
            lines.append(f"  {refusal['reason']}{where}: {refusal['message']}")
    return "\n".join(lines) + "\n"
