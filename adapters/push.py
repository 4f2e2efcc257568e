"""``adapter push``: a partner's export file to signed, confirmed events, resumably.

    1 scan the file (nothing sent) ─► 2 refuse it whole if unusable ─► 3 per row: map ► validate
    ► skip if confirmed before ► sign (adapters.prepare; in a worker process for large files)
    ─► 4 publish with a window of confirms ─► 5 record each confirm in the state file
    ─► 6 report and summary

Rows that do not map or validate are reported (row, column, reason) and not sent; the others
are. A row is written to the state file only after its confirm, so a run killed at any point
and run again sends what is missing; what it sends twice the broker recognises as a duplicate
(same message id, derived from partner and record key; same content).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from adapters import exports
from adapters.mapping import ExportMapping
from adapters.prepare import Item, PrepareWorker, Ready, Refused, Skipped, prepare
from adapters.progress import Progress
from adapters.report import Problem, ReportWriter, RowProblem, Stage
from adapters.signer import Signer
from adapters.sink import OnResult, Outgoing, Result, Sink, Verdict
from adapters.state import DONE, Entry, StateFile, Status
from schemas.identifiers import identifier_columns

SinkFactory = Callable[[OnResult], Sink]
WORKER_MIN_ROWS = 2000


class ExitCode:
    OK = 0  # every row sent and confirmed (or confirmed by an earlier run)
    ROWS_FAILED = 1  # some rows were not sent (see the report) or the broker refused them
    USAGE = 2  # bad arguments, mapping, key or state file
    FILE_REFUSED = 3  # the whole file was refused (direct identifier, missing column): nothing sent
    NOT_CONFIRMED = 4  # sending stopped or some publishes were not confirmed: run again to finish


@dataclass
class PushSummary:
    rows: int = 0
    skipped: int = 0  # confirmed by an earlier run, not sent again
    rejected_locally: int = 0  # rows with a problem: not sent
    sent: int = 0
    confirmed: int = 0  # AMQP: RabbitMQ confirmed; HTTP: the broker answered accepted or duplicate
    accepted: int = 0  # HTTP only
    duplicates: int = 0  # HTTP only: the broker already had it
    rejected_by_broker: int = 0  # HTTP only
    not_confirmed: int = 0
    refused: bool = False  # the whole file was refused
    aborted: str = ""  # why sending stopped early
    elapsed: float = 0.0
    transport: str = ""
    problems_by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        if self.refused:
            return ExitCode.FILE_REFUSED
        if self.aborted or self.not_confirmed:
            return ExitCode.NOT_CONFIRMED
        if self.rejected_locally or self.rejected_by_broker:
            return ExitCode.ROWS_FAILED
        return ExitCode.OK

    def lines(self) -> list[str]:
        rate = (self.sent / self.elapsed) if self.elapsed > 0 else 0.0
        out = [
            f"rows read              {self.rows:>9,}",
            f"already confirmed      {self.skipped:>9,}   (sent by an earlier run: not sent again)",
            f"rejected locally       {self.rejected_locally:>9,}   (not sent: see the report)",
            f"sent                   {self.sent:>9,}   ({rate:,.0f} rows/s)",
            f"confirmed              {self.confirmed:>9,}",
        ]
        if self.transport == "http":
            out += [
                f"  accepted by broker   {self.accepted:>9,}",
                f"  duplicates           {self.duplicates:>9,}   (the broker had them already)",
                f"rejected by broker     {self.rejected_by_broker:>9,}   (see the report)",
            ]
        out.append(f"not confirmed          {self.not_confirmed:>9,}   (run again to send these)")
        if self.problems_by_reason:
            out.append("problems: " + ", ".join(f"{k} {v}" for k, v in sorted(self.problems_by_reason.items())))
        if self.refused:
            out.append("THE FILE WAS REFUSED: nothing was sent (see the report).")
        if self.aborted:
            out.append(f"SENDING STOPPED: {self.aborted}. Run the same command again to finish.")
        return out


@dataclass(frozen=True)
class PushOptions:
    export: Path
    mapping: ExportMapping
    signer: Signer
    state_path: Path | None  # None only for a dry run
    report_path: Path | None
    resend: bool = False  # ignore the state: send every good row (the broker records duplicates)
    dry_run: bool = False  # map and validate only
    progress: bool | None = None  # None: when stderr is a terminal
    progress_stream: TextIO | None = None
    flush_every: int = 256  # confirms per state-file fsync
    worker: bool | None = None  # prepare rows in a worker process (None: for large files, with 2+ CPUs)


def file_problems(options: PushOptions, scan: exports.ExportScan) -> list[RowProblem]:
    """Problems that stop the whole file before any row is sent.

    Direct-identifier columns: the whole file is refused, not the column ignored. Why:
    * DOMAIN.md: health feeds must be anonymised at source, and the broker rejects rather than
      strips a feed carrying an identifier, "so that the sender fixes its export". The adapter
      is the source's last gate and applies the same rule; ignoring the column would quietly
      accept an extract that should never have been made (UK GDPR Art 5(1)(c), minimisation at
      the point of extraction) and let it recur every night with nobody reading a warning.
    * An export that carries an NHS number, UPN or name column usually carries identifiers in
      its free text too ("assaulted at 12 Acacia Avenue"), which no header check can see; a
      refusal makes a person look at the extract before anything leaves.
    * The cost is small: nothing partial was sent, and the re-run after the export is fixed is
      safe (same message ids).
    The mapping itself can never read such a column (``adapters.mapping`` refuses it at load),
    so even a file that slipped through could not carry the value into an event.
    """
    problems = list(scan.problems)
    for found in identifier_columns(scan.columns):
        problems.append(
            RowProblem(
                scan.first_seen.get(found.column, 0),
                "",
                found.column,
                Stage.FILE,
                Problem.DIRECT_IDENTIFIER_COLUMN.value,
                f"The export has a direct-identifier column ({found.looks_like}). Identifiers must not leave your "
                "system: remove the column from the export (fix the report or query that makes it) and run again. "
                "Nothing in this file was sent.",
            )
        )
    if scan.format == "csv" and not scan.problems:
        header = set(scan.columns)
        for column in options.mapping.columns:
            if column not in header:
                problems.append(
                    RowProblem(
                        1,
                        "",
                        column,
                        Stage.FILE,
                        Problem.MISSING_COLUMN.value,
                        f"The mapping reads column {column!r} and the header has no such column "
                        f"(header: {', '.join(scan.columns[:20])}).",
                    )
                )
    return problems


class Pusher:
    def __init__(self, options: PushOptions, sink_factory: SinkFactory | None) -> None:
        self.options = options
        self.sink_factory = sink_factory
        self.summary = PushSummary()
        self.report = ReportWriter(options.report_path)
        self.state: StateFile | None = None
        self.progress: Progress | None = None
        self.file_name = options.export.name

    async def run(self) -> PushSummary:
        try:
            return await self._run()
        finally:
            self.report.close()

    async def _run(self) -> PushSummary:
        options, summary = self.options, self.summary
        mapping = options.mapping
        # 1-2: scan the whole file first; refuse it whole if it cannot be sent as it is.
        scan = exports.scan(options.export, mapping)
        problems = file_problems(options, scan)
        if problems:
            self.report.extend(problems)
            summary.refused = True
            summary.problems_by_reason = dict(self.report.counts)
            return summary
        self.progress = Progress(scan.rows, enabled=options.progress, stream=options.progress_stream)
        sink: Sink | None = None
        worker: PrepareWorker | None = None
        try:
            done: dict[str, str] | None = None
            if not options.dry_run:
                assert options.state_path is not None
                self.state = StateFile(
                    options.state_path, partner=options.signer.partner, event_type=mapping.event_type
                )
                self.state.open()
                if not options.resend:
                    done = {e.key: e.content for e in self.state if e.status in DONE}
            if self._use_worker(scan.rows):
                state_fd = self.state.fileno if self.state is not None else None
                worker = PrepareWorker(
                    options.export,
                    mapping,
                    options.signer,
                    scan.format,
                    scan.columns,
                    done,
                    inherited_fds=() if state_fd is None else (state_fd,),
                )
                worker.start()
            if self.sink_factory is not None and not options.dry_run:
                sink = self.sink_factory(self._on_result)
                summary.transport = sink.transport
                await sink.open()
            batches = worker.items() if worker is not None else self._local(scan, done)
            await self._send_all(batches, sink)
            if sink is not None:
                await sink.drain()
                if sink.broken and not summary.aborted:
                    summary.aborted = sink.broken
        finally:
            if worker is not None:
                worker.stop()
            if sink is not None:
                await sink.close()
            if self.state is not None:
                await self.state.drain()
                self.state.close()
            self.progress.finish()
        summary.elapsed = self.progress.elapsed
        summary.problems_by_reason = dict(self.report.counts)
        return summary

    def _use_worker(self, rows: int) -> bool:
        if self.options.worker is not None:
            return self.options.worker and self.options.mapping.source is not None
        # Worth a process (~0.3 s to start) only for a bulk import on a machine with a core to spare.
        return rows >= WORKER_MIN_ROWS and (os.cpu_count() or 1) >= 2 and self.options.mapping.source is not None

    async def _local(self, scan: exports.ExportScan, done: dict[str, str] | None) -> AsyncIterator[list[Item]]:
        options = self.options
        batch: list[Item] = []
        for item in prepare(options.export, options.mapping, options.signer, scan.format, scan.columns, done):
            batch.append(item)
            if len(batch) >= 64:
                yield batch
                batch = []
                await asyncio.sleep(0)  # let the publishers run
        if batch:
            yield batch

    async def _send_all(self, batches: AsyncIterator[list[Item]], sink: Sink | None) -> None:
        """3-4: each prepared row is sent (its confirm arrives in _on_result); the others counted."""
        summary = self.summary
        assert self.progress is not None
        progress = self.progress
        async for batch in batches:
            for item in batch:
                summary.rows += 1
                if isinstance(item, Ready):
                    if sink is None:  # dry run
                        progress.advance()
                        continue
                    try:
                        await sink.send(Outgoing(item.key, item.message_id, item.content, item.body, item.row))
                    except ConnectionError as exc:
                        summary.aborted = str(exc)
                        return
                    summary.sent += 1
                elif isinstance(item, Skipped):
                    summary.skipped += 1
                    progress.advance()
                else:
                    self._reject(item)
            if sink is not None and sink.broken:
                summary.aborted = sink.broken
                return

    def _reject(self, item: Refused) -> None:
        self.summary.rejected_locally += 1
        for column, reason, message in item.problems:
            self.report.add(RowProblem(item.row, item.key, column, Stage.ROW, reason, message))
        assert self.progress is not None
        self.progress.advance()

    def _on_result(self, result: Result) -> None:
        """5: a confirm (or a broker answer) for one row: record it, count it."""
        summary, item = self.summary, result.item
        status: Status | None = None
        if result.verdict is Verdict.CONFIRMED:
            summary.confirmed += 1
            status = Status.CONFIRMED
        elif result.verdict is Verdict.ACCEPTED:
            summary.confirmed += 1
            summary.accepted += 1
            status = Status.ACCEPTED
        elif result.verdict is Verdict.DUPLICATE:
            summary.confirmed += 1
            summary.duplicates += 1
            status = Status.DUPLICATE
        elif result.verdict is Verdict.REJECTED:
            summary.rejected_by_broker += 1
            status = Status.REJECTED
            self.report.add(RowProblem(item.row, item.key, "", Stage.BROKER, result.reason, result.message))
        else:
            summary.not_confirmed += 1
            self.report.add(RowProblem(item.row, item.key, "", Stage.SEND, Problem.NOT_CONFIRMED.value, result.message))
        if status is not None and self.state is not None:
            self.state.add(
                Entry(item.key, item.message_id, item.content, status, self.file_name, item.row, result.reason)
            )
            if self.state.buffered >= self.options.flush_every:
                self.state.flush_soon()
        assert self.progress is not None
        self.progress.advance()


async def push(options: PushOptions, sink_factory: SinkFactory | None) -> PushSummary:
    return await Pusher(options, sink_factory).run()


def default_state_path(state_dir: Path, partner: str, event_type: str) -> Path:
    return state_dir / f"{partner}.{event_type}.state.jsonl"


def default_report_path(export: Path) -> Path:
    return export.with_name(f"{export.name}.report.csv")
