"""One error tree and one registry of reason codes, for the broker, the adapters and every client.

The tree (``broker/errors.py`` adds the broker's own leaves; ``adapters`` adds its own)::

    SvError                      everything sv-broker raises on purpose
    ├── Rejected                 the sender's or caller's fault: a stable ``Reason``, a sentence,
    │   │                        an HTTP status hint. Never retried; told to whoever sent it.
    │   └── ContractError        the wire contract: parse, envelope, signature, freshness, payload
    ├── ConfigurationError       ours, at start or reload: registry, agreements, secrets, mappings,
    │                            JWKS, start-up. The process refuses to start; nothing half-loaded.
    └── Unavailable              a dependency is down (store, RabbitMQ, identity provider): retry
                                 later, never dead-letter and never blame the message.

Anything else that escapes is a bug of ours: the pipeline treats it as poison (not acknowledged,
redelivered up to the delivery limit, then dead-lettered and audited), never as the sender's fault.

Reason codes are the machine-readable half of a refusal: partners, analysts' tools and dashboards
key on them, so a code is never renamed once released. Every code the project emits is a member of
:class:`Reason` (or of :class:`CheckCode`, the problems a configuration file can have), with its
meaning and HTTP status in :data:`REASONS`; the README's table is generated from it and a test
fails when code uses a reason string that is not listed here.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    ROUTING_KEY_MISMATCH = "routing_key_mismatch"
    # freshness / replay
    STALE = "stale"
    FROM_THE_FUTURE = "from_the_future"
    REPLAYED = "replayed"
    REVISION_SUPERSEDED = "revision_superseded"
    REVISION_TYPE_MISMATCH = "revision_type_mismatch"
    # payload
    SCHEMA_INVALID = "schema_invalid"
    DIRECT_IDENTIFIER = "direct_identifier"
    # the broker's own verdicts on a message
    DEAD_LETTERED = "dead_lettered"
    INTERNAL_ERROR = "internal_error"
    UNAVAILABLE = "unavailable"
    # registry (load-time refusals of a partner's key entry)
    KEY_MALFORMED = "key_malformed"
    KEY_NON_CANONICAL = "key_non_canonical"
    KEY_LOW_ORDER = "key_low_order"
    KEY_NOT_PRIME_ORDER = "key_not_prime_order"
    DUPLICATE_KEY_ID = "duplicate_key_id"
    DUPLICATE_PUBLIC_KEY = "duplicate_public_key"
    REGISTRY_INVALID = "registry_invalid"
    # policy: why an agreement released nothing to a consumer (withheld entries, explain)
    NO_AGREEMENT = "no_agreement"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    REVIEW_OVERDUE = "review_overdue"
    ROW_CONDITION_FALSE = "row_condition_false"
    PARTNER_NOT_IN_FLOW = "partner_not_in_flow"
    VERSION_NOT_IN_FLOW = "version_not_in_flow"
    # retention
    RETENTION_EXPIRED = "retention_expired"
    # held events (an agreement's [hold]: kept sealed while it is not in force)
    HELD_UNREADABLE = "held_unreadable"
    DISCARDED_BY_IG = "discarded_by_ig"
    BAD_HELD_REQUEST = "bad_held_request"
    # figures flows (counts only, disclosure-controlled)
    FIGURES_UNPROTECTED = "figures_unprotected"
    FIGURES_NOT_RELEASED = "figures_not_released"
    # bearer tokens (RFC 8725)
    TOKEN_MISSING = "token_missing"
    TOKEN_MALFORMED = "token_malformed"
    TOKEN_ALG_NOT_ALLOWED = "token_alg_not_allowed"
    TOKEN_FORBIDDEN_HEADER = "token_forbidden_header"
    TOKEN_BAD_TYPE = "token_bad_type"
    TOKEN_UNKNOWN_KID = "token_unknown_kid"
    TOKEN_BAD_SIGNATURE = "token_bad_signature"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_NOT_YET_VALID = "token_not_yet_valid"
    TOKEN_MISSING_CLAIM = "token_missing_claim"
    TOKEN_BAD_AUDIENCE = "token_bad_audience"
    TOKEN_BAD_ISSUER = "token_bad_issuer"
    TOKEN_BAD_ROLE = "token_bad_role"
    TOKEN_CONSUMER_REQUIRED = "token_consumer_required"
    # access to the read API
    ROLE_NOT_ALLOWED = "role_not_allowed"
    NOT_YOUR_FEED = "not_your_feed"
    # the IG console (broker/console): its session cookie and its forms
    SESSION_MISSING = "session_missing"
    SESSION_INVALID = "session_invalid"
    SESSION_EXPIRED = "session_expired"
    SESSION_ENDED = "session_ended"
    CSRF_FAILED = "csrf_failed"
    CROSS_ORIGIN = "cross_origin"
    # query parameters and routes of the read API
    BAD_CURSOR = "bad_cursor"
    BAD_LIMIT = "bad_limit"
    BAD_TIME = "bad_time"
    BAD_FORMAT = "bad_format"
    BAD_EVENT_TYPE = "bad_event_type"
    BAD_HISTORY = "bad_history"
    BAD_QUARTER = "bad_quarter"
    UNKNOWN_RECORD = "unknown_record"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    HTTP_ERROR = "http_error"
    # HTTP transport: ingest media type, slow clients (issue 11 items 5 and 9)
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    REQUEST_TIMEOUT = "request_timeout"
    # audit verification against checkpoints kept outside the store (issue 11 item 11)
    CHECKPOINTS_INVALID = "checkpoints_invalid"


@dataclass(frozen=True, slots=True)
class ReasonInfo:
    category: str  # where the code appears: see CATEGORIES
    status: int  # the HTTP status a refusal with this code is answered with
    meaning: str  # one line for the README table


CATEGORIES = {
    "parse": "strict JSON parse of an event body (receipt, quarantine, HTTP ingest)",
    "envelope": "the CloudEvents envelope (receipt, quarantine, HTTP ingest)",
    "authenticity": "who sent it (receipt, quarantine, HTTP ingest)",
    "freshness": "time window and replay guard (receipt, quarantine, HTTP ingest)",
    "payload": "the event's schema (receipt, quarantine, HTTP ingest)",
    "broker": "the broker's own verdict on a message (receipt, quarantine, HTTP ingest)",
    "registry": "a partner key entry refused at load (`keys`, start-up)",
    "policy": "why an agreement released nothing to a consumer (audit `withheld`, `policy explain`)",
    "retention": "why records were purged (audit `purged`)",
    "held": "why a held event was not released (audit `held_unreadable`, `held_discarded`; `/v1/held`)",
    "token": "a bearer token refused by the read API (401, audit `access_denied`)",
    "access": "an authenticated caller refused by the read API (403, audit `access_denied`)",
    "request": "a malformed request to the read API",
}


def _r(category: str, status: int, meaning: str) -> ReasonInfo:
    return ReasonInfo(category, status, meaning)


REASONS: dict[Reason, ReasonInfo] = {
    Reason.BODY_TOO_LARGE: _r("parse", 413, "the body is larger than the limit (default 64 KiB)"),
    Reason.BOM_PRESENT: _r("parse", 400, "the body starts with a byte order mark"),
    Reason.INVALID_UTF8: _r("parse", 400, "the body is not valid UTF-8"),
    Reason.MALFORMED_JSON: _r("parse", 400, "the body is not JSON"),
    Reason.TRAILING_DATA: _r("parse", 400, "something follows the JSON document"),
    Reason.DUPLICATE_KEY: _r("parse", 400, "an object has the same member twice"),
    Reason.NON_FINITE_NUMBER: _r("parse", 400, "NaN or Infinity"),
    Reason.INTEGER_OUT_OF_RANGE: _r("parse", 400, "an integer beyond ±(2^53−1)"),
    Reason.LONE_SURROGATE: _r("parse", 400, "a string holds a lone UTF-16 surrogate"),
    Reason.NOT_AN_OBJECT: _r("parse", 400, "the document is not a JSON object"),
    Reason.TOO_DEEP: _r("parse", 400, "objects or arrays nested too deeply"),
    Reason.ENVELOPE_INVALID: _r("envelope", 400, "an envelope attribute is missing, unknown or malformed"),
    Reason.UNSUPPORTED_SPECVERSION: _r("envelope", 400, "specversion is not 1.0"),
    Reason.UNKNOWN_EVENT_TYPE: _r("envelope", 422, "no schema for this event type and version"),
    Reason.UNKNOWN_PARTNER: _r("authenticity", 401, "the source is not a registered partner"),
    Reason.UNKNOWN_KEY: _r("authenticity", 401, "the key id is not registered for the source"),
    Reason.KEY_REVOKED: _r("authenticity", 401, "the signing key has been revoked"),
    Reason.KEY_EXPIRED: _r("authenticity", 401, "the envelope time is after the key's validity"),
    Reason.KEY_NOT_YET_VALID: _r("authenticity", 401, "the envelope time is before the key's validity"),
    Reason.BAD_SIGNATURE: _r("authenticity", 401, "the Ed25519 signature does not verify"),
    Reason.TYPE_NOT_REGISTERED: _r("authenticity", 403, "the partner may not send this event type"),
    Reason.PUBLISHER_MISMATCH: _r("authenticity", 403, "the AMQP user_id is not the envelope's source"),
    Reason.ROUTING_KEY_MISMATCH: _r(
        "authenticity", 403, "the AMQP routing key is not <source>.<type> of the envelope it carries"
    ),
    Reason.STALE: _r("freshness", 400, "the envelope time is older than the freshness window"),
    Reason.FROM_THE_FUTURE: _r("freshness", 400, "the envelope time is ahead of the broker's clock"),
    Reason.REPLAYED: _r("freshness", 400, "the message id was used before for different content"),
    Reason.REVISION_SUPERSEDED: _r(
        "freshness", 409, "a later revision of this record was already applied; this older one is not"
    ),
    Reason.REVISION_TYPE_MISMATCH: _r("freshness", 409, "a revision names another event type than its record"),
    Reason.SCHEMA_INVALID: _r("payload", 422, "the payload does not match the event's schema"),
    Reason.DIRECT_IDENTIFIER: _r("payload", 422, "the payload carries a direct identifier (body not kept)"),
    Reason.DEAD_LETTERED: _r("broker", 500, "the broker failed on the message repeatedly; set aside"),
    Reason.INTERNAL_ERROR: _r("broker", 500, "the broker hit an internal error; nothing kept; retry"),
    Reason.UNAVAILABLE: _r("broker", 503, "the broker's store or bus is down; nothing kept; retry later"),
    Reason.KEY_MALFORMED: _r("registry", 400, "a public key is not 32 bytes of base64url"),
    Reason.KEY_NON_CANONICAL: _r("registry", 400, "a public key's encoding is not canonical"),
    Reason.KEY_LOW_ORDER: _r("registry", 400, "a public key is a small-order point"),
    Reason.KEY_NOT_PRIME_ORDER: _r("registry", 400, "a public key has a small-order component"),
    Reason.DUPLICATE_KEY_ID: _r("registry", 400, "a key id is registered twice"),
    Reason.DUPLICATE_PUBLIC_KEY: _r("registry", 400, "one public key is registered for two partners"),
    Reason.REGISTRY_INVALID: _r("registry", 400, "a registry entry is missing, unknown or malformed"),
    Reason.NO_AGREEMENT: _r("policy", 200, "no agreement covers this partner and event type"),
    Reason.NOT_YET_VALID: _r("policy", 200, "the agreement is not in force yet"),
    Reason.EXPIRED: _r("policy", 200, "the agreement has expired"),
    Reason.REVIEW_OVERDUE: _r("policy", 200, "the agreement is past its review date"),
    Reason.ROW_CONDITION_FALSE: _r("policy", 200, "the event fails the flow's row conditions"),
    Reason.PARTNER_NOT_IN_FLOW: _r("policy", 200, "the agreement has no flow from this partner"),
    Reason.VERSION_NOT_IN_FLOW: _r("policy", 200, "the agreement's flow does not take this event version"),
    Reason.RETENTION_EXPIRED: _r("retention", 200, "records past their agreement's retention period"),
    Reason.HELD_UNREADABLE: _r(
        "held", 200, "a held event does not decrypt (tampered, or the wrong hold key): refused, kept, audited"
    ),
    Reason.DISCARDED_BY_IG: _r("held", 200, "an IG lead discarded held events (their note kept as a digest)"),
    Reason.BAD_HELD_REQUEST: _r(
        "held", 400, "the body is not {agreement_id, ids?, reason?} (discard needs a reason) or names no agreement"
    ),
    Reason.FIGURES_UNPROTECTED: _r(
        "figures", 422, "a quarter's figures could not be protected from disclosure: not released, audited"
    ),
    Reason.FIGURES_NOT_RELEASED: _r("figures", 404, "no figures for that quarter have been released to the consumer"),
    Reason.TOKEN_MISSING: _r("token", 401, "no bearer token"),
    Reason.TOKEN_MALFORMED: _r("token", 401, "the token is not a compact JWS"),
    Reason.TOKEN_ALG_NOT_ALLOWED: _r("token", 401, "the token's alg is not EdDSA"),
    Reason.TOKEN_FORBIDDEN_HEADER: _r("token", 401, "the token header names a key (jwk, jku, x5u, ...)"),
    Reason.TOKEN_BAD_TYPE: _r("token", 401, "the token's typ is not at+jwt"),
    Reason.TOKEN_UNKNOWN_KID: _r("token", 401, "the token's kid is not a configured key"),
    Reason.TOKEN_BAD_SIGNATURE: _r("token", 401, "the token's signature does not verify"),
    Reason.TOKEN_EXPIRED: _r("token", 401, "the token has expired"),
    Reason.TOKEN_NOT_YET_VALID: _r("token", 401, "the token is not valid yet"),
    Reason.TOKEN_MISSING_CLAIM: _r("token", 401, "a required claim is missing"),
    Reason.TOKEN_BAD_AUDIENCE: _r("token", 401, "the token is for another audience"),
    Reason.TOKEN_BAD_ISSUER: _r("token", 401, "the token is from another issuer"),
    Reason.TOKEN_BAD_ROLE: _r("token", 401, "the token's role is not one the broker knows"),
    Reason.TOKEN_CONSUMER_REQUIRED: _r("token", 401, "an analyst token names no (known) consumer"),
    Reason.ROLE_NOT_ALLOWED: _r("access", 403, "the caller's role may not use this route"),
    Reason.NOT_YOUR_FEED: _r("access", 403, "an analyst asked for another consumer's feed"),
    Reason.SESSION_MISSING: _r("console", 401, "no console session cookie: sign in"),
    Reason.SESSION_INVALID: _r("console", 401, "the session cookie is not one this broker signed (forged, tampered)"),
    Reason.SESSION_EXPIRED: _r("console", 401, "the session passed its idle or absolute limit, or its token's expiry"),
    Reason.SESSION_ENDED: _r("console", 401, "the session was signed out (on any host sharing the store)"),
    Reason.CSRF_FAILED: _r("console", 403, "a console form arrived without its session's CSRF token"),
    Reason.CROSS_ORIGIN: _r("console", 403, "a console POST came from another origin (Origin / Sec-Fetch-Site)"),
    Reason.BAD_CURSOR: _r("request", 400, "the cursor is not one this feed issued"),
    Reason.BAD_LIMIT: _r("request", 400, "limit is not an integer from 1 to 1000"),
    Reason.BAD_TIME: _r("request", 400, "a time parameter is not RFC 3339 with an offset"),
    Reason.BAD_FORMAT: _r("request", 400, "format is not one the route offers"),
    Reason.BAD_HISTORY: _r("request", 400, "history is not true or false"),
    Reason.BAD_QUARTER: _r("request", 400, "quarter is not a calendar quarter like 2026-Q3"),
    Reason.BAD_EVENT_TYPE: _r("request", 400, "event_type is not a known event type"),
    Reason.UNKNOWN_RECORD: _r("request", 404, "no release of this record id is in the audit trail"),
    Reason.NOT_FOUND: _r("request", 404, "no such route"),
    Reason.METHOD_NOT_ALLOWED: _r("request", 405, "the route does not take this method"),
    Reason.HTTP_ERROR: _r("request", 400, "any other HTTP-level refusal"),
    # HTTP transport: ingest media type, slow clients (issue 11 items 5 and 9)
    Reason.UNSUPPORTED_MEDIA_TYPE: _r(
        "request", 415, "HTTP ingest takes application/json or application/cloudevents+json (UTF-8) only"
    ),
    Reason.REQUEST_TIMEOUT: _r("request", 408, "the request body did not arrive within the read timeout"),
    Reason.CHECKPOINTS_INVALID: _r("request", 400, "the body is not a checkpoints document or checkpoint log"),
}


def http_status(reason: str | None) -> int:
    """The HTTP status a refusal with ``reason`` is answered with (400 for an unknown code)."""
    try:
        return REASONS[Reason(reason)].status if reason else 400
    except ValueError:
        return 400


class CheckCode(StrEnum):
    """Stable codes of the problems a configuration file can have (``policy check``, start-up).

    A second vocabulary on purpose, not a second registry: these name a problem in a file an
    operator edits, never a refusal of a message, and two of them (``unknown_key``,
    ``unknown_event_type``) share their spelling with a :class:`Reason` of another meaning.
    """

    # file / document shape
    FILE_UNREADABLE = "file_unreadable"
    INVALID_TOML = "invalid_toml"
    MISSING_KEY = "missing_key"
    UNKNOWN_KEY = "unknown_key"
    BAD_VALUE = "bad_value"
    FILE_NAME_MISMATCH = "file_name_mismatch"
    DUPLICATE_AGREEMENT = "duplicate_agreement"
    DATES_INCONSISTENT = "dates_inconsistent"
    # parties and flows
    UNKNOWN_PARTY = "unknown_party"
    PARTY_NOT_IN_AGREEMENT = "party_not_in_agreement"
    PARTNER_CANNOT_SEND = "partner_cannot_send"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    UNKNOWN_EVENT_VERSION = "unknown_event_version"
    CONSUMER_IN_TWO_FLOWS = "consumer_in_two_flows"
    DUPLICATE_ID = "duplicate_id"
    # rules
    UNKNOWN_FIELD = "unknown_field"
    DIRECT_IDENTIFIER = "direct_identifier"
    TRANSFORM_TYPE_MISMATCH = "transform_type_mismatch"
    UNKNOWN_TRANSFORM = "unknown_transform"
    DUPLICATE_OUTPUT = "duplicate_output"
    REASON_REQUIRED = "reason_required"
    UNKNOWN_BAND_SET = "unknown_band_set"
    BAD_BAND = "bad_band"
    OVERLAPPING_BANDS = "overlapping_bands"
    UNKNOWN_GROUP_SET = "unknown_group_set"
    BAD_GROUP = "bad_group"
    UNKNOWN_RULE_SET = "unknown_rule_set"
    # row conditions
    BAD_CONDITION = "bad_condition"
    # secrets and revisions
    SECRET_MISSING = "secret_missing"
    SECRET_WEAK = "secret_weak"
    SECRET_REUSED = "secret_reused"
    REVISION_DECREASED = "revision_decreased"
    LOCK_INVALID = "lock_invalid"
    # warnings
    EXPIRES_SOON = "expires_soon"
    REVIEW_DUE_SOON = "review_due_soon"
    EXPIRED = "expired"
    REVIEW_OVERDUE = "review_overdue"
    NOT_YET_VALID = "not_yet_valid"
    REVISION_NOT_LOCKED = "revision_not_locked"
    UNUSED = "unused"


# -- the tree ---------------------------------------------------------------------------------------


class SvError(Exception):
    """The root: everything sv-broker raises on purpose. Anything else is a bug."""


class Rejected(SvError):
    """The sender's or caller's fault: a stable reason code and a sentence they can act on.

    ``status`` overrides the HTTP status hint of the reason (``REASONS``) where a route needs to.
    The sentence never echoes a secret or a payload value.
    """

    def __init__(
        self,
        reason: Reason,
        message: str,
        *,
        field: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.message = message
        self.field = field
        self.status = status if status is not None else REASONS[reason].status
        self.headers = headers or {}

    def as_dict(self) -> dict[str, str]:
        out = {"reason": self.reason.value, "message": self.message}
        if self.field is not None:
            out["field"] = self.field
        return out


class ContractError(Rejected):
    """A message refused by the wire contract (parse, envelope, signature, freshness, payload)."""


class ConfigurationError(SvError):
    """A configuration file or setting refused, naming the file and the entry; nothing runs on it."""


class Unavailable(SvError):
    """A dependency is down or timed out: retry later. Never the message's fault, so never a
    reason to reject, quarantine or dead-letter it."""


def reason_table() -> str:
    """The README's table of reason codes (a test keeps the README equal to this)."""
    lines = ["| code | where it appears | HTTP | meaning |", "| --- | --- | --- | --- |"]
    for reason, info in REASONS.items():
        lines.append(f"| `{reason.value}` | {info.category} | {info.status} | {info.meaning} |")
    return "\n".join(lines)
