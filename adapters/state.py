"""The adapter's local state file: which source records have been confirmed, under which message id
and revision.

Why a state file at all: a bulk import can stop half-way (a crash, kill -9, a lost connection).
Message ids are derived from the record key, so re-sending is harmless (the broker records a
duplicate), but it is slow and fills the audit trail; the state lets a re-run skip what is done.
It also maps the broker's receipts (which name message ids) back to the partner's rows.

Why append-only JSON lines: a row's outcome is appended only after RabbitMQ confirmed it (or the
broker answered), and lines are written and fsynced a batch at a time (the one line written
before a send is a correction's ``sending`` line, below). A crash can lose at most
the last unsynced batch, whose rows are then sent again and recognised by the broker as
duplicates: nothing is lost and nothing is released twice. A torn last line (kill -9 during a
write) is cut off on the next open. The latest line for a record key and revision wins.

Revisions (issue 12 item 3). A record's later revisions (corrections, withdrawals) have their
own message ids (``<first id>:r<revision>``), so a line carries its revision (``"v"``; a line
without one, as every line written before corrections existed, is revision 1: old state files
read as they are, and STATE_VERSION stays 1 because the format only gained an optional member
and a status; an older adapter refuses a file holding corrections, at its first ``sending``
line, as corrupted rather than misreading it). A withdrawal's content is ``withdrawn:<reason>``
instead of a payload hash. What the state knows of a key is summed up as :class:`Known`, from
which :func:`next_revision` decides, purely, what to send. The one rule it keeps: **a revision
number is only ever sent with one content**, because the broker refuses the same id with other
content (``replayed``). Hence a correction is written ahead (status ``sending``, fsynced before
it leaves): a run killed before its confirm knows on the next run that the revision may have
arrived, and sends other content as the next revision, never under that one. First sends
(revision 1) are not written ahead: a bulk import would pay an fsync per batch before
publishing, and the one case it would cover (a first send lost in a crash *and* edited before
the re-run) heals itself: the broker answers ``replayed``, and a ``replayed`` revision is never
used again (see :func:`next_revision`).

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
    SENDING = "sending"  # a correction or withdrawal written ahead of its publish: it may have arrived
    CONFIRMED = "confirmed"  # RabbitMQ confirmed it: durable on the ingest queue; verdict to come
    ACCEPTED = "accepted"  # the broker accepted it (HTTP answer or receipt)
    DUPLICATE = "duplicate"  # the broker already had it
    REJECTED = "rejected"  # the broker refused it: a re-run sends it again (after the export is fixed)


DONE = frozenset({Status.CONFIRMED, Status.ACCEPTED, Status.DUPLICATE})
# Refusals after which the revision number is spent: the broker holds that id with other content
# (replayed), or a later revision of the record (revision_superseded); sending the same revision
# again could only be refused again.
SPENT = frozenset({"replayed", "revision_superseded"})
WITHDRAWN_PREFIX = "withdrawn:"


def withdrawal_content(reason: str) -> str:
    """What a withdrawal's state line holds instead of a payload hash."""
    return WITHDRAWN_PREFIX + reason


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    message_id: str
    content: str  # sha256 of (event type, version, payload) as sent
    status: Status
    file: str = ""
    row: int = 0
    reason: str = ""
    revision: int = 1  # 1: the first message; 2, 3, ...: a correction or withdrawal under the first id

    @property
    def withdrawn(self) -> str:
        """The withdrawal reason if this line is a withdrawal, else ''."""
        return self.content[len(WITHDRAWN_PREFIX) :] if self.content.startswith(WITHDRAWN_PREFIX) else ""

    def line(self) -> bytes:
        doc: dict[str, Any] = {"k": self.key, "id": self.message_id, "c": self.content, "s": self.status.value}
        if self.revision != 1:
            doc["v"] = self.revision
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
            revision=_revision(doc.get("v", 1)),
        )


def _revision(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("a revision is a positive integer")
    return value


@dataclass(frozen=True, slots=True)
class Known:
    """What the state knows of one record key (picklable: it goes to the preparing worker)."""

    revision: int  # the highest revision ever sent (or written ahead)
    content: str  # that revision's content
    status: Status  # its latest status
    reason: str  # its broker refusal, if rejected
    held: str | None  # content of the highest revision the broker took (confirmed/accepted/duplicate)
    held_revision: int = 0  # that revision's number (0: none)

    @property
    def live(self) -> bool:
        """Whether the broker may hold a revision of this record that is not withdrawn."""
        if self.status is Status.SENDING and not self.content.startswith(WITHDRAWN_PREFIX):
            return True  # it may have arrived
        return self.held is not None and not self.held.startswith(WITHDRAWN_PREFIX)

    @property
    def withdrawable(self) -> bool:
        """Whether a withdrawal of it would mean something: the broker may hold it, or a
        withdrawal of it was written ahead and may not have arrived (to be completed)."""
        pending = self.status is Status.SENDING and self.content.startswith(WITHDRAWN_PREFIX)
        return self.live or pending


def next_revision(known: Known | None, content: str) -> int | None:
    """The revision to send ``content`` (a payload hash or a withdrawal) of a record as; None when
    the broker has it already. Pure.

    Invariant: a revision number is sent with one content only (the broker refuses the same id
    with other content: ``replayed``). So once a revision was sent, written ahead or refused, other
    content goes as ``revision + 1`` of the *highest* revision ever attempted, never as the one
    after the last confirmed: a correction refused by the broker (or lost in a crash) must not
    lend its number to different content later. Numbers skipped that way cost nothing (consumers
    need revisions to go up, not to be consecutive). The same content may be sent again under the
    same revision: a duplicate if it arrived, accepted if it did not.
    """
    if known is None:
        return 1
    if known.status in DONE:
        return None if known.content == content else known.revision + 1
    if known.status is Status.SENDING:
        # Unknown whether it arrived: the same content again (a duplicate at worst), other content later.
        return known.revision if known.content == content else known.revision + 1
    # Rejected: the broker did not take it, and does not hold it under that id.
    if known.content == content and known.reason not in SPENT:
        return known.revision  # sent again after the export (or the key, or the agreement) was fixed
    if known.held == content:
        return None  # back to what the broker holds already
    return known.revision + 1


class StateFile:
    def __init__(self, path: Path, *, partner: str, event_type: str) -> None:
        self.path = path
        self.partner = partner
        self.event_type = event_type
        self.entries: dict[str, Entry] = {}  # key -> the latest line of its highest revision
        self._held: dict[str, Entry] = {}  # key -> the latest line of its highest revision the broker took
        self._revisions: dict[str, dict[int, Entry]] = {}  # key -> revision -> its latest line
        self._ids: dict[str, Entry] = {}  # message id (of any revision) -> its latest line
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
            self._index(entry)

    # -- reading ---------------------------------------------------------------------------------------
    def _index(self, entry: Entry) -> None:
        revisions = self._revisions.setdefault(entry.key, {})
        revisions[entry.revision] = entry
        self._ids[entry.message_id] = entry
        top = self.entries.get(entry.key)
        if top is None or entry.revision >= top.revision:
            self.entries[entry.key] = entry
        # A late verdict on an older revision (its receipt after a newer one was sent) leaves the
        # top alone; what the broker holds is the highest revision it took, whatever the order.
        taken = [e for e in revisions.values() if e.status in DONE]
        if taken:
            self._held[entry.key] = max(taken, key=lambda e: e.revision)
        else:
            self._held.pop(entry.key, None)

    def get(self, key: str) -> Entry | None:
        """The latest line of the key's highest revision."""
        return self.entries.get(key)

    def held(self, key: str) -> Entry | None:
        """The latest line of the key's highest revision the broker took (confirmed, accepted, duplicate)."""
        return self._held.get(key)

    def revision(self, key: str, revision: int) -> Entry | None:
        """The latest line of one revision of a key."""
        return self._revisions.get(key, {}).get(revision)

    def known(self, key: str) -> Known | None:
        top = self.entries.get(key)
        if top is None:
            return None
        held = self._held.get(key)
        return Known(
            top.revision,
            top.content,
            top.status,
            top.reason,
            held.content if held else None,
            held.revision if held else 0,
        )

    def known_all(self) -> dict[str, Known]:
        return {key: known for key in self.entries if (known := self.known(key)) is not None}

    def by_message_id(self, message_id: str) -> Entry | None:
        return self._ids.get(message_id)

    def __iter__(self) -> Iterator[Entry]:
        """One entry per record key: the latest line of its highest revision."""
        return iter(self.entries.values())

    def every_revision(self) -> Iterator[Entry]:
        """The latest line of every (key, revision)."""
        return (entry for revisions in self._revisions.values() for entry in revisions.values())

    # -- writing ---------------------------------------------------------------------------------------
    def add(self, entry: Entry) -> None:
        """Record an outcome; it is durable only after the next :meth:`flush` / :meth:`flush_soon`."""
        self._index(entry)
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
