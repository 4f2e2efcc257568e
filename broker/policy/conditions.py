"""Row conditions: a small declarative form, compiled to closures at load (never ``eval``).

An agreement may release a row only when conditions hold, e.g. "only pupils aged 11 to 17" or
"only exclusions for physical assault or weapons".  Each condition is one table with ``field`` and
exactly one operator; a flow's conditions all must hold (AND; an OR is two flows)::

    when = [
      { field = "pupil_age", between = [11, 17] },
      { field = "reason_codes", any_in = ["PP", "PA", "OW"] },
      { field = "district", in = ["E06000015"] },
    ]

Operators: ``in`` / ``not_in`` (one value among a list), ``any_in`` (a list field holding any of),
``between`` (inclusive integer range), ``equals`` (one value), ``present`` (true: the partner sent
the field; false: it did not).

A field the partner did not send satisfies no condition but ``present = false``: when the data
cannot show a row is in scope, the row is out of scope (fail closed; ICO Data Sharing Code, share
only what the agreement covers).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any

from broker.errors import SpecError
from broker.policy.documents import OPERATORS, ConditionDoc
from broker.policy.model import CompiledCondition
from schemas.errors import CheckCode as C
from schemas.events import EventModel
from schemas.fields import FieldKind, FieldSpec

__all__ = ["OPERATORS", "compile_condition"]

_KINDS: Mapping[str, frozenset[FieldKind]] = {
    "in": frozenset({FieldKind.CODE, FieldKind.DISTRICT, FieldKind.STRING, FieldKind.INT, FieldKind.LSOA}),
    "not_in": frozenset({FieldKind.CODE, FieldKind.DISTRICT, FieldKind.STRING, FieldKind.INT, FieldKind.LSOA}),
    "any_in": frozenset({FieldKind.CODE_LIST}),
    "between": frozenset({FieldKind.INT}),
    "equals": frozenset({FieldKind.BOOL, FieldKind.INT, FieldKind.STRING, FieldKind.CODE, FieldKind.DISTRICT}),
    "present": frozenset(FieldKind),
}


def _scalar(value: Any) -> Any:
    return value._value_ if isinstance(value, StrEnum) else value


def _check_value(spec: FieldSpec, value: Any, key: str) -> Any:
    """A condition operand must be a value the field can hold (a typo'd code would make the
    condition silently never, or always, match)."""
    if spec.kind in (FieldKind.CODE, FieldKind.CODE_LIST, FieldKind.DISTRICT):
        if not isinstance(value, str) or value not in spec.codes:
            raise SpecError(C.BAD_CONDITION, f"{value!r} is not a code of {spec.name!r} ({sorted(spec.codes)})", key)
    elif spec.kind is FieldKind.INT:
        if not isinstance(value, int) or isinstance(value, bool):
            raise SpecError(C.BAD_CONDITION, f"{value!r} is not an integer, as {spec.name!r} is", key)
    elif spec.kind is FieldKind.BOOL:
        if not isinstance(value, bool):
            raise SpecError(C.BAD_CONDITION, f"{value!r} is not true or false, as {spec.name!r} is", key)
    elif not isinstance(value, str):
        raise SpecError(C.BAD_CONDITION, f"{value!r} is not a string, as {spec.name!r} is", key)
    return value


def _values(spec: FieldSpec, operand: list[Any], key: str) -> frozenset[Any]:
    return frozenset(_check_value(spec, v, f"{key}[{i}]") for i, v in enumerate(operand))


def compile_condition(condition: ConditionDoc, fields: Mapping[str, FieldSpec], key: str) -> CompiledCondition:
    """A well-formed condition (its shape is :class:`ConditionDoc`'s) against the event's fields."""
    name, op, operand = condition.field, condition.operator, condition.operand
    spec = fields.get(name)
    if spec is None:
        raise SpecError(C.UNKNOWN_FIELD, f"the event has no field {name!r}", f"{key}.field")
    if spec.kind not in _KINDS[op]:
        raise SpecError(C.BAD_CONDITION, f"{op!r} does not apply to {name!r} ({spec.kind} field)", f"{key}.{op}")
    test: Callable[[EventModel], bool]
    if op == "present":
        wanted = bool(operand)

        def test(event: EventModel) -> bool:
            return (getattr(event, name) is not None) is wanted

        text = f"{name} is {'present' if wanted else 'absent'}"
    elif op in ("in", "not_in", "any_in"):
        values = _values(spec, operand, f"{key}.{op}")
        shown = ", ".join(str(v) for v in sorted(values, key=str))
        if op == "in":

            def test(event: EventModel) -> bool:
                value = getattr(event, name)
                return value is not None and _scalar(value) in values

            text = f"{name} is one of [{shown}]"
        elif op == "not_in":

            def test(event: EventModel) -> bool:
                value = getattr(event, name)
                return value is not None and _scalar(value) not in values

            text = f"{name} is none of [{shown}]"
        else:

            def test(event: EventModel) -> bool:
                value = getattr(event, name)
                return value is not None and any(v._value_ in values for v in value)

            text = f"{name} includes any of [{shown}]"
    elif op == "between":
        low, high = (_check_value(spec, v, f"{key}.{op}") for v in operand)
        if low > high:
            raise SpecError(C.BAD_CONDITION, f"between [{low}, {high}] is empty", f"{key}.{op}")

        def test(event: EventModel) -> bool:
            value = getattr(event, name)
            return value is not None and low <= value <= high

        text = f"{name} is between {low} and {high}"
    else:  # equals
        expected = _check_value(spec, operand, f"{key}.{op}")

        def test(event: EventModel) -> bool:
            value = getattr(event, name)
            return value is not None and _scalar(value) == expected

        text = f"{name} is {str(expected).lower() if isinstance(expected, bool) else expected}"
    return CompiledCondition(field=name, op=op, text=text, test=test)
