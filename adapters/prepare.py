"""Rows to signed messages: read, map, validate, skip what is done, sign. Pure CPU work.

The one generator, :func:`prepare`, is used two ways:

* in the push process, for small files;
* in a worker process for large ones (:class:`PrepareWorker`), so that mapping, schema
  validation and Ed25519 signing (~70 us a row, and Python runs one thread at a time) overlap
  with publishing on another core. Measured in ``bench/bench_adapter.py``: in one process the
  adapter reached ~0.65 of a bare publisher; with the worker, see the README's figures.

How the worker starts: forked (a few milliseconds) when the push process is single-threaded on
Linux, which is the case in ``sv-broker adapter push`` (forking a process with other threads can
copy a lock some thread held, and the child would deadlock on it); spawned otherwise (~0.3 s of
imports). A spawned worker receives what it needs by pickling: the mapping's TOML document, the
export's path and the signing key's raw bytes, over a pipe to our own child process, never to
disk. A forked one closes the state file it inherited (its lock must die with the push). Either
way it sends back batches of items, and exits by itself when its parent disappears (kill -9 of
the push must not leave it running, nor holding the state file's lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import queue
import signal
import sys
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from adapters import exports
from adapters.mapping import ExportMapping, Mapped, compile_mapping
from adapters.report import Problem
from adapters.signer import Signer
from adapters.state import Known, next_revision, withdrawal_content
from schemas import envelope


@dataclass(frozen=True, slots=True)
class Ready:
    """A row that mapped, validated and is signed: to be sent (or a withdrawal of a record)."""

    row: int  # 0 for a withdrawal: the record has no row in this export
    key: str
    content: str  # payload hash, or ``withdrawn:<reason>``
    message_id: str
    body: bytes
    revision: int = 1  # 2, 3, ...: a correction (or withdrawal) under the record's first message id
    withdrawn: str = ""  # the withdrawal reason, for a withdrawal


@dataclass(frozen=True, slots=True)
class Refused:
    """A row that is not sent, with every problem found in it: (column, reason, message)."""

    row: int
    key: str
    problems: tuple[tuple[str, str, str], ...]


@dataclass(frozen=True, slots=True)
class Skipped:
    """A row the broker has with this content (confirmed by an earlier run): not sent again."""

    row: int
    key: str


Item = Ready | Refused | Skipped


def prepare(
    export: Path,
    mapping: ExportMapping,
    signer: Signer,
    fmt: str,
    header: list[str],
    known: Mapping[str, Known],
    resend: bool = False,
) -> Iterator[Item]:
    """Every row of the export, in order, as :class:`Ready`, :class:`Refused` or :class:`Skipped`.

    ``known``: what the state file knows of each record key (:meth:`StateFile.known_all`). A row
    the broker has with the same content is skipped; a row whose content changed since is sent as
    a correction, revision ``next_revision`` under its first message id (issue 12 item 3: the
    record key never changes, a corrected record keeps its record id at every consumer).
    ``resend``: send even what the broker has, under the revision it has it as (a duplicate).
    """
    seen: dict[str, int] = {}
    key_label = " + ".join(mapping.record_key)
    writer = signer.envelope_writer(mapping.event_type, mapping.version)
    for source in exports.rows(export, mapping, fmt, header):
        if source.values is None:
            yield Refused(source.number, "", (("", Problem.MALFORMED_ROW.value, source.problem),))
            continue
        mapped = mapping.map_row(source.values)
        if not isinstance(mapped, Mapped):
            key = mapping.key_of(source.values) or ""
            yield Refused(source.number, key, tuple((p.column, p.reason.value, p.message) for p in mapped))
            continue
        first = seen.setdefault(mapped.record_key, source.number)
        if first != source.number:
            message = f"Row {first} has the same record key; each record needs its own key."
            yield Refused(source.number, mapped.record_key, ((key_label, Problem.DUPLICATE_RECORD_KEY.value, message),))
            continue
        before = known.get(mapped.record_key)
        revision = next_revision(before, mapped.content_sha256)
        if revision is None:
            if not resend:
                yield Skipped(source.number, mapped.record_key)
                continue
            assert before is not None  # next_revision is None only for a known record
            revision = before.held_revision
        if revision == 1:
            message_id, body = writer.write(mapped.record_key, mapped.data_json)
        else:
            # A correction: rare, so the general signer (the fast writer knows revision 1 only).
            doc = signer.sign(
                mapping.event_type,
                mapped.data,
                source_key=mapped.record_key,
                version=mapping.version,
                revision=revision,
            )
            message_id, body = doc["id"], envelope.encode(doc)
        yield Ready(source.number, mapped.record_key, mapped.content_sha256, message_id, body, revision)


def withdrawal(
    mapping: ExportMapping, signer: Signer, key: str, known: Known | None, reason: str, *, row: int = 0
) -> Ready | None:
    """The signed withdrawal of a record (``data`` {}), as the revision after every one sent; None
    when there is nothing to withdraw (never sent, or withdrawn already). Pure but for the clock."""
    if known is None or not known.withdrawable:
        return None
    content = withdrawal_content(reason)
    revision = next_revision(known, content)
    if revision is None:
        return None
    assert revision >= 2  # something was sent before: the withdrawal comes after it
    doc = signer.sign(
        mapping.event_type, {}, source_key=key, version=mapping.version, revision=revision, withdrawn=reason
    )
    return Ready(row, key, content, str(doc["id"]), envelope.encode(doc), revision, reason)


# -- the worker process ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    export: Path
    mapping_doc: dict[str, Any]
    mapping_origin: str
    fmt: str
    header: list[str]
    partner: str
    kid: str
    seed: bytes
    id_key: bytes
    known: dict[str, Known]
    resend: bool
    batch: int
    parent: int
    close_fds: tuple[int, ...]  # forked: the parent's descriptors the child must not keep open


_END = "end"
_ERROR = "error"


def _put(out: Any, value: Any, parent: int) -> None:
    """Put with a timeout so a worker whose parent died (kill -9) notices and exits."""
    while True:
        try:
            out.put(value, timeout=1.0)
            return
        except queue.Full:
            if os.getppid() != parent:
                # Nobody will read the queue again: exiting normally would wait forever for its
                # feeder thread to flush into a full pipe (this process holds both ends of it).
                out.cancel_join_thread()
                os._exit(0)


def _work(out: Any, job: _Job) -> None:  # runs in the child
    # Ctrl-C reaches the whole process group: the push process handles it; the worker just ends.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)  # a forked child must not wake the parent's event loop
    for fd in job.close_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    try:
        mapping = compile_mapping(job.mapping_doc, origin=job.mapping_origin)
        signer = Signer.create(job.partner, job.kid, Ed25519PrivateKey.from_private_bytes(job.seed), job.id_key)
        batch: list[Item] = []
        for item in prepare(job.export, mapping, signer, job.fmt, job.header, job.known, job.resend):
            batch.append(item)
            if len(batch) >= job.batch:
                _put(out, batch, job.parent)
                batch = []
        if batch:
            _put(out, batch, job.parent)
        _put(out, _END, job.parent)
    except Exception as exc:  # reported by the parent as a failure of the run, not of a row
        _put(out, (_ERROR, f"{type(exc).__name__}: {exc}"), job.parent)


class WorkerFailed(RuntimeError):
    pass


class PrepareWorker:
    """Runs :func:`prepare` in a spawned process and streams its items back in batches."""

    def __init__(
        self,
        export: Path,
        mapping: ExportMapping,
        signer: Signer,
        fmt: str,
        header: list[str],
        known: Mapping[str, Known],
        *,
        resend: bool = False,
        batch: int = 256,
        depth: int = 16,
        inherited_fds: tuple[int, ...] = (),
        start_method: str | None = None,  # None: fork when that is safe, else spawn
    ) -> None:
        if mapping.source is None:
            raise ValueError("the mapping has no source document to send to a worker")
        if start_method is None:
            fork = sys.platform.startswith("linux") and threading.active_count() == 1
            start_method = "fork" if fork else "spawn"
        self.method = start_method
        fork = start_method == "fork"
        seed = signer.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        self.job = _Job(
            export=export,
            mapping_doc=mapping.source,
            mapping_origin=mapping.origin,
            fmt=fmt,
            header=list(header),
            partner=signer.partner,
            kid=signer.kid,
            seed=seed,
            id_key=signer.id_key,
            known=dict(known),
            resend=resend,
            batch=batch,
            parent=os.getpid(),
            close_fds=inherited_fds if fork else (),
        )
        context: Any = multiprocessing.get_context(self.method)
        self.queue: Any = context.Queue(maxsize=depth)  # bounded: the worker runs ahead by `depth` batches
        self.process = context.Process(
            target=_work, args=(self.queue, self.job), daemon=True, name="sv-adapter-prepare"
        )

    def start(self) -> None:
        self.process.start()
        # Our own reader thread (not asyncio's default executor, whose threads outlive the push
        # and would make the next push in this process spawn rather than fork).
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sv-adapter-prepare")

    def _next(self) -> Any:  # on a thread: a blocking get that notices a dead worker
        while True:
            try:
                return self.queue.get(timeout=0.5)
            except queue.Empty:
                if not self.process.is_alive():
                    try:
                        return self.queue.get(timeout=0.5)
                    except queue.Empty:
                        raise WorkerFailed(f"the preparing process exited (code {self.process.exitcode})") from None

    async def items(self) -> AsyncIterator[list[Item]]:
        loop = asyncio.get_running_loop()
        while True:
            value = await loop.run_in_executor(self._reader, self._next)
            if value == _END:
                return
            if isinstance(value, tuple) and value and value[0] == _ERROR:
                raise WorkerFailed(str(value[1]))
            yield value

    def stop(self) -> None:
        self._reader.shutdown(wait=False, cancel_futures=True)
        if self.process.is_alive():
            self.process.terminate()
        with contextlib.suppress(Exception):
            self.process.join(timeout=5)
        self.queue.close()
        self.queue.cancel_join_thread()
