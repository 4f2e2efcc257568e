"""Ingest worker processes: more broker processes consuming the one ingest queue (``--workers``).

Why processes: the pipeline is CPU-bound Python (strict parse, Ed25519 verify, validation, AMQP
framing), so one process is held to about one core by its GIL however many threads it has
(measured: moving verification to a thread made it slower). DESIGN.md's scaled mode is several
broker processes as competing consumers of the ingest queue; this runs them on one host, sharing
the SQLite store, supervised by the primary process.

- The primary runs everything (HTTP API, dead-letter auditor, checkpoints, retention) and consumes
  too; each worker runs only the ingest pipeline, with its own AMQP connection and its own
  connections to the store file.
- Sharing the store is safe: every write transaction reads the audit head under SQLite's write
  lock (the chain never forks), a record id is audited as released at most once (the
  ``releases`` table), and what a worker had not acknowledged when it died comes back from
  RabbitMQ to another consumer.
- Settings reach a worker pickled on its stdin, not on its command line: the AMQP URL may hold a
  password, and a command line is visible to every local user (``ps``).
- A worker whose primary dies (SIGKILL leaves no chance to stop it) notices within a second (its
  stdin closes; its parent changes) and stops gracefully, so a restarted primary never finds
  orphans consuming beside its new workers.
- A reload (SIGHUP or ``sv-broker reload`` to the primary) reaches every worker over the same
  pipe: ``reload <fingerprint>`` on its stdin, answered ``reloaded <fingerprint>`` (or
  ``refused``) on its stdout. A worker puts in force only the set whose fingerprint the primary
  put in force, and the primary audits ``config_changed`` only after every worker answered; one
  that refuses or does not answer is stopped and restarted under the new set (which it refuses
  at start if the files changed again): never two sets applied side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import sys
from dataclasses import dataclass, replace

from broker.logs import configure, get_logger
from broker.settings import Settings

log = get_logger("sv_broker.workers")

READY = b"ready\n"
START_TIMEOUT = 60.0
RELOAD_TIMEOUT = 60.0  # loading and checking the files; a worker silent longer is restarted
STOP_TIMEOUT = 45.0  # longer than a worker's own 30 s wait for its in-flight batches


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    settings: Settings
    user_map: dict[str, str]
    # The primary's configuration fingerprint (registry, keys, agreements). A worker restarted
    # after those files changed would apply other agreements than the primary: it refuses.
    config_sha256: str


class WorkerPool:
    """Starts ``count`` ingest workers, restarts one that exits unexpectedly, stops them all."""

    def __init__(self, spec: WorkerSpec, count: int) -> None:
        self.spec = spec
        self.count = count
        self.procs: list[asyncio.subprocess.Process] = []  # by worker index, once started
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._talking = asyncio.Lock()  # one conversation at a time on the workers' pipes

    async def reload(self, config_sha256: str) -> int:
        """Tell every worker to put in force the set the primary did (``config_sha256``) and wait
        for each answer; returns how many did. A worker started from now on gets the new
        fingerprint (a restarted worker refuses a set that differs from the primary's)."""
        self.spec = replace(self.spec, config_sha256=config_sha256)
        async with self._talking:
            live = [proc for proc in self.procs if proc.returncode is None]
            answers = await asyncio.gather(*(self._tell(proc, config_sha256) for proc in live))
        return sum(answers)

    async def _tell(self, proc: asyncio.subprocess.Process, config_sha256: str) -> bool:
        """One worker reloads (``reload <sha>`` in, ``reloaded <sha>`` out); under ``_talking``."""
        assert proc.stdin is not None
        assert proc.stdout is not None
        try:
            proc.stdin.write(f"reload {config_sha256}\n".encode())
            await proc.stdin.drain()
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=RELOAD_TIMEOUT)
        except (OSError, TimeoutError):  # a broken pipe: it is exiting (its supervisor restarts it)
            line = b""
        if line == f"reloaded {config_sha256}\n".encode():
            log.info("worker_reloaded", pid=proc.pid, config_sha256=config_sha256)
            return True
        # Threat: a worker left on the old set (or on another one, the files having changed since
        # the primary read them) would go on releasing under agreements or keys no longer in
        # force. It is stopped (gracefully: its in-flight batches finish) and restarted under the
        # primary's fingerprint.
        log.warning("worker_reload_failed", pid=proc.pid, answer=line.decode("ascii", "replace").strip()[:20])
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        return False

    async def start(self) -> None:
        """Start every worker and wait until each is consuming; a worker that cannot start is an
        error at start-up, and the ones that did start are stopped again."""
        results = await asyncio.gather(*(self._spawn(i) for i in range(self.count)), return_exceptions=True)
        started = [r for r in results if isinstance(r, asyncio.subprocess.Process)]
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            await _terminate(started)
            raise failed[0]
        self.procs = started
        self._tasks = [asyncio.create_task(self._supervise(i), name=f"worker-{i}") for i in range(self.count)]

    async def _spawn(self, index: int) -> asyncio.subprocess.Process:
        spec = self.spec
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            __name__,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdin is not None
            assert proc.stdout is not None
            # stdin stays open: the primary's reloads come that way, and its end tells the
            # worker that the primary is gone.
            proc.stdin.write(pickle.dumps(spec))
            await proc.stdin.drain()
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), timeout=START_TIMEOUT)
            except TimeoutError:
                line = b""
            if line != READY:
                raise RuntimeError(f"ingest worker {index} did not start")
            async with self._talking:
                if spec.config_sha256 != self.spec.config_sha256:
                    # A reload happened while it started (from files read before it): it reloads
                    # too. (The caller records it in ``procs`` with no await in between, so a
                    # reload waiting for ``_talking`` finds it there.)
                    await self._tell(proc, self.spec.config_sha256)
        except BaseException:
            # Failed, timed out or cancelled (the pool stopping): never leave it running unseen.
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.shield(proc.wait())
            raise
        log.info("worker_started", worker=index, pid=proc.pid)
        return proc

    def stopping(self) -> bool:
        return self._stopping

    async def _supervise(self, index: int) -> None:
        delay = 1.0
        while not self._stopping:
            proc = self.procs[index]
            code = await proc.wait()
            if self.stopping():  # (set by stop() while we waited)
                return
            # Its unacknowledged deliveries are back in the queue already; start a new one.
            log.warning("worker_exited", worker=index, pid=proc.pid, status=code, restart_in=delay)
            await asyncio.sleep(delay)
            try:
                self.procs[index] = await self._spawn(index)
                delay = 1.0
            except Exception as exc:  # retried with back-off: the primary keeps serving meanwhile
                log.warning("worker_restart_failed", worker=index, error=type(exc).__name__)
                delay = min(delay * 2, 30.0)

    async def stop(self) -> None:
        """SIGTERM each worker (each finishes what it has in flight), then wait for all."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        # A supervisor cancelled mid-restart kills what it was starting (``_spawn``); wait for
        # that before collecting the live ones, so none is missed.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await _terminate(self.procs)


async def _terminate(procs: list[asyncio.subprocess.Process]) -> None:
    live = [p for p in procs if p.returncode is None]
    for proc in live:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    for proc in live:
        try:
            await asyncio.wait_for(proc.wait(), timeout=STOP_TIMEOUT)
        except TimeoutError:
            log.warning("worker_killed", pid=proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def _run_worker(spec: WorkerSpec) -> None:
    from broker.service import Broker

    parent = os.getppid()
    # Handlers first: a SIGTERM that arrives while starting is a graceful stop, not a kill.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # A SIGHUP sent to a worker itself (``kill -HUP`` of the process group) would end it by
    # default; a worker reloads only when its primary tells it to, with the primary's set.
    loop.add_signal_handler(signal.SIGHUP, lambda: log.info("reload_ignored", pid=os.getpid(), via="primary"))
    broker = Broker(spec.settings, spec.user_map, ingest_only=True, expected_config=spec.config_sha256)
    await broker.start()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    sys.stdout.buffer.write(READY)
    sys.stdout.buffer.flush()

    async def watch_parent() -> None:
        while os.getppid() == parent:  # noqa: ASYNC110 - no event announces a parent's death
            await asyncio.sleep(1.0)
        log.warning("worker_orphaned", pid=os.getpid())
        stop.set()

    async def obey() -> None:
        """The primary's reloads, one at a time, each answered once done (for its next batch)."""
        while line := await reader.readline():
            words = line.split()
            if len(words) == 2 and words[0] == b"reload":
                report = await broker.reload(expected=words[1].decode("ascii", "replace"))
                answer = f"reloaded {report.after}\n" if report.ok else "refused\n"
                sys.stdout.buffer.write(answer.encode())
                sys.stdout.buffer.flush()
        log.warning("worker_orphaned", pid=os.getpid(), via="stdin")  # the primary's end closed
        stop.set()

    tasks = [asyncio.create_task(watch_parent()), asyncio.create_task(obey())]
    await stop.wait()
    for task in tasks:
        task.cancel()
    await broker.stop()


def main() -> int:
    # Unpickling runs code chosen by whoever wrote the bytes: here only our parent, the primary,
    # over a pipe no one else can write to (never a file, a socket or anything a partner sends).
    spec = pickle.load(sys.stdin.buffer)  # noqa: S301
    # Run as ``-m broker.workers`` this module is ``__main__``; the spec's class is the one in
    # ``broker.workers`` (imported by unpickling), so check against that one.
    from broker.workers import WorkerSpec as Spec

    if not isinstance(spec, Spec):
        print("error: expected a worker spec on stdin", file=sys.stderr)
        return 2
    configure(spec.settings.log_level)
    from broker.errors import StartupError

    try:
        asyncio.run(_run_worker(spec))
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
