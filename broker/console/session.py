"""The IG console's session cookie and its CSRF tokens (pure: values in, values out; ``now`` is an
argument, never the clock).

Why a *stateless* session, signed by a key derived from the broker's own key
-------------------------------------------------------------------------------
The broker runs as several processes on several hosts behind one name (README, "Several
hosts"); a session kept in one process's memory would be unknown to the next request's host,
and a session table in the store would cost a write per page view. So the cookie *is* the
session: the claims below (sub, role, consumer, session id, CSRF secret, issued, last seen,
absolute end), MAC'd with HMAC-SHA256 under a key derived by HKDF from the broker's Ed25519 key
(``--broker-key``, which every host already shares so that each verifies the tokens the others
issue). Any host holding the key validates any session; nobody without it can make or alter one.

- *Symmetric, not a signature*: only the broker reads its own sessions, so public verifiability
  buys nothing, and HMAC is a fraction of an Ed25519 verification per page view.
- *A derived key, with its own label*: a session can never be confused with an access token
  (another format, another key, another algorithm), and a session MAC reveals nothing about the
  broker's signing key (HKDF, RFC 5869, with ``info`` naming this use and version).
- *Revocation where it matters*: signing out records the session id as ended in the store
  (``Store.session_ended``, a small table in both backends), so every host refuses the cookie
  from then on (threat: a cookie copied before sign-out, replayed after). The table holds a row
  only until the session's absolute end, after which the cookie is refused by its own claims.
- *Limits*: an idle timeout (the cookie is re-issued with a new ``seen`` on every page, so an
  idle session dies ``idle`` after its last use: threat, an unattended screen), an absolute
  limit (``absolute`` after sign-in, however busy: threat, a stolen cookie used for ever), and
  never beyond the bearer token's own ``exp`` (a session must not outlive the credential that
  opened it).

CSRF: each form carries ``HMAC(csrf secret, "csrf|" + form action)``. The secret is in the
session (so the token is bound to this session and this form: a token lifted from one form does
not post another, and a sign-out kills every token); the cookie is ``HttpOnly`` and
``SameSite=Strict``, so a cross-site page can neither read the secret nor send the cookie. The
HTTP layer checks the token in constant time and, independently, the request's ``Origin`` /
``Sec-Fetch-Site`` (defence in depth: either alone stops a forged form post).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from schemas.errors import Reason

COOKIE = "sv_console"
CSRF_FIELD = "csrf_token"
VERSION = "s1"
HKDF_INFO = b"sv-broker console session v1"
MAX_COOKIE = 2048  # a bound on work done for an unauthenticated request
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{22,64}")


class SessionRefused(Exception):
    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Limits:
    idle: timedelta = timedelta(minutes=30)
    absolute: timedelta = timedelta(hours=8)

    def __post_init__(self) -> None:
        if not timedelta(minutes=1) <= self.idle <= self.absolute <= timedelta(hours=24):
            raise ValueError("console session limits: 1 minute <= idle <= absolute <= 24 hours")


@dataclass(frozen=True, slots=True)
class Session:
    sid: str
    sub: str
    role: str
    consumer: str | None
    csrf: str  # the session's CSRF secret (base64url); never sent to the browser as such
    issued: datetime
    seen: datetime  # the last request that renewed the cookie (idle timeout from here)
    ends: datetime  # absolute end: min(issued + absolute, the token's exp)

    def idle_end(self, limits: Limits) -> datetime:
        return min(self.seen + limits.idle, self.ends)


def session_key(private_key: Ed25519PrivateKey) -> bytes:
    seed = private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=HKDF_INFO).derive(seed)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _ts(moment: datetime) -> int:
    return int(moment.timestamp())


def open_session(
    sub: str, role: str, consumer: str | None, token_expires: datetime | None, now: datetime, limits: Limits
) -> Session:
    ends = now + limits.absolute
    if token_expires is not None:
        ends = min(ends, token_expires)
    now = now.replace(microsecond=0)
    return Session(
        sid=secrets.token_urlsafe(18),
        sub=sub,
        role=role,
        consumer=consumer,
        csrf=secrets.token_urlsafe(32),
        issued=now,
        seen=now,
        ends=ends.replace(microsecond=0),
    )


def encode(session: Session, key: bytes) -> str:
    claims = {
        "sid": session.sid,
        "sub": session.sub,
        "role": session.role,
        "consumer": session.consumer,
        "csrf": session.csrf,
        "iat": _ts(session.issued),
        "seen": _ts(session.seen),
        "ends": _ts(session.ends),
    }
    body = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    mac = hmac.new(key, f"{VERSION}.{body}".encode(), hashlib.sha256).digest()
    return f"{VERSION}.{body}.{_b64(mac)}"


def decode(cookie: str, key: bytes, now: datetime, limits: Limits) -> Session:
    """The session a cookie holds, or :class:`SessionRefused` (forged, tampered, expired).

    Whether it was signed out is the store's to say (the caller asks ``Store.session_ended``)."""
    if not cookie:
        raise SessionRefused(Reason.SESSION_MISSING, "Sign in to use the console.")
    if len(cookie) > MAX_COOKIE or not cookie.isascii():
        raise SessionRefused(Reason.SESSION_INVALID, "The session cookie is not one this broker issued.")
    parts = cookie.split(".")
    if len(parts) != 3 or parts[0] != VERSION:
        raise SessionRefused(Reason.SESSION_INVALID, "The session cookie is not one this broker issued.")
    expected = hmac.new(key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
    try:
        given = _unb64(parts[2])
        # Constant time: a byte-by-byte comparison would let a forger learn the MAC a byte at a time.
        if not hmac.compare_digest(expected, given):
            raise ValueError("mac")
        claims = json.loads(_unb64(parts[1]))
        session = Session(
            sid=str(claims["sid"]),
            sub=str(claims["sub"]),
            role=str(claims["role"]),
            consumer=None if claims["consumer"] is None else str(claims["consumer"]),
            csrf=str(claims["csrf"]),
            issued=datetime.fromtimestamp(int(claims["iat"]), UTC),
            seen=datetime.fromtimestamp(int(claims["seen"]), UTC),
            ends=datetime.fromtimestamp(int(claims["ends"]), UTC),
        )
    except (ValueError, KeyError, TypeError, binascii.Error, OverflowError, OSError):
        raise SessionRefused(Reason.SESSION_INVALID, "The session cookie is not one this broker issued.") from None
    if not _SESSION_ID.fullmatch(session.sid):
        raise SessionRefused(Reason.SESSION_INVALID, "The session cookie is not one this broker issued.")
    if now >= session.ends:
        raise SessionRefused(Reason.SESSION_EXPIRED, "Your session has ended: sign in again.")
    if now >= session.idle_end(limits):
        raise SessionRefused(
            Reason.SESSION_EXPIRED, "Your session timed out after a period without use: sign in again."
        )
    if session.seen > now + timedelta(minutes=5) or session.issued > session.seen:
        # A session "seen" in the future would never time out: only a forger could make one.
        raise SessionRefused(Reason.SESSION_INVALID, "The session cookie is not one this broker issued.")
    return session


def renewed(session: Session, now: datetime) -> Session:
    """The same session, seen now (its idle timeout starts again; its absolute end does not move)."""
    return Session(
        session.sid,
        session.sub,
        session.role,
        session.consumer,
        session.csrf,
        session.issued,
        max(session.seen, now.replace(microsecond=0)),
        session.ends,
    )


def csrf_token(session: Session, action: str) -> str:
    """The token a form posting to ``action`` (a path) carries in this session."""
    return _b64(hmac.new(_unb64(session.csrf), f"csrf|{action}".encode(), hashlib.sha256).digest())


def csrf_ok(session: Session, action: str, given: str | None) -> bool:
    if not given or len(given) > 128:
        return False
    return hmac.compare_digest(csrf_token(session, action).encode(), given.encode("utf-8", "replace"))
