"""``school_exclusion`` v1: one suspension or permanent exclusion (DfE / NPD exclusion fields)."""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Self

from pydantic import Field, StringConstraints, model_validator

from schemas.events.common import District, EventModel, describe_rules


class ExclusionType(StrEnum):
    SUSPENSION = "suspension"
    PERMANENT = "permanent"


class ExclusionReason(StrEnum):
    """DfE exclusion reason codes (since 2020/21, up to three per exclusion)."""

    PP = "PP"  # physical assault against a pupil
    PA = "PA"  # physical assault against an adult
    VP = "VP"  # verbal abuse / threatening behaviour against a pupil
    VA = "VA"  # verbal abuse / threatening behaviour against an adult
    OW = "OW"  # use or threat of use of an offensive weapon or prohibited item
    BU = "BU"  # bullying
    RA = "RA"  # racist abuse
    LG = "LG"  # abuse against sexual orientation and gender identity
    DS = "DS"  # abuse relating to disability
    SM = "SM"  # sexual misconduct
    DA = "DA"  # drug and alcohol related
    DM = "DM"  # damage
    TH = "TH"  # theft
    PD = "PD"  # persistent disruptive behaviour
    MT = "MT"  # inappropriate use of social media or online technology


class Term(StrEnum):
    AUTUMN = "autumn"
    SPRING = "spring"
    SUMMER = "summer"


class YearGroup(StrEnum):
    """National Curriculum year group."""

    R = "R"
    Y1 = "1"
    Y2 = "2"
    Y3 = "3"
    Y4 = "4"
    Y5 = "5"
    Y6 = "6"
    Y7 = "7"
    Y8 = "8"
    Y9 = "9"
    Y10 = "10"
    Y11 = "11"
    Y12 = "12"
    Y13 = "13"
    Y14 = "14"


# ASCII digits only ([0-9], not \d: see schemas.events.common.LSOA_PATTERN).
AcademicYear = Annotated[str, StringConstraints(pattern=r"^20[0-9]{2}/[0-9]{2}$")]
SchoolUrn = Annotated[str, StringConstraints(pattern=r"^[0-9]{6}$")]
LaCode = Annotated[str, StringConstraints(pattern=r"^[0-9]{3}$")]

ACADEMIC_YEARS: tuple[str, ...] = tuple(f"20{first:02d}/{(first + 1) % 100:02d}" for first in range(100))
"""Every academic year the contract accepts, "2000/01" to "2099/00": two consecutive years."""


class SchoolExclusionV1(EventModel):
    EVENT_TYPE: ClassVar[str] = "school_exclusion"
    VERSION: ClassVar[int] = 1

    exclusion_type: ExclusionType
    start_date: date
    sessions: Annotated[int, Field(ge=1, le=190)]  # a session is half a school day
    reason_codes: Annotated[
        list[ExclusionReason], Field(min_length=1, max_length=3, json_schema_extra={"uniqueItems": True})
    ]
    year_group: YearGroup
    term: Term
    academic_year: AcademicYear
    school_urn: SchoolUrn
    la_code: LaCode  # DfE LA number, e.g. 831 Derby, 830 Derbyshire
    district: District | None = None
    weapon_involved: bool | None = None
    pupil_age: Annotated[int, Field(ge=3, le=25)] | None = None  # locally agreed; age in years, never a DOB

    # One validator per rule, in this order (the first broken rule is the one reported).
    @model_validator(mode="after")
    def _reasons_unique(self) -> Self:  # exported as the field's "uniqueItems"
        if len(set(self.reason_codes)) != len(self.reason_codes):
            raise ValueError("reason_codes repeats a code")
        return self

    @model_validator(mode="after")
    def _consecutive_years(self) -> Self:
        if self.academic_year not in ACADEMIC_YEARS:
            raise ValueError("academic_year must be consecutive years, e.g. 2025/26")
        return self

    @classmethod
    def add_schema_rules(cls, schema: dict[str, Any]) -> None:
        # _consecutive_years: the table itself (the pattern alone would let 2025/27 through).
        schema["properties"]["academic_year"]["enum"] = list(ACADEMIC_YEARS)
        schema["description"] = describe_rules(
            ["academic_year is two consecutive years (enum)", "reason_codes repeats no code (uniqueItems)"], []
        )
