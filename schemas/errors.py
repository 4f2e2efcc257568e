"""One error tree for the wire contract, with stable reason codes.

Every rejection the broker makes carries a ``Reason`` (a stable, machine-readable code that
partners and dashboards can key on; never renamed once released) and a plain sentence for a
human.  Errors raised by dependencies (``json``, ``pydantic``, ``cryptography``) are translated
into these at the edge, so nothing above the contract layer sees a library exception.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    # strict parse (before anything else is looked at)
    BODY_TOO_LARGE = "body_too_large"
    BOM_PRESENT = "bom_present"
    INVALID_UTF8 = "invalid_utf8"
    MALFORMED_JSON = "malformed_json"
    TRAILING_DATA = "trailing_data"
    DUPLICATE_KEY = "duplicate_key"
    NON_FINITE_NUMBER = "non_finite_number"
    INTEGER_OUT_OF_RANGE = "integer_out_of_range"
    LONE_SURROGATE = "lone_surrogate"
    NOT_AN_OBJECT = "not_an_object"
    TOO_DEEP = "too_deep"
    # envelope
    ENVELOPE_INVALID = "envelope_invalid"
    UNSUPPORTED_SPECVERSION = "unsupported_specversion"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    # authenticity
    UNKNOWN_PARTNER = "unknown_partner"
    UNKNOWN_KEY = "unknown_key"
    KEY_REVOKED = "key_revoked"
    KEY_EXPIRED = "key_expired"
    KEY_NOT_YET_VALID = "key_not_yet_valid"
    BAD_SIGNATURE = "bad_signature"
    TYPE_NOT_REGISTERED = "type_not_registered"
    PUBLISHER_MISMATCH = "publisher_mismatch"
    # freshness / replay
    STALE = "stale"
    FROM_THE_FUTURE = "from_the_future"
    REPLAYED = "replayed"
    # payload
    SCHEMA_INVALID = "schema_invalid"
    DIRECT_IDENTIFIER = "direct_identifier"
    # registry (load-time refusals)
    KEY_MALFORMED = "key_malformed"
    KEY_NON_CANONICAL = "key_non_canonical"
    KEY_LOW_ORDER = "key_low_order"
    KEY_NOT_PRIME_ORDER = "key_not_prime_order"
    DUPLICATE_KEY_ID = "duplicate_key_id"
    REGISTRY_INVALID = "registry_invalid"


class ContractError(Exception):
    """A rejection with a stable reason code and a sentence a partner's data manager can act on."""

    def __init__(self, reason: Reason, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.message = message
        self.field = field

    def as_dict(self) -> dict[str, str]:
        out = {"reason": self.reason.value, "message": self.message}
        if self.field is not None:
            out["field"] = self.field
        return out
