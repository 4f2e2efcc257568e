"""Stage 2: who sent it (pure).  Key lookup, key validity, sender rights, Ed25519 signature."""

from __future__ import annotations

from broker.registry import Registry
from broker.stages.types import Received, Verified
from schemas.errors import ContractError, Reason
from schemas.signing import b64u_decode, verify_raw
from schemas.topology import ingest_routing_key


def verify(
    received: Received, registry: Registry, *, publisher: str | None = None, routing_key: str | None = None
) -> Verified:
    """Verify ``received`` against the registry.

    ``publisher`` is the transport-authenticated account (the AMQP ``user_id`` that RabbitMQ
    checked against the connection's login), when there is one; ``routing_key`` the AMQP routing
    key the message was published under (``None`` over HTTP, where there is none).
    """
    env = received.envelope
    partner = registry.partners.get(env.source)
    if partner is None:
        raise ContractError(Reason.UNKNOWN_PARTNER, f"No partner {env.source!r} is registered.", field="source")
    if publisher is not None and publisher != env.source:
        # Threat: a partner with valid credentials on the bus publishing an envelope claiming to
        # be another partner (e.g. replaying that partner's captured message under its own login).
        who = f"account {publisher!r}" if publisher else "a publisher that set no AMQP user_id"
        raise ContractError(
            Reason.PUBLISHER_MISMATCH,
            f"The message was published by {who}, not by the envelope's source.",
            field="source",
        )
    if routing_key is not None and routing_key != ingest_routing_key(env.source, env.type):
        # Threat: RabbitMQ's topic permissions are what keep a partner's login to its own routing
        # keys; if they are misconfigured (or an operator account publishes), an envelope could
        # travel under another partner's key or a made-up one, and anything that routes, meters or
        # alerts by routing key would be misled.  Defence in depth: the key must name exactly the
        # envelope's own source and type.
        raise ContractError(
            Reason.ROUTING_KEY_MISMATCH,
            f"The message was published under routing key {routing_key[:100]!r}, "
            f"not {ingest_routing_key(env.source, env.type)!r} as its source and type require.",
            field="source",
        )
    key = registry.key(env.keyid)
    if key is None or key.partner != env.source:
        # A key id of another partner is "unknown" for this one: keys are never shared.
        raise ContractError(
            Reason.UNKNOWN_KEY, f"Key id {env.keyid!r} is not registered for {env.source!r}.", field="keyid"
        )
    if key.revoked:
        # Threat: a compromised key.  Revocation is absolute, whatever time the envelope claims.
        raise ContractError(Reason.KEY_REVOKED, f"Key {env.keyid!r} has been revoked.", field="keyid")
    if env.time < key.valid_from:
        raise ContractError(
            Reason.KEY_NOT_YET_VALID,
            f"Key {env.keyid!r} is not valid until {key.valid_from.isoformat()}.",
            field="keyid",
        )
    if key.valid_until is not None and env.time >= key.valid_until:
        # Back-dating an envelope into the key's lifetime is stopped by the freshness window.
        raise ContractError(
            Reason.KEY_EXPIRED, f"Key {env.keyid!r} expired at {key.valid_until.isoformat()}.", field="keyid"
        )
    try:
        signature = b64u_decode(env.signature, expected_len=64)
    except ValueError:
        raise ContractError(
            Reason.BAD_SIGNATURE, "The signature is not 64 bytes of base64url.", field="signature"
        ) from None
    if not verify_raw(key.public_key, env.signed_bytes, signature):
        # Threat: forged or altered messages (any byte of any attribute or of the payload).
        raise ContractError(Reason.BAD_SIGNATURE, "The signature does not match the message.", field="signature")
    if env.type not in partner.event_types:
        # Checked after the signature so an unauthenticated caller learns nothing of a partner's rights.
        raise ContractError(
            Reason.TYPE_NOT_REGISTERED,
            f"Partner {env.source!r} is not registered to send {env.type!r} events.",
            field="type",
        )
    return Verified(received=received, kid=key.kid)
