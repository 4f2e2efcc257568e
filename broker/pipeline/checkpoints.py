"""The checkpoint flow: the broker signs the head of the audit chain and publishes each signed
checkpoint outside the store, so a rebuilt or truncated chain is detectable offline (``sv-broker
audit verify --checkpoints``, ``POST /v1/audit/verify``) and by the broker itself at start.

    1 read the committed head (every process sharing the store extends it)
      ─► 2 unchanged since the last checkpoint: nothing to sign
      ─► 3 sign (seq, head hash, time) with the broker's key ─► 4 store the checkpoint
      ─► 5 publish it: append to the checkpoint log (fsynced), and to the checkpoints exchange
        on RabbitMQ (a copy in every partner's and consumer's checkpoints queue)

At start (:func:`refuse_store_behind`): a store that ends before, or disagrees with, the last
checkpoint this broker published is refused: it was truncated, rebuilt or restored from an older
copy, and the broker must not extend it as if nothing had happened.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from broker.audit.checkpoints import sign_checkpoint, signature_ok
from broker.errors import StartupError
from broker.ports.store import AuditQuery, Checkpoint, CommitUnit, Store

Publish = Callable[[Checkpoint], Awaitable[None]]


class CheckpointFlow:
    def __init__(self, store: Store, kid: str, key: Ed25519PrivateKey, publishers: Sequence[Publish] = ()) -> None:
        self.store = store
        self.kid = kid
        self.key = key
        self.publishers = list(publishers)
        self.last_seq = 0

    async def sign_head(self, now: datetime) -> Checkpoint | None:
        """Sign the current head of the chain, if it moved since the last published checkpoint.
        A publisher that fails raises: the head counts as unpublished and is signed again next time."""
        head = await self.store.current_head()
        if head.seq in (0, self.last_seq):
            return None
        checkpoint = sign_checkpoint(self.key, self.kid, head.seq, head.hash, now)
        await self.store.commit(CommitUnit(checkpoints=[checkpoint]))
        for publish in self.publishers:
            await publish(checkpoint)
        self.last_seq = head.seq
        return checkpoint


async def refuse_store_behind(
    store: Store, last: Checkpoint | None, keys: Mapping[str, Ed25519PublicKey], log_path: Path
) -> None:
    """Raise :class:`StartupError` when the store is shorter than, or disagrees with, ``last`` (the
    last checkpoint this broker published, from its checkpoint log)."""
    if last is None:
        return
    move_aside = (
        f"If an older copy of the store was restored on purpose, the IG lead must know: move {log_path} aside "
        "(keep it: it is evidence of what the trail held) and start again."
    )
    if not signature_ok(last, keys):
        raise StartupError(
            f"the last checkpoint in {log_path} (#{last.seq}) is not signed by this broker's key: the log was edited "
            "or belongs to another broker"
        )
    head = await store.current_head()
    if head.seq < last.seq:
        raise StartupError(
            f"the audit store ends at entry #{head.seq}, but this broker published a signed checkpoint at #{last.seq} "
            f"({last.at}): entries were removed, or the store was replaced. Refusing to start on it. {move_aside}"
        )
    rows = await store.audit_page(AuditQuery(after=last.seq - 1, limit=1))
    if not rows or rows[0].seq != last.seq or rows[0].hash != last.head_hash:
        raise StartupError(
            f"audit entry #{last.seq} does not have the hash this broker signed and published at {last.at}: the "
            f"chain was rebuilt or edited. Refusing to start on it. {move_aside}"
        )
