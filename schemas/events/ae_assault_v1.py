"""``ae_assault`` v1: one assault attendance from the ISTV minimum data set (DAPB/ISB 1594)."""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Self

from pydantic import StringConstraints, model_validator

from schemas.events.common import Age, District, EventModel, Lsoa, Sex, ShortText, Timestamp, describe_rules


class AssaultMethod(StrEnum):
    BODY_PART = "body_part"
    BLUNT_OBJECT = "blunt_object"
    KNIFE_OR_SHARP = "knife_or_sharp"
    GLASS_OR_BOTTLE = "glass_or_bottle"
    FIREARM = "firearm"
    CORROSIVE = "corrosive"
    OTHER = "other"
    UNKNOWN = "unknown"


class AssaultLocationType(StrEnum):
    HOME = "home"
    STREET_PUBLIC_PLACE = "street_public_place"
    LICENSED_PREMISES = "licensed_premises"
    WORKPLACE = "workplace"
    SCHOOL_OR_EDUCATION = "school_or_education"
    TRANSPORT = "transport"
    OTHER = "other"
    UNKNOWN = "unknown"


OdsSiteCode = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9]{3,9}$")]


class AeAssaultV1(EventModel):
    EVENT_TYPE: ClassVar[str] = "ae_assault"
    VERSION: ClassVar[int] = 1

    site_code: OdsSiteCode
    reporting_period_start: date
    reporting_period_end: date
    arrival_datetime: Timestamp
    assault_datetime: Timestamp | None = None
    assault_method: AssaultMethod
    assault_method_other: ShortText | None = None
    assault_location_type: AssaultLocationType
    assault_location_text: ShortText | None = None
    # Locally agreed extras (ECDS/ISTV local agreements); all optional.
    patient_age: Age | None = None
    patient_sex: Sex | None = None
    patient_lsoa: Lsoa | None = None
    district: District | None = None

    # One validator per rule, in this order (the first broken rule is the one reported).
    @model_validator(mode="after")
    def _period_in_order(self) -> Self:
        if self.reporting_period_end < self.reporting_period_start:
            raise ValueError("reporting_period_end is before reporting_period_start")
        return self

    @model_validator(mode="after")
    def _other_text_only_for_other(self) -> Self:
        if self.assault_method_other is not None and self.assault_method is not AssaultMethod.OTHER:
            raise ValueError("assault_method_other is only allowed when assault_method is 'other'")
        return self

    @model_validator(mode="after")
    def _assault_not_after_arrival(self) -> Self:
        if self.assault_datetime is not None and self.assault_datetime > self.arrival_datetime:
            raise ValueError("assault_datetime is after arrival_datetime")
        return self

    @classmethod
    def add_schema_rules(cls, schema: dict[str, Any]) -> None:
        # _other_text_only_for_other: the method is "other", or the text is absent or null.
        schema["anyOf"] = [
            {"properties": {"assault_method": {"enum": [AssaultMethod.OTHER.value]}}},
            {"properties": {"assault_method_other": {"type": "null"}}},
        ]
        # _period_in_order, _assault_not_after_arrival: JSON Schema cannot compare two values.
        schema["description"] = describe_rules(
            [f"assault_method_other only when assault_method is {AssaultMethod.OTHER.value!r}"],
            [
                "reporting_period_end is not before reporting_period_start",
                "assault_datetime is not after arrival_datetime (compared as instants, whatever their offsets)",
            ],
        )
