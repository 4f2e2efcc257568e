"""``nte_incident`` v1: one entry of a licensed premises' incident log (no national standard)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, ClassVar, Self

from pydantic import Field, StringConstraints, model_validator

from schemas.events.common import District, EventModel, Lsoa, Timestamp, describe_rules


class NteCategory(StrEnum):
    ASSAULT = "assault"
    DISORDER = "disorder"
    WEAPON_FOUND = "weapon_found"
    DRUGS = "drugs"
    SEXUAL_HARASSMENT = "sexual_harassment"
    THEFT = "theft"
    CRIMINAL_DAMAGE = "criminal_damage"
    REFUSED_ENTRY_AGGRESSION = "refused_entry_aggression"
    MEDICAL = "medical"
    OTHER = "other"


class PremisesLocation(StrEnum):
    ENTRANCE = "entrance"
    BAR = "bar"
    DANCE_FLOOR = "dance_floor"
    TOILETS = "toilets"
    SMOKING_AREA = "smoking_area"
    OUTSIDE_FRONTAGE = "outside_frontage"
    CAR_PARK = "car_park"
    OTHER = "other"


class NteAction(StrEnum):
    REFUSED_ENTRY = "refused_entry"
    EJECTED = "ejected"
    FIRST_AID = "first_aid"
    AMBULANCE = "ambulance"
    SEARCHED = "searched"
    ITEM_CONFISCATED = "item_confiscated"
    NONE = "none"


LicenceRef = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9][A-Z0-9/\-]{2,29}$")]
PoliceReference = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9][A-Z0-9/\-]{3,29}$")]


class NteIncidentV1(EventModel):
    EVENT_TYPE: ClassVar[str] = "nte_incident"
    VERSION: ClassVar[int] = 1

    incident_datetime: Timestamp
    category: NteCategory
    premises_licence_ref: LicenceRef
    premises_name: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    location_in_premises: PremisesLocation
    district: District
    lsoa: Lsoa | None = None
    injury: bool
    weapon_involved: bool
    action_taken: Annotated[list[NteAction], Field(min_length=1, max_length=6, json_schema_extra={"uniqueItems": True})]
    police_called: bool
    police_reference: PoliceReference | None = None
    cctv_available: bool

    # One validator per rule, in this order (the first broken rule is the one reported).
    @model_validator(mode="after")
    def _reference_needs_call(self) -> Self:
        if self.police_reference is not None and not self.police_called:
            raise ValueError("police_reference is given but police_called is false")
        return self

    @model_validator(mode="after")
    def _actions_unique(self) -> Self:  # exported as the field's "uniqueItems"
        if len(set(self.action_taken)) != len(self.action_taken):
            raise ValueError("action_taken repeats an action")
        return self

    @classmethod
    def add_schema_rules(cls, schema: dict[str, Any]) -> None:
        # _reference_needs_call: police were called, or the reference is absent or null.
        schema["anyOf"] = [
            {"properties": {"police_called": {"enum": [True]}}},
            {"properties": {"police_reference": {"type": "null"}}},
        ]
        schema["description"] = describe_rules(
            ["police_reference only when police_called is true", "action_taken repeats no action (uniqueItems)"], []
        )
