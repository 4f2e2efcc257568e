"""The storage port: everything the broker reads and writes, behind one interface.

One port rather than three because the invariants tie them together: the audit entries of a
message, its stored records and its replay state must become durable in the same transaction
(or the audit could say "released" for a record that does not exist, or the other way round).

Two backends implement it (``sqlite_store.py``, the embedded default; ``postgres_store.py``, for
several processes on several hosts) and one conformance suite (``tests/test_store_contract.py``)
holds both to it. The rules of a commit (claims, release-once, sealing) are pure code both call
(``broker/audit/commit_plan.py``). No module outside a backend writes SQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import NamedTuple, Protocol

from broker.audit.chain import GENESIS, Draft
from broker.audit.columns import Columns
from broker.stages.lineage import Holding, Lineage
from broker.stages.replay import ReplayState

ReplayKey = tuple[str, str]  # (source partner, message id)
Lost = frozenset[ReplayKey]  # message ids a unit lost its claim on (see ``Store.commit``)


@dataclass(frozen=True, slots=True)
class Seen:
    """What the replay guard remembers of a message id: how far it got, and a hash of its
    content (type, version and payload) to tell a resend from an id reused for other content."""

    state: ReplayState
    content_sha256: str | None = None


NOT_SEEN = Seen(ReplayState.NEW)


@dataclass(frozen=True, slots=True)
class StoredRecord:
    record_id: str
    consumer: str
    agreement_id: str
    agreement_revision: int
    event_type: str
    source: str
    message_id: str
    released_at: datetime
    expires_at: datetime
    body: bytes  # canonical JSON of the minimised record envelope, or of a notice
    revision: int = 1
    kind: str = "record"  # record | withdrawn | deleted (``schemas.messages.ConsumerNotice``) | figures
    # The calendar quarter of the event's own date ("2026-Q3", from the released date field), so a
    # feed can be read by event date; None: the record releases no date a quarter can be read from.
    period: str | None = None


@dataclass(frozen=True, slots=True)
class LineageUpdate:
    """A record's life after one message: its latest revision, and what each consumer now holds
    (upserted by record id; a holding's ``expires_at`` is kept from its first release)."""

    source: str
    lineage: str  # the record's first message id
    revision: int
    message_id: str
    withdrawn: bool
    event_type: str
    holdings: tuple[Holding, ...] = ()


@dataclass(frozen=True, slots=True)
class QuarantineItem:
    at: datetime
    reason: str
    message: str
    source: str | None
    message_id: str | None
    body_sha256: str
    body: bytes | None  # None when keeping the body would itself hold personal data


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement of the chain head: (sequence, head hash, time), Ed25519 by the broker."""

    seq: int
    head_hash: str
    at: str
    kid: str
    signature: str


@dataclass(frozen=True, slots=True)
class HeldItem:
    """A message held for one agreement not in force (its ``[hold]``), as the store keeps it.

    ``sealed`` is the nonce and AES-256-GCM ciphertext of the original signed body
    (``broker/stages/held.py``), under the agreement's hold key, which is kept outside the store:
    whoever reads the database reads no payload. ``id`` is deterministic (agreement, source,
    message id), so a redelivered message is held once."""

    id: str
    agreement_id: str
    held_under_revision: int
    reason: str
    source: str
    message_id: str
    event_type: str
    held_at: datetime
    expires_at: datetime
    sealed: bytes
    pos: int = 0  # the store's position (paging); 0 before it is written


@dataclass(frozen=True, slots=True)
class HeldRow:
    """One held event as listed (``Store.held_page``): never the sealed body. ``pos``: for paging."""

    pos: int
    id: str
    agreement_id: str
    held_under_revision: int
    reason: str
    source: str
    message_id: str
    event_type: str
    held_at: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class EndedSession:
    """An IG console session signed out (``broker/console/session.py``): every broker process
    sharing the store refuses its cookie from then on. Kept until ``expires_at`` (the session's
    own absolute end), after which the cookie is refused anyway and the row may go."""

    session_id: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class VolumeCount:
    """How many ``released`` entries name one (agreement, flow, consumer) in a period."""

    agreement_id: str
    flow_id: str
    consumer: str
    count: int


@dataclass(frozen=True, slots=True)
class CountedRow:
    """One event's minimised record kept for a figures flow (``stages.outcome.Contribution``), once
    for all the flow's consumers (they receive the same figures): what the quarter's figures are
    computed from, never sent. ``figures_id``: the flow's quarter (``decision.quarter_key``);
    it and ``period`` are None when the record holds no event date (counted nowhere). ``data``:
    canonical JSON of the minimised fields."""

    record_id: str  # the contribution's id (``decision.contribution_id``)
    source: str
    lineage: str
    agreement_id: str
    flow_id: str
    figures_id: str | None
    period: str | None
    event_type: str
    revision: int
    message_id: str
    data: bytes
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class ContributionChange:
    """What one accepted message changes in the figures' inputs, applied in order.

    ``replaces`` (a later revision or a withdrawal): the record's earlier contributions go first
    (except under ``keep_agreements``: agreements that refused it only for their dates, which keep
    what they counted, as a records flow keeps what its consumer holds); then ``rows`` are upserted.
    Every figures quarter touched, before or after, is marked pending (``FiguresPending``)."""

    source: str
    lineage: str
    message_id: str
    replaces: bool
    keep_agreements: frozenset[str] = frozenset()
    rows: tuple[CountedRow, ...] = ()
    # Set (a held event released under this one agreement): only its contributions are replaced.
    only_agreement: str | None = None


@dataclass(frozen=True, slots=True)
class FiguresPending:
    """A figures flow's quarter whose inputs changed since its last release (or never released);
    ``figures_id`` is the flow's quarter key, each consumer's release has its own figures id.

    ``mark``: the audit sequence of the commit that last changed its inputs. The figures job
    clears a quarter only up to the mark it read before counting, so a contribution committed
    while it counted keeps the quarter pending (a lost update would leave figures stale for ever)."""

    figures_id: str
    agreement_id: str
    flow_id: str
    period: str
    mark: int = 0


@dataclass(frozen=True, slots=True)
class FiguresRow:
    """One released revision of one figures quarter for one consumer (``schemas.messages.ConsumerFigures``).
    ``content_sha256``: of what it publishes (tables, report), so an unchanged recount is not re-released."""

    figures_id: str
    revision: int
    consumer: str
    agreement_id: str
    agreement_revision: int
    flow_id: str
    period: str
    counted: int
    released_at: datetime
    expires_at: datetime
    content_sha256: str
    body: bytes


@dataclass(slots=True)
class CommitUnit:
    """Everything one batch makes durable, in one transaction.

    ``RELEASED`` drafts carry a ``record_id``; the store writes each record id's release entry
    at most once ever, so a redelivered message is never audited as released twice.
    """

    drafts: list[Draft] = field(default_factory=list)
    records: list[StoredRecord] = field(default_factory=list)
    seen: list[tuple[ReplayKey, Seen]] = field(default_factory=list)
    quarantine: list[QuarantineItem] = field(default_factory=list)
    lineages: list[LineageUpdate] = field(default_factory=list)
    purge: list[str] = field(default_factory=list)  # record ids to delete (retention): every revision, its holding
    purge_quarantine: list[int] = field(default_factory=list)  # quarantine row ids to delete (retention)
    purge_seen: list[ReplayKey] = field(default_factory=list)  # replay-guard rows to delete (retention)
    purge_notices_before: str | None = None  # notices (embedded feeds) that expired before this
    notices_until: str | None = None  # with ``purge``: the purged records' notices stay until then
    checkpoints: list[Checkpoint] = field(default_factory=list)
    held: list[HeldItem] = field(default_factory=list)  # messages held for an agreement not in force
    unhold: list[str] = field(default_factory=list)  # held ids to delete (released, discarded, purged)
    end_sessions: list[EndedSession] = field(default_factory=list)  # console sessions signed out
    contributions: list[ContributionChange] = field(default_factory=list)  # figures flows' inputs, in order
    figures: list[FiguresRow] = field(default_factory=list)  # figures releases (each revision once)
    figures_done: list[tuple[str, int]] = field(default_factory=list)  # (figures id, mark read) now released
    purge_contributions_before: str | None = None  # contributions that expired before this (retention)
    purge_figures_before: str | None = None  # figures releases that expired before this (retention)

    def extend(self, other: CommitUnit) -> None:
        self.drafts.extend(other.drafts)
        self.records.extend(other.records)
        self.seen.extend(other.seen)
        self.quarantine.extend(other.quarantine)
        self.lineages.extend(other.lineages)
        self.purge.extend(other.purge)
        self.purge_quarantine.extend(other.purge_quarantine)
        self.purge_seen.extend(other.purge_seen)
        self.notices_until = self.notices_until or other.notices_until
        self.purge_notices_before = max(
            (t for t in (self.purge_notices_before, other.purge_notices_before) if t is not None), default=None
        )
        self.checkpoints.extend(other.checkpoints)
        self.held.extend(other.held)
        self.unhold.extend(other.unhold)
        self.end_sessions.extend(other.end_sessions)
        self.contributions.extend(other.contributions)
        self.figures.extend(other.figures)
        self.figures_done.extend(other.figures_done)
        self.purge_contributions_before = self.purge_contributions_before or other.purge_contributions_before
        self.purge_figures_before = self.purge_figures_before or other.purge_figures_before


@dataclass(frozen=True, slots=True)
class Head:
    """The last entry of the chain (``GENESIS_HEAD`` for an empty chain)."""

    seq: int
    hash: str
    at: str | None = None  # RFC 3339; None for the empty chain


GENESIS_HEAD = Head(0, GENESIS)


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One sealed entry as stored, with the columns the audit queries filter on.

    The columns are the store's index, *as stored*: what an entry says is its ``body`` (the
    hashed, chained bytes). Verification (``broker/pipeline/trail.verify_store``) checks every
    column against the body (``broker/audit/columns.py``); a reader that shows or decides on an
    entry's values reads them from the body. ``record_ids``: the per-record index rows of a
    many-record entry (reads, purges), sorted."""

    seq: int
    at: str
    kind: str
    message_id: str | None
    source: str | None
    consumer: str | None
    agreement_id: str | None
    record_id: str | None
    body: bytes
    hash: str
    record_ids: tuple[str, ...] = ()

    @property
    def columns(self) -> Columns:
        return Columns(
            self.at,
            self.kind,
            self.message_id,
            self.source,
            self.consumer,
            self.agreement_id,
            self.record_id,
            self.record_ids,
        )


class FeedRow(NamedTuple):
    """One released record in a consumer's feed; ``id`` is the feed's cursor position.

    A named tuple (immutable, as a frozen dataclass would be): a feed page is made of thousands,
    and ``FeedRow._make`` over the store's row tuples costs a third of a frozen dataclass's init."""

    id: int
    record_id: str
    event_type: str
    agreement_id: str
    released_at: str
    body: bytes
    revision: int = 1
    kind: str = "record"  # record | withdrawn | deleted


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters over the audit trail (all optional, ANDed); pages by ``seq > after``."""

    after: int = 0
    limit: int = 100
    message_id: str | None = None
    record_id: str | None = None  # entries about this record (its release, reads, purge)
    source: str | None = None
    consumer: str | None = None
    agreement_id: str | None = None
    kind: str | None = None
    since: str | None = None  # RFC 3339, inclusive
    until: str | None = None  # RFC 3339, exclusive

    def selects_by_index(self) -> bool:
        return any((self.message_id, self.record_id, self.source, self.consumer, self.agreement_id, self.kind))

    def admits(self, body: Columns) -> bool:
        """Whether the entry whose body has these columns matches the query's equality filters.

        The database selects by its index columns; a backend keeps only the rows whose *body*
        also matches (``columns_of``), so a rewritten column cannot put an entry into an answer
        it does not belong to (a record's trace, another consumer's entries). An entry whose
        column was rewritten *away* is missed, and verification names it. The time bounds are
        not re-checked here: the database compares them as text in its own collation, which a
        re-check could disagree with for a bound written in another format; a rewritten ``at``
        is likewise a verification failure."""
        for wanted, actual in (
            (self.message_id, body.message_id),
            (self.source, body.source),
            (self.consumer, body.consumer),
            (self.agreement_id, body.agreement_id),
            (self.kind, body.kind),
        ):
            if wanted and wanted != actual:
                return False
        return not self.record_id or self.record_id == body.record_id or self.record_id in body.record_ids


@dataclass(frozen=True, slots=True)
class ExpiredQuarantine:
    """A quarantined message past the quarantine retention period (a purge candidate)."""

    id: int
    reason: str


@dataclass(frozen=True, slots=True)
class Expired:
    """A record past its retention period (a purge candidate), as its consumer holds it."""

    record_id: str
    consumer: str
    agreement_id: str
    source: str = ""
    event_type: str = ""
    revision: int = 1
    withdrawn: bool = False  # withdrawn already: its consumer was told; no deletion notice
    expires_at: datetime | None = None


class Store(Protocol):
    """The store contract. Durable on return; a backend that cannot reach its database raises
    :class:`broker.errors.StoreUnavailable` (retry, never dead-letter), anything else is a bug."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    # -- the replay guard and the group commit ------------------------------------------------------
    async def replay_states(self, keys: Sequence[ReplayKey]) -> dict[ReplayKey, Seen]: ...

    async def commit(self, unit: CommitUnit) -> Lost:
        """Durable on return (group commit: concurrent callers share one transaction).

        Returns the message ids this unit lost a claim on: another writer (a broker process
        sharing the store) already holds the id for *different* content. For those, the unit's
        replay state, records and entries other than ``received`` were not written; the caller
        must not release them (see ``Pipeline``)."""
        ...

    # -- reads ---------------------------------------------------------------------------------------
    async def ping(self) -> bool: ...

    async def current_head(self) -> Head:
        """The chain head as committed, whichever process (or host) wrote it."""
        ...

    async def feed_page(
        self,
        consumer: str,
        *,
        after: int,
        limit: int,
        event_type: str | None = None,
        since: str | None = None,
        until: str | None = None,
        history: bool = False,
        period: str | None = None,
    ) -> list[FeedRow]:
        """One page of a consumer's records in cursor order. Positions are assigned in commit
        order, so paging by ``id > after`` never skips or repeats a record, however many arrive
        meanwhile (on every host). Only each record's latest row (its latest revision, or the
        notice that withdrew or deleted it) unless ``history``."""
        ...

    async def lineages(self, keys: Sequence[ReplayKey]) -> dict[ReplayKey, Lineage]:
        """Per (source, first message id): the record's life so far (``NO_LINEAGE`` if none)."""
        ...

    async def audit_page(self, query: AuditQuery) -> list[AuditRow]: ...

    async def record_message(self, record_id: str) -> str | None:
        """The message id a record was released from (None: never released)."""
        ...

    async def checkpoints(self) -> list[Checkpoint]: ...

    async def expired(self, now: datetime, limit: int) -> list[Expired]:
        """Records consumers hold past their retention (in either mode: the holdings, not the
        embedded feed's copies, say what each consumer was sent)."""
        ...

    async def expired_seen(self, before: str, limit: int) -> list[ReplayKey]:
        """Finished replay-guard ids first seen before ``before`` (RFC 3339), oldest first."""
        ...

    async def expired_quarantine(self, before: datetime, limit: int) -> list[ExpiredQuarantine]:
        """Quarantined messages refused before ``before``, oldest first."""
        ...

    async def counts(self) -> StoreCounts: ...

    async def quarantine_page(self, *, after: int, limit: int) -> list[QuarantineRow]:
        """Quarantined messages in the order they were refused (``id > after``)."""
        ...

    # -- singleton jobs ------------------------------------------------------------------------------
    def leadership(self, name: str) -> Leadership:
        """The election for one singleton role among every process sharing this store."""
        ...

    # -- held events (an agreement's [hold]) ---------------------------------------------------------
    async def held_page(
        self, *, agreement_id: str | None = None, source: str | None = None, after: int = 0, limit: int = 100
    ) -> list[HeldRow]:
        """Held events in the order they were held (``pos > after``), never their sealed bodies."""
        ...

    async def held_items(
        self, agreement_id: str, ids: Sequence[str] | None, *, after: int, limit: int
    ) -> list[HeldItem]:
        """Held events of one agreement with their sealed bodies (``ids``: only these), oldest
        first, paged by position (``after``: the last one's position, from ``held_page``)."""
        ...

    async def held_agreements(self) -> dict[str, int]:
        """Agreement id -> how many events are held for it."""
        ...

    async def expired_held(self, now: datetime, limit: int) -> list[HeldRow]:
        """Held events whose hold time ended at or before ``now`` (purge candidates)."""
        ...

    # -- monitoring (``broker/monitor/``: alerts and ``sv-broker status``) ------------------------------
    async def last_seen(self, sources: Sequence[str]) -> dict[str, datetime]:
        """For each of ``sources`` (partner ids) that has one: the time of the latest audit entry
        about an *authenticated* message from it (``released``, ``withheld`` or ``duplicate``:
        kinds written only after the signature verified). Not ``received``, whose source is only
        claimed until verified: anyone who can reach the ingest could otherwise make a silent
        partner look alive with forged messages in its name."""
        ...

    async def outcome_days(self, since: datetime) -> list[DayCount]:
        """Audit entries of the kinds in :data:`OUTCOME_KINDS` at or after ``since``, counted per
        UTC day, kind and source (the indexed columns only: no body is read)."""
        ...

    async def held_summary(self) -> list[HeldSummary]:
        """Events held for a lapsed agreement, per agreement, with the earliest expiry (the alerts'
        ``held_expiring`` and ``sv-broker status`` read it)."""
        ...

    # -- figures flows (``broker/pipeline/figures.py``) ------------------------------------------------
    async def figures_pending(self, limit: int) -> list[FiguresPending]:
        """Figures quarters whose inputs changed since they were last released, oldest period first."""
        ...

    async def contributions(self, figures_ids: Sequence[str]) -> list[tuple[str, str, bytes]]:
        """(figures id, event type, data) of every contribution counted in those figures quarters."""
        ...

    async def latest_figures(self, figures_id: str) -> FiguresRow | None:
        """The latest released revision of one figures quarter, or None (never released)."""
        ...

    async def figures_of(self, consumer: str) -> list[FiguresRow]:
        """The latest revision of every figures quarter released to ``consumer``, by period."""
        ...

    async def figures_expiring(self, before: str) -> tuple[int, int]:
        """How many contributions and figures releases expire at or before ``before`` (RFC 3339)."""
        ...

    # -- the IG console (``broker/console/``) ----------------------------------------------------------
    async def session_ended(self, session_id: str) -> bool:
        """Whether a console session was signed out (``CommitUnit.end_sessions``), on any host."""
        ...

    async def released_volumes(self, since: str, until: str) -> list[VolumeCount]:
        """``released`` entries with ``since <= at < until`` (RFC 3339), counted per agreement,
        flow and consumer (the flow map's volumes). The ``audit_kind_at`` index selects the range;
        the flow id is read from each entry's body (it is not an indexed column)."""
        ...


class Leadership(Protocol):
    """Who runs the singleton jobs (checkpoint signing, retention purge, dead-letter auditing).

    ``check`` is called every second or so by ``broker.jobs.lead``: it tries to take the role when
    free, confirms it is still held otherwise, and answers whether this process holds it now."""

    async def check(self) -> bool: ...

    async def release(self) -> None: ...


@dataclass(frozen=True, slots=True)
class QuarantineRow:
    id: int  # position, for paging
    item: QuarantineItem


@dataclass(frozen=True, slots=True)
class StoreCounts:
    """How much the store holds: audit entries by kind, records by consumer (ids and codes only)."""

    audit_by_kind: dict[str, int]
    records_by_consumer: dict[str, int]


OUTCOME_KINDS = ("received", "rejected", "withheld", "duplicate")
"""The audit kinds :meth:`Store.outcome_days` counts: every message settled is one ``received``
and one of ``rejected`` / ``duplicate`` / (``released``... or ``withheld``); an accepted message
is therefore ``received`` less ``rejected`` and ``duplicate``, and one that released nothing is a
``withheld`` (``broker/audit/entries.py``)."""


@dataclass(frozen=True, slots=True)
class DayCount:
    """How many audit entries of one kind from one source on one UTC day."""

    day: date
    kind: str
    source: str | None  # as the index holds it: only claimed for a message never verified
    count: int


@dataclass(frozen=True, slots=True)
class HeldSummary:
    """Events held for one (lapsed) agreement: how many, and when the first of them expires."""

    agreement_id: str
    count: int
    earliest_expiry: datetime
