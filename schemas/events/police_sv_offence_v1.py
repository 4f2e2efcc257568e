"""``police_sv_offence`` v1: one police recorded serious-violence offence (Home Office classes)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar, Self

from pydantic import model_validator

from schemas.events.common import District, EventModel, Lsoa, Sex, Timestamp, describe_rules


class SvGroup(StrEnum):
    """Home Office serious violence focus groups."""

    HOMICIDE = "homicide"
    ATTEMPTED_MURDER = "attempted_murder"
    VIOLENCE_WITH_INJURY = "violence_with_injury"
    ROBBERY = "robbery"
    POSSESSION_OF_WEAPONS = "possession_of_weapons"
    THREATS_WITH_WEAPON = "threats_with_weapon"


class HoOffenceCode(StrEnum):
    """Home Office Counting Rules classifications in the serious-violence focus."""

    MURDER = "1"
    ATTEMPTED_MURDER = "2"
    MANSLAUGHTER = "4/1"
    WOUNDING_GBH_INTENT = "5A"
    WOUNDING_GBH = "8N"
    ABH = "8N/1"  # assault with injury (local split of class 8)
    ROBBERY_BUSINESS = "34A"
    ROBBERY_PERSONAL = "34B"
    POSSESSION_BLADE = "10D"
    POSSESSION_WEAPON = "10C"
    POSSESSION_FIREARM = "81"
    THREATS_BLADE = "8M"


# The group each code belongs to: the contract refuses an event whose two disagree, so a
# consumer's "offence group" is never contradicted by the code beside it.
HO_CODE_GROUP: dict[HoOffenceCode, SvGroup] = {
    HoOffenceCode.MURDER: SvGroup.HOMICIDE,
    HoOffenceCode.MANSLAUGHTER: SvGroup.HOMICIDE,
    HoOffenceCode.ATTEMPTED_MURDER: SvGroup.ATTEMPTED_MURDER,
    HoOffenceCode.WOUNDING_GBH_INTENT: SvGroup.VIOLENCE_WITH_INJURY,
    HoOffenceCode.WOUNDING_GBH: SvGroup.VIOLENCE_WITH_INJURY,
    HoOffenceCode.ABH: SvGroup.VIOLENCE_WITH_INJURY,
    HoOffenceCode.ROBBERY_BUSINESS: SvGroup.ROBBERY,
    HoOffenceCode.ROBBERY_PERSONAL: SvGroup.ROBBERY,
    HoOffenceCode.POSSESSION_BLADE: SvGroup.POSSESSION_OF_WEAPONS,
    HoOffenceCode.POSSESSION_WEAPON: SvGroup.POSSESSION_OF_WEAPONS,
    HoOffenceCode.POSSESSION_FIREARM: SvGroup.POSSESSION_OF_WEAPONS,
    HoOffenceCode.THREATS_BLADE: SvGroup.THREATS_WITH_WEAPON,
}


class AgeBand(StrEnum):
    A0_10 = "0-10"
    A11_17 = "11-17"
    A18_24 = "18-24"
    A25_34 = "25-34"
    A35_49 = "35-49"
    A50_64 = "50-64"
    A65_PLUS = "65+"
    NOT_KNOWN = "not_known"


class OutcomeStatus(StrEnum):
    UNDER_INVESTIGATION = "under_investigation"
    CHARGED_SUMMONSED = "charged_summonsed"
    CAUTION = "caution"
    COMMUNITY_RESOLUTION = "community_resolution"
    EVIDENTIAL_DIFFICULTIES = "evidential_difficulties"
    SUSPECT_NOT_IDENTIFIED = "suspect_not_identified"
    NO_FURTHER_ACTION = "no_further_action"


class PoliceSvOffenceV1(EventModel):
    EVENT_TYPE: ClassVar[str] = "police_sv_offence"
    VERSION: ClassVar[int] = 1

    ho_offence_code: HoOffenceCode
    sv_group: SvGroup
    offence_datetime: Timestamp
    district: District
    lsoa: Lsoa | None = None
    knife_involved: bool
    victim_age_band: AgeBand
    victim_sex: Sex
    suspect_age_band: AgeBand
    suspect_sex: Sex
    outcome_status: OutcomeStatus

    @model_validator(mode="after")
    def _code_matches_group(self) -> Self:
        if HO_CODE_GROUP[self.ho_offence_code] is not self.sv_group:
            raise ValueError(
                f"sv_group {self.sv_group.value!r} does not match Home Office code "
                f"{self.ho_offence_code.value!r} (expected {HO_CODE_GROUP[self.ho_offence_code].value!r})"
            )
        return self

    @classmethod
    def add_schema_rules(cls, schema: dict[str, Any]) -> None:
        # _code_matches_group: one alternative per group, naming the codes HO_CODE_GROUP gives it.
        schema["anyOf"] = [
            {
                "properties": {
                    "sv_group": {"enum": [group.value]},
                    "ho_offence_code": {"enum": [code.value for code, of in HO_CODE_GROUP.items() if of is group]},
                }
            }
            for group in SvGroup
            if group in HO_CODE_GROUP.values()
        ]
        schema["description"] = describe_rules(
            ["sv_group is the group of ho_offence_code (Home Office Counting Rules, one anyOf alternative per group)"],
            [],
        )
