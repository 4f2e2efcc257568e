"""Bearer tokens for the HTTP API: EdDSA-signed JWT access tokens, verified per RFC 8725.

The verifier trusts nothing in a token until its signature has been checked with a key it was
configured with, and even the unverified header is read only to pick that key. Every check below
names the attack it stops (RFC 8725, "JSON Web Token Best Current Practices", section numbers in
brackets). pyjwt does the signature and claim parsing; its exceptions are translated here, at the
edge, into :class:`AuthError` with a stable reason code, so nothing above sees a library error.

Roles: ``analyst`` reads the feed of exactly one consumer (claim ``consumer``); ``ig`` (information
governance) sees agreements, flows and the audit trail; ``admin`` operates the service.
"""

# ruff: noqa: S105  (the "token_*" strings are reason codes and a media type, not secrets)

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeGuard

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from broker.errors import AuthError, JwksError
from schemas.envelope import PARTY_ID_RE
from schemas.errors import ContractError, Reason
from schemas.signing import b64u_decode, check_public_key
from schemas.strictjson import parse_strict

ROLES = ("analyst", "ig", "admin")
DEFAULT_ISSUER = "urn:sv-broker"
DEFAULT_AUDIENCE = "sv-broker-api"
TOKEN_TYPE = "at+jwt"  # RFC 9068 section 2.1
ALGORITHM = "EdDSA"  # the one algorithm we accept: pinned, never taken from the token [RFC 8725 3.1]

# RFC 9068 allows the media type with or without "application/"; media types compare
# case-insensitively (RFC 7515 4.1.9).
_ACCEPTED_TYPES = frozenset({"at+jwt", "application/at+jwt"})
# Headers that tell a verifier where to find a key, or that change how the token is processed.
# Honouring any of them lets the sender choose the key that verifies its own token [RFC 8725 3.10]
# (jku/x5u also make the verifier fetch a URL: SSRF [RFC 8725 2.9]); ``crit`` names extensions we do not
# implement (RFC 7515 4.1.11 says refuse); ``b64`` (RFC 7797) changes what the signature covers.
FORBIDDEN_HEADERS = ("jku", "x5u", "jwk", "x5c", "crit", "b64")
_KID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
_MAX_TOKEN_CHARS = 8192  # a bound on work done for an unauthenticated request
_MAX_HEADER_BYTES = 1024
_MAX_PAYLOAD_BYTES = 6144  # within _MAX_TOKEN_CHARS once base64url-encoded
_MAX_TEXT_CLAIM = 256
# NumericDate bounds: 1970-01-01 to 9999-12-31T23:59:59Z. A value outside them (1e12, 1e300,
# negative, a huge integer) cannot become a datetime: refused as malformed (401), never a 500
# from an OverflowError deep in the verifier.
_MIN_NUMERIC_DATE = 0
_MAX_NUMERIC_DATE = 253402300799
_REQUIRED_CLAIMS = ["iss", "aud", "exp", "iat", "sub", "role"]


@dataclass(frozen=True, slots=True)
class Principal:
    sub: str
    role: str
    consumer: str | None  # set for (and only for) role "analyst"
    issuer: str
    token_id: str | None  # jti
    expires_at: datetime | None = None  # exp: long-lived uses (event streams) must stop here


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _fail(reason: Reason, message: str) -> AuthError:
    return AuthError(reason, message)


def _numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    if name not in claims:
        return None
    value = claims[name]
    # An explicit null is not an absent claim: "exp": null read as "no expiry" would never expire.
    # bool is an int in Python; NaN/Infinity would make every comparison below false (so an
    # "exp": Infinity token would never expire); out-of-range values overflow datetime (a 500).
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not _MIN_NUMERIC_DATE <= value <= _MAX_NUMERIC_DATE
    ):
        raise _fail(Reason.TOKEN_MALFORMED, f"The token's {name} claim is not a NumericDate in range.")
    return float(value)


def _plain_text(value: object, limit: int = _MAX_TEXT_CLAIM) -> TypeGuard[str]:
    # Claims end up in audit entries and logs: no control characters (log forging), bounded size.
    return isinstance(value, str) and 0 < len(value) <= limit and value.isprintable()


def _read_header(token: str) -> dict[str, Any]:
    """The unverified JOSE header, parsed strictly. Only used to choose the key [RFC 8725 3.10]."""
    parts = token.split(".")
    if len(parts) != 3:  # compact JWS only: a 5-part JWE or a JSON serialisation is not a token of ours
        raise _fail(Reason.TOKEN_MALFORMED, "The token is not a compact JWS (three dot-separated parts).")
    try:
        raw = b64u_decode(parts[0])
        # Strict JSON: a duplicated "alg" or "kid" read one way here and another way by a second
        # parser is a verification bypass [RFC 8725 2.6; RFC 7515 4 "unique header names"].
        header = parse_strict(raw, max_bytes=_MAX_HEADER_BYTES)
    except (ValueError, ContractError):
        raise _fail(Reason.TOKEN_MALFORMED, "The token's header is not strict base64url JSON.") from None
    return header


def _read_payload(token: str) -> dict[str, Any]:
    """The claims, parsed as strictly as the header (before pyjwt reads them).

    Threat: a duplicated member ("consumer" twice, "role" twice, "exp" twice) read "last wins" by
    the json module inside pyjwt, so a token could say two things and the verifier act on one
    (issue 11 item 7: both derby-csp-analysts and derbyshire-vru read the VRU feed). Strict parsing
    also refuses NaN/Infinity and integers beyond 2^53 that other languages' parsers round.
    """
    try:
        raw = b64u_decode(token.split(".")[1])
        return parse_strict(raw, max_bytes=_MAX_PAYLOAD_BYTES)
    except (ValueError, ContractError):
        raise _fail(Reason.TOKEN_MALFORMED, "The token's payload is not strict base64url JSON.") from None


def _check_claim_types(claims: Mapping[str, Any]) -> None:
    """Each claim has exactly the type this service reads it as (threat: a claim another verifier
    or a later reader interprets differently: "iss" as a list, "role" as a number, "sub" with a
    newline forging a second audit or log line)."""
    iss = claims.get("iss")
    if not isinstance(iss, str):
        raise _fail(Reason.TOKEN_MALFORMED, "The token's iss claim is not a string.")
    aud = claims.get("aud")
    if not (isinstance(aud, str) or (isinstance(aud, list) and aud and all(isinstance(a, str) for a in aud))):
        raise _fail(Reason.TOKEN_MALFORMED, "The token's aud claim is not a string or a list of strings.")
    sub = claims.get("sub")
    if not isinstance(sub, str):
        raise _fail(Reason.TOKEN_MALFORMED, "The token's sub claim is not a string.")
    if "role" in claims and not isinstance(claims["role"], str):
        raise _fail(Reason.TOKEN_BAD_ROLE, f"The token's role must be one of {', '.join(ROLES)}.")
    if "jti" in claims and not _plain_text(claims["jti"]):
        raise _fail(Reason.TOKEN_MALFORMED, "The token's jti claim is not a short plain string.")


def _same_header_as_pyjwt(token: str, header: Mapping[str, Any]) -> None:
    try:
        # The same bytes as pyjwt will read them: had the two parsers disagreed, the header we
        # validated would not be the header pyjwt acts on.
        seen_by_pyjwt = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise _fail(Reason.TOKEN_MALFORMED, "The token's header could not be decoded.") from None
    if seen_by_pyjwt != header:
        raise _fail(Reason.TOKEN_MALFORMED, "The token's header is ambiguous.")


class TokenVerifier:
    """Verifies bearer tokens against a fixed set of Ed25519 public keys, selected by ``kid``.

    No network and no file access happens during :meth:`verify`: keys are given at construction.
    """

    def __init__(
        self,
        keys: Mapping[str, Ed25519PublicKey],
        *,
        issuer: str,
        audience: str,
        leeway: timedelta = timedelta(seconds=30),
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        if not keys:
            raise ValueError("a token verifier needs at least one key")
        for kid, key in keys.items():
            if not _KID_RE.fullmatch(kid):
                raise ValueError(f"key id {kid!r} is not a plain key id ([A-Za-z0-9_-]{{1,128}})")
            if not isinstance(key, Ed25519PublicKey):
                raise TypeError(f"key {kid!r} is not an Ed25519 public key")  # EdDSA only [RFC 8725 3.1]
        if not issuer or not audience:
            raise ValueError("issuer and audience must be set: tokens are bound to both [RFC 8725 3.8, 3.9]")
        if leeway < timedelta(0) or leeway > timedelta(minutes=5):
            raise ValueError("leeway must be between 0 and 5 minutes")
        self._keys = dict(keys)
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self._clock = clock

    def verify(self, token: str) -> Principal:
        if not token:
            raise _fail(Reason.TOKEN_MISSING, "No bearer token was presented.")
        if not isinstance(token, str) or len(token) > _MAX_TOKEN_CHARS or not token.isascii():
            raise _fail(Reason.TOKEN_MALFORMED, "The bearer token is not a well-formed JWT.")
        header = _read_header(token)
        key = self._select_key(header)
        _same_header_as_pyjwt(token, header)
        strict_claims = _read_payload(token)
        claims = self._decode(token, key)
        if claims != strict_claims:
            # The claims pyjwt verified are not the claims we parsed: refuse rather than pick one.
            raise _fail(Reason.TOKEN_MALFORMED, "The token's payload is ambiguous.")
        claims = strict_claims
        _check_claim_types(claims)
        self._check_times(claims)
        return self._principal(claims)

    def _select_key(self, header: Mapping[str, Any]) -> Ed25519PublicKey:
        # Algorithm pinned: "none" (unsigned), HS256 keyed with our public key (key confusion), RS/ES
        # and any other algorithm are refused before a key is touched [RFC 8725 2.1, 3.1].
        if header.get("alg") != ALGORITHM:
            raise _fail(Reason.TOKEN_ALG_NOT_ALLOWED, f"Only {ALGORITHM} tokens are accepted.")
        # Key-locating and processing-changing headers: refused outright, never followed [RFC 8725 3.10].
        forbidden = [name for name in FORBIDDEN_HEADERS if name in header]
        if forbidden:
            raise _fail(
                Reason.TOKEN_FORBIDDEN_HEADER,
                f"The token carries a header this service never honours ({', '.join(forbidden)}).",
            )
        # Explicit typing: an ID token, a logout token or any other JWT signed by the same issuer
        # cannot be replayed as an access token [RFC 8725 3.11, 2.8; RFC 9068 2.1].
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in _ACCEPTED_TYPES:
            raise _fail(Reason.TOKEN_BAD_TYPE, f"The token's typ header must be {TOKEN_TYPE!r}.")
        # kid is only a dictionary key into the configured set: a plain short string, never a path,
        # URL or query (kid injection: "../../dev/null", SQL) [RFC 8725 3.10].
        kid = header.get("kid")
        if not isinstance(kid, str) or not _KID_RE.fullmatch(kid):
            raise _fail(Reason.TOKEN_UNKNOWN_KID, "The token's key id is missing or not a plain key id.")
        key = self._keys.get(kid)
        if key is None:
            raise _fail(Reason.TOKEN_UNKNOWN_KID, "The token was signed with a key this service does not know.")
        return key

    def _decode(self, token: str, key: Ed25519PublicKey) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],  # one pinned algorithm, never HS* [RFC 8725 3.1]
                options={
                    "require": _REQUIRED_CLAIMS,
                    "verify_signature": True,
                    "verify_aud": True,
                    "verify_iss": True,
                    # Time claims are checked by _check_times against the injected clock (pyjwt only
                    # knows the wall clock); their presence is still required above.
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "enforce_minimum_key_length": True,
                },
                issuer=self.issuer,
                audience=self.audience,
                leeway=self.leeway,
            )
        except jwt.MissingRequiredClaimError as exc:
            name = exc.claim if exc.claim in _REQUIRED_CLAIMS else "required"
            raise _fail(Reason.TOKEN_MISSING_CLAIM, f"The token lacks the {name} claim.") from None
        except jwt.InvalidAudienceError:
            raise _fail(Reason.TOKEN_BAD_AUDIENCE, "The token is not meant for this service.") from None
        except jwt.InvalidIssuerError:
            raise _fail(Reason.TOKEN_BAD_ISSUER, "The token was not issued by a trusted issuer.") from None
        except jwt.ExpiredSignatureError:
            raise _fail(Reason.TOKEN_EXPIRED, "The token has expired.") from None
        except jwt.ImmatureSignatureError:
            raise _fail(Reason.TOKEN_NOT_YET_VALID, "The token is not valid yet.") from None
        except jwt.InvalidAlgorithmError:
            raise _fail(Reason.TOKEN_ALG_NOT_ALLOWED, f"Only {ALGORITHM} tokens are accepted.") from None
        except jwt.InvalidSignatureError:
            raise _fail(Reason.TOKEN_BAD_SIGNATURE, "The token's signature does not verify.") from None
        except jwt.PyJWTError:
            raise _fail(Reason.TOKEN_MALFORMED, "The bearer token is not a well-formed JWT.") from None

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now = self._clock().timestamp()
        leeway = self.leeway.total_seconds()
        exp = _numeric_date(claims, "exp")
        iat = _numeric_date(claims, "iat")
        nbf = _numeric_date(claims, "nbf")
        # A stolen or leaked token is useful only until exp; the leeway is small (clock skew only).
        if exp is None or exp <= now - leeway:
            raise _fail(Reason.TOKEN_EXPIRED, "The token has expired.")
        if nbf is not None and nbf > now + leeway:
            raise _fail(Reason.TOKEN_NOT_YET_VALID, "The token is not valid yet.")
        # A token "issued" in the future was minted with a wrong clock or to outlive its lifetime.
        if iat is None or iat > now + leeway:
            raise _fail(Reason.TOKEN_NOT_YET_VALID, "The token's issue time is in the future.")

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        # Issuer compared exactly, here as well as in pyjwt: pyjwt 2.10.0 matched a str issuer as a
        # substring (CVE-2024-53861), so "urn:sv-broke" passed for "urn:sv-broker" [RFC 8725 3.8].
        if claims.get("iss") != self.issuer:
            raise _fail(Reason.TOKEN_BAD_ISSUER, "The token was not issued by a trusted issuer.")
        # Audience: a token minted for another service is not a token for this one [RFC 8725 3.9].
        aud = claims.get("aud")
        if not (aud == self.audience or (isinstance(aud, list) and self.audience in aud)):
            raise _fail(Reason.TOKEN_BAD_AUDIENCE, "The token is not meant for this service.")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub.strip():
            raise _fail(Reason.TOKEN_MISSING_CLAIM, "The token lacks the sub claim.")
        # Single line, printable, bounded: sub is written to audit entries (log forging).
        if not _plain_text(sub) or sub != sub.strip():
            raise _fail(Reason.TOKEN_MALFORMED, "The token's sub claim is not a short plain string.")
        role = claims.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise _fail(Reason.TOKEN_BAD_ROLE, f"The token's role must be one of {', '.join(ROLES)}.")
        consumer = claims.get("consumer")
        if role == "analyst":
            # An analyst reads exactly one consumer's records: without the binding, the HTTP layer
            # could not tell whose feed to serve (and must never default to "all").
            if not isinstance(consumer, str) or not PARTY_ID_RE.fullmatch(consumer):
                raise _fail(Reason.TOKEN_CONSUMER_REQUIRED, "An analyst token must name exactly one consumer id.")
        elif consumer is not None:
            # A consumer binding on an ig/admin token is a minting mistake; refusing it keeps the
            # meaning of every role single.
            raise _fail(Reason.TOKEN_BAD_ROLE, f"An {role} token must not name a consumer.")
        jti = claims.get("jti")
        if jti is not None and not _plain_text(jti):
            raise _fail(Reason.TOKEN_MALFORMED, "The token's jti claim is not a short plain string.")
        return Principal(
            sub=sub,
            role=role,
            consumer=consumer if role == "analyst" else None,
            issuer=self.issuer,
            token_id=jti,
            expires_at=datetime.fromtimestamp(float(claims["exp"]), UTC),
        )


def issue_token(
    private_key: Ed25519PrivateKey,
    kid: str,
    *,
    sub: str,
    role: str,
    consumer: str | None,
    ttl: timedelta,
    issuer: str,
    audience: str,
    now: datetime | None = None,
) -> str:
    """Sign an access token (RFC 9068 shape: typ at+jwt, iss, sub, aud, iat, nbf, exp, jti)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if role == "analyst" and consumer is None:
        raise ValueError("an analyst token must name the consumer whose feed it reads")
    if role != "analyst" and consumer is not None:
        raise ValueError(f"an {role} token must not name a consumer")
    if consumer is not None and not PARTY_ID_RE.fullmatch(consumer):
        raise ValueError("consumer is not a valid party id")
    if not _KID_RE.fullmatch(kid):
        raise ValueError("kid is not a plain key id")
    if not _plain_text(sub):
        raise ValueError("sub must be a non-empty printable string of at most 256 characters")
    if ttl <= timedelta(0):
        raise ValueError("ttl must be positive")
    issued = int((now or datetime.now(UTC)).timestamp())
    payload: dict[str, Any] = {
        "iss": issuer,
        "sub": sub,
        "aud": audience,
        "iat": issued,
        "nbf": issued,
        "exp": issued + math.ceil(ttl.total_seconds()),
        "jti": secrets.token_urlsafe(16),  # lets the audit trail name the token without holding it
        "role": role,
    }
    if consumer is not None:
        payload["consumer"] = consumer
    return jwt.encode(payload, private_key, algorithm=ALGORITHM, headers={"kid": kid, "typ": TOKEN_TYPE})


# Members that only a private (or symmetric) JWK has: a public key set holding one is a leaked key.
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


def load_jwks(path: Path) -> dict[str, Ed25519PublicKey]:
    """An external identity provider's public keys (RFC 7517 JWK Set), Ed25519 (OKP, RFC 8037) only.

    Read once at start from a file the operator placed (never fetched from a URL named by a token).
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise JwksError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        doc = parse_strict(raw, max_bytes=256 * 1024)
    except ContractError as exc:
        raise JwksError(f"{path}: not a strict JSON object: {exc}") from None
    keys = doc.get("keys")
    if not isinstance(keys, list) or not keys:
        raise JwksError(f"{path}: a JWK Set needs a non-empty 'keys' list")
    out: dict[str, Ed25519PublicKey] = {}
    for i, jwk in enumerate(keys):
        where = f"{path}: keys[{i}]"
        if not isinstance(jwk, dict):
            raise JwksError(f"{where}: not a JSON object")
        private = [m for m in _PRIVATE_MEMBERS if m in jwk]
        if private:
            raise JwksError(f"{where}: holds private key material ({', '.join(private)}); publish public keys only")
        if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
            # Accepting RSA/EC keys would reopen algorithm choice [RFC 8725 3.1]: EdDSA/Ed25519 only.
            raise JwksError(
                f"{where}: kty {jwk.get('kty')!r} crv {jwk.get('crv')!r} is not accepted; only OKP/Ed25519 keys are"
            )
        if jwk.get("alg", ALGORITHM) != ALGORITHM:
            raise JwksError(f"{where}: alg must be {ALGORITHM}")
        if jwk.get("use", "sig") != "sig":
            raise JwksError(f"{where}: use must be 'sig'")
        key_ops = jwk.get("key_ops")
        if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
            raise JwksError(f"{where}: key_ops does not allow 'verify'")
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not _KID_RE.fullmatch(kid):
            raise JwksError(f"{where}: kid must be a plain key id ([A-Za-z0-9_-]{{1,128}})")
        if kid in out:
            # Two keys under one kid: which one verifies would depend on file order.
            raise JwksError(f"{where}: kid {kid!r} appears twice")
        x_text = jwk.get("x")
        if not isinstance(x_text, str):
            raise JwksError(f"{where}: x must be the base64url public key")
        try:
            x = b64u_decode(x_text, expected_len=32)
            # Small-order keys verify signatures their holder never made (as in the registry).
            check_public_key(x)
        except (ValueError, ContractError) as exc:
            raise JwksError(f"{where}: x is not a valid Ed25519 public key: {exc}") from None
        out[kid] = Ed25519PublicKey.from_public_bytes(x)
    return out
