"""The composition root: build the ports, the flows and the transports from settings, start
them, and shut down gracefully. Nothing here decides anything; the periodic jobs' timing is in
``broker/jobs.py`` and what each flow does is in ``broker/pipeline/``."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import stat
import tomllib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from aio_pika.abc import AbstractChannel
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker import jobs
from broker.audit import entries
from broker.auth.broker_key import BrokerKey, broker_public_jwks, load_or_create_broker_key
from broker.auth.tokens import TokenVerifier, load_jwks
from broker.console.session import Limits, session_key
from broker.console.web import ConsoleContext, add_console
from broker.errors import (
    ConfigurationError,
    ConfigurationRefused,
    PolicyError,
    RegistryError,
    SecretsError,
    StartupError,
)
from broker.logs import get_logger
from broker.metrics import Metrics
from broker.monitor.alerts import Alert, compute_alerts, partner_statuses
from broker.pipeline import DecideFn, Pipeline
from broker.pipeline.checkpoints import CheckpointFlow, refuse_store_behind
from broker.pipeline.dead_letters import DeadLetterFlow
from broker.pipeline.figures import FiguresFlow, FiguresRun, purge_figures
from broker.pipeline.held import HeldFlow, Redecided, holding_agreements
from broker.pipeline.retention import purge_expired, purge_held, purge_quarantine, purge_replay_guard
from broker.pipeline.status import observe
from broker.policy.engine import decide
from broker.policy.loader import PolicySet, load_policy, read_lock
from broker.policy.secrets import load_secrets
from broker.ports.checkpoint_log import CheckpointLog
from broker.ports.delivery import Delivery, StoreDelivery
from broker.ports.hold_keys import HoldKeys
from broker.ports.private_files import private_directory, private_file
from broker.ports.rabbitmq.connection import Connection, connect
from broker.ports.rabbitmq.publisher import AmqpDelivery
from broker.ports.rabbitmq.topology import Names, declare_topology
from broker.ports.store import Checkpoint, CommitUnit, Leadership, Store
from broker.ports.stores import store_for
from broker.registry import Registry, collect_registry
from broker.settings import Settings
from broker.transports import http_access, http_audit, http_board, http_feeds, http_held, http_metrics
from broker.transports.amqp_dead_letters import DeadLetterConsumer
from broker.transports.amqp_ingest import AmqpIngest
from broker.transports.http_access import AccessContext, agreement_summaries
from broker.transports.http_app import build_app, runner_options
from broker.workers import WorkerPool, WorkerSpec
from schemas.errors import CheckCode, Unavailable

LEADER_ROLE = "singleton-jobs"  # checkpoint signing, retention purge, dead-letter auditing
log = get_logger("sv_broker.service")


def config_fingerprint(settings: Settings) -> str:
    """SHA-256 over the registry, key files and agreements in force: the audit's STARTED entry
    records it so an IG lead can tell exactly which agreements governed a period."""
    digest = hashlib.sha256()
    files = [settings.policy_dir / "parties.toml"]
    files += sorted((settings.policy_dir / "agreements").glob("*.toml"))
    files += sorted(settings.effective_keys_dir.glob("*.toml"))
    for path in files:
        if path.is_file():
            digest.update(path.name.encode() + b"\x00" + path.read_bytes() + b"\x00")
    return digest.hexdigest()


def load_user_map(path: Path | None) -> dict[str, str]:
    """AMQP user name -> partner id (default: the user name is the partner id)."""
    if path is None:
        return {}
    with path.open("rb") as fh:
        users = tomllib.load(fh).get("users", {})
    return {str(k): str(v) for k, v in users.items()}


def bound_port(site: web.TCPSite, requested: int) -> int:
    """The port actually bound (``requested`` may be 0: any free port)."""
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    return int(sockets[0].getsockname()[1]) if sockets else requested


def hold_primary_lock(data_dir: Path) -> IO[str]:
    """One primary per store: two would both sign checkpoints and purge on one chain, and an
    operator who started the second by mistake would not know which one partners talk to.
    ``flock`` is released by the kernel when the holder dies, even by SIGKILL: a restart after a
    crash is never refused. (Ingest workers share the store under their primary's lock.)"""
    private_directory(data_dir)
    private_file(data_dir / "broker.lock")
    handle = (data_dir / "broker.lock").open("a+", encoding="utf-8")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise StartupError(f"{data_dir} is in use by a running broker (pid {holder})") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def load_config(
    policy_dir: Path, keys_dir: Path | None, secrets_file: Path | None, environ: Mapping[str, str]
) -> tuple[Registry, PolicySet]:
    """The registry, keys, secrets and agreements, validated completely: on any problem, raises
    one error carrying every problem of every loader (the registry's, the secrets' and the
    agreements' together), so a set with a bad key file and a bad agreement reports both.

    The agreements are checked even when the registry has problems, against what of the registry
    was well-formed (see ``collect_registry``); nothing checked that way is ever put in force.
    Threat: reported one loader at a time, an operator fixing a refused reload would meet the next
    problem only at the next attempt, and each attempt is a moment an urgent change (a revoked
    key) is not in force."""
    errors: list[ConfigurationError] = []
    registry, registry_problems = collect_registry(policy_dir, keys_dir)
    if registry_problems:
        errors.append(RegistryError.of(registry_problems))
    secrets: dict[str, bytes] = {}
    secrets_refused = False
    try:
        secrets = load_secrets(secrets_file, environ)
    except SecretsError as exc:
        errors.append(exc)
        secrets_refused = True
    try:
        policy = load_policy(policy_dir, registry, secrets)
    except PolicyError as exc:
        # Secrets refused: "no secret is loaded" for each pseudonymising agreement would only
        # repeat that problem, agreement by agreement.
        kept = [p for p in exc.problems if not (secrets_refused and p.code is CheckCode.SECRET_MISSING)]
        if kept:
            errors.append(PolicyError(kept[0], kept))
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ConfigurationRefused(errors)
    return registry, policy


def config_problems(exc: ConfigurationError) -> tuple[tuple[str, ...], list[str]]:
    """Every problem a refused configuration has (every one of the registry's and the
    agreements' files and entries; the secrets loader its first), one line each naming file,
    entry or key, and reason code, with their codes. Never a value from a secrets file: those
    loaders never put one in a message."""
    lines: list[str] = []
    codes: list[str] = []
    for error in exc.errors if isinstance(exc, ConfigurationRefused) else (exc,):
        if isinstance(error, RegistryError):
            lines.extend(str(p) for p in error.problems)
            codes.extend(p.reason.value for p in error.problems)
        elif isinstance(error, PolicyError):
            for p in error.problems:
                code = str(getattr(p.code, "value", p.code))
                where = f"{p.path}:{p.line}" if getattr(p, "line", None) else p.path
                lines.append(f"{where}: {p.key}: {code}: {p.message}" if p.key else f"{where}: {code}: {p.message}")
                codes.append(code)
        else:
            lines.append(str(error))
            codes.append(str(getattr(error, "reason", "configuration_invalid")))
    return tuple(lines), codes


@dataclass(frozen=True, slots=True)
class Reload:
    """What a reload did: in force (``ok``) or refused with every problem found."""

    ok: bool
    before: str
    after: str
    problems: tuple[str, ...]


@dataclass
class Broker:
    settings: Settings
    user_map: dict[str, str] = field(default_factory=dict)
    decide_fn: DecideFn = decide
    ingest_only: bool = False  # an ingest worker process (broker/workers.py): no HTTP, no periodic jobs
    expected_config: str | None = None  # a worker: the primary's configuration fingerprint
    registry: Registry | None = None
    policy: PolicySet | None = None
    store: Store | None = None
    pipeline: Pipeline | None = None
    connection: Connection | None = None
    ingest: AmqpIngest | None = None
    dead_letters: DeadLetterConsumer | None = None
    runner: web.AppRunner | None = None
    access: AccessContext | None = None
    workers: WorkerPool | None = None
    port: int = 0
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _checkpoints: CheckpointFlow | None = None
    _leadership: Leadership | None = None
    leading: bool = False  # this process runs the singleton jobs now
    metrics: Metrics = field(default_factory=Metrics)
    _lock: IO[str] | None = None
    fingerprint: str = ""  # the configuration in force (config_fingerprint)
    _amqp_delivery: AmqpDelivery | None = None
    _reloading: asyncio.Lock = field(default_factory=asyncio.Lock)
    # One purge at a time in this process: the job's run and a direct call (a test, shutdown)
    # would otherwise read the same expired rows and audit their purge twice.
    _purging: asyncio.Lock = field(default_factory=asyncio.Lock)
    hold_keys: HoldKeys | None = None
    held: HeldFlow | None = None  # held events (agreements' [hold]), decided again when in force
    figures: FiguresFlow | None = None  # figures flows' quarters, counted and released when due
    _alerting: set[tuple[str, str]] = field(default_factory=set)  # (code, subject) at the last refresh

    @property
    def url(self) -> str:
        return f"http://{self.settings.http_host}:{self.port}"

    async def start(self) -> None:
        if not self.ingest_only:
            self._lock = hold_primary_lock(self.settings.data_dir)
        try:
            await self._start()
        except BaseException:
            self._release_lock()  # a failed start must not keep the store from the next attempt
            raise

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the flock
            self._lock = None

    async def _start(self) -> None:
        settings = self.settings
        if self.ingest_only and not settings.amqp_url:
            raise StartupError("an ingest worker needs a RabbitMQ URL")
        if settings.workers > 1 and not settings.amqp_url:
            # Embedded mode is one process: its HTTP ingest and feeds share one store writer.
            raise StartupError("--workers needs --amqp-url (embedded mode runs as one process)")
        fingerprint = config_fingerprint(settings)
        self.fingerprint = fingerprint
        if self.expected_config is not None and fingerprint != self.expected_config:
            # Every process must apply the same agreements: restart the primary to change them.
            raise StartupError("the registry, keys or agreements changed since the primary started")
        self.registry, self.policy = self._load_config()
        self.hold_keys = HoldKeys(settings.effective_hold_keys_dir)
        await asyncio.to_thread(self.hold_keys.prepare, holding_agreements(self.policy))
        self.store = store_for(settings.store_location, batch_max=settings.audit_batch_max)
        await self.store.open()
        checkpoint_log = CheckpointLog(settings.effective_checkpoint_log)
        broker_key: BrokerKey | None = None
        if not self.ingest_only:
            # Before anything is written: a store behind what this broker published is refused
            # (truncated, rebuilt or an older copy), never extended as if nothing had happened.
            broker_key = await asyncio.to_thread(load_or_create_broker_key, settings.effective_broker_key)
            last = await asyncio.to_thread(checkpoint_log.last)
            await refuse_store_behind(
                self.store, last, {broker_key[0]: broker_key[1].public_key()}, checkpoint_log.path
            )
        role: dict[str, object] = {}
        if self.ingest_only:
            role["role"] = "ingest-worker"
        elif settings.workers > 1:
            role["workers"] = settings.workers
        started = entries.started(
            fingerprint,
            "amqp" if settings.amqp_url else "embedded",
            {a.id: a.revision for a in self.policy.agreements.values()},
            role,
        )
        await self.store.commit(CommitUnit(drafts=[started]))
        ready_checks: list[Callable[[], Awaitable[bool]]] = [self.store.ping]
        delivery: Delivery
        amqp_delivery: AmqpDelivery | None = None
        if settings.amqp_url:
            amqp_delivery = await self._start_amqp(settings.amqp_url)
            self._amqp_delivery = amqp_delivery
            delivery = amqp_delivery
            connection = self.connection
            assert connection is not None

            async def amqp_ready() -> bool:
                return not connection.is_closed

            ready_checks.append(amqp_ready)
        else:
            delivery = StoreDelivery()
            self.pipeline = self._pipeline(delivery)
        if self.ingest_only:
            log.info("broker_started", mode="amqp", role="ingest-worker")
            return

        assert broker_key is not None
        kid, private_key = broker_key

        async def to_log(checkpoint: Checkpoint) -> None:
            await asyncio.to_thread(checkpoint_log.append, checkpoint)

        publishers = [to_log]
        if amqp_delivery is not None:
            publishers.append(amqp_delivery.publish_checkpoint)
        self._checkpoints = CheckpointFlow(self.store, kid, private_key, publishers)
        token_keys = {kid: private_key.public_key()}
        if settings.token_jwks_file is not None:
            # An identity provider's keys: configuration, not code (and read once, here).
            token_keys.update(load_jwks(settings.token_jwks_file))
        verifier = TokenVerifier(token_keys, issuer=settings.token_issuer, audience=settings.token_audience)
        if amqp_delivery is not None and self.dead_letters is None:
            names = Names(settings.amqp_prefix)
            assert self.connection is not None
            dead_channel = await self.connection.channel(publisher_confirms=False)
            await dead_channel.set_qos(prefetch_count=16)
            dead_queue = await dead_channel.get_queue(names.dead_letter_queue, ensure=True)
            self.dead_letters = DeadLetterConsumer(DeadLetterFlow(self.store, amqp_delivery), dead_queue, self.user_map)
        assert self.pipeline is not None
        app = build_app(self.pipeline, ready_checks)
        self.access = AccessContext(
            store=self.store,
            verifier=verifier,
            registry=self.registry,
            policy=self.policy,
            public_jwks=broker_public_jwks(kid, private_key),
            checkpoint_keys={kid: private_key.public_key()},
            clock=self.clock,
            warn_within=settings.warn_within,
            max_authorization=settings.http_max_authorization,
            body_timeout=settings.http_body_timeout,
        )
        http_access.add_routes(app, self.access)
        http_feeds.add_routes(app)
        http_board.add_routes(app)
        http_audit.add_routes(app)
        self.held = HeldFlow(self.store, self.pipeline, self.hold_keys)
        self.figures = FiguresFlow(self.store, self.pipeline.delivery)
        http_held.add_routes(app, self.held)
        add_console(app, self._console_context(private_key, amqp_delivery is not None))
        http_metrics.add_routes(app, self._scrape)
        # Slow clients, oversized headers and the access log (issue 11 items 8, 9, 12): see runner_options.
        options = runner_options(settings.http_header_timeout, settings.http_body_timeout, settings.http_max_field_size)
        self.runner = web.AppRunner(app, shutdown_timeout=10, **options)
        await self.runner.setup()
        site = web.TCPSite(self.runner, settings.http_host, settings.http_port)
        await site.start()
        self.port = bound_port(site, settings.http_port)
        if settings.workers > 1:
            self.workers = WorkerPool(WorkerSpec(settings, self.user_map, fingerprint), settings.workers - 1)
            await self.workers.start()
        self._warn_agreements()
        # Singleton jobs: one process at a time among all sharing the store (always this one on
        # SQLite; elected through PostgreSQL otherwise). The first check is made here, so a sole
        # broker starts its jobs before ``start`` returns.
        self._leadership = self.store.leadership(LEADER_ROLE)
        await self._leadership_changed(await self._check_leadership())
        leading = self.is_leader
        checkpoints = jobs.checkpoint_every(
            self._checkpoints,
            self.clock,
            settings.checkpoint_every,
            settings.checkpoint_interval.total_seconds(),
            leading,
        )
        retention = jobs.retention_every(
            self.purge_expired, self._warn_agreements, self.clock, settings.retention_interval.total_seconds(), leading
        )
        lead = jobs.lead(self._leadership, self._leadership_changed, settings.leader_check_interval, self.leading)
        self._tasks.append(asyncio.create_task(checkpoints, name="checkpoints"))
        self._tasks.append(asyncio.create_task(retention, name="retention"))
        figures = jobs.retention_every(
            self.release_figures, lambda: None, self.clock, settings.retention_interval.total_seconds(), leading
        )
        self._tasks.append(asyncio.create_task(figures, name="figures"))
        self._tasks.append(asyncio.create_task(lead, name="leadership"))
        with contextlib.suppress(Exception):  # a first figure for /metrics; the job retries each round
            await self.refresh_alerts()
        alerts = jobs.alerts_every(self.refresh_alerts, settings.alerts_interval.total_seconds())
        self._tasks.append(asyncio.create_task(alerts, name="alerts"))
        log.info("broker_started", mode="amqp" if settings.amqp_url else "embedded", url=self.url)

    def _console_context(self, private_key: Ed25519PrivateKey, amqp: bool) -> ConsoleContext:
        """The IG console on this process (every process serving HTTP mounts it): its sessions
        are MAC'd under a key derived from the broker key, which every host shares."""
        settings = self.settings
        assert self.access is not None
        assert self.held is not None
        id_keys = settings.id_keys_dir
        if id_keys is not None:
            # Threat: partners' id keys readable by other local users (ids could be forged or
            # enumerated back to case numbers): refused, as the loaders refuse open key files.
            mode = id_keys.stat().st_mode if id_keys.is_dir() else None
            if mode is None or stat.S_IMODE(mode) & 0o077:
                raise StartupError(f"--id-keys-dir {id_keys} must be a directory of mode 0700")
        lock, _ = read_lock(settings.policy_dir)
        return ConsoleContext(
            access=self.access,
            held=self.held,
            session_key=session_key(private_key),
            limits=Limits(settings.console_idle, settings.console_absolute),
            behind_tls=settings.console_behind_tls,
            id_keys_dir=id_keys,
            checkpoint_log=settings.effective_checkpoint_log,
            checkpoints_exchange=Names(settings.amqp_prefix).checkpoints_exchange if amqp else None,
            lock=lock,
        )

    def _pipeline(self, delivery: Delivery) -> Pipeline:
        assert self.registry is not None
        assert self.policy is not None
        assert self.store is not None
        return Pipeline(
            self.settings,
            self.registry,
            self.policy,
            self.store,
            delivery,
            decide_fn=self.decide_fn,
            observer=self.metrics,
            hold_keys=self.hold_keys,
        )

    async def _start_amqp(self, url: str) -> AmqpDelivery:
        """Connect, declare the topology (idempotent) and start consuming the ingest queue."""
        settings = self.settings
        assert self.registry is not None
        role = " ingest-worker" if self.ingest_only else ""
        self.connection = await connect(url, f"sv-broker {settings.amqp_prefix}{role}")
        names = Names(settings.amqp_prefix)
        publish_channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        topology = await declare_topology(publish_channel, names, self.registry, settings.delivery_limit)
        connection = self.connection

        async def open_channel() -> AbstractChannel:
            return await connection.channel(publisher_confirms=True, on_return_raises=True)

        delivery = AmqpDelivery(
            publish_channel, topology, self.registry, settings.publish_timeout.total_seconds(), open_channel
        )
        await delivery.check()
        self.pipeline = self._pipeline(delivery)
        consume_channel = await self.connection.channel(publisher_confirms=False)
        await consume_channel.set_qos(prefetch_count=settings.prefetch)
        ingest_queue = await consume_channel.get_queue(names.ingest_queue, ensure=True)
        self.ingest = AmqpIngest(settings, self.pipeline, consume_channel, ingest_queue, self.registry, self.user_map)
        await self.ingest.start()
        self._tasks.append(asyncio.create_task(self.ingest.run(), name="amqp-ingest"))
        return delivery

    # -- configuration without a restart (SIGHUP, ``sv-broker reload``) -----------------------------
    def _load_config(self) -> tuple[Registry, PolicySet]:
        """The registry and agreements as the settings name them (raises with every problem)."""
        settings = self.settings
        return load_config(settings.policy_dir, settings.keys_dir, settings.secrets_file, os.environ)

    def _load_config_now(self) -> tuple[Registry, PolicySet, str]:
        fingerprint = config_fingerprint(self.settings)
        return (*self._load_config(), fingerprint)

    async def reload(self, expected: str | None = None) -> Reload:
        """Load the registry, keys and agreements again and, only if all of it is valid, put it in
        force for the next batch (a batch already running finishes under the old set).

        Threat: a bad file pushed by mistake (or by someone probing) stopped every flow, because a
        change needed a restart and a restart refused the file. Now the running set stays in force,
        every problem is reported (logged and returned: every one of the registry's files and
        entries and of the agreements', together) and the refusal is audited. A revoked key is
        refused from the next batch on, without a restart.

        ``expected`` (an ingest worker, told by its primary): the fingerprint the primary put in
        force; any other set is refused, so a file changed between the primary's load and this
        one never has two processes applying two sets. With ``--workers`` the primary's
        ``config_changed`` entry is written only after every worker answered, so no worker
        releases under the old set a message it started after that entry."""
        async with self._reloading:
            before = self.fingerprint
            try:
                registry, policy, after = await asyncio.to_thread(self._load_config_now)
                if expected is not None and after != expected:
                    raise StartupError("the registry, keys or agreements changed since the primary reloaded")
                if self.hold_keys is not None:
                    # An agreement that starts holding has its key before any batch holds for it.
                    await asyncio.to_thread(self.hold_keys.prepare, holding_agreements(policy))
            except ConfigurationError as exc:
                problems, codes = config_problems(exc)
                for line in problems:
                    log.error("reload_refused", problem=line, pid=os.getpid())
                log.error("reload_refused_count", problems=len(problems), codes=sorted(set(codes)), pid=os.getpid())
                if self.store is not None and not self.ingest_only:
                    await self.store.commit(CommitUnit(drafts=[entries.config_rejected(before, codes, len(problems))]))
                return Reload(False, before, before, problems)
            if self._amqp_delivery is not None and self.connection is not None:
                # New partners and consumers get their queues before anything is routed to them.
                channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
                try:
                    names = Names(self.settings.amqp_prefix)
                    await declare_topology(channel, names, registry, self.settings.delivery_limit)
                finally:
                    await channel.close()
                self._amqp_delivery.registry = registry
            if self.ingest is not None:
                self.ingest.registry = registry
            if self.pipeline is not None:
                self.pipeline.reconfigure(registry, policy)
            if self.access is not None:
                self.access.reconfigure(registry, policy)
            self.registry, self.policy, self.fingerprint = registry, policy, after
            role: dict[str, object] = {}
            if self.workers is not None:
                # Before the audit entry: it marks the moment every process applies the new set.
                role = {"workers": self.workers.count, "workers_reloaded": await self.workers.reload(after)}
            if self.store is not None and not self.ingest_only:
                agreements = {a.id: a.revision for a in policy.agreements.values()}
                await self.store.commit(CommitUnit(drafts=[entries.config_changed(before, after, agreements, role)]))
            log.info(
                "configuration_reloaded",
                config_sha256=after,
                changed=after != before,
                pid=os.getpid(),
                role="ingest-worker" if self.ingest_only else "primary",
                **role,
            )
        # Held events of agreements now in force are decided again (the leader only; outside the
        # reload lock: a long release must not hold up the next reload's check).
        if self.leading:
            await self.release_held()
        return Reload(True, before, after, ())

    async def _scrape(self) -> bytes:
        store = self.store
        assert store is not None
        connection = self.connection

        async def rabbitmq_up() -> bool:
            return connection is not None and not connection.is_closed

        async def head_seq() -> int:
            return (await store.current_head()).seq

        return await self.metrics.render(
            store.ping, rabbitmq_up if self.settings.amqp_url else None, self.leading, head_seq
        )

    # -- leadership of the singleton jobs ------------------------------------------------------------
    def is_leader(self) -> bool:
        return self.leading

    async def _check_leadership(self) -> bool:
        assert self._leadership is not None
        try:
            return await self._leadership.check()
        except Exception as exc:
            log.warning("leadership_check_failed", error=type(exc).__name__)
            return False

    async def _leadership_changed(self, held: bool) -> None:
        """Gained: audit the dead letters, and purge at once (the last leader may have died mid-way).
        Lost: stop auditing dead letters (another process now does)."""
        self.leading = held
        if held:
            if self.dead_letters is not None:
                await self.dead_letters.start()
            with contextlib.suppress(Unavailable):  # the job retries at its next round
                await self.purge_expired()
            await self.release_held()  # held events of agreements in force (at start-up, too)
        elif self.dead_letters is not None:
            await self.dead_letters.stop()

    # -- the flows the jobs run (also called directly by tests and at shutdown) ---------------------
    async def checkpoint(self) -> Checkpoint | None:
        """Sign the current head of the audit chain (if it moved since the last checkpoint)."""
        assert self._checkpoints is not None
        return await self._checkpoints.sign_head(self.clock())

    async def purge_expired(self, now: datetime | None = None) -> int:
        """Delete records past their agreement's retention period (telling their consumers),
        quarantined messages past the quarantine retention and replay-guard ids the freshness
        window has made useless, each purge audited; returns the number of records purged."""
        assert self.store is not None
        assert self.pipeline is not None
        async with self._purging:
            moment = now or self.clock()
            records = await purge_expired(self.store, moment, self.pipeline.delivery)
            await purge_quarantine(self.store, moment, self.settings.quarantine_retention)
            await purge_replay_guard(self.store, moment, self.settings.freshness)
            await purge_held(self.store, moment)
            await purge_figures(self.store, moment)
            return records

    async def release_figures(self, now: datetime | None = None) -> FiguresRun:
        """Count and release every figures quarter that is due and changed (``broker/pipeline/figures.py``),
        under the agreements in force now (one set, even across a reload)."""
        assert self.figures is not None
        assert self.policy is not None
        async with self._purging:  # one job at a time over the store's figures rows
            return await self.figures.run(self.policy, now or self.clock())

    async def release_held(self) -> Redecided:
        """Decide again the held events of every agreement in force (``broker/pipeline/held.py``).
        A failure is logged and left for the next reload, start or IG request: never raised into
        the reload or start that called it (the events stay held, nothing is lost)."""
        if self.held is None:
            return Redecided()
        try:
            return await self.held.redecide_all()
        except Exception as exc:
            log.warning("held_release_failed", error=type(exc).__name__)
            return Redecided()

    async def refresh_alerts(self) -> list[Alert]:
        """Compute the alerts now (``broker/monitor/alerts.py``) and put them in ``/metrics``; an
        alert that was not there at the last refresh is logged (codes and ids only)."""
        assert self.store is not None
        assert self.policy is not None
        assert self.registry is not None
        policy, registry, now = self.policy, self.registry, self.clock()  # one set, even across a reload
        observations = await observe(self.store, registry, now)
        alerts = compute_alerts(policy, registry, now, observations)
        self.metrics.alerts_observed(alerts, partner_statuses(policy, registry, now, observations), now)
        keys = {(a.code.value, a.subject) for a in alerts}
        for alert in alerts:
            if (alert.code.value, alert.subject) not in self._alerting:
                log.warning("alert", code=alert.code.value, severity=alert.severity.value, subject=alert.subject)
        self._alerting = keys
        return alerts

    def _warn_agreements(self) -> None:
        assert self.policy is not None
        for summary in agreement_summaries(self.policy, self.clock(), self.settings.warn_within):
            if summary["state"] != "in_force":
                log.warning("agreement_not_in_force", agreement_id=summary["id"], state=summary["state"])
            for warning in summary["warnings"]:
                log.warning("agreement_attention", agreement_id=summary["id"], warning=warning)

    async def stop(self) -> None:
        """Graceful: stop taking work, finish what is in flight, make it durable, then close."""
        if self.ingest is not None:
            await self.ingest.stop_consuming()
        if self.workers is not None:
            await self.workers.stop()  # each finishes its in-flight work first
        if self.dead_letters is not None:
            await self.dead_letters.stop()
        if self.access is not None:
            self.access.stopping.set()  # ends event streams
        if self.runner is not None:
            await self.runner.cleanup()  # waits for in-flight HTTP requests
        for task in self._tasks:
            if task.get_name() in ("checkpoints", "retention", "figures", "leadership", "alerts"):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=30)
        if self.pipeline is not None:
            with contextlib.suppress(Exception):
                await self.pipeline.flush()
        if self.connection is not None:
            await self.connection.close()
        if self.store is not None:
            with contextlib.suppress(Exception):
                role = {"role": "ingest-worker"} if self.ingest_only else {}
                await self.store.commit(CommitUnit(drafts=[entries.stopped(role)]))
                if not self.ingest_only and self.leading:
                    await self.checkpoint()  # the final head, signed
            if self._leadership is not None:
                await self._leadership.release()
            await self.store.close()
        self._release_lock()
        log.info("broker_stopped")


def reload_on_sighup(broker: Broker, pending: bool = False) -> None:
    """SIGHUP reloads ``broker``'s configuration (``Broker.reload``) on the running loop; the
    tasks are kept referenced until done (the loop holds only weak references). ``pending``: a
    SIGHUP arrived while the broker was starting; it is honoured now (the files may have changed
    after the start read them)."""
    import signal

    reloads: set[asyncio.Task[Reload]] = set()

    def reload() -> None:
        task = asyncio.create_task(broker.reload(), name="reload")
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)
    if pending:
        reload()


async def serve_forever(settings: Settings, user_map: dict[str, str], ready_file: Path | None = None) -> None:
    import signal

    broker = Broker(settings, user_map)
    loop = asyncio.get_running_loop()
    # Threat: SIGHUP's default action ends the process, and ``sv-broker reload`` signals whoever
    # holds the lock, which a starting broker takes before it is ready: a reload asked for while
    # starting would kill it. It is remembered, and done once started.
    early = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, early.set)
    await broker.start()
    if ready_file is not None:
        await asyncio.to_thread(ready_file.write_text, broker.url, "utf-8")
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reload_on_sighup(broker, pending=early.is_set())
    await stop.wait()
    log.info("broker_stopping")
    await broker.stop()
