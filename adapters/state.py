"""The adapter's local state file: which source records have been confirmed, under which message id.

Why a state file at all: a bulk import can stop half-way (a crash, kill -9, a lost connection).
Message ids are derived from the record key, so re-sending is harmless (the broker records a
duplicate), but it is slow and fills the audit trail; the state lets a re-run skip what is done.
It also maps the broker's receipts (which name message ids) back to the partner's rows.

Why append-only JSON lines: a line is appended only after RabbitMQ confirmed that row (or the
broker answered), and lines are written and fsynced a batch at a time. A crash can lose at most
the last unsynced batch, whose rows are then sent again and recognised by the broker as
duplicates: nothing is lost and nothing is released twice. A torn last line (kill -9 during a
write) is cut off on the next open. The latest line for a record key wins.

One state file per partner and event type (it refuses to be shared with another), locked while a
push or receipts run uses it, so two overlapping runs cannot interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

try:  # POSIX; on Windows the lock is skipped (one scheduled task per export is the norm there)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

STATE_VERSION = 1


class StateError(Exception):
    """The state file cannot be used (another partner's, corrupted, or in use)."""


class Status(StrEnum):
    CONFIRMED = "confirmed"  # RabbitMQ confirmed it: durable on the ingest queue; verdict to come
    ACCEPTED = "accepted"  # the broker accepted it (HTTP answer or receipt)
    DUPLICATE = "duplicate"  # the broker already had it
    REJECTED = "rejected"  # the broker refused it: a re-run sends it again (after the export is fixed)


DONE = frozenset({Status.CONFIRMED, Status.ACCEPTED, Status.DUPLICATE})


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    message_id: str
    content: str  # sha256 of (event type, version, payload) as sent
    status: Status
    file: str = ""
    row: int = 0
    reason: str = ""

    def line(self) -> bytes:
        doc: dict[str, Any] = {"k": self.key, "id": self.message_id, "c": self.content, "s": self.status.value}
        if self.file:
            doc["f"] = self.file
        if self.row:
            doc["r"] = self.row
        if self.reason:
            doc["why"] = self.reason
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"

    @classmethod
    def parse(cls, doc: dict[str, Any]) -> Entry:
        return cls(
            key=str(doc["k"]),
            message_id=str(doc["id"]),
            content=str(doc.get("c", "")),
            status=Status(doc["s"]),
            file=str(doc.get("f", "")),
            row=int(doc.get("r", 0)),
            reason=str(doc.get("why", "")),
        )


class StateFile:
    def __init__(self, path: Path, *, partner: str, event_type: str) -> None:
        self.path = path
        self.partner = partner
        self.event_type = event_type
        self.entries: dict[str, Entry] = {}
        self._ids: dict[str, Entry] | None = None
        self._fd: int | None = None
        self._buffer: list[bytes] = []
        self._executor: ThreadPoolExecutor | None = None
        self._writes: list[asyncio.Future[None]] = []

    # -- opening ---------------------------------------------------------------------------------------
    def open(self) -> StateFile:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        # 0600: it maps the partner's record keys to message ids.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise StateError(f"{self.path} is in use by another adapter run") from None
            self._load(fd)
            if created or os.fstat(fd).st_size == 0:
                header = {"sv_adapter_state": STATE_VERSION, "partner": self.partner, "event_type": self.event_type}
                os.write(fd, json.dumps(header, separators=(",", ":")).encode() + b"\n")
                os.fsync(fd)
                _fsync_dir(self.path.parent)  # the file's existence survives a crash too
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def _load(self, fd: int) -> None:
        size = os.fstat(fd).st_size
        data = os.pread(fd, size, 0) if size else b""
        end = data.rfind(b"\n") + 1
        if end < len(data):
            # A torn last line (the process was killed during a write): its rows were never
            # recorded as confirmed, so cutting it off only means they are sent again.
            os.ftruncate(fd, end)
            os.fsync(fd)
            data = data[:end]
        lines = data.splitlines()
        if not lines:
            return
        try:
            header = json.loads(lines[0])
        except ValueError:
            header = None
        if not isinstance(header, dict) or header.get("sv_adapter_state") != STATE_VERSION:
            raise StateError(f"{self.path} is not an sv-broker adapter state file (version {STATE_VERSION})")
        if header.get("partner") != self.partner or header.get("event_type") != self.event_type:
            raise StateError(
                f"{self.path} belongs to partner {header.get('partner')!r}, event type {header.get('event_type')!r}; "
                f"use another state file for {self.partner!r} / {self.event_type!r}"
            )
        for number, line in enumerate(lines[1:], 2):
            try:
                entry = Entry.parse(json.loads(line))
            except (ValueError, KeyError, TypeError):
                raise StateError(
                    f"{self.path} line {number} is corrupted; move the file aside to start afresh"
                ) from None
            self.entries[entry.key] = entry

    # -- reading ---------------------------------------------------------------------------------------
    def get(self, key: str) -> Entry | None:
        return self.entries.get(key)

    def by_message_id(self, message_id: str) -> Entry | None:
        if self._ids is None:
            self._ids = {e.message_id: e for e in self.entries.values()}
        return self._ids.get(message_id)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries.values())

    # -- writing ---------------------------------------------------------------------------------------
    def add(self, entry: Entry) -> None:
        """Record an outcome; it is durable only after the next :meth:`flush` / :meth:`flush_soon`."""
        self.entries[entry.key] = entry
        if self._ids is not None:
            self._ids[entry.message_id] = entry
        self._buffer.append(entry.line())

    @property
    def fileno(self) -> int | None:
        return self._fd

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def _take(self) -> bytes:
        data = b"".join(self._buffer)
        self._buffer = []
        return data

    def _write(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)

    def flush(self) -> None:
        """Write and fsync what is buffered, now (blocking)."""
        data = self._take()
        if data:
            self._write(data)

    def flush_soon(self) -> None:
        """Write and fsync what is buffered on the state's own thread, so the event loop keeps
        publishing during the fsync; batches are written in order (one worker)."""
        data = self._take()
        if not data:
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sv-adapter-state")
        future = asyncio.get_running_loop().run_in_executor(self._executor, self._write, data)
        self._writes = [w for w in self._writes if not w.done()]
        self._writes.append(future)

    async def drain(self) -> None:
        self.flush_soon()
        writes, self._writes = self._writes, []
        for write in writes:
            await write

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._fd is not None:
            with contextlib.suppress(OSError):
                self.flush()
            os.close(self._fd)  # also releases the lock
            self._fd = None

    def __enter__(self) -> StateFile:
        return self.open()

    def __exit__(self, *_exc: object) -> None:
        self.close()


def read_header(path: Path) -> tuple[str, str] | None:
    """``(partner, event type)`` a state file belongs to, or None if it is not one."""
    try:
        with path.open("rb") as fh:
            header = json.loads(fh.readline())
    except (OSError, ValueError):
        return None
    if not isinstance(header, dict) or header.get("sv_adapter_state") != STATE_VERSION:
        return None
    return str(header.get("partner")), str(header.get("event_type"))


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
