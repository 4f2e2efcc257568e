"""Held events, sealed (pure but for the nonce's randomness): what the store keeps of a message
held for an agreement not in force, and how it is opened again.

Threat: a held event is a partner's whole signed event (the payload before any minimisation),
kept for days in a store that operators, backups and replicas can read. So the store never holds
it in the clear: the original signed body is encrypted with AES-256-GCM under a key per agreement
that is kept outside the store (``broker/ports/hold_keys.py``). The associated data binds the
ciphertext to its agreement, source and message id, so a row copied under another agreement or
message, or edited in any byte, does not decrypt (refused, audited, never released). The body is
the envelope as signed, so the release later re-verifies the partner's signature over it: the
store could not have substituted a payload even with the key.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker.ports.store import HeldItem
from broker.stages.outcome import Accepted
from schemas.canonical import canonicalize_plain

KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # 96-bit random nonce: NIST SP 800-38D; one key sees far fewer than 2^32 messages
_AAD_CONTEXT = "sv-broker held event v1"


class HoldKeyring(Protocol):
    """The hold key of each agreement (``broker/ports/hold_keys.HoldKeys``)."""

    def key(self, agreement_id: str) -> bytes: ...


class NoHoldKeys:
    """A pipeline built without a key ring: holding fails closed (a bug of the composition, never
    a held entry without its row)."""

    def key(self, agreement_id: str) -> bytes:
        raise RuntimeError(f"no hold key ring: cannot hold an event for {agreement_id}")


class HeldUnreadable(ValueError):
    """The sealed body does not authenticate under this agreement's key and ids."""


def held_id(agreement_id: str, source: str, message_id: str) -> str:
    """Deterministic: one message is held at most once per agreement (a redelivery adds no row)."""
    digest = hashlib.sha256(f"{agreement_id}\x00{source}\x00{message_id}".encode()).hexdigest()
    return f"held-{digest[:32]}"


def associated_data(agreement_id: str, source: str, message_id: str) -> bytes:
    return canonicalize_plain(
        {"context": _AAD_CONTEXT, "agreement_id": agreement_id, "source": source, "message_id": message_id}
    )


def seal(key: bytes, agreement_id: str, source: str, message_id: str, body: bytes) -> bytes:
    """nonce ‖ AES-256-GCM(body), bound to (agreement, source, message id)."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, body, associated_data(agreement_id, source, message_id))


def unseal(key: bytes, item: HeldItem) -> bytes:
    """The original signed body, or :class:`HeldUnreadable` (tampered, moved, or the wrong key)."""
    sealed = item.sealed
    if len(key) != KEY_BYTES or len(sealed) < NONCE_BYTES + 16:
        raise HeldUnreadable("sealed body too short or key malformed")
    try:
        return AESGCM(key).decrypt(
            sealed[:NONCE_BYTES],
            sealed[NONCE_BYTES:],
            associated_data(item.agreement_id, item.source, item.message_id),
        )
    except InvalidTag:
        raise HeldUnreadable("the sealed body does not authenticate") from None


def held_items(accepted: Sequence[Accepted], now: datetime, keys: HoldKeyring) -> list[HeldItem]:
    """The rows to write, in the messages' own commit, for every agreement holding one of them."""
    out: list[HeldItem] = []
    for outcome in accepted:
        holds = outcome.decision.holds
        if not holds:
            continue
        body = outcome.inbound.body
        for hold in holds:
            out.append(
                HeldItem(
                    id=held_id(hold.agreement_id, outcome.source, outcome.message_id),
                    agreement_id=hold.agreement_id,
                    held_under_revision=hold.agreement_revision,
                    reason=hold.reason,
                    source=outcome.source,
                    message_id=outcome.message_id,
                    event_type=outcome.event_type,
                    held_at=outcome.validated.fresh.verified.received.received_at,
                    expires_at=hold.expires_at,
                    sealed=seal(
                        key_of(keys, hold.agreement_id), hold.agreement_id, outcome.source, outcome.message_id, body
                    ),
                )
            )
    return out


def key_of(keys: HoldKeyring, agreement_id: str) -> bytes:
    key = keys.key(agreement_id)
    if len(key) != KEY_BYTES:
        raise ValueError(f"the hold key of {agreement_id} is not {KEY_BYTES} bytes")
    return key
