"""The broker's own files are private to its user: the data directory 0700, store files 0600.

Threat: ``broker.db`` was created 0644 (the process umask), so any local user could read every
released record and the whole audit trail (ids, agreements, timings), and the SQLite WAL beside
it. The directory is the first wall (nobody else can even list it), the file modes the second.
The broker owns these files, so an existing one that is too open is tightened (and logged), not
refused; what operators hand it (secrets, private keys) is refused instead, at their loaders.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import structlog

log = structlog.get_logger()


def private_directory(path: Path) -> None:
    """Make ``path`` (and missing parents) a directory only its owner can enter."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    _tighten(path, 0o700)


def private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 if absent (before any library opens it: SQLite gives
    its ``-wal`` and ``-shm`` files the main file's mode), or tighten an existing one."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        _tighten(path, 0o600)


def _tighten(path: Path, allowed: int) -> None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if mode & ~allowed & 0o777:
        os.chmod(path, mode & allowed)
        log.warning("file_mode_tightened", path=str(path), was=oct(mode), now=oct(mode & allowed))
