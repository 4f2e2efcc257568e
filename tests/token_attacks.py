"""The token attack matrix (RFC 8725 and the classic JWT bypasses), as (case, token, expected reason).

Self-contained (stdlib, cryptography, pyjwt only) so the HTTP tests can reuse it: every token here
must be refused with 401 and audited. Tokens are built by hand where pyjwt would refuse to produce
them (alg none, HS256 keyed with a public key, duplicate header members, forbidden headers).
Times are relative to the wall clock at the call.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

Signer = Callable[[bytes], bytes]


def _b64u(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _compact(header: dict[str, Any] | bytes, claims: dict[str, Any] | bytes, sign: Signer | None) -> str:
    head = _b64u(header if isinstance(header, bytes) else _json(header))
    signing_input = f"{head}.{_b64u(claims if isinstance(claims, bytes) else _json(claims))}"
    signature = sign(signing_input.encode("ascii")) if sign is not None else b""
    return f"{signing_input}.{_b64u(signature)}"


def attack_tokens(
    private_key: Ed25519PrivateKey, kid: str, *, issuer: str, audience: str, now: int | None = None
) -> list[tuple[str, str, str]]:
    """Every case must be refused by a verifier configured with ``{kid: private_key.public_key()}``,
    ``issuer`` and ``audience``, with the given reason code. ``now`` (default: the clock) is the
    time the valid claims are built around: a test verifying later than 10 minutes after building
    (the matrix is built at collection, the suite runs longer) passes it and verifies at it."""
    if now is None:
        now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": "attacker@example.org",
        "aud": audience,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": "attack",
        "role": "admin",
    }
    header: dict[str, Any] = {"alg": "EdDSA", "typ": "at+jwt", "kid": kid}
    ours: Signer = private_key.sign
    other_key = Ed25519PrivateKey.generate()
    theirs: Signer = other_key.sign
    public_raw = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    public_pem = private_key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)

    def hs256(secret: bytes) -> Signer:
        return lambda data: hmac.new(secret, data, hashlib.sha256).digest()

    def with_claims(**changes: Any) -> dict[str, Any]:
        out = {**claims, **changes}
        return {k: v for k, v in out.items() if v is not None}

    def without(name: str) -> dict[str, Any]:
        return {k: v for k, v in claims.items() if k != name}

    def with_header(**changes: Any) -> dict[str, Any]:
        out = {**header, **changes}
        return {k: v for k, v in out.items() if v is not None}

    other_jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(other_key.public_key()))
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def pyjwt(alg: str, key: Any) -> str:
        return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid, "typ": "at+jwt"})

    valid = _compact(header, claims, ours)
    head, body, sig = valid.split(".")
    tampered_body = _b64u(_json({**claims, "sub": "someone-else@example.org"}))

    def dup(name: str, first: Any, second: Any, base: dict[str, Any] | None = None) -> bytes:
        # A payload naming one claim twice, validly signed: "last wins" in json.loads (issue 11 item 7).
        rest = {k: v for k, v in (base or claims).items() if k != name}
        return _json(rest)[:-1] + b"," + _json({name: first})[1:-1] + b"," + _json({name: second})[1:]

    analyst = {**claims, "role": "analyst", "consumer": "derby-csp-analysts"}

    def raw_claims(**literals: str) -> bytes:
        # Claims whose JSON literal we write by hand (1e300, huge integers, -0, nulls).
        rest = {k: v for k, v in claims.items() if k not in literals}
        extra = ",".join(f'"{k}":{v}' for k, v in literals.items())
        return _json(rest)[:-1] + b"," + extra.encode() + b"}"

    cases: list[tuple[str, str, str]] = [
        # -- algorithm: pinned to EdDSA [RFC 8725 2.1, 3.1]
        ("alg_none", _compact(with_header(alg="none"), claims, None), "token_alg_not_allowed"),
        ("alg_none_mixed_case", _compact(with_header(alg="nOnE"), claims, None), "token_alg_not_allowed"),
        ("alg_missing", _compact(with_header(alg=None), claims, ours), "token_alg_not_allowed"),
        (
            "hs256_keyed_with_raw_public_key",
            _compact(with_header(alg="HS256"), claims, hs256(public_raw)),
            "token_alg_not_allowed",
        ),
        (
            "hs256_keyed_with_pem_public_key",
            _compact(with_header(alg="HS256"), claims, hs256(public_pem)),
            "token_alg_not_allowed",
        ),
        ("es256_other_key", pyjwt("ES256", ec_key), "token_alg_not_allowed"),
        ("rs256_other_key", pyjwt("RS256", rsa_key), "token_alg_not_allowed"),
        (
            "alg_ed448_header_ed25519_signature",
            _compact(with_header(alg="Ed448"), claims, ours),
            "token_alg_not_allowed",
        ),
        ("alg_ed25519_fully_specified", _compact(with_header(alg="Ed25519"), claims, ours), "token_alg_not_allowed"),
        # -- key selection: kid from the configured set only, never a key-locating header [RFC 8725 3.10]
        ("unknown_kid", _compact(with_header(kid="some-other-key"), claims, theirs), "token_unknown_kid"),
        ("kid_path_traversal", _compact(with_header(kid="../../etc/passwd"), claims, ours), "token_unknown_kid"),
        ("kid_sql_injection", _compact(with_header(kid="x' OR '1'='1"), claims, ours), "token_unknown_kid"),
        ("kid_not_a_string", _compact(with_header(kid=7), claims, ours), "token_unknown_kid"),
        ("kid_missing", _compact(with_header(kid=None), claims, ours), "token_unknown_kid"),
        (
            "jku_header",
            _compact(with_header(jku="https://attacker.example/jwks.json"), claims, theirs),
            "token_forbidden_header",
        ),
        (
            "x5u_header",
            _compact(with_header(x5u="https://attacker.example/cert.pem"), claims, theirs),
            "token_forbidden_header",
        ),
        ("jwk_header_embedded_key", _compact(with_header(jwk=other_jwk), claims, theirs), "token_forbidden_header"),
        ("x5c_header", _compact(with_header(x5c=["MIIBfake"]), claims, theirs), "token_forbidden_header"),
        (
            "crit_header",
            _compact(with_header(crit=["exp-ext"], **{"exp-ext": 1}), claims, ours),
            "token_forbidden_header",
        ),
        ("b64_false_header", _compact(with_header(b64=False, crit=["b64"]), claims, ours), "token_forbidden_header"),
        # -- explicit typing [RFC 8725 3.11]
        ("typ_jwt", _compact(with_header(typ="JWT"), claims, ours), "token_bad_type"),
        ("typ_missing", _compact(with_header(typ=None), claims, ours), "token_bad_type"),
        ("typ_id_token", _compact(with_header(typ="id_token+jwt"), claims, ours), "token_bad_type"),
        # -- signature
        ("other_ed25519_key_under_our_kid", _compact(header, claims, theirs), "token_bad_signature"),
        ("tampered_claims", f"{head}.{tampered_body}.{sig}", "token_bad_signature"),
        ("signature_stripped", f"{head}.{body}.", "token_bad_signature"),
        # -- time
        (
            "expired",
            _compact(header, with_claims(iat=now - 7200, nbf=now - 7200, exp=now - 3600), ours),
            "token_expired",
        ),
        ("nbf_in_future", _compact(header, with_claims(nbf=now + 3600, exp=now + 7200), ours), "token_not_yet_valid"),
        (
            "iat_in_future",
            _compact(header, with_claims(iat=now + 3600, nbf=None, exp=now + 7200), ours),
            "token_not_yet_valid",
        ),
        # "exp": 1e999 would be Infinity to a lenient parser: a token that never expires
        ("exp_not_a_number", _compact(header, with_claims(exp="tomorrow"), ours), "token_malformed"),
        # -- required claims
        ("missing_exp", _compact(header, without("exp"), ours), "token_missing_claim"),
        ("missing_iat", _compact(header, without("iat"), ours), "token_missing_claim"),
        ("missing_aud", _compact(header, without("aud"), ours), "token_missing_claim"),
        ("missing_iss", _compact(header, without("iss"), ours), "token_missing_claim"),
        ("missing_sub", _compact(header, without("sub"), ours), "token_missing_claim"),
        ("missing_role", _compact(header, without("role"), ours), "token_missing_claim"),
        # -- audience and issuer [RFC 8725 3.8, 3.9]
        ("wrong_audience", _compact(header, with_claims(aud="some-other-api"), ours), "token_bad_audience"),
        ("audience_list_without_ours", _compact(header, with_claims(aud=["a", "b"]), ours), "token_bad_audience"),
        ("issuer_prefix_of_ours", _compact(header, with_claims(iss=issuer[:-1]), ours), "token_bad_issuer"),
        ("issuer_extends_ours", _compact(header, with_claims(iss=issuer + ".evil"), ours), "token_bad_issuer"),
        ("issuer_other", _compact(header, with_claims(iss="https://idp.attacker.example"), ours), "token_bad_issuer"),
        # -- roles
        ("role_unknown", _compact(header, with_claims(role="superuser"), ours), "token_bad_role"),
        ("analyst_without_consumer", _compact(header, with_claims(role="analyst"), ours), "token_consumer_required"),
        (
            "analyst_with_consumer_list",
            _compact(header, with_claims(role="analyst", consumer=["a-b", "c-d"]), ours),
            "token_consumer_required",
        ),
        (
            "ig_with_consumer",
            _compact(header, with_claims(role="ig", consumer="derby-csp-analysts"), ours),
            "token_bad_role",
        ),
        # -- duplicate claims: the payload is parsed as strictly as the header (issue 11 item 7)
        (
            "duplicate_consumer_csp_then_vru",
            _compact(header, dup("consumer", "derby-csp-analysts", "derbyshire-vru", analyst), ours),
            "token_malformed",
        ),
        ("duplicate_role", _compact(header, dup("role", "analyst", "admin"), ours), "token_malformed"),
        ("duplicate_exp", _compact(header, dup("exp", now - 3600, now + 3600), ours), "token_malformed"),
        ("duplicate_sub", _compact(header, dup("sub", "a@example.org", "b@example.org"), ours), "token_malformed"),
        ("duplicate_iss", _compact(header, dup("iss", issuer, issuer), ours), "token_malformed"),
        # -- claims of the wrong type
        ("exp_null", _compact(header, {**claims, "exp": None}, ours), "token_missing_claim"),
        ("exp_true", _compact(header, with_claims(exp=True), ours), "token_malformed"),
        ("exp_string_number", _compact(header, with_claims(exp=str(now + 600)), ours), "token_malformed"),
        ("iat_null", _compact(header, {**claims, "iat": None}, ours), "token_missing_claim"),
        ("nbf_false", _compact(header, with_claims(nbf=False), ours), "token_malformed"),
        ("iss_list", _compact(header, with_claims(iss=[issuer]), ours), "token_bad_issuer"),
        ("iss_number", _compact(header, with_claims(iss=7), ours), "token_bad_issuer"),
        ("aud_number", _compact(header, with_claims(aud=7), ours), "token_bad_audience"),
        ("sub_empty", _compact(header, with_claims(sub=""), ours), "token_missing_claim"),
        ("sub_blank", _compact(header, with_claims(sub="   "), ours), "token_missing_claim"),
        ("sub_multi_line", _compact(header, with_claims(sub="a@example.org\nforged"), ours), "token_malformed"),
        ("sub_control_char", _compact(header, with_claims(sub="a@example.org\x1b[2J"), ours), "token_malformed"),
        ("sub_line_separator", _compact(header, with_claims(sub="a\u2028b"), ours), "token_malformed"),
        ("sub_list", _compact(header, with_claims(sub=["a", "b"]), ours), "token_malformed"),
        ("role_number", _compact(header, with_claims(role=1), ours), "token_bad_role"),
        ("role_list", _compact(header, with_claims(role=["admin"]), ours), "token_bad_role"),
        (
            "consumer_number",
            _compact(header, with_claims(role="analyst", consumer=7), ours),
            "token_consumer_required",
        ),
        ("jti_object", _compact(header, with_claims(jti={"a": 1}), ours), "token_malformed"),
        # -- out-of-range times: a datetime overflow was a 500 (issue 11 item 8)
        ("exp_1e12", _compact(header, raw_claims(exp="1e12"), ours), "token_malformed"),
        ("exp_1e300", _compact(header, raw_claims(exp="1e300"), ours), "token_malformed"),
        ("exp_1e999_infinity", _compact(header, raw_claims(exp="1e999"), ours), "token_malformed"),
        ("exp_int_1e12", _compact(header, raw_claims(exp="1000000000000"), ours), "token_malformed"),
        ("exp_beyond_2_53", _compact(header, raw_claims(exp="9007199254740993"), ours), "token_malformed"),
        ("exp_huge_int", _compact(header, raw_claims(exp="9" * 400), ours), "token_malformed"),
        ("exp_negative", _compact(header, raw_claims(exp="-1"), ours), "token_malformed"),
        ("exp_negative_huge", _compact(header, raw_claims(exp="-1e300"), ours), "token_malformed"),
        ("exp_nan", _compact(header, raw_claims(exp="NaN"), ours), "token_malformed"),
        ("iat_1e300", _compact(header, raw_claims(iat="1e300"), ours), "token_malformed"),
        ("iat_negative_huge", _compact(header, raw_claims(iat="-99999999999999"), ours), "token_malformed"),
        ("nbf_1e300", _compact(header, raw_claims(nbf="1e300"), ours), "token_malformed"),
        ("nbf_negative_1e300", _compact(header, raw_claims(nbf="-1e300"), ours), "token_malformed"),
        ("payload_not_json", f"{head}.{_b64u(b'not json')}.{sig}", "token_malformed"),
        ("payload_trailing_data", _compact(header, _json(claims) + b"{}", ours), "token_malformed"),
        # -- malformed
        ("empty", "", "token_missing"),
        ("not_a_jwt", "not-a-token", "token_malformed"),
        ("jwe_five_parts", "a.b.c.d.e", "token_malformed"),
        ("header_not_json", f"{_b64u(b'not json')}.{body}.{sig}", "token_malformed"),
        (
            "header_duplicate_alg",
            _compact(b'{"alg":"none","alg":"EdDSA","typ":"at+jwt","kid":"' + kid.encode() + b'"}', claims, ours),
            "token_malformed",
        ),
        ("oversized", valid + "A" * 9000, "token_malformed"),
        ("non_ascii", valid + "é", "token_malformed"),
    ]
    return cases
