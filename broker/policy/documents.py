"""The shape of an agreement file, as pydantic models: which keys, which types, which may be left out.

:class:`AgreementDoc` (with :class:`FlowDoc`, :class:`RuleDoc`, :class:`ConditionDoc`) is strict
(TOML ``"12"`` is not 12, ``1`` is not ``true``) and refuses unknown keys at every level: a
misspelt ``when`` would otherwise silently widen a release, and a misspelt ``reason`` or ``as``
would be a setting nobody applied.

What a model cannot say stays in ``loader.py``: references to the registry and to the event
schemas (parties, fields, which transform fits which field kind), references inside the document
(band, group and rule sets), the revision lock, the secrets and the lint.

Each key carries a :class:`Said`: the code and sentence a wrong or missing value there is reported
with, so an operator reads the same sentence whatever pydantic's own error was. A validator that
needs its own sentence raises :func:`refuse` (its code is the error's type). :func:`problems`
turns a :class:`~pydantic.ValidationError` into (key path, code, sentence, loc) in the file's own
terms: a flow or rule is named by its id, e.g. ``flows['ae-to-csp'].rules['method'].to``.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from functools import cache
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter, ValidationError, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

from broker.policy.model import Action, Form
from schemas.documents import DocumentModel, ErrorDetails
from schemas.errors import CheckCode as C
from schemas.events import DIRECT_IDENTIFIER_FIELDS, EVENT_TYPES
from schemas.fields import unwrap

__all__ = [
    "AgreementDoc",
    "ConditionDoc",
    "FlowDoc",
    "HoldDoc",
    "RuleDoc",
    "Said",
    "Salvage",
    "ShapeProblem",
    "problems",
    "salvage",
]

ID_RE = re.compile(r"^[a-z0-9][a-z0-9\-]{1,62}$")
OUTPUT_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
MAX_RETENTION_DAYS = 3650
MAX_HOLD_DAYS = 90  # a held event is kept for at most this long (and never beyond the agreement's retention)
HOLD_REASONS = ("not_yet_valid", "review_overdue", "expired")
MAX_CADENCE_DAYS = 366  # a flow that sends less often than yearly is not on a cadence worth watching
MAX_RELEASE_AFTER_DAYS = 92  # a quarter's figures wait at most a quarter for late recording
MAX_TREND_QUARTERS = 8
FIGURES_RULES = ("source", "partnership")
ROUNDING_BASES = (5, 10)
EARLIEST_DATE = date(2000, 1, 1)
LATEST_DATE = date(2999, 12, 31)
OPERATORS = ("in", "not_in", "any_in", "between", "equals", "present")
_CODES = frozenset(code.value for code in C)


@dataclass(frozen=True, slots=True)
class Said:
    """How a wrong or missing value at this key is reported. ``{value}`` in the sentence is the
    value found (``None`` when missing), ``{key}`` the key's own name."""

    code: C
    sentence: str
    up: bool = False  # reported at the enclosing table's key (a condition is read as one unit)


def refuse(code: C, message: str, at: str = "") -> PydanticCustomError:
    """An error with its own code and sentence (``at``: a key below the one validated)."""
    return PydanticCustomError(code.value, "{message}", {"message": message, "at": at})


def _pattern(pattern: re.Pattern[str], message: str) -> AfterValidator:
    def check(value: str) -> str:
        if not value.strip():
            raise ValueError("blank")  # the key's own sentence: it must be a non-empty string
        if not pattern.fullmatch(value):
            raise refuse(C.BAD_VALUE, message)
        return value

    return AfterValidator(check)


def _non_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("blank")
    return value


def _date_in_term(value: date, info: ValidationInfo) -> date:
    # An agreement has a real term (ICO Data Sharing Code); and 9999-12-31 would overflow.
    if not EARLIEST_DATE <= value <= LATEST_DATE:
        raise refuse(C.BAD_VALUE, f"{info.field_name} must be between {EARLIEST_DATE} and {LATEST_DATE}")
    return value


def _event_type(value: str) -> str:
    if value not in EVENT_TYPES:
        raise ValueError("unknown event type")
    return value


def _not_a_direct_identifier(value: str) -> str:
    if value.lower() in DIRECT_IDENTIFIER_FIELDS:
        raise refuse(C.DIRECT_IDENTIFIER, f"output name {value!r} reads as a direct identifier")
    return value


Text = Annotated[str, AfterValidator(_non_blank)]
Ids = Annotated[
    list[Annotated[str, Field(min_length=1)]], Field(min_length=1), Said(C.BAD_VALUE, "must be a non-empty list of ids")
]
Day = Annotated[date, AfterValidator(_date_in_term), Said(C.BAD_VALUE, "{key} must be a TOML date, e.g. 2026-04-01")]
Lax = Field(strict=False)  # an enum from its TOML string (strict mode takes only enum members)


class _Doc(DocumentModel):
    unknown: ClassVar[str]  # the sentence for an unknown key ({key}) or keys ({keys}, listed together)


Operand = Annotated[list[Any], Field(min_length=1), Said(C.BAD_CONDITION, "the operand must be a non-empty list")]
Range = Annotated[list[Any], Field(min_length=2, max_length=2), Said(C.BAD_CONDITION, "between needs [LOW, HIGH]")]


class ConditionDoc(_Doc):
    """One row condition: ``field`` and exactly one operator (see ``conditions.py``)."""

    unknown: ClassVar[str] = f"unknown condition key(s) {{keys}}; operators are {list(OPERATORS)}"

    field: Annotated[str, Said(C.BAD_CONDITION, 'a condition needs field = "<event field>"', up=True)]
    in_: Operand | None = Field(default=None, alias="in")
    not_in: Operand | None = None
    any_in: Operand | None = None
    between: Range | None = None
    equals: Any = None
    present: Annotated[bool, Said(C.BAD_CONDITION, "present must be true or false")] | None = None

    @model_validator(mode="after")
    def _one_operator(self) -> ConditionDoc:
        if len(self.operators) != 1:
            raise refuse(C.BAD_CONDITION, f"a condition needs exactly one operator of {list(OPERATORS)}")
        return self

    @property
    def operators(self) -> list[str]:
        return [op for op in OPERATORS if getattr(self, "in_" if op == "in" else op) is not None]

    @property
    def operator(self) -> str:
        return self.operators[0]

    @property
    def operand(self) -> Any:
        return getattr(self, "in_" if self.operator == "in" else self.operator)


class RuleDoc(_Doc):
    """One rule: which event field it releases, how, and under which output name."""

    unknown: ClassVar[str] = "unknown rule setting(s) {keys}"

    id: Annotated[
        str,
        _pattern(ID_RE, 'a rule needs id = "<lower-case-id>" (it names the rule in decisions)'),
        Said(C.BAD_VALUE, 'a rule needs id = "<lower-case-id>" (it names the rule in decisions)'),
    ]
    field: Annotated[str, Said(C.BAD_VALUE, 'a rule needs field = "<event field>"')]
    action: Annotated[
        Action, Lax, Said(C.UNKNOWN_TRANSFORM, f"action {{value}} is not one of {[a.value for a in Action]}")
    ]
    to: (
        Annotated[
            Form, Lax, Said(C.UNKNOWN_TRANSFORM, f"generalise to {{value}} is not one of {[f.value for f in Form]}")
        ]
        | None
    ) = None
    as_: (
        Annotated[
            str,
            _pattern(OUTPUT_RE, "as must be a lower_snake_case field name"),
            AfterValidator(_not_a_direct_identifier),
            Said(C.BAD_VALUE, "as must be a lower_snake_case field name"),
        ]
        | None
    ) = Field(default=None, alias="as")
    bands: Annotated[str, Said(C.UNKNOWN_BAND_SET, "bands = {value} names no set in [bands]")] | None = None
    groups: Annotated[str, Said(C.UNKNOWN_GROUP_SET, "groups = {value} names no set in [groups]")] | None = None
    reason: Annotated[Text, Said(C.BAD_VALUE, "reason must be a sentence")] | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_direct_identifier(cls, table: Any) -> Any:
        # A direct identifier is never released in any form (DOMAIN.md; PCSC Act 2022 s.16 does
        # not cover patient data). The contract refuses such events, so this is belt and braces
        # against an agreement written for an export that should never reach the broker.
        name = table.get("field") if isinstance(table, dict) else None
        if isinstance(name, str) and name.lower() in DIRECT_IDENTIFIER_FIELDS:
            action = table.get("action")
            message = f"{name!r} is a direct identifier and may not be named as {action!r} (or at all)"
            raise refuse(C.DIRECT_IDENTIFIER, message, "field")
        return table

    @model_validator(mode="after")
    def _settings_fit_the_action(self) -> RuleDoc:
        if self.action is not Action.GENERALISE:
            extra = [k for k in ("bands", "groups", "to") if getattr(self, k) is not None]
            if extra:
                raise refuse(C.BAD_VALUE, f'{sorted(extra)} only go with action = "generalise"', sorted(extra)[0])
            return self
        if self.to is None:
            raise refuse(C.UNKNOWN_TRANSFORM, f"generalise to None is not one of {[f.value for f in Form]}", "to")
        if self.to is not Form.BAND and self.bands is not None:
            raise refuse(C.BAD_VALUE, 'bands only goes with to = "band"', "bands")
        if self.to is not Form.GROUP and self.groups is not None:
            raise refuse(C.BAD_VALUE, 'groups only goes with to = "group"', "groups")
        return self

    @property
    def output(self) -> str:
        return self.as_ if self.as_ is not None else self.field


Rules = list[Annotated[RuleDoc, Said(C.BAD_VALUE, "a rule must be a table { id = ..., field = ..., action = ... }")]]
Conditions = list[
    Annotated[ConditionDoc, Said(C.BAD_CONDITION, "a condition must be a table like { field = ..., in = [...] }")]
]


def _figures_rules(value: str) -> str:
    if value not in FIGURES_RULES:
        raise refuse(C.BAD_VALUE, f"figures.rules {value!r} is not one of {list(FIGURES_RULES)}")
    return value


class FiguresDoc(_Doc):
    """A flow's optional ``figures`` table: its consumers receive quarterly *figures* (count tables,
    disclosure-controlled) computed by the broker from the flow's minimised events, never a record.

    Threat: a Board or public-facing consumer that needs only counts being sent event-level records
    (UK GDPR art. 5(1)(c), data minimisation); and small cells published by mistake. So the
    disclosure rules are named here, in the agreement, and the broker applies them itself."""

    unknown: ClassVar[str] = "unknown figures setting {key}"

    period: Annotated[
        typing.Literal["quarter"], Said(C.BAD_VALUE, 'figures.period must be "quarter" (by event date)')
    ] = "quarter"
    # "source": each source's own rule (police: the partnership's 1-4, health: NHS Digital 1-7,
    # education: DfE 1-2); "partnership": the partnership default for every table.
    rules: Annotated[
        str, AfterValidator(_figures_rules), Said(C.BAD_VALUE, f"figures.rules must be one of {list(FIGURES_RULES)}")
    ] = "source"
    round_to: (
        Annotated[
            typing.Literal[5, 10],
            Said(C.BAD_VALUE, f"figures.round_to must be one of {list(ROUNDING_BASES)} (base of rounding)"),
        ]
        | None
    ) = None
    release_after_days: Annotated[
        int,
        Field(ge=0, le=MAX_RELEASE_AFTER_DAYS),
        Said(C.BAD_VALUE, f"figures.release_after_days must be an integer from 0 to {MAX_RELEASE_AFTER_DAYS}"),
    ] = 14
    trend_quarters: Annotated[
        int,
        Field(ge=1, le=MAX_TREND_QUARTERS),
        Said(C.BAD_VALUE, f"figures.trend_quarters must be an integer from 1 to {MAX_TREND_QUARTERS}"),
    ] = 4


class FlowDoc(_Doc):
    """One ``[[flows]]`` table: who sends which event to whom, on which conditions, under which rules."""

    unknown: ClassVar[str] = "unknown flow setting {key}"

    id: Annotated[
        str,
        _pattern(ID_RE, "a flow id is lower-case letters, digits, '-'"),
        Said(C.BAD_VALUE, "id must be a non-empty string"),
    ]
    partners: Ids
    event_type: Annotated[
        str,
        AfterValidator(_event_type),
        Said(C.UNKNOWN_EVENT_TYPE, f"event_type {{value}} is not one of {sorted(EVENT_TYPES)}"),
    ]
    versions: Annotated[list[int], Field(min_length=1), Said(C.BAD_VALUE, "versions must be a list like [1]")]
    consumers: Ids
    when: Annotated[Conditions, Said(C.BAD_CONDITION, "when must be a list of conditions")] = Field(
        default_factory=list
    )
    rules: Annotated[Rules, Field(min_length=1), Said(C.BAD_VALUE, "rules must be a non-empty list")] | None = None
    rule_set: Annotated[str, Said(C.UNKNOWN_RULE_SET, "no rule set {value} in [rule_sets]")] | None = None
    notes: Annotated[str, Said(C.BAD_VALUE, "notes must be a string")] | None = None
    # How often the flow's partners send, at the least (days): a partner silent for longer is an
    # alert (``broker/monitor/alerts.py``). Optional: an event-driven flow with no schedule has none.
    cadence_days: (
        Annotated[
            int,
            Field(ge=1, le=MAX_CADENCE_DAYS),
            Said(C.BAD_VALUE, f"cadence_days must be an integer from 1 to {MAX_CADENCE_DAYS}"),
        ]
        | None
    ) = None
    # Present: the flow's consumers receive figures only (``FiguresDoc``), never its records.
    figures: Annotated[FiguresDoc, Said(C.BAD_VALUE, "figures must be a table { rules = ..., ... }")] | None = None

    @model_validator(mode="after")
    def _rules_or_a_rule_set(self) -> FlowDoc:
        # Inline or a named rule set, never both (which would win is not obvious).
        if (self.rules is None) == (self.rule_set is None):
            raise refuse(C.BAD_VALUE, "a flow needs exactly one of rules = [...] or rule_set")
        return self


def _hold_reason(value: str) -> str:
    if value not in HOLD_REASONS:
        raise refuse(C.BAD_VALUE, f"hold reason {value!r} is not one of {list(HOLD_REASONS)}")
    return value


class HoldDoc(_Doc):
    """The optional ``[hold]`` table: which not-in-force refusals keep the event, and for how long.

    Threat: an agreement silently starting to keep data it never said it would. So nothing is
    held without this table, each reason is named, the time is bounded (``MAX_HOLD_DAYS``, and the
    loader checks it against ``retention_days``), and ``expired`` needs its own grace period."""

    unknown: ClassVar[str] = "unknown hold setting {key}"

    reasons: Annotated[
        list[Annotated[str, AfterValidator(_hold_reason)]],
        Field(min_length=1),
        Said(C.BAD_VALUE, f"hold.reasons must be a non-empty list of {list(HOLD_REASONS)}"),
    ]
    days: Annotated[
        int,
        Field(ge=1, le=MAX_HOLD_DAYS),
        Said(C.BAD_VALUE, f"hold.days must be an integer from 1 to {MAX_HOLD_DAYS}"),
    ]
    expired_grace_days: (
        Annotated[
            int,
            Field(ge=1, le=MAX_HOLD_DAYS),
            Said(C.BAD_VALUE, f"hold.expired_grace_days must be an integer from 1 to {MAX_HOLD_DAYS}"),
        ]
        | None
    ) = None

    @model_validator(mode="after")
    def _grace_goes_with_expired(self) -> HoldDoc:
        if len(set(self.reasons)) != len(self.reasons):
            raise refuse(C.BAD_VALUE, "hold.reasons names a reason twice", "reasons")
        if "expired" in self.reasons and self.expired_grace_days is None:
            raise refuse(
                C.BAD_VALUE,
                "holding expired events needs expired_grace_days (how long after valid_to they are still held)",
                "expired_grace_days",
            )
        if "expired" not in self.reasons and self.expired_grace_days is not None:
            raise refuse(
                C.BAD_VALUE, 'expired_grace_days only goes with "expired" in hold.reasons', "expired_grace_days"
            )
        return self


BandSet = Annotated[
    list[Annotated[str, Said(C.BAD_BAND, 'band {value} is not "LOW-HIGH" or "LOW+"')]],
    Field(min_length=1),
    Said(C.BAD_BAND, 'a band set must be a non-empty list of labels like "11-17" or "65+"'),
]
GroupSet = Annotated[
    dict[
        str,
        Annotated[
            list[str], Field(min_length=1), Said(C.BAD_GROUP, "group {key} must be a non-empty list of code strings")
        ],
    ],
    Field(min_length=1),
    Said(C.BAD_GROUP, "a group set must be a table of label = [codes]"),
]


class AgreementDoc(_Doc):
    """One agreement file (see ``loader.py`` for the format)."""

    unknown: ClassVar[str] = "unknown setting {key}"

    id: Annotated[
        str,
        _pattern(ID_RE, "id must be lower-case letters, digits and '-'"),
        Said(C.BAD_VALUE, "id must be a non-empty string"),
    ]
    title: Annotated[Text, Said(C.BAD_VALUE, "title must be a non-empty string")]
    revision: Annotated[int, Field(ge=1), Said(C.BAD_VALUE, "revision must be a positive integer")]
    parties: Ids
    purpose: Annotated[Text, Said(C.BAD_VALUE, "purpose must be a non-empty string")]
    lawful_basis: Annotated[
        list[Text], Field(min_length=1), Said(C.BAD_VALUE, "lawful_basis must be a non-empty list of citations")
    ]
    valid_from: Day
    valid_to: Day
    review_by: Day
    retention_days: Annotated[
        int,
        Field(ge=1, le=MAX_RETENTION_DAYS),
        Said(C.BAD_VALUE, f"retention_days must be an integer from 1 to {MAX_RETENTION_DAYS}"),
    ]
    bands: Annotated[dict[str, BandSet], Said(C.BAD_BAND, "bands must be a table of name = [labels]")] = Field(
        default_factory=dict
    )
    groups: Annotated[dict[str, GroupSet], Said(C.BAD_GROUP, "groups must be a table of group sets")] = Field(
        default_factory=dict
    )
    rule_sets: Annotated[
        dict[
            str,
            Annotated[Rules, Field(min_length=1), Said(C.BAD_VALUE, "a rule set must be a non-empty list of rules")],
        ],
        Said(C.BAD_VALUE, "rule_sets must be a table of name = [rules]"),
    ] = Field(default_factory=dict)
    flows: Annotated[
        list[Annotated[FlowDoc, Said(C.BAD_VALUE, "a flow must be a table")]],
        Field(min_length=1),
        Said(C.BAD_VALUE, "flows must be one or more [[flows]] tables"),
    ]
    notes: Annotated[str, Said(C.BAD_VALUE, "notes must be a string")] | None = None
    hold: Annotated[HoldDoc, Said(C.BAD_VALUE, "hold must be a table [hold]")] | None = None


# --- errors in the file's own terms -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShapeProblem:
    key: str  # e.g. flows['ae-to-csp'].rules['method'].to
    code: C
    message: str
    loc: tuple[int | str, ...]  # where in the document (for the line), as pydantic names it


def _inner(annotation: Any, part: int | str) -> Any:
    """The annotation one step down ``part`` (a model's key, a list index, a table's key)."""
    base = unwrap(annotation)[0]
    if isinstance(base, type) and issubclass(base, _Doc):
        for name, info in base.model_fields.items():
            if part in (name, info.alias):
                return Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
        return None
    args = typing.get_args(base)
    if typing.get_origin(base) is list and isinstance(part, int):
        return args[0]
    if typing.get_origin(base) is dict and isinstance(part, str):
        return args[1]
    return None


def _said(annotation: Any) -> Said | None:
    if annotation is None:
        return None
    return next((m for m in unwrap(annotation)[1] if isinstance(m, Said)), None)


def _model(annotation: Any) -> type[_Doc] | None:
    base = unwrap(annotation)[0] if annotation is not None else None
    return base if isinstance(base, type) and issubclass(base, _Doc) else None


def _at(raw: Any, loc: tuple[int | str, ...]) -> Any:
    """The document's value at ``loc``; None where there is none."""
    for part in loc:
        if isinstance(raw, dict):
            raw = raw.get(part)
        elif isinstance(raw, list) and isinstance(part, int) and part < len(raw):
            raw = raw[part]
        else:
            return None
    return raw


def key_of(raw: Any, loc: tuple[int | str, ...]) -> str:
    """The key path of ``loc``, naming an item that has a string id by it: ``flows['x'].rules['y']``."""
    out = ""
    for depth, part in enumerate(loc):
        if isinstance(part, int):
            item = _at(raw, loc[: depth + 1])
            rid = item.get("id") if isinstance(item, dict) else None
            out += f"[{rid!r}]" if isinstance(rid, str) else f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _described(raw: Any, loc: tuple[int | str, ...]) -> tuple[int, Said] | None:
    """The deepest :class:`Said` along ``loc``, and how many parts of ``loc`` lead to its key."""
    found: tuple[int, Said] | None = None
    annotation: Any = AgreementDoc
    for depth, part in enumerate(loc, start=1):
        annotation = _inner(annotation, part)
        said = _said(annotation)
        if said is not None:
            found = (depth, said)
        if annotation is None:
            break
    return found


def _one(raw: Any, error: ErrorDetails) -> ShapeProblem:
    loc = tuple(error["loc"])
    context = dict(error.get("ctx") or {})
    if error["type"] in _CODES:  # raised by a validator with its own code and sentence
        at = tuple(str(context["at"]).split(".")) if context.get("at") else ()
        return ShapeProblem(key_of(raw, (*loc, *at)), C(error["type"]), str(context["message"]), (*loc, *at))
    if error["type"] == "missing" and len(loc) == 1:
        return ShapeProblem(str(loc[0]), C.MISSING_KEY, f"the agreement must say {loc[0]}", loc)
    found = _described(raw, loc)
    if found is None:  # not reached: every key says how it is refused
        return ShapeProblem(key_of(raw, loc), C.BAD_VALUE, str(error["msg"]), loc)
    depth, said = found
    depth -= said.up
    value = None if error["type"] == "missing" and depth == len(loc) else _at(raw, loc[:depth])
    message = said.sentence.replace("{value}", repr(value)).replace("{key}", repr(loc[depth - 1]))
    if "{key}" in said.sentence and depth == 1:  # a top-level key names itself plainly: valid_to must ...
        message = said.sentence.replace("{key}", str(loc[0]))
    return ShapeProblem(key_of(raw, loc[:depth]), said.code, message, loc[:depth])


def _unknown(raw: Any, errors: list[ErrorDetails]) -> Iterator[ShapeProblem]:
    """Unknown keys, one problem per table (rules and conditions list theirs together)."""
    by_table: dict[tuple[int | str, ...], list[str]] = {}
    for error in errors:
        loc = tuple(error["loc"])
        by_table.setdefault(loc[:-1], []).append(str(loc[-1]))
    for table, keys in by_table.items():
        annotation: Any = AgreementDoc
        for part in table:
            annotation = _inner(annotation, part)
        model = _model(annotation) or AgreementDoc
        template = str(model.unknown)
        if "{keys}" in template:
            yield ShapeProblem(key_of(raw, table), C.UNKNOWN_KEY, template.replace("{keys}", str(sorted(keys))), table)
        else:
            for key in sorted(keys):
                where = (*table, key)
                yield ShapeProblem(key_of(raw, where), C.UNKNOWN_KEY, template.replace("{key}", repr(key)), where)


def problems(raw: Any, exc: ValidationError) -> list[ShapeProblem]:
    """Every error of an agreement's validation, in the file's own terms (see the module docstring)."""
    errors = exc.errors(include_url=False)
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    out = [*_unknown(raw, unknown), *(_one(raw, e) for e in errors if e["type"] != "extra_forbidden")]
    return list(dict.fromkeys(out))


# --- what is well-formed in a document with errors -------------------------------------------------


@cache
def _adapter(name: str) -> TypeAdapter[Any]:
    info = AgreementDoc.model_fields[name]
    annotation: Any = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
    return TypeAdapter(annotation, config=ConfigDict(strict=True))


def _alone(name: str, value: Any) -> Any:
    """``value`` validated as the agreement's ``name`` on its own; None if it is not well-formed."""
    try:
        return _adapter(name).validate_python(value)
    except ValidationError:
        return None


@dataclass(frozen=True, slots=True)
class Salvage:
    """What of an agreement document is well-formed: all of it, or (when it has shape errors) each
    part that is well-formed on its own, so references in the rest can still be checked."""

    id: str | None
    revision: int | None
    parties: list[str] | None
    valid_from: date | None
    valid_to: date | None
    review_by: date | None
    bands: Mapping[str, list[str]]
    groups: Mapping[str, dict[str, list[str]]]
    rule_sets: Mapping[str, list[RuleDoc]]
    broken_rule_sets: frozenset[str]  # declared but malformed: a flow naming one is not "unknown"
    flows: list[tuple[int, FlowDoc]]  # (index in the file, flow)
    complete: AgreementDoc | None = None  # the whole document, when it is all well-formed


def _entries(name: str, raw: Any) -> dict[str, Any]:
    table = raw.get(name) if isinstance(raw, dict) else None
    out: dict[str, Any] = {}
    for key, value in table.items() if isinstance(table, dict) else ():
        valid = _alone(name, {key: value})
        if valid is not None:
            out[key] = valid[key]
    return out


def salvage(raw: Any) -> tuple[Salvage, list[ShapeProblem]]:
    """The document's well-formed parts and its shape problems (none if it is all well-formed)."""
    try:
        doc = AgreementDoc.model_validate(raw)
    except ValidationError as exc:
        found = problems(raw, exc)
    else:
        return Salvage(
            doc.id,
            doc.revision,
            doc.parties,
            doc.valid_from,
            doc.valid_to,
            doc.review_by,
            doc.bands,
            doc.groups,
            doc.rule_sets,
            frozenset(),
            list(enumerate(doc.flows)),
            doc,
        ), []
    if not isinstance(raw, dict):
        return Salvage(None, None, None, None, None, None, {}, {}, {}, frozenset(), []), found
    rule_sets = _entries("rule_sets", raw)
    declared = raw.get("rule_sets")
    flows_raw = raw.get("flows")
    flows = []
    for index, flow in enumerate(flows_raw if isinstance(flows_raw, list) else []):
        valid = _alone("flows", [flow])
        if valid is not None:
            flows.append((index, valid[0]))
    head = {name: _alone(name, raw[name]) if name in raw else None for name in ("id", "revision", "parties")}
    days = {name: _alone(name, raw[name]) if name in raw else None for name in ("valid_from", "valid_to", "review_by")}
    return Salvage(
        head["id"],
        head["revision"],
        head["parties"],
        days["valid_from"],
        days["valid_to"],
        days["review_by"],
        _entries("bands", raw),
        _entries("groups", raw),
        rule_sets,
        frozenset(set(declared) - set(rule_sets) if isinstance(declared, dict) else ()),
        flows,
    ), found
