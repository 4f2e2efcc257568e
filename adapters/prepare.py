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


@dataclass(frozen=True, slots=True)
class Ready:
    """A row that mapped, validated and is signed: to be sent."""

    row: int
    key: str
    content: str
    message_id: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Refused:
    """A row that is not sent, with every problem found in it: (column, reason, message)."""

    row: int
    key: str
    problems: tuple[tuple[str, str, str], ...]


@dataclass(frozen=True, slots=True)
class Skipped:
    """A row confirmed by an earlier run with the same content: not sent again."""

    row: int
    key: str


Item = Ready | Refused | Skipped


def prepare(
    export: Path,
    mapping: ExportMapping,
    signer: Signer,
    fmt: str,
    header: list[str],
    done: Mapping[str, str] | None,
) -> Iterator[Item]:
    """Every row of the export, in order, as :class:`Ready`, :class:`Refused` or :class:`Skipped`.

    ``done``: record key -> content hash of rows confirmed before (None: send everything again).
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
        if done is not None:
            before = done.get(mapped.record_key)
            if before == mapped.content_sha256:
                yield Skipped(source.number, mapped.record_key)
                continue
            if before is not None:
                # The broker refuses a changed record under an id it has seen ("replayed"):
                # telling the partner now is clearer than a rejection receipt later.
                message = (
                    "This record was sent before with different content; the broker refuses a changed record "
                    "under the same key. Send the correction as a new record key."
                )
                yield Refused(source.number, mapped.record_key, (("", Problem.CHANGED_AFTER_SEND.value, message),))
                continue
        message_id, body = writer.write(mapped.record_key, mapped.data_json)
        yield Ready(source.number, mapped.record_key, mapped.content_sha256, message_id, body)


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
    done: dict[str, str] | None
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
        for item in prepare(job.export, mapping, signer, job.fmt, job.header, job.done):
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
        done: Mapping[str, str] | None,
        *,
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
            done=None if done is None else dict(done),
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
