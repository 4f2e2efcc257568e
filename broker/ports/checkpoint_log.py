"""The checkpoint log: every signed checkpoint appended, as it is signed, to a file outside the
store (default ``<data_dir>/checkpoints.jsonl``; ``serve --checkpoint-log`` puts it on another
disk, an append-only mount or a path a log shipper follows).

Threat: checkpoints kept only in the store they vouch for prove nothing against someone who can
rewrite the store: a rebuilt chain comes with re-signed checkpoints. A copy the store's attacker
cannot also rewrite is what a verifier (and the broker itself, at start) compares the chain with.
Opened ``O_APPEND`` for each line (never truncated or rewritten by the broker), mode 0600, and
fsynced before the checkpoint counts as published.
"""

from __future__ import annotations

import os
from pathlib import Path

from broker.audit.checkpoints import checkpoint_line, parse_checkpoints_document
from broker.ports.private_files import private_directory
from broker.ports.store import Checkpoint

TAIL_BYTES = 64 * 1024  # the last checkpoint is in the file's last line, far shorter than this


class CheckpointLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._directory_ready = False

    def append(self, checkpoint: Checkpoint) -> None:
        """Append one line and fsync it (blocking: run it off the event loop)."""
        if not self._directory_ready:  # once per process, not once a minute
            private_directory(self.path.parent)
            self._directory_ready = True
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (checkpoint_line(checkpoint) + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def last(self) -> Checkpoint | None:
        """The last checkpoint the log holds, or None when there is no log yet. A last line cut
        short (a crash mid-write) is skipped for the one before it; anything else that is not a
        checkpoint raises ``ValueError``."""
        try:
            with self.path.open("rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - TAIL_BYTES))
                tail = fh.read().decode("ascii", "replace")
        except FileNotFoundError:
            return None
        lines = [line for line in tail.splitlines() if line.strip()]
        if size > TAIL_BYTES and lines:
            lines = lines[1:]  # the first may be a partial line
        if lines and not tail.endswith("\n"):
            lines = lines[:-1]  # written in part before a crash: it was never fsynced as published
        if not lines:
            return None
        return parse_checkpoints_document(lines[-1])[0]

    def read_all(self) -> list[Checkpoint]:
        return parse_checkpoints_document(self.path.read_text(encoding="ascii"))
