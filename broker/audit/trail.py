"""Verify an audit trail (live store or offline export), optionally against signed checkpoints."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from broker.audit.chain import ChainReport, ChainRow, verify_chain
from broker.audit.checkpoints import CheckpointReport, verify_against_chain
from broker.ports.store import Checkpoint


@dataclass(frozen=True, slots=True)
class AuditReport:
    chain: ChainReport
    checkpoints: CheckpointReport | None

    @property
    def ok(self) -> bool:
        return self.chain.ok and (self.checkpoints is None or self.checkpoints.ok)

    @property
    def first_bad_seq(self) -> int | None:
        if not self.chain.ok:
            return self.chain.first_bad_seq
        return None if self.checkpoints is None else self.checkpoints.first_bad_seq

    @property
    def problem(self) -> str | None:
        if not self.chain.ok:
            return self.chain.problem
        return None if self.checkpoints is None else self.checkpoints.problem


def verify_trail(
    rows: Iterable[ChainRow],
    checkpoints: list[Checkpoint] | None = None,
    keys: Mapping[str, Ed25519PublicKey] | None = None,
) -> AuditReport:
    wanted = {cp.seq for cp in checkpoints or []}
    hashes: dict[int, str] = {}
    chain = verify_chain(rows, collect=wanted, collected=hashes)
    if checkpoints is None:
        return AuditReport(chain, None)
    if not chain.ok:
        return AuditReport(chain, None)
    return AuditReport(chain, verify_against_chain(hashes, chain.head_seq, checkpoints, keys or {}))
