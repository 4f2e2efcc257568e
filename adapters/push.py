"""``adapter push``: a partner's export file to signed, confirmed events, resumably.

    1 scan the file (nothing sent) ─► 2 refuse it whole if unusable ─► 3 per row: map ► validate
    ► skip if confirmed before, or a correction if changed since ► sign (adapters.prepare; in a
    worker process for large files) ─► 4 publish with a window of confirms (corrections written
    ahead) ─► 5 record each confirm in the state file ─► 6 withdrawals of records gone from the
    export (--withdraw-missing) ─► 7 report and summary

Rows that do not map or validate are reported (row, column, reason) and not sent; the others
are. A row is written to the state file only after its confirm, so a run killed at any point
and run again sends what is missing; what it sends twice the broker recognises as a duplicate
(same message id, derived from partner and record key; same content). A row whose content changed
since the broker took it goes as a correction: the next revision under its first message id
(``adapters.state.next_revision``). ``withdraw`` (or ``push --withdraw-missing``) sends
withdrawals: the next revision, no event, a ``WithdrawalReason``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from adapters import exports
from adapters.mapping import ExportMapping
from adapters.prepare import Item, PrepareWorker, Ready, Refused, Skipped, prepare, withdrawal
from adapters.progress import Progress
from adapters.report import Change, Problem, ReportWriter, RowProblem, Stage
from adapters.signer import Signer
from adapters.sink import OnResult, Outgoing, Result, Sink, Verdict
from adapters.state import DONE, Entry, Known, StateFile, Status
from schemas.envelope import WithdrawalReason
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
    corrections: int = 0  # of ``sent``: rows changed since the broker took them (revision 2, 3, ...)
    withdrawals: int = 0  # of ``sent``: withdrawals of records (no event)
    corrected: int = 0  # corrections confirmed (AMQP) or accepted (HTTP)
    withdrawn: int = 0  # withdrawals confirmed (AMQP) or accepted (HTTP)
    notices: int = 0  # HTTP only: withdrawal notices the broker sent to consumers holding the records
    nothing_to_withdraw: int = 0  # withdraw: keys withdrawn already, or never taken by the broker
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
        ]
        if self.corrections or self.withdrawals or self.nothing_to_withdraw:
            out += [
                f"  as corrections       {self.corrections:>9,}   (changed since sent: the next revision, same record)",
                f"  as withdrawals       {self.withdrawals:>9,}   (the record withdrawn from its consumers)",
            ]
        if self.nothing_to_withdraw:
            out.append(f"nothing to withdraw    {self.nothing_to_withdraw:>9,}   (withdrawn already, or never taken)")
        out.append(f"confirmed              {self.confirmed:>9,}")
        if self.corrected or self.withdrawn:
            out += [
                f"  corrected            {self.corrected:>9,}",
                f"  withdrawn            {self.withdrawn:>9,}",
            ]
        if self.transport == "http":
            out += [
                f"  accepted by broker   {self.accepted:>9,}",
                f"  duplicates           {self.duplicates:>9,}   (the broker had them already)",
                f"rejected by broker     {self.rejected_by_broker:>9,}   (see the report)",
            ]
            if self.notices:
                out.append(f"withdrawal notices     {self.notices:>9,}   (consumers told to delete a record)")
        out.append(f"not confirmed          {self.not_confirmed:>9,}   (run again to send these)")
        if self.problems_by_reason:
            out.append("problems: " + ", ".join(f"{k} {v}" for k, v in sorted(self.problems_by_reason.items())))
        if self.refused:
            out.append("THE FILE WAS REFUSED: nothing was sent (see the report).")
        if self.aborted:
            out.append(f"SENDING STOPPED: {self.aborted}. Run the same command again to finish.")
        return out


DEFAULT_MAX_WITHDRAW_SHARE = 0.5


@dataclass(frozen=True)
class PushOptions:
    export: Path | None  # None: a withdrawal run (``withdraw_keys``), no export read
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
    withdraw_missing: bool = False  # withdraw the records the state knows that this export no longer has
    withdraw_reason: str = WithdrawalReason.REMOVED_FROM_SOURCE.value
    max_withdraw_share: float = DEFAULT_MAX_WITHDRAW_SHARE  # more than this share of the live records: refused
    force_withdraw: bool = False  # withdraw even beyond max_withdraw_share
    withdraw_keys: tuple[str, ...] = ()  # a withdrawal run: these record keys (``export`` is None)


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
        self.file_name = options.export.name if options.export is not None else ""

    async def run(self) -> PushSummary:
        try:
            if self.options.export is None:
                return await self._run_withdraw()
            return await self._run(self.options.export)
        finally:
            self.report.close()

    async def _run(self, export: Path) -> PushSummary:
        options, summary = self.options, self.summary
        mapping = options.mapping
        # 1-2: scan the whole file first; refuse it whole if it cannot be sent as it is.
        scan = exports.scan(export, mapping)
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
            known: dict[str, Known] = {}
            if not options.dry_run:
                known = self._open_state()
            withdrawals: list[Ready] = []
            if options.withdraw_missing and not options.dry_run:
                planned = self._plan_withdrawals(export, scan, known)
                if planned is None:  # refused: nothing is sent, not even the rows
                    summary.refused = True
                    return summary
                withdrawals = planned
                self.progress.total += len(withdrawals)
            if self._use_worker(scan.rows):
                state_fd = self.state.fileno if self.state is not None else None
                worker = PrepareWorker(
                    export,
                    mapping,
                    options.signer,
                    scan.format,
                    scan.columns,
                    known,
                    resend=options.resend,
                    inherited_fds=() if state_fd is None else (state_fd,),
                )
                worker.start()
            if self.sink_factory is not None and not options.dry_run:
                sink = self.sink_factory(self._on_result)
                summary.transport = sink.transport
                await sink.open()
            batches = worker.items() if worker is not None else self._local(export, scan, known)
            await self._send_all(batches, sink)
            if withdrawals and not summary.aborted:
                await self._send_all(_once(withdrawals), sink)
            await self._finish(sink)
        finally:
            if worker is not None:
                worker.stop()
            await self._close(sink)
        summary.elapsed = self.progress.elapsed
        summary.problems_by_reason = dict(self.report.counts)
        return summary

    async def _run_withdraw(self) -> PushSummary:
        """``adapter withdraw``: a withdrawal of each named record key, as the revision after
        every one the state file knows of it."""
        options, summary = self.options, self.summary
        keys = list(dict.fromkeys(k for k in options.withdraw_keys if k))
        self.progress = Progress(len(keys), enabled=options.progress, stream=options.progress_stream)
        sink: Sink | None = None
        try:
            known = self._open_state()  # a dry run too: which keys it would withdraw depends on it
            items: list[Item] = []
            for key in keys:
                before = known.get(key)
                ready = withdrawal(options.mapping, options.signer, key, before, options.withdraw_reason)
                if ready is not None:
                    items.append(ready)
                elif before is None:
                    # Without the state's revisions the withdrawal's number would be a guess: one
                    # at or below the broker's latest is refused (revision_superseded), and the
                    # record may never have been sent at all. Say so rather than guess.
                    items.append(
                        Refused(
                            0,
                            key,
                            (
                                (
                                    "",
                                    Problem.UNKNOWN_RECORD_KEY.value,
                                    "This state file has no record of this key being sent: nothing withdrawn. "
                                    "Check the key (and --state: the state file of the push that sent it).",
                                ),
                            ),
                        )
                    )
                else:
                    summary.nothing_to_withdraw += 1
                    summary.rows += 1
                    self.progress.advance()
            if self.sink_factory is not None and not options.dry_run:
                sink = self.sink_factory(self._on_result)
                summary.transport = sink.transport
                await sink.open()
            await self._send_all(_once(items), sink)
            await self._finish(sink)
        finally:
            await self._close(sink)
        summary.elapsed = self.progress.elapsed
        summary.problems_by_reason = dict(self.report.counts)
        return summary

    def _open_state(self) -> dict[str, Known]:
        options = self.options
        assert options.state_path is not None
        self.state = StateFile(
            options.state_path, partner=options.signer.partner, event_type=options.mapping.event_type
        )
        self.state.open()
        return self.state.known_all()

    async def _finish(self, sink: Sink | None) -> None:
        if sink is not None:
            await sink.drain()
            if sink.broken and not self.summary.aborted:
                self.summary.aborted = sink.broken

    async def _close(self, sink: Sink | None) -> None:
        if sink is not None:
            await sink.close()
        if self.state is not None:
            await self.state.drain()
            self.state.close()
        assert self.progress is not None
        self.progress.finish()

    def _plan_withdrawals(self, export: Path, scan: exports.ExportScan, known: dict[str, Known]) -> list[Ready] | None:
        """The withdrawals of records the broker may hold that this export no longer has; None
        (with the report saying why) when the export cannot be trusted to list every record.

        Threat: an empty or truncated export (a failed query, a disk full half-way, the wrong
        file) would withdraw every record from every consumer, who must then delete them; undoing
        that means sending each record again as a correction. So a run that would withdraw more
        than ``max_withdraw_share`` of the records the broker holds is refused whole, nothing
        sent, unless forced; and so is one whose export has rows without a readable record key
        (any of them could be a record that is not missing at all).
        """
        options = self.options
        present: set[str] = set()
        unkeyed: list[int] = []
        for source in exports.rows(export, options.mapping, scan.format, scan.columns):
            key = options.mapping.key_of(source.values) if source.values is not None else None
            if key is None:
                unkeyed.append(source.number)
            else:
                present.add(key)
        live = [key for key, k in known.items() if k.withdrawable]
        missing = [key for key in live if key not in present]
        if not missing:
            return []
        if unkeyed:
            self._refuse_withdrawals(
                Problem.UNKEYED_ROWS,
                unkeyed[0],
                f"{len(unkeyed)} row(s) have no readable record key (the first: row {unkeyed[0]}), so which of the "
                f"{len(missing)} record(s) missing from this export are really gone cannot be told. Nothing was "
                "sent: fix those rows, or run without --withdraw-missing.",
            )
            return None
        share = len(missing) / len(live)
        if share > options.max_withdraw_share and not options.force_withdraw:
            self._refuse_withdrawals(
                Problem.TOO_MANY_WITHDRAWALS,
                0,
                f"This export lacks {len(missing):,} of the {len(live):,} records sent before ({share:.0%}, more than "
                f"--max-withdraw-share {options.max_withdraw_share:.0%}): an empty or truncated export looks like "
                "this. Nothing was sent. If these records really were removed, run again with --force-withdraw.",
            )
            return None
        out = []
        for key in missing:
            ready = withdrawal(options.mapping, options.signer, key, known[key], options.withdraw_reason)
            if ready is not None:
                out.append(ready)
        return out

    def _refuse_withdrawals(self, reason: Problem, row: int, message: str) -> None:
        self.report.add(RowProblem(row, "", "", Stage.FILE, reason.value, message))
        self.summary.problems_by_reason = dict(self.report.counts)

    def _use_worker(self, rows: int) -> bool:
        if self.options.worker is not None:
            return self.options.worker and self.options.mapping.source is not None
        # Worth a process (~0.3 s to start) only for a bulk import on a machine with a core to spare.
        return rows >= WORKER_MIN_ROWS and (os.cpu_count() or 1) >= 2 and self.options.mapping.source is not None

    async def _local(
        self, export: Path, scan: exports.ExportScan, known: dict[str, Known]
    ) -> AsyncIterator[list[Item]]:
        options = self.options
        batch: list[Item] = []
        items = prepare(export, options.mapping, options.signer, scan.format, scan.columns, known, options.resend)
        for item in items:
            batch.append(item)
            if len(batch) >= 64:
                yield batch
                batch = []
                await asyncio.sleep(0)  # let the publishers run
        if batch:
            yield batch

    async def _write_ahead(self, batch: list[Item]) -> None:
        """Record each correction or withdrawal as ``sending`` and fsync, before it leaves.

        Why: if the run dies before its confirm, the revision may have reached the broker, which
        would then refuse the same revision with other content (``replayed``) and, worse, the
        partner's next edit would be lost behind it. Written ahead, the next run knows the number
        is taken: the same content goes again under it (a duplicate at worst), other content as
        the next revision. Only revisions >= 2 (few: the rows that changed); see ``adapters.state``.
        """
        state = self.state
        if state is None:
            return
        wrote = False
        for item in batch:
            if not isinstance(item, Ready) or item.revision < 2:
                continue
            recorded = state.revision(item.key, item.revision)
            if recorded is not None and recorded.content == item.content:
                continue  # this number is bound to this content in the state already
            file, row = self._where(item)
            state.add(Entry(item.key, item.message_id, item.content, Status.SENDING, file, row, "", item.revision))
            wrote = True
        if wrote:
            await state.drain()

    def _where(self, item: Ready | Outgoing) -> tuple[str, int]:
        """File and row a state line names: a withdrawal keeps where the record was last read."""
        if item.withdrawn and self.state is not None:
            before = self.state.get(item.key)
            if before is not None:
                return before.file, before.row
        return self.file_name, item.row

    async def _send_all(self, batches: AsyncIterator[list[Item]], sink: Sink | None) -> None:
        """3-4: each prepared row is sent (its confirm arrives in _on_result); the others counted."""
        summary = self.summary
        assert self.progress is not None
        progress = self.progress
        async for batch in batches:
            if sink is not None:
                await self._write_ahead(batch)
            for item in batch:
                summary.rows += 1
                if isinstance(item, Ready):
                    if sink is None:  # dry run: counted as what would be sent
                        if item.withdrawn:
                            summary.withdrawals += 1
                        elif item.revision > 1:
                            summary.corrections += 1
                        progress.advance()
                        continue
                    outgoing = Outgoing(
                        item.key, item.message_id, item.content, item.body, item.row, item.revision, item.withdrawn
                    )
                    try:
                        await sink.send(outgoing)
                    except ConnectionError as exc:
                        summary.aborted = str(exc)
                        return
                    summary.sent += 1
                    if item.withdrawn:
                        summary.withdrawals += 1
                    elif item.revision > 1:
                        summary.corrections += 1
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
            message = result.message
            if result.reason == "revision_superseded":
                message += (
                    " (The broker holds a later revision of this record than this state file knows: was the state "
                    "file replaced, or the record sent from elsewhere? The next push tries the next revision.)"
                )
            self.report.add(RowProblem(item.row, item.key, "", Stage.BROKER, result.reason, message, item.revision))
        else:
            # Not recorded: a first send goes again as it is; a correction stays written ahead.
            summary.not_confirmed += 1
            self.report.add(
                RowProblem(
                    item.row, item.key, "", Stage.SEND, Problem.NOT_CONFIRMED.value, result.message, item.revision
                )
            )
        if status in DONE and item.revision > 1:
            if item.withdrawn:
                summary.withdrawn += 1
                change = Change.WITHDRAWN
                note = f"Withdrawn ({item.withdrawn}) as revision {item.revision}."
            else:
                summary.corrected += 1
                change = Change.CORRECTED
                note = f"Changed since it was sent: sent as revision {item.revision} of the same record."
            if result.verdict is Verdict.CONFIRMED:
                note += " RabbitMQ confirmed it; the broker's verdict comes as a receipt."
            elif result.notices:
                note += f" {result.notices} consumer(s) were told to delete the record."
            self.report.add(RowProblem(item.row, item.key, "", Stage.CHANGE, change.value, note, item.revision))
        summary.notices += result.notices
        if status is not None and self.state is not None:
            file, row = self._where(item)
            self.state.add(
                Entry(item.key, item.message_id, item.content, status, file, row, result.reason, item.revision)
            )
            if self.state.buffered >= self.options.flush_every:
                self.state.flush_soon()
        assert self.progress is not None
        self.progress.advance()


async def _once(items: Sequence[Item]) -> AsyncIterator[list[Item]]:
    if items:
        yield list(items)


async def push(options: PushOptions, sink_factory: SinkFactory | None) -> PushSummary:
    return await Pusher(options, sink_factory).run()


def default_state_path(state_dir: Path, partner: str, event_type: str) -> Path:
    return state_dir / f"{partner}.{event_type}.state.jsonl"


def default_report_path(export: Path) -> Path:
    return export.with_name(f"{export.name}.report.csv")


def default_withdraw_report_path(state_path: Path) -> Path:
    return state_path.with_name(f"{state_path.name.removesuffix('.state.jsonl')}.withdraw.report.csv")
