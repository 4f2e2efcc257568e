"""Hypothesis strategies producing VALID instances of every event model.

Shared API (other test modules import it, keep it stable):

* ``event_strategy(model)`` -- valid instances of one model in ``schemas.events.EVENT_MODELS``;
* ``any_event()`` -- valid instances of any registered model.

Every constraint of the models is respected: patterns, numeric bounds, list lengths and
uniqueness, optional fields sometimes ``None`` (or absent), timezone-aware datetimes with varied
UTC offsets, and each model validator (academic year consistency, ``sv_group`` matching the Home
Office code, ``assault_datetime <= arrival_datetime``, ``assault_method_other`` only with method
``other``, ``police_reference`` only when ``police_called`` ...).

Instances are built with ``model.model_validate(data, strict=False)`` so a strategy that drifts
from the model fails loudly instead of silently producing something else.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any, TypeVar

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from schemas.events import EVENT_MODELS, EventModel
from schemas.events.ae_assault_v1 import AeAssaultV1, AssaultLocationType, AssaultMethod
from schemas.events.common import District, Sex
from schemas.events.nte_incident_v1 import NteAction, NteCategory, NteIncidentV1, PremisesLocation
from schemas.events.police_sv_offence_v1 import (
    HO_CODE_GROUP,
    AgeBand,
    HoOffenceCode,
    OutcomeStatus,
    PoliceSvOffenceV1,
)
from schemas.events.school_exclusion_v1 import (
    ExclusionReason,
    ExclusionType,
    SchoolExclusionV1,
    Term,
    YearGroup,
)

__all__ = ["any_event", "event_strategy"]

M = TypeVar("M", bound=EventModel)

_UPPER_DIGITS = string.ascii_uppercase + string.digits
_MIN_DT = datetime(2015, 1, 1)  # naive bounds; st.datetimes attaches the offset
_MAX_DT = datetime(2030, 12, 31)

# --- primitives -----------------------------------------------------------------------------------

# Whole-minute offsets in the RFC 3339 range, plus the ones real partners use (UTC, BST).
offsets: SearchStrategy[timezone] = st.one_of(
    st.sampled_from([UTC, timezone(timedelta(hours=1)), timezone(timedelta(hours=-5))]),
    st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m))),
)

aware_datetimes: SearchStrategy[datetime] = st.datetimes(min_value=_MIN_DT, max_value=_MAX_DT, timezones=offsets)
dates: SearchStrategy[date] = st.dates(min_value=_MIN_DT.date(), max_value=_MAX_DT.date())

# Any text that can be UTF-8 encoded (no lone surrogates).
_text_chars = st.characters(exclude_categories=("Cs",))


def _text(min_size: int, max_size: int) -> SearchStrategy[str]:
    return st.text(alphabet=_text_chars, min_size=min_size, max_size=max_size)


def _chars(alphabet: str, min_size: int, max_size: int) -> SearchStrategy[str]:
    return st.text(alphabet=alphabet, min_size=min_size, max_size=max_size)


def _optional(strategy: SearchStrategy[Any]) -> SearchStrategy[Any]:
    return st.none() | strategy


lsoas = _chars(string.digits, 6, 6).map(lambda d: "E01" + d)
districts = st.sampled_from(District)
sexes = st.sampled_from(Sex)
# ^[A-Z0-9][A-Z0-9/\-]{N,29}$
_ref_tail = _UPPER_DIGITS + "/-"


def _reference(min_tail: int) -> SearchStrategy[str]:
    return st.builds(lambda head, tail: head + tail, st.sampled_from(_UPPER_DIGITS), _chars(_ref_tail, min_tail, 29))


def _build(model: type[M]) -> Callable[[dict[str, Any]], M]:
    def build(data: dict[str, Any]) -> M:
        return model.model_validate(data, strict=False)

    return build


# --- per-model strategies -------------------------------------------------------------------------


@st.composite
def _ae_assault(draw: st.DrawFn) -> AeAssaultV1:
    start = draw(dates)
    end = start + timedelta(days=draw(st.integers(min_value=0, max_value=92)))
    arrival = draw(aware_datetimes)
    method = draw(st.sampled_from(AssaultMethod))
    data: dict[str, Any] = {
        "site_code": draw(_chars(_UPPER_DIGITS, 3, 9)),
        "reporting_period_start": start,
        "reporting_period_end": end,
        "arrival_datetime": arrival,
        "assault_method": method,
        "assault_location_type": draw(st.sampled_from(AssaultLocationType)),
    }
    if draw(st.booleans()):
        # Before (or at) arrival, possibly expressed in another offset.
        before = timedelta(seconds=draw(st.integers(min_value=0, max_value=7 * 24 * 3600)))
        data["assault_datetime"] = (arrival - before).astimezone(draw(offsets))
    elif draw(st.booleans()):
        data["assault_datetime"] = None
    if method is AssaultMethod.OTHER:
        data["assault_method_other"] = draw(_optional(_text(1, 200)))
    optional = {
        "assault_location_text": _optional(_text(1, 200)),
        "patient_age": _optional(st.integers(min_value=0, max_value=120)),
        "patient_sex": _optional(sexes),
        "patient_lsoa": _optional(lsoas),
        "district": _optional(districts),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            data[key] = draw(strategy)
    return AeAssaultV1.model_validate(data, strict=False)


def _academic_year(first: int) -> str:
    return f"20{first:02d}/{(first + 1) % 100:02d}"


_school_exclusion: SearchStrategy[SchoolExclusionV1] = st.fixed_dictionaries(
    {
        "exclusion_type": st.sampled_from(ExclusionType),
        "start_date": dates,
        "sessions": st.integers(min_value=1, max_value=190),
        "reason_codes": st.lists(st.sampled_from(ExclusionReason), min_size=1, max_size=3, unique=True),
        "year_group": st.sampled_from(YearGroup),
        "term": st.sampled_from(Term),
        "academic_year": st.integers(min_value=0, max_value=99).map(_academic_year),
        "school_urn": _chars(string.digits, 6, 6),
        "la_code": _chars(string.digits, 3, 3),
    },
    optional={
        "district": _optional(districts),
        "weapon_involved": _optional(st.booleans()),
        "pupil_age": _optional(st.integers(min_value=3, max_value=25)),
    },
).map(_build(SchoolExclusionV1))


@st.composite
def _nte_incident(draw: st.DrawFn) -> NteIncidentV1:
    police_called = draw(st.booleans())
    data: dict[str, Any] = {
        "incident_datetime": draw(aware_datetimes),
        "category": draw(st.sampled_from(NteCategory)),
        "premises_licence_ref": draw(_reference(2)),
        "premises_name": draw(_text(1, 100)),
        "location_in_premises": draw(st.sampled_from(PremisesLocation)),
        "district": draw(districts),
        "injury": draw(st.booleans()),
        "weapon_involved": draw(st.booleans()),
        "action_taken": draw(st.lists(st.sampled_from(NteAction), min_size=1, max_size=6, unique=True)),
        "police_called": police_called,
        "cctv_available": draw(st.booleans()),
    }
    if draw(st.booleans()):
        data["lsoa"] = draw(_optional(lsoas))
    if police_called and draw(st.booleans()):
        data["police_reference"] = draw(_optional(_reference(3)))
    return NteIncidentV1.model_validate(data, strict=False)


_police_sv_offence: SearchStrategy[PoliceSvOffenceV1] = (
    st.sampled_from(HoOffenceCode)
    .flatmap(
        lambda code: st.fixed_dictionaries(
            {
                "ho_offence_code": st.just(code),
                "sv_group": st.just(HO_CODE_GROUP[code]),
                "offence_datetime": aware_datetimes,
                "district": districts,
                "knife_involved": st.booleans(),
                "victim_age_band": st.sampled_from(AgeBand),
                "victim_sex": sexes,
                "suspect_age_band": st.sampled_from(AgeBand),
                "suspect_sex": sexes,
                "outcome_status": st.sampled_from(OutcomeStatus),
            },
            optional={"lsoa": _optional(lsoas)},
        )
    )
    .map(_build(PoliceSvOffenceV1))
)


_STRATEGIES: dict[type[EventModel], SearchStrategy[Any]] = {
    AeAssaultV1: _ae_assault(),
    SchoolExclusionV1: _school_exclusion,
    NteIncidentV1: _nte_incident(),
    PoliceSvOffenceV1: _police_sv_offence,
}


def event_strategy(model: type[M]) -> SearchStrategy[M]:
    """Valid instances of ``model`` (one of ``schemas.events.EVENT_MODELS``)."""
    try:
        strategy: SearchStrategy[M] = _STRATEGIES[model]
    except KeyError:
        raise NotImplementedError(f"tests/strategies.py has no strategy for {model.__name__}; add one") from None
    return strategy


def any_event() -> SearchStrategy[EventModel]:
    """Valid instances of any model registered in ``schemas.events.EVENT_MODELS``."""
    return st.one_of(*(event_strategy(model) for model in EVENT_MODELS.values()))
