"""Signed checkpoints of the audit chain (pure: sign, export, verify).

A hash chain alone proves entries were not edited *in place*; it cannot tell an intact chain from
one that was truncated (the last entries deleted) or rebuilt from the first edit onwards (every
later hash recomputed). A checkpoint is the broker's Ed25519 signature over (sequence number,
head hash, time); kept outside the broker (by the IG lead, a partner), it pins the chain: a chain
that ends before a checkpoint was truncated; a chain whose hash at a checkpoint's sequence differs
was rebuilt; a checkpoint that does not verify under the broker's published key is a forgery.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from broker.ports.store import Checkpoint
from schemas.canonical import canonicalize
from schemas.envelope import format_time

FORMAT = "sv-broker-checkpoints/1"
# What checkpoint.v1.json exports (ASCII classes: the same in ECMA-262 and Python).
HEAD_HASH_RE = re.compile(r"^[0-9a-f]{64}$")
SIGNATURE_RE = re.compile(r"^[A-Za-z0-9_-]{85}[AQgw]$")  # 64 bytes: the last character holds 4 zero bits
PURPOSE = "sv-broker audit checkpoint v1"  # domain separation: this key signs nothing else like it


def statement(seq: int, head_hash: str, at: str) -> bytes:
    return canonicalize({"purpose": PURPOSE, "seq": seq, "head_hash": head_hash, "at": at})


def sign_checkpoint(private_key: Ed25519PrivateKey, kid: str, seq: int, head_hash: str, at: datetime) -> Checkpoint:
    stamp = format_time(at)
    signature = private_key.sign(statement(seq, head_hash, stamp))
    return Checkpoint(seq, head_hash, stamp, kid, base64.urlsafe_b64encode(signature).rstrip(b"=").decode())


def checkpoints_document(checkpoints: Iterable[Checkpoint]) -> dict[str, Any]:
    return {"format": FORMAT, "checkpoints": [asdict(cp) for cp in checkpoints]}


def checkpoint_line(checkpoint: Checkpoint) -> str:
    """One line of a checkpoint log (``<data_dir>/checkpoints.jsonl``) or AMQP message body:
    the checkpoint as canonical JSON."""
    return canonicalize(asdict(checkpoint)).decode("ascii")


def checkpoint_from(item: Any) -> Checkpoint:
    """A checkpoint from its JSON object; ``ValueError`` naming what is wrong (never a crash)."""
    if not isinstance(item, dict) or set(item) != {"seq", "head_hash", "at", "kid", "signature"}:
        raise ValueError("a checkpoint is an object with exactly seq, head_hash, at, kid and signature")
    seq = item["seq"]
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise ValueError("a checkpoint's seq is a positive integer")
    if not all(isinstance(item[k], str) for k in ("head_hash", "at", "kid", "signature")):
        raise ValueError("a checkpoint's head_hash, at, kid and signature are strings")
    if not HEAD_HASH_RE.fullmatch(item["head_hash"]):
        raise ValueError("a checkpoint's head_hash is 64 lower-case hex digits")
    if not SIGNATURE_RE.fullmatch(item["signature"]):
        raise ValueError("a checkpoint's signature is 64 bytes of base64url, unpadded")
    return Checkpoint(seq, item["head_hash"], item["at"], item["kid"], item["signature"])


def parse_checkpoints_document(text: str) -> list[Checkpoint]:
    """Checkpoints from any of the forms the broker publishes them in: the document of
    ``sv-broker audit checkpoints`` and ``GET /v1/audit/checkpoints`` (``{"format": ..., "checkpoints":
    [...]}``), or a checkpoint log (one checkpoint per line: the file the broker appends to, or
    the bodies collected from the checkpoints exchange). Raises ``ValueError`` with a sentence."""
    stripped = text.strip()
    if not stripped:
        raise ValueError("the checkpoints file is empty")
    try:
        whole: Any = json.loads(stripped)
    except ValueError:
        whole = None  # several lines: a checkpoint log
    if isinstance(whole, dict) and "format" in whole:
        if whole.get("format") != FORMAT:
            raise ValueError(f"not a checkpoints file (expected format {FORMAT!r})")
        items = whole.get("checkpoints", [])
        if not isinstance(items, list):
            raise ValueError("checkpoints must be a list")
        return [checkpoint_from(item) for item in items]
    lines = [line for line in stripped.splitlines() if line.strip()]
    out = []
    for number, line in enumerate(lines, 1):
        try:
            out.append(checkpoint_from(json.loads(line)))
        except ValueError as exc:  # (json's own error is a ValueError too)
            raise ValueError(f"line {number}: {exc}") from None
    return out


def signature_ok(checkpoint: Checkpoint, keys: Mapping[str, Ed25519PublicKey]) -> bool:
    key = keys.get(checkpoint.kid)
    if key is None:
        return False
    try:
        raw = base64.urlsafe_b64decode(checkpoint.signature + "=" * (-len(checkpoint.signature) % 4))
        key.verify(raw, statement(checkpoint.seq, checkpoint.head_hash, checkpoint.at))
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class CheckpointReport:
    ok: bool
    checked: int
    first_bad_seq: int | None = None
    problem: str | None = None


def verify_against_chain(
    chain_hashes: Mapping[int, str],
    head_seq: int,
    checkpoints: Iterable[Checkpoint],
    keys: Mapping[str, Ed25519PublicKey],
) -> CheckpointReport:
    """Check every checkpoint's signature, then that the (already hash-verified) chain reaches it and
    has the signed hash at its sequence number. ``chain_hashes`` maps the checkpoints' sequence
    numbers to the chain's hash there (what ``verify_chain`` saw)."""
    checked = 0
    for cp in sorted(checkpoints, key=lambda c: c.seq):
        if not signature_ok(cp, keys):
            return CheckpointReport(
                False, checked, cp.seq, f"checkpoint #{cp.seq} is not signed by the broker key given (kid {cp.kid!r})"
            )
        if cp.seq > head_seq:
            return CheckpointReport(
                False,
                checked,
                head_seq + 1,
                f"the chain ends at #{head_seq} but a signed checkpoint covers #{cp.seq}: entries were removed",
            )
        if chain_hashes.get(cp.seq) != cp.head_hash:
            return CheckpointReport(
                False,
                checked,
                cp.seq,
                f"entry #{cp.seq} does not have the hash the broker signed: the chain was rebuilt or edited",
            )
        checked += 1
    return CheckpointReport(True, checked)


def export_line(seq: int, body: bytes, entry_hash: str) -> str:
    """One line of an audit export (JSONL): enough to re-verify the chain offline."""
    return json.dumps({"seq": seq, "hash": entry_hash, "entry": json.loads(body)}, ensure_ascii=False, sort_keys=True)


def rows_from_export(lines: Iterable[str]) -> Iterable[tuple[int, bytes, str]]:
    """Rows for ``verify_chain`` from an export: each entry re-encoded in RFC 8785 form, which
    reproduces the stored bytes exactly (entries are canonical JSON with no floats)."""
    for line in lines:
        if not line.strip():
            continue
        item = json.loads(line)
        yield int(item["seq"]), canonicalize(item["entry"]), str(item["hash"])
