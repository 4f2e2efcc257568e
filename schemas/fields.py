"""One reading of the event models' field types, shared by the policy engine and the adapters.

The agreement loader asks "which transforms fit this field?" and the mapping loader asks "how is
a cell read into this field?"; both answers follow from the field's type in ``schemas/events/``.
Reading the annotations once, here, means the two can never disagree about what a field is (a
field the mapping reads as free text but the policy treats as a code would let a rule release
what the agreement's author thought was coarsened).

This module imports nothing from ``broker/`` or ``adapters/``; each side keeps a thin view on top.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from pydantic import AwareDatetime, BaseModel, StringConstraints

from schemas.events import EVENT_MODELS
from schemas.events.common import LSOA_PATTERN, District  # one LSOA pattern: the kind follows the model

__all__ = ["LSOA_PATTERN", "SCHEMA_FIELDS", "FieldKind", "FieldSpec", "schema_fields", "unwrap"]


class FieldKind(StrEnum):
    """The kind of an event field, which decides which transforms fit it and how a cell is read."""

    TEXT = "text"  # free text (unpatterned string): a quasi-identifier, released only with a reason
    STRING = "string"  # a patterned code or reference (site code, URN, licence ref)
    INT = "int"
    BOOL = "bool"
    DATE = "date"
    DATETIME = "datetime"
    CODE = "code"  # one value of a code list (StrEnum)
    CODE_LIST = "code_list"  # a list of code-list values
    DISTRICT = "district"  # a local authority GSS code
    LSOA = "lsoa"  # an LSOA GSS code: small-area location, released only with a reason


@dataclass(frozen=True, slots=True)
class FieldSpec:
    name: str
    kind: FieldKind
    optional: bool  # may be absent from a payload (None allowed, or not required)
    codes: frozenset[str] = frozenset()  # CODE / CODE_LIST / DISTRICT: the code list's values
    python_type: type | None = None  # the StrEnum for codes (the item's, for lists), else the base type
    required: bool = True  # the model requires the field (no default)


def unwrap(annotation: Any) -> tuple[Any, list[Any], bool]:
    """(base type, constraint metadata, optional) of a pydantic field annotation.

    Strips ``X | None`` and ``Annotated[...]`` in any nesting; a union of two real types is refused
    (neither side could say how to transform or read it)."""
    optional = False
    metadata: list[Any] = []
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation, *extra = typing.get_args(annotation)
            metadata.extend(extra)
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            optional = optional or len(args) != len(typing.get_args(annotation))
            if len(args) != 1:
                raise TypeError(f"unsupported union {annotation!r}")
            annotation = args[0]
        else:
            return annotation, metadata, optional


def _is_enum(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, StrEnum)


def _kind_of(base: Any, metadata: list[Any]) -> tuple[FieldKind, frozenset[str], type | None]:
    if base is AwareDatetime or (isinstance(base, type) and issubclass(base, datetime)):
        return FieldKind.DATETIME, frozenset(), datetime
    if base is date:
        return FieldKind.DATE, frozenset(), date
    if base is bool:
        return FieldKind.BOOL, frozenset(), bool
    if base is int:
        return FieldKind.INT, frozenset(), int
    if _is_enum(base):
        kind = FieldKind.DISTRICT if issubclass(base, District) else FieldKind.CODE
        return kind, frozenset(m.value for m in base), base
    if typing.get_origin(base) is list:
        (item,) = typing.get_args(base)
        item = unwrap(item)[0]
        if _is_enum(item):
            return FieldKind.CODE_LIST, frozenset(m.value for m in item), item
    if base is str:
        patterns = [m.pattern for m in metadata if isinstance(m, StringConstraints) and m.pattern]
        if LSOA_PATTERN in patterns:
            return FieldKind.LSOA, frozenset(), str
        return (FieldKind.STRING if patterns else FieldKind.TEXT), frozenset(), str
    raise TypeError(f"no field kind for {base!r}")


def schema_fields(model: type[BaseModel]) -> dict[str, FieldSpec]:
    """Every field of an event model with its kind."""
    out: dict[str, FieldSpec] = {}
    for name, info in model.model_fields.items():
        base, metadata, optional = unwrap(info.annotation)
        try:
            kind, codes, python_type = _kind_of(base, [*info.metadata, *metadata])
        except TypeError:
            raise TypeError(f"no field kind for field {name!r} of type {info.annotation!r}") from None
        required = info.is_required()
        out[name] = FieldSpec(name, kind, optional or not required, codes, python_type, required)
    return out


SCHEMA_FIELDS: Mapping[tuple[str, int], Mapping[str, FieldSpec]] = {
    key: schema_fields(model) for key, model in EVENT_MODELS.items()
}
