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
- A worker whose primary dies (SIGKILL leaves no chance to stop it) notices within a second and
  stops gracefully, so a restarted primary never finds orphans consuming beside its new workers.
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

    async def reload(self, config_sha256: str) -> None:
        """Tell every worker to reload (SIGHUP), and restart any later worker under the new
        configuration's fingerprint (a restarted worker refuses one that differs from the primary's)."""
        self.spec = replace(self.spec, config_sha256=config_sha256)
        for proc in self.procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGHUP)

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
            proc.stdin.write(pickle.dumps(self.spec))
            proc.stdin.close()
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), timeout=START_TIMEOUT)
            except TimeoutError:
                line = b""
            if line != READY:
                raise RuntimeError(f"ingest worker {index} did not start")
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
    from broker.service import Broker, reload_on_sighup

    parent = os.getppid()
    # Handlers first: a SIGTERM that arrives while starting is a graceful stop, not a kill.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    broker = Broker(spec.settings, spec.user_map, ingest_only=True, expected_config=spec.config_sha256)
    await broker.start()
    reload_on_sighup(broker)  # the primary reloaded: so does this process, for its next batch
    sys.stdout.buffer.write(READY)
    sys.stdout.buffer.flush()

    async def watch_parent() -> None:
        while os.getppid() == parent:  # noqa: ASYNC110 - no event announces a parent's death
            await asyncio.sleep(1.0)
        log.warning("worker_orphaned", pid=os.getpid())
        stop.set()

    watcher = asyncio.create_task(watch_parent())
    await stop.wait()
    watcher.cancel()
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
