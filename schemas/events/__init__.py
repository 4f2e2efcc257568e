"""Event payload models, one module per event type and version."""

from __future__ import annotations

from schemas.events.ae_assault_v1 import AeAssaultV1
from schemas.events.common import DIRECT_IDENTIFIER_FIELDS, EventModel
from schemas.events.nte_incident_v1 import NteIncidentV1
from schemas.events.police_sv_offence_v1 import PoliceSvOffenceV1
from schemas.events.school_exclusion_v1 import SchoolExclusionV1

EVENT_MODELS: dict[tuple[str, int], type[EventModel]] = {
    (m.EVENT_TYPE, m.VERSION): m for m in (AeAssaultV1, SchoolExclusionV1, NteIncidentV1, PoliceSvOffenceV1)
}
EVENT_TYPES: frozenset[str] = frozenset(t for t, _ in EVENT_MODELS)

__all__ = [
    "DIRECT_IDENTIFIER_FIELDS",
    "EVENT_MODELS",
    "EVENT_TYPES",
    "AeAssaultV1",
    "EventModel",
    "NteIncidentV1",
    "PoliceSvOffenceV1",
    "SchoolExclusionV1",
]
