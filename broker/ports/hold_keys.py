"""The hold keys: one AES-256 key per agreement, in a directory outside the store.

Threat: held events are whole partner events (``broker/stages/held.py``); a key kept beside the
ciphertext (in the database, or its backups) would protect nothing. So each agreement's key is a
file ``<dir>/<agreement id>.key`` (64 hex digits and a newline), the directory 0700 and each file
0600 (``private_files``); by default ``<data dir>/hold-keys/``, or ``serve --hold-keys DIR``.

Several hosts sharing one store must share this directory's files (a mounted secret, like the
broker key): an event held by one host is released by whichever host leads. A host with a
different key cannot decrypt it; that is refused and audited (``held_unreadable``), never
released, and the event stays held. A missing key is made once, atomically (written to a
temporary file, then hard-linked into place: of two processes racing, one key wins and both read
it). A key file others can read is refused, like a secrets file.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from pathlib import Path

from broker.errors import StartupError
from broker.ports.private_files import private_directory

KEY_BYTES = 32
_ID = re.compile(r"[a-z0-9][a-z0-9\-]{1,62}")  # an agreement id (documents.ID_RE): never a path


class HoldKeys:
    """The key ring of one broker process (read once per agreement, then kept in memory)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._keys: dict[str, bytes] = {}

    def prepare(self, agreement_ids: list[str]) -> None:
        """At start and reload: every agreement that holds has its key (made if missing), so a
        key problem stops the start, not a batch."""
        for agreement_id in agreement_ids:
            self.key(agreement_id)

    def key(self, agreement_id: str) -> bytes:
        key = self._keys.get(agreement_id)
        if key is None:
            key = self._keys[agreement_id] = self._load(agreement_id)
        return key

    def _path(self, agreement_id: str) -> Path:
        if not _ID.fullmatch(agreement_id):
            raise StartupError(f"{agreement_id!r} is not an agreement id")
        return self.directory / f"{agreement_id}.key"

    def _load(self, agreement_id: str) -> bytes:
        path = self._path(agreement_id)
        private_directory(self.directory)
        if not path.exists():
            self._create(path)
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
            text = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise StartupError(f"cannot read the hold key {path}: {type(exc).__name__}") from None
        if mode & 0o077:
            raise StartupError(f"the hold key {path} can be read by others: chmod 600 {path}")
        if not re.fullmatch(r"[0-9a-f]{64}", text):
            raise StartupError(f"the hold key {path} is not 64 lower-case hex digits")
        return bytes.fromhex(text)

    def _create(self, path: Path) -> None:
        temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write(secrets.token_hex(KEY_BYTES) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(temp, path)  # atomic, and never replaces a key another process made
        finally:
            temp.unlink(missing_ok=True)
