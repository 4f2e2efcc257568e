"""Types shared by the event models: code lists, geography and the strict base model."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, ClassVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints


class EventModel(BaseModel):
    """Base for every event payload.

    ``extra="forbid"`` is the contract's data-minimisation gate: a payload field the schema does
    not name (a patient name, an NHS number) is refused rather than carried or silently dropped,
    so the sender learns to fix its export (DOMAIN.md: PCSC Act s.16 does not cover patient data).
    ``strict`` stops type coercion ("12" is not 12, 1 is not true).
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, use_enum_values=False)

    EVENT_TYPE: ClassVar[str] = ""  # set by each model
    VERSION: ClassVar[int] = 0

    @classmethod
    def add_schema_rules(cls, schema: dict[str, Any]) -> None:
        """Write this model's validator rules into its exported JSON Schema (``schema``, in place).

        pydantic exports the fields' own constraints; the rules of the model validators (one field
        against another, a table of codes) are the model's to add, built from the same Python
        tables the validators read, so the two cannot drift. A rule JSON Schema cannot state (one
        value compared with another) is named in ``description``. The exporter
        (``schemas.schema_files``) calls this; tests/test_schema_rules.py holds a standard validator
        and the broker to the same verdicts. The base model has no rules.
        """


class District(StrEnum):
    """ONS GSS codes of the Derby and Derbyshire local authorities (DOMAIN.md, Geography)."""

    DERBY = "E06000015"
    DERBYSHIRE_COUNTY = "E10000007"
    AMBER_VALLEY = "E07000032"
    BOLSOVER = "E07000033"
    CHESTERFIELD = "E07000034"
    DERBYSHIRE_DALES = "E07000035"
    EREWASH = "E07000036"
    HIGH_PEAK = "E07000037"
    NORTH_EAST_DERBYSHIRE = "E07000038"
    SOUTH_DERBYSHIRE = "E07000039"


DISTRICT_NAMES: dict[str, str] = {
    "E06000015": "Derby",
    "E10000007": "Derbyshire County",
    "E07000032": "Amber Valley",
    "E07000033": "Bolsover",
    "E07000034": "Chesterfield",
    "E07000035": "Derbyshire Dales",
    "E07000036": "Erewash",
    "E07000037": "High Peak",
    "E07000038": "North East Derbyshire",
    "E07000039": "South Derbyshire",
}


class Sex(StrEnum):
    FEMALE = "female"
    MALE = "male"
    OTHER = "other"
    NOT_KNOWN = "not_known"


LSOA_PATTERN = r"^E01[0-9]{6}$"
"""An England LSOA (2021) GSS code. ``[0-9]``, never ``\\d``: pydantic's regex engine (Rust) and
Python's ``re`` read ``\\d`` as any Unicode digit, so "E01" + six Arabic-Indic digits would pass
and give one area a second pseudonym; JSON Schema (ECMA-262) reads it as ``[0-9]``. Every
pattern of the contract is written in the subset on which both engines agree
(``schemas.schema_files.portable_pattern`` refuses the rest at export)."""

Lsoa = Annotated[str, StringConstraints(pattern=LSOA_PATTERN)]
"""An England LSOA (2021) GSS code."""

ShortText = Annotated[str, StringConstraints(min_length=1, max_length=200)]
"""Free text, bounded. Free text is a quasi-identifier: agreements should drop it by default."""

Timestamp = AwareDatetime
"""An RFC 3339 date-time with an explicit offset (local-time ambiguity at BST changes is refused)."""

Age = Annotated[int, Field(ge=0, le=120)]

# Field names that are direct identifiers (DOMAIN.md). None of them is a field of any model, so
# ``extra="forbid"`` refuses them; naming them lets the broker give the specific reason
# ``direct_identifier`` so a partner knows its export leaks personal data, not just "bad field".
DIRECT_IDENTIFIER_FIELDS: frozenset[str] = frozenset(
    {
        "name",
        "first_name",
        "forename",
        "given_name",
        "surname",
        "last_name",
        "family_name",
        "full_name",
        "patient_name",
        "pupil_name",
        "victim_name",
        "suspect_name",
        "offender_name",
        "staff_name",
        "nhs_number",
        "nhs_no",
        "chi_number",
        "hospital_number",
        "mrn",
        "upn",
        "unique_pupil_number",
        "uln",
        "date_of_birth",
        "dob",
        "birth_date",
        "home_address",
        "address",
        "address_line_1",
        "street_address",
        "home_postcode",
        "postcode",
        "post_code",
        "email",
        "phone",
        "phone_number",
        "telephone",
        "mobile",
        "ni_number",
        "national_insurance_number",
        "pnc_id",
        "cro_number",
        "sia_badge_number",
        "latitude",
        "longitude",
    }
)


def describe_rules(expressed: list[str], broker_only: list[str]) -> str:
    """The ``description`` of an event schema: its rules beyond the fields, in words."""
    text = "Rules across fields, stated by the schema (anyOf / enum) and enforced by the broker: " + "; ".join(
        expressed
    )
    if broker_only:
        text += (
            ". Enforced by the broker but not expressible in JSON Schema (a standard validator accepts "
            "such an event; the broker refuses it with reason schema_invalid): " + "; ".join(broker_only)
        )
    return text + "."
