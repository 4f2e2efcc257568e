"""Properties of the engine over generated valid events of every type and generated agreements.

For every generated (agreements, event, partner):

* every released record holds exactly the fields its flow's rules name (so a subset of what the
  agreement names), each transformed as declared, checked against an independent re-statement of
  each transform below (not the engine's code);
* no direct identifier is ever released;
* a consumer named in no flow (``derbyshire-fire-analysts``) receives nothing;
* releases happen exactly for the flows that name the partner and event type, of agreements in
  force, whose row conditions hold: nothing more (default deny), nothing less.
"""

from __future__ import annotations

import calendar
import copy
import functools
import hashlib
import hmac
import itertools
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.errors import PolicyError
from broker.policy.engine import decide
from broker.policy.loader import build_policy, load_policy
from broker.policy.model import (
    FORMS_FOR_KIND,
    NEEDS_REASON,
    PSEUDONYMISABLE,
    SCHEMA_FIELDS,
    FieldKind,
    FieldSpec,
    PolicySet,
)
from broker.registry import FIGURES_ONLY_ROLE, load_registry
from broker.settings import REPO_POLICIES
from schemas.events import DIRECT_IDENTIFIER_FIELDS, EVENT_MODELS, EventModel
from tests.strategies import any_event, event_strategy
from tests.test_policy_support import NOBODY, NOW, TEST_SECRETS, validated_event

LONDON = ZoneInfo("Europe/London")
TODAY = NOW.astimezone(LONDON).date()  # NOW is noon UTC: no day boundary is near
REGISTRY = load_registry(REPO_POLICIES, REPO_POLICIES / "keys")  # parties only; no keys needed
# Records flows only: a consumer of the figures-only role may not be named in one (the loader refuses).
CONSUMERS = sorted(c for c, info in REGISTRY.consumers.items() if c != NOBODY and info.role != FIGURES_ONLY_ROLE)
PARTNERS = {t: sorted(p.id for p in REGISTRY.partners.values() if t in p.event_types) for t, _ in EVENT_MODELS}
SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- generated agreements -------------------------------------------------------------------------


@st.composite
def band_set(draw: st.DrawFn) -> list[str]:
    cuts = sorted(draw(st.sets(st.integers(min_value=0, max_value=125), min_size=2, max_size=8)))
    labels = []
    for low, high in itertools.pairwise(cuts):
        if draw(st.integers(min_value=0, max_value=4)) > 0:  # sometimes leave a gap
            labels.append(f"{low}-{high - 1}")
    if not labels or draw(st.booleans()):
        labels.append(f"{cuts[-1]}+")
    return labels


def group_set(spec: FieldSpec) -> st.SearchStrategy[dict[str, list[str]]]:
    def partition(assignment: list[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for code, label in zip(sorted(spec.codes), assignment, strict=True):
            out.setdefault(label, []).append(code)
        return out

    labels = st.sampled_from(["alpha", "beta", "gamma"])
    return st.lists(labels, min_size=len(spec.codes), max_size=len(spec.codes)).map(partition)


@st.composite
def rule(draw: st.DrawFn, spec: FieldSpec, index: int, decl: dict[str, Any]) -> dict[str, Any]:
    choices: list[tuple[str, str | None]] = [("keep", None)]
    choices += [("generalise", form.value) for form in FORMS_FOR_KIND.get(spec.kind, ())]
    if spec.kind in PSEUDONYMISABLE:
        choices.append(("pseudonymise", None))
    action, form = draw(st.sampled_from(choices))
    out: dict[str, Any] = {"id": f"r{index}", "field": spec.name, "action": action}
    if form is not None:
        out["to"] = form
    if form == "band":
        name = f"bands-{index}"
        decl["bands"][name] = draw(band_set())
        out["bands"] = name
    if form == "group":
        name = f"groups-{index}"
        decl["groups"][name] = draw(group_set(spec))
        out["groups"] = name
    if spec.kind in NEEDS_REASON and (action == "keep" or form == "lsoa"):
        out["reason"] = "Generated agreement: a reason is named."
    out["as"] = draw(st.sampled_from([f"out_{index}", f"{spec.name}_{index}"]))
    return out


@st.composite
def condition(draw: st.DrawFn, fields: dict[str, FieldSpec]) -> dict[str, Any]:
    spec = fields[draw(st.sampled_from(sorted(fields)))]
    codes = sorted(spec.codes)
    options: list[dict[str, Any]] = [{"field": spec.name, "present": draw(st.booleans())}]
    if spec.kind in (FieldKind.CODE, FieldKind.DISTRICT):
        subset = draw(st.lists(st.sampled_from(codes), min_size=1, unique=True))
        options += [{"field": spec.name, "in": subset}, {"field": spec.name, "not_in": subset}]
    if spec.kind is FieldKind.CODE_LIST:
        options.append({"field": spec.name, "any_in": draw(st.lists(st.sampled_from(codes), min_size=1, unique=True))})
    if spec.kind is FieldKind.INT:
        low, high = sorted(draw(st.lists(st.integers(min_value=0, max_value=130), min_size=2, max_size=2)))
        options.append({"field": spec.name, "between": [low, high]})
    if spec.kind is FieldKind.BOOL:
        options.append({"field": spec.name, "equals": draw(st.booleans())})
    return draw(st.sampled_from(options))


@st.composite
def agreement(draw: st.DrawFn, event_type: str, agreement_id: str) -> dict[str, Any]:
    fields = dict(SCHEMA_FIELDS[(event_type, 1)])
    decl: dict[str, Any] = {"bands": {}, "groups": {}}
    consumers = draw(st.permutations(CONSUMERS))
    split = draw(st.integers(min_value=1, max_value=len(consumers) - 1))
    groups_of_consumers = [consumers[:split], consumers[split:]][: draw(st.integers(min_value=1, max_value=2))]
    flows = []
    index = 0
    for n, flow_consumers in enumerate(groups_of_consumers):
        size = draw(st.integers(min_value=1, max_value=len(flow_consumers)))
        rules = []
        for name in draw(st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=14)):
            rules.append(draw(rule(fields[name], index, decl)))
            index += 1
        flows.append(
            {
                "id": f"flow-{n}",
                "partners": draw(st.lists(st.sampled_from(PARTNERS[event_type]), min_size=1, unique=True)),
                "event_type": event_type,
                "versions": [1],
                "consumers": list(flow_consumers[:size]),
                "when": draw(st.lists(condition(fields), max_size=2)),
                "rules": rules,
            }
        )

    def day(low: int, high: int) -> date:
        return TODAY + timedelta(days=draw(st.integers(min_value=low, max_value=high)))

    if draw(st.integers(min_value=0, max_value=3)):  # mostly in force, so releases are checked
        first, valid_to = day(-400, 0), day(0, 400)
        review_by = day(0, (valid_to - TODAY).days)
    else:  # any window: not yet valid, expired, review overdue, or in force
        first, second, third = sorted(day(-400, 400) for _ in range(3))
        review_by, valid_to = draw(st.permutations([second, third]))
    return {
        "id": agreement_id,
        "title": "Generated",
        "revision": 1,
        "parties": [*PARTNERS[event_type], *CONSUMERS],
        "purpose": "Property testing.",
        "lawful_basis": ["UK GDPR Art 6(1)(e)"],
        "valid_from": first,
        "valid_to": valid_to,
        "review_by": review_by,
        "retention_days": 1,
        "flows": flows,
        **{k: v for k, v in decl.items() if v},
    }


@st.composite
def scenario(draw: st.DrawFn) -> tuple[list[dict[str, Any]], EventModel, str]:
    model = draw(st.sampled_from(list(EVENT_MODELS.values())))
    event = draw(event_strategy(model))
    docs = [draw(agreement(model.EVENT_TYPE, "dsa-generated-one"))]
    if draw(st.booleans()):
        other = draw(st.sampled_from(list(EVENT_MODELS.values())))  # maybe another type, maybe the same
        docs.append(draw(agreement(other.EVENT_TYPE, "dsa-generated-two")))
    partner = draw(st.sampled_from(PARTNERS[model.EVENT_TYPE]))
    return docs, event, partner


SECRETS = {"dsa-generated-one": bytes.fromhex("aa" * 32), "dsa-generated-two": bytes.fromhex("bb" * 32)}


# --- the independent oracle -----------------------------------------------------------------------


def _local(value: date) -> date | datetime:
    return value.astimezone(LONDON) if isinstance(value, datetime) else value


def _band(labels: list[str], value: int) -> str | None:
    for label in labels:
        low, _, high = label.rstrip("+").partition("-")
        if int(low) <= value and (label.endswith("+") or value <= int(high)):
            return label
    return None


def _json(value: Any) -> Any:
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, list):
        return [_json(v) for v in value]
    return value


def check_value(rule: dict[str, Any], doc: dict[str, Any], value: Any, out: Any) -> None:
    """``out`` is ``value`` transformed as ``rule`` declares."""
    if value is None:
        assert out is None
        return
    action, form = rule["action"], rule.get("to")
    if action == "pseudonymise":
        message = f"sv-broker pseudonym v1\x00{doc['id']}\x00{rule['field']}\x00{value}".encode()
        assert out == "psn-" + hmac.new(SECRETS[doc["id"]], message, hashlib.sha256).hexdigest()[:32]
        return
    if action == "keep" or form in ("district", "lsoa"):
        if isinstance(value, datetime):
            parsed = datetime.fromisoformat(out)
            assert parsed == value
            assert parsed.utcoffset() == value.utcoffset()
        elif isinstance(value, date):
            assert date.fromisoformat(out) == value
        else:
            assert out == _json(value)
            assert type(out) is type(_json(value))
        return
    local = _local(value)
    if form == "band":
        assert out == _band(doc["bands"][rule["bands"]], value)
    elif form == "group":
        table = {code: label for label, codes in doc["groups"][rule["groups"]].items() for code in codes}
        expected = sorted({table[v.value] for v in value}) if isinstance(value, list) else table[value.value]
        assert out == expected
    elif form == "week":
        year, week, _ = local.isocalendar()
        assert out == f"{year}-W{week:02d}"
    elif form == "month":
        assert out == f"{local.year}-{local.month:02d}"
    elif form == "quarter":
        assert out == f"{local.year}-Q{(local.month + 2) // 3}"
    elif form == "day_of_week":
        assert out == calendar.day_name[local.weekday()]
    elif form == "hour":
        assert isinstance(local, datetime)
        assert out == local.hour
    elif form == "day_part":
        assert isinstance(local, datetime)
        assert out == ["night", "morning", "afternoon", "evening"][local.hour // 6]
    elif form == "nte_peak":
        assert isinstance(local, datetime)
        # Friday 18:00 to Sunday 06:00 except Saturday 06:00-18:00: shift back 6 hours and it is
        # "Friday or Saturday, from noon".
        shifted = local.replace(tzinfo=None) - timedelta(hours=6)
        assert out is (shifted.weekday() in (4, 5) and shifted.hour >= 12)
    else:
        raise AssertionError(f"no oracle for {form}")


def holds(cond: dict[str, Any], event: EventModel) -> bool:
    value = getattr(event, cond["field"])
    if "present" in cond:
        return (value is not None) is cond["present"]
    if value is None:
        return False
    plain = _json(value)
    if "in" in cond:
        return plain in cond["in"]
    if "not_in" in cond:
        return plain not in cond["not_in"]
    if "any_in" in cond:
        return bool(set(plain) & set(cond["any_in"]))
    if "between" in cond:
        return bool(cond["between"][0] <= plain <= cond["between"][1])
    return bool(plain == cond["equals"])


def in_force(doc: dict[str, Any]) -> bool:
    return bool(doc["valid_from"] <= TODAY <= doc["valid_to"] and doc["review_by"] >= TODAY)


# --- the properties -------------------------------------------------------------------------------


@SETTINGS
@given(scenario())
def test_released_records_are_exactly_what_the_agreements_name(
    generated: tuple[list[dict[str, Any]], EventModel, str],
) -> None:
    docs, event, partner = generated
    policy = build_policy([(f"<{d['id']}>", d) for d in docs], REGISTRY, SECRETS)
    decision = decide(validated_event(event, partner), policy, NOW)
    by_id = {d["id"]: d for d in docs}

    for release in decision.releases:
        assert release.consumer != NOBODY
        doc = by_id[release.agreement_id]
        flow = next(f for f in doc["flows"] if f["id"] == release.flow_id)
        assert release.consumer in flow["consumers"]
        assert partner in flow["partners"]
        assert flow["event_type"] == event.EVENT_TYPE
        assert in_force(doc)
        assert all(holds(c, event) for c in flow["when"])
        named = {r["as"]: r for r in flow["rules"]}
        assert set(release.record) == set(named)
        assert not {k.lower() for k in release.record} & DIRECT_IDENTIFIER_FIELDS
        assert release.fields == tuple(sorted(release.record))
        assert dict(zip(release.fields, release.rules, strict=True)) == {k: r["id"] for k, r in named.items()}
        for output, rule_table in named.items():
            check_value(rule_table, doc, getattr(event, rule_table["field"]), release.record[output])

    # Nothing less: every entitled consumer gets exactly one record per agreement.
    entitled = {
        (doc["id"], flow["id"], consumer)
        for doc in docs
        if in_force(doc)
        for flow in doc["flows"]
        if flow["event_type"] == event.EVENT_TYPE
        and partner in flow["partners"]
        and all(holds(c, event) for c in flow["when"])
        for consumer in flow["consumers"]
    }
    got = [(r.agreement_id, r.flow_id, r.consumer) for r in decision.releases]
    assert sorted(got) == sorted(entitled)
    if not got:
        assert decision.refusals


@SETTINGS
@given(any_event(), st.data())
def test_shipped_agreements_release_no_identifier_no_free_text_and_nothing_to_nobody(
    event: EventModel, data: st.DataObject
) -> None:
    policy = build_shipped()
    partner = data.draw(st.sampled_from(PARTNERS[event.EVENT_TYPE]))
    decision = decide(validated_event(event, partner), policy, NOW)
    for release in decision.releases:
        assert release.consumer != NOBODY
        flow = policy.flow(release.agreement_id, release.flow_id)
        assert flow is not None
        assert set(release.record) == set(flow.fields)
        assert not {k.lower() for k in release.record} & DIRECT_IDENTIFIER_FIELDS
        for quasi in ("assault_location_text", "assault_method_other", "patient_lsoa", "lsoa"):
            assert quasi not in release.record
            assert quasi not in {r.field for r in flow.rules}


@functools.cache
def build_shipped() -> PolicySet:
    return load_policy(REPO_POLICIES, REGISTRY, TEST_SECRETS)


@SETTINGS
@given(
    st.sampled_from(sorted(DIRECT_IDENTIFIER_FIELDS)),
    st.sampled_from(["keep", "pseudonymise", "generalise"]),
    st.sampled_from(sorted(t for t, _ in EVENT_MODELS)),
)
def test_no_agreement_can_name_a_direct_identifier(name: str, action: str, event_type: str) -> None:
    doc = {
        "id": "dsa-generated-one",
        "title": "Generated",
        "revision": 1,
        "parties": [*PARTNERS[event_type], "derby-csp-analysts"],
        "purpose": "Property testing.",
        "lawful_basis": ["UK GDPR Art 6(1)(e)"],
        "valid_from": TODAY,
        "valid_to": TODAY,
        "review_by": TODAY,
        "retention_days": 1,
        "flows": [
            {
                "id": "flow",
                "partners": PARTNERS[event_type],
                "event_type": event_type,
                "versions": [1],
                "consumers": ["derby-csp-analysts"],
                "rules": [{"id": "leak", "field": name, "action": action}],
            }
        ],
    }
    with pytest.raises(PolicyError) as info:
        build_policy([("<generated>", doc)], REGISTRY, SECRETS)
    assert info.value.reason == "direct_identifier"


def _every_rule_kind() -> list[tuple[str, str, str, str | None]]:
    out: list[tuple[str, str, str, str | None]] = []
    for (event_type, _), fields in sorted(SCHEMA_FIELDS.items()):
        for name, spec in sorted(fields.items()):
            out.append((event_type, name, "keep", None))
            out += [(event_type, name, "generalise", form.value) for form in sorted(FORMS_FOR_KIND.get(spec.kind, ()))]
            if spec.kind in PSEUDONYMISABLE:
                out.append((event_type, name, "pseudonymise", None))
    return out


@pytest.mark.parametrize(("event_type", "name", "action", "form"), _every_rule_kind())
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_transform_of_every_field(
    event_type: str, name: str, action: str, form: str | None, data: st.DataObject
) -> None:
    """Each fitting (field, transform) pair of every schema, over generated events: the value
    released is the value transformed as declared."""
    spec = SCHEMA_FIELDS[(event_type, 1)][name]
    decl: dict[str, Any] = {"bands": {}, "groups": {}}
    table: dict[str, Any] = {"id": "the-rule", "field": name, "action": action, "as": "released"}
    if form is not None:
        table["to"] = form
    if form == "band":
        decl["bands"]["b"] = data.draw(band_set())
        table["bands"] = "b"
    if form == "group":
        decl["groups"]["g"] = data.draw(group_set(spec))
        table["groups"] = "g"
    if spec.kind in NEEDS_REASON and (action == "keep" or form == "lsoa"):
        table["reason"] = "Named."
    doc = {
        "id": "dsa-generated-one",
        "title": "Generated",
        "revision": 1,
        "parties": [*PARTNERS[event_type], "derbyshire-vru"],
        "purpose": "Property testing.",
        "lawful_basis": ["UK GDPR Art 6(1)(e)"],
        "valid_from": TODAY,
        "valid_to": TODAY,
        "review_by": TODAY,
        "retention_days": 1,
        "flows": [
            {
                "id": "flow",
                "partners": PARTNERS[event_type],
                "event_type": event_type,
                "versions": [1],
                "consumers": ["derbyshire-vru"],
                "rules": [table],
            }
        ],
        **{k: v for k, v in decl.items() if v},
    }
    policy = build_policy([("<generated>", doc)], REGISTRY, SECRETS)
    event = data.draw(event_strategy(EVENT_MODELS[(event_type, 1)]))
    (release,) = decide(validated_event(event, PARTNERS[event_type][0]), policy, NOW).releases
    assert list(release.record) == ["released"]
    check_value(table, doc, getattr(event, name), release.record["released"])


toml_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.text(max_size=12)
    | st.dates()
    | st.datetimes(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _paths(item, (*prefix, i))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_malformed_agreement_is_refused_never_a_crash(data: st.DataObject) -> None:
    doc = copy.deepcopy(data.draw(agreement(data.draw(st.sampled_from(sorted(PARTNERS))), "dsa-generated-one")))
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        path = data.draw(st.sampled_from(_paths(doc)))
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(toml_values)
    refused: PolicyError | None = None
    try:
        build_policy([("<fuzzed>", doc)], REGISTRY, SECRETS)
    except PolicyError as exc:  # the only way a bad agreement may fail: with a reason and a sentence
        refused = exc
    if refused is not None:
        assert refused.reason
        assert refused.message
