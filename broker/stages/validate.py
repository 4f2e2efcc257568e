"""Stage 4: is the payload a valid event of its declared type and version? (pure)"""

from __future__ import annotations

import hashlib
import json

from pydantic import ValidationError

from broker.stages.types import Fresh, Validated
from schemas.envelope import Envelope
from schemas.errors import ContractError, Reason
from schemas.events import DIRECT_IDENTIFIER_FIELDS, EVENT_MODELS, EventModel
from schemas.identifiers import looks_like_identifier


def _field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "data"


class Withdrawal(EventModel):
    """A withdrawal's payload: none (``data`` is ``{}``; the envelope's ``withdrawn`` says why).
    It is never decided by the policy engine: it goes to the consumers that hold the record."""


WITHDRAWAL = Withdrawal()


def validate(fresh: Fresh) -> Validated:
    env = fresh.envelope
    if env.withdrawn is not None:
        if (env.type, env.version) not in EVENT_MODELS:
            raise ContractError(
                Reason.UNKNOWN_EVENT_TYPE,
                f"There is no schema for {env.type!r} version {env.version}.",
                field="dataschema",
            )
        return Validated(fresh=fresh, event=WITHDRAWAL, content_sha256=content_sha256(env))
    return Validated(fresh=fresh, event=validate_payload(env), content_sha256=content_sha256(env))


def content_sha256(env: Envelope) -> str:
    """What the replay guard compares: type, version and payload (not the time or signature, so
    an adapter re-run that re-signs the same record is recognisably the same content); and a
    withdrawal's reason."""
    parts: list[object] = [env.type, env.version, env.data]
    if env.withdrawn is not None:
        parts.append(env.withdrawn.value)
    document = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(document.encode()).hexdigest()


def validate_payload(env: Envelope) -> EventModel:
    """The payload as its event model, or a :class:`ContractError` naming the first bad field."""
    model = EVENT_MODELS.get((env.type, env.version))
    if model is None:
        raise ContractError(
            Reason.UNKNOWN_EVENT_TYPE, f"There is no schema for {env.type!r} version {env.version}.", field="dataschema"
        )
    # The contract's list and the variants partners' systems use ("nhsnumber", "NHS No."): a field
    # that is not in the schema anyway, refused as what it is, not as an unknown field.
    identifiers = sorted(
        name for name in env.data if name.lower() in DIRECT_IDENTIFIER_FIELDS or looks_like_identifier(name) is not None
    )
    if identifiers:
        # DOMAIN.md / PCSC Act s.16: health data must be anonymised at source, so an event carrying
        # a direct identifier is refused (not stripped), so the sender fixes its export.
        raise ContractError(
            Reason.DIRECT_IDENTIFIER,
            f"The event carries the direct identifier field {identifiers[0]!r}; remove it from the export.",
            field=identifiers[0],
        )
    try:
        # Validated in pydantic's strict JSON mode: ISO dates and enum values arrive as strings,
        # but no other coercion ("12" is not 12).  The body was already strictly parsed.
        event = model.model_validate_json(json.dumps(env.data, ensure_ascii=False, allow_nan=False), strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = _field_path(tuple(first["loc"]))
        if first["type"] == "extra_forbidden":
            message = f"The field {path!r} is not part of {env.type} v{env.version}."
        else:
            message = f"The field {path!r} is invalid: {first['msg']}."
        count = exc.error_count()
        if count > 1:
            message += f" ({count - 1} more problem(s).)"
        raise ContractError(Reason.SCHEMA_INVALID, message, field=path) from None
    return event
