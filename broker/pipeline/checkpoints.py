"""The checkpoint flow: the broker signs the head of the audit chain, so a rebuilt or truncated
chain is detectable offline (``sv-broker audit verify --checkpoints``).

    1 read the committed head (every process sharing the store extends it)
      ─► 2 unchanged since the last checkpoint: nothing to sign
      ─► 3 sign (seq, head hash, time) with the broker's key ─► 4 store the checkpoint
"""

from __future__ import annotations

from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit.checkpoints import sign_checkpoint
from broker.ports.store import Checkpoint, CommitUnit, Store


class CheckpointFlow:
    def __init__(self, store: Store, kid: str, key: Ed25519PrivateKey) -> None:
        self.store = store
        self.kid = kid
        self.key = key
        self.last_seq = 0

    async def sign_head(self, now: datetime) -> Checkpoint | None:
        """Sign the current head of the chain, if it moved since the last checkpoint."""
        head = await self.store.current_head()
        if head.seq in (0, self.last_seq):
            return None
        checkpoint = sign_checkpoint(self.key, self.kid, head.seq, head.hash, now)
        await self.store.commit(CommitUnit(checkpoints=[checkpoint]))
        self.last_seq = head.seq
        return checkpoint
