"""One frozen settings object, built once (from CLI flags / environment) and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from broker.stages.freshness import FreshnessWindow
from schemas.strictjson import DEFAULT_MAX_BYTES

REPO_POLICIES = Path(__file__).resolve().parent.parent / "policies"


@dataclass(frozen=True, slots=True)
class Settings:
    policy_dir: Path = REPO_POLICIES
    keys_dir: Path | None = None  # default: policy_dir / "keys"
    secrets_file: Path | None = None  # pseudonymisation secrets; never in the repository
    data_dir: Path = Path("var")
    store_url: str | None = None  # postgresql://…; None: SQLite at data_dir / broker.db
    max_body_bytes: int = DEFAULT_MAX_BYTES
    freshness: FreshnessWindow = field(default_factory=FreshnessWindow)
    # RabbitMQ mode
    amqp_url: str | None = None
    amqp_prefix: str = "sv"
    check_user_id: bool = True
    delivery_limit: int = 5
    prefetch: int = 768  # unacknowledged deliveries; room for several batches in flight
    batch_max: int = 256  # largest batch the pipeline processes at once
    batches_in_flight: int = 3
    batch_linger: timedelta = timedelta(milliseconds=2)  # wait for more before a batch behind another
    workers: int = 1  # broker processes consuming the ingest queue (RabbitMQ mode; see broker/workers.py)
    publish_timeout: timedelta = timedelta(seconds=10)
    # HTTP
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    # HTTP limits against slow and oversized clients (issue 11 items 8 and 9), in one block.
    # The request line and headers must arrive within this many seconds of the connection opening
    # (or of the previous response): aiohttp's keep-alive timer also closes a half-sent header block.
    http_header_timeout: float = 10.0
    # The whole body of a POST must arrive within this many seconds (a stalled chunked body).
    http_body_timeout: float = 30.0
    # Largest header line aiohttp parses; above it the parser answers 400 before any route runs.
    # Kept above the Authorization limit so an oversized token is refused (401) and audited.
    http_max_field_size: int = 32 * 1024
    # Largest Authorization header the read API looks at (a bound on unauthenticated work).
    http_max_authorization: int = 8 * 1024
    # tokens and checkpoints
    broker_key_file: Path | None = None  # default: data_dir / "broker-key.pem"
    token_jwks_file: Path | None = None  # an identity provider's public keys, besides the broker's own
    token_issuer: str = "urn:sv-broker"  # noqa: S105 - an issuer URN, not a secret
    token_audience: str = "sv-broker-api"  # noqa: S105 - an audience name, not a secret
    checkpoint_every: int = 1000  # entries between signed checkpoints ...
    checkpoint_interval: timedelta = timedelta(seconds=60)  # ... or this long, whichever first
    checkpoint_log: Path | None = None  # every checkpoint appended here; default data_dir / checkpoints.jsonl
    retention_interval: timedelta = timedelta(hours=1)
    quarantine_retention: timedelta = timedelta(days=30)  # refused messages are deleted after this
    leader_check_interval: float = 1.0  # seconds between leadership checks (singleton jobs)
    warn_within: timedelta = timedelta(days=30)  # agreements ending / due for review this soon
    alerts_interval: timedelta = timedelta(minutes=1)  # how often /metrics' alert gauges are recomputed
    log_level: str = "INFO"
    # held events (an agreement's [hold]): the per-agreement AES keys, outside the store; several
    # hosts sharing a store share these files. Default: data_dir / "hold-keys"
    hold_keys_dir: Path | None = None
    # the IG console (broker/console): a TLS-terminating proxy in front makes its cookie Secure
    # and its origin https; sessions end after this long idle, or this long after sign-in at most
    console_behind_tls: bool = False
    console_idle: timedelta = timedelta(minutes=30)
    console_absolute: timedelta = timedelta(hours=8)
    # partners' message-id keys (0700, one <partner>.idkey each), so the record trace can find a
    # record from the partner's own record key; None: the partner gives the message id instead
    id_keys_dir: Path | None = None
    # audit group commit
    audit_batch_max: int = 512

    @property
    def store_location(self) -> str | Path:
        return self.store_url if self.store_url else self.data_dir / "broker.db"

    @property
    def effective_broker_key(self) -> Path:
        return self.broker_key_file if self.broker_key_file is not None else self.data_dir / "broker-key.pem"

    @property
    def effective_checkpoint_log(self) -> Path:
        return self.checkpoint_log if self.checkpoint_log is not None else self.data_dir / "checkpoints.jsonl"

    @property
    def effective_hold_keys_dir(self) -> Path:
        return self.hold_keys_dir if self.hold_keys_dir is not None else self.data_dir / "hold-keys"

    @property
    def effective_keys_dir(self) -> Path:
        return self.keys_dir if self.keys_dir is not None else self.policy_dir / "keys"
