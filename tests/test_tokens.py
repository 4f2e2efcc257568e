"""Access tokens: the RFC 8725 attack matrix, valid tokens per role, leeway, JWKS loading, the
broker key and the ``sv-broker token`` command."""

from __future__ import annotations

import builtins
import io
import json
import os
import socket
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PrivateKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.auth.broker_key import broker_public_jwks, jwk_thumbprint, load_or_create_broker_key
from broker.auth.tokens import (
    DEFAULT_AUDIENCE,
    DEFAULT_ISSUER,
    ROLES,
    Principal,
    TokenVerifier,
    issue_token,
    load_jwks,
)
from broker.cli import main
from broker.errors import AuthError, JwksError
from schemas.errors import REASONS, Reason
from schemas.signing import b64u_decode, b64u_encode
from tests.token_attacks import attack_tokens

KEY = Ed25519PrivateKey.generate()
KID = jwk_thumbprint(KEY.public_key())
ISSUER = "https://sv-broker.example"
AUDIENCE = "sv-broker-api"
T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
# Built at collection around T0 and verified at T0: the suite runs longer than the tokens' 10
# minutes, so verifying at the wall clock would find every late-run case merely expired.
ATTACKS = attack_tokens(KEY, KID, issuer=ISSUER, audience=AUDIENCE, now=int(T0.timestamp()))


def verifier(clock: datetime | None = None, leeway: timedelta = timedelta(seconds=30)) -> TokenVerifier:
    if clock is None:
        return TokenVerifier({KID: KEY.public_key()}, issuer=ISSUER, audience=AUDIENCE, leeway=leeway)
    return TokenVerifier({KID: KEY.public_key()}, issuer=ISSUER, audience=AUDIENCE, leeway=leeway, clock=lambda: clock)


def token(role: str = "ig", consumer: str | None = None, *, now: datetime = T0, ttl: float = 3600) -> str:
    return issue_token(
        KEY,
        KID,
        sub="ig.lead@derby.gov.uk",
        role=role,
        consumer=consumer,
        ttl=timedelta(seconds=ttl),
        issuer=ISSUER,
        audience=AUDIENCE,
        now=now,
    )


# -- the attack matrix --------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "bad_token", "reason"), ATTACKS, ids=[c[0] for c in ATTACKS])
def test_every_attack_is_refused_with_its_reason(case: str, bad_token: str, reason: str) -> None:
    with pytest.raises(AuthError) as caught:
        verifier(T0).verify(bad_token)
    assert caught.value.reason == reason, caught.value.message
    # The refusal never echoes the token (or any of its parts): it goes to logs and clients.
    for part in (p for p in bad_token.split(".") if len(p) > 8):
        assert part not in str(caught.value)
        assert part not in caught.value.message


def test_the_matrix_covers_every_reason_code_and_is_distinct() -> None:
    assert {reason for _, _, reason in ATTACKS} == {r.value for r in Reason if REASONS[r].category == "token"}
    assert len({case for case, _, _ in ATTACKS}) == len(ATTACKS)


def test_verifying_attacks_touches_no_file_and_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def refuse(name: str) -> Any:
        def blocked(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            raise AssertionError(f"{name} called while verifying a token")

        return blocked

    valid = token(now=T0)
    seen: list[str] = []
    with monkeypatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse("socket.connect"))
        patch.setattr(socket, "create_connection", refuse("socket.create_connection"))
        patch.setattr(urllib.request, "urlopen", refuse("urllib.request.urlopen"))
        patch.setattr(builtins, "open", refuse("open"))
        patch.setattr(io, "open", refuse("io.open"))
        patch.setattr(os, "open", refuse("os.open"))
        check = verifier(T0)
        for case, bad_token, _ in ATTACKS:
            try:
                check.verify(bad_token)
            except AuthError as exc:
                seen.append(exc.reason)
            else:
                seen.append(f"ACCEPTED {case}")
        principal = check.verify(valid)
    assert calls == []
    assert seen == [reason for _, _, reason in ATTACKS]
    assert principal.role == "ig"


# -- valid tokens -------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_a_valid_token_per_role_gives_a_principal(role: str) -> None:
    consumer = "derby-csp-analysts" if role == "analyst" else None
    principal = verifier(T0 + timedelta(minutes=5)).verify(token(role, consumer))
    assert principal.sub == "ig.lead@derby.gov.uk"
    assert principal.role == role
    assert principal.consumer == consumer
    assert principal.issuer == ISSUER
    assert principal.token_id
    assert isinstance(principal, Principal)


def test_the_issued_header_is_explicitly_typed_and_names_the_key() -> None:
    assert jwt.get_unverified_header(token()) == {"alg": "EdDSA", "kid": KID, "typ": "at+jwt"}


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "AT+JWT"])
def test_the_rfc_9068_type_is_accepted_in_its_spellings(typ: str) -> None:
    claims = jwt.decode(token(), options={"verify_signature": False})
    signed = jwt.encode(claims, KEY, algorithm="EdDSA", headers={"kid": KID, "typ": typ})
    assert verifier(T0).verify(signed).role == "ig"


def test_an_audience_list_holding_ours_is_accepted() -> None:
    claims = {**jwt.decode(token(), options={"verify_signature": False}), "aud": ["other-api", AUDIENCE]}
    signed = jwt.encode(claims, KEY, algorithm="EdDSA", headers={"kid": KID, "typ": "at+jwt"})
    assert verifier(T0).verify(signed).role == "ig"


# -- time and leeway ----------------------------------------------------------------------------


def test_expiry_is_judged_by_the_injected_clock_with_leeway() -> None:
    issued = token(now=T0, ttl=60)  # exp = T0 + 60 s
    assert verifier(T0 + timedelta(seconds=89)).verify(issued).role == "ig"  # 29 s past exp: within 30 s
    with pytest.raises(AuthError) as caught:
        verifier(T0 + timedelta(seconds=90)).verify(issued)
    assert caught.value.reason == "token_expired"
    with pytest.raises(AuthError) as caught:
        verifier(T0 + timedelta(seconds=60), leeway=timedelta(0)).verify(issued)
    assert caught.value.reason == "token_expired"


def test_not_before_and_issued_at_allow_only_the_leeway_of_clock_skew() -> None:
    issued = token(now=T0)  # iat = nbf = T0
    assert verifier(T0 - timedelta(seconds=29)).verify(issued).role == "ig"
    with pytest.raises(AuthError) as caught:
        verifier(T0 - timedelta(seconds=31)).verify(issued)
    assert caught.value.reason == "token_not_yet_valid"


def test_the_wall_clock_is_not_consulted_when_a_clock_is_given() -> None:
    long_ago = datetime(2020, 1, 1, tzinfo=UTC)
    assert verifier(long_ago).verify(token(now=long_ago, ttl=60)).role == "ig"


def test_the_verifier_refuses_unsafe_configuration() -> None:
    public = KEY.public_key()
    with pytest.raises(ValueError, match="at least one key"):
        TokenVerifier({}, issuer=ISSUER, audience=AUDIENCE)
    with pytest.raises(ValueError, match="plain key id"):
        TokenVerifier({"../k": public}, issuer=ISSUER, audience=AUDIENCE)
    with pytest.raises(TypeError):
        TokenVerifier({KID: ec.generate_private_key(ec.SECP256R1()).public_key()}, issuer=ISSUER, audience=AUDIENCE)  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="issuer and audience"):
        TokenVerifier({KID: public}, issuer="", audience=AUDIENCE)
    with pytest.raises(ValueError, match="leeway"):
        TokenVerifier({KID: public}, issuer=ISSUER, audience=AUDIENCE, leeway=timedelta(hours=1))


@pytest.mark.parametrize(
    ("role", "consumer", "match"),
    [
        ("analyst", None, "must name the consumer"),
        ("ig", "derby-csp-analysts", "must not name a consumer"),
        ("admin", "derby-csp-analysts", "must not name a consumer"),
        ("root", None, "role must be one of"),
        ("analyst", "../etc", "not a valid party id"),
    ],
)
def test_issue_token_refuses_bad_role_and_consumer_combinations(role: str, consumer: str | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        token(role, consumer)


def test_issue_token_refuses_a_non_positive_lifetime() -> None:
    with pytest.raises(ValueError, match="ttl"):
        token(ttl=0)


# -- JWKS -----------------------------------------------------------------------------------------


def write_jwks(tmp_path: Path, *keys: dict[str, Any]) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": list(keys)}), encoding="utf-8")
    return path


def okp(private_key: Ed25519PrivateKey, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(private_key.public_key()))
    return {**jwk, "kid": kid}


def test_load_jwks_accepts_ed25519_keys_and_they_verify_an_idp_token(tmp_path: Path) -> None:
    idp_key = Ed25519PrivateKey.generate()
    keys = load_jwks(write_jwks(tmp_path, okp(idp_key, "idp-2026"), {**okp(KEY, KID), "use": "sig", "alg": "EdDSA"}))
    assert set(keys) == {"idp-2026", KID}
    idp_token = issue_token(
        idp_key,
        "idp-2026",
        sub="analyst@derbyshire.gov.uk",
        role="analyst",
        consumer="derbyshire-csp-analysts",
        ttl=timedelta(minutes=10),
        issuer="https://idp.derbyshire.example",
        audience=AUDIENCE,
    )
    check = TokenVerifier(keys, issuer="https://idp.derbyshire.example", audience=AUDIENCE)
    assert check.verify(idp_token).consumer == "derbyshire-csp-analysts"


def test_the_broker_jwks_round_trips_through_load_jwks(tmp_path: Path) -> None:
    path = tmp_path / "broker.jwks"
    path.write_text(json.dumps(broker_public_jwks(KID, KEY)), encoding="utf-8")
    loaded = load_jwks(path)
    assert list(loaded) == [KID]
    assert jwk_thumbprint(loaded[KID]) == KID


def _refused_jwks() -> list[tuple[str, dict[str, Any], str]]:
    rsa_jwk = json.loads(
        jwt.algorithms.RSAAlgorithm.to_jwk(rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key())
    )
    ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key()))
    private_okp = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(Ed25519PrivateKey.generate()))
    ed448 = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(Ed448PrivateKey.generate().public_key()))
    small_order = {"kty": "OKP", "crv": "Ed25519", "x": b64u_encode(b"\x01" + b"\x00" * 31)}
    good = okp(KEY, "k1")
    return [
        ("rsa", {**rsa_jwk, "kid": "k"}, "only OKP/Ed25519"),
        ("ec", {**ec_jwk, "kid": "k"}, "only OKP/Ed25519"),
        ("oct", {"kty": "oct", "k": b64u_encode(b"secret" * 6), "kid": "k"}, "private key material"),
        ("okp_private_d", {**private_okp, "kid": "k"}, "private key material"),
        ("ed448", {**ed448, "kid": "k"}, "only OKP/Ed25519"),
        ("small_order", {**small_order, "kid": "k"}, "not a valid Ed25519 public key"),
        ("short_x", {**good, "x": good["x"][:20]}, "not a valid Ed25519 public key"),
        ("no_kid", {k: v for k, v in good.items() if k != "kid"}, "kid must be a plain key id"),
        ("path_kid", {**good, "kid": "../keys/a"}, "kid must be a plain key id"),
        ("alg_rs256", {**good, "alg": "RS256"}, "alg must be EdDSA"),
        ("use_enc", {**good, "use": "enc"}, "use must be 'sig'"),
    ]


@pytest.mark.parametrize(("case", "jwk", "match"), _refused_jwks(), ids=[c[0] for c in _refused_jwks()])
def test_load_jwks_refuses_anything_but_public_ed25519_keys(
    tmp_path: Path, case: str, jwk: dict[str, Any], match: str
) -> None:
    with pytest.raises(JwksError, match=match):
        load_jwks(write_jwks(tmp_path, jwk))


def test_load_jwks_refuses_duplicate_kids_empty_sets_and_non_json(tmp_path: Path) -> None:
    with pytest.raises(JwksError, match="appears twice"):
        load_jwks(write_jwks(tmp_path, okp(KEY, "k1"), okp(Ed25519PrivateKey.generate(), "k1")))
    with pytest.raises(JwksError, match="non-empty 'keys'"):
        load_jwks(write_jwks(tmp_path))
    (tmp_path / "bad.json").write_text('{"keys": [], "keys": []}', encoding="utf-8")
    with pytest.raises(JwksError, match="strict JSON"):
        load_jwks(tmp_path / "bad.json")
    with pytest.raises(JwksError, match="cannot read"):
        load_jwks(tmp_path / "missing.json")


# -- the broker key -----------------------------------------------------------------------------


def test_rfc_8037_thumbprint_vector() -> None:
    # RFC 8037 appendix A.1 (key) and A.3 (thumbprint).
    key = Ed25519PrivateKey.from_private_bytes(b64u_decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"))
    assert jwk_thumbprint(key.public_key()) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_the_broker_key_is_created_0600_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "var" / "broker-key.pem"
    kid, key = load_or_create_broker_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert kid == jwk_thumbprint(key.public_key())
    kid_again, _ = load_or_create_broker_key(path)
    assert kid_again == kid


def test_a_group_readable_broker_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "broker-key.pem"
    load_or_create_broker_key(path)
    path.chmod(0o640)
    with pytest.raises(PermissionError, match="chmod 600"):
        load_or_create_broker_key(path)


# -- the command --------------------------------------------------------------------------------


def test_the_cli_issues_a_token_that_verifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            *("token", "issue", "--sub", "analyst@derby.gov.uk", "--role", "analyst"),
            *("--consumer", "derby-csp-analysts", "--ttl", "8h", "--data-dir", str(tmp_path)),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0
    issued = out.strip()
    assert issued not in err  # the token goes to stdout only
    kid, key = load_or_create_broker_key(tmp_path / "broker-key.pem")
    check = TokenVerifier({kid: key.public_key()}, issuer=DEFAULT_ISSUER, audience=DEFAULT_AUDIENCE)
    principal = check.verify(issued)
    assert (principal.sub, principal.role, principal.consumer) == (
        "analyst@derby.gov.uk",
        "analyst",
        "derby-csp-analysts",
    )
    claims = jwt.decode(issued, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 8 * 3600

    assert main(["token", "jwks", "--data-dir", str(tmp_path)]) == 0
    (tmp_path / "jwks.json").write_text(capsys.readouterr().out, encoding="utf-8")
    assert list(load_jwks(tmp_path / "jwks.json")) == [kid]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--role", "analyst"], "needs --consumer"),
        (["--role", "ig", "--consumer", "derby-csp-analysts"], "analyst tokens only"),
        (["--role", "admin", "--consumer", "derby-csp-analysts"], "analyst tokens only"),
        (["--role", "analyst", "--consumer", "no-such-consumer"], "is not a consumer"),
    ],
)
def test_the_cli_refuses_bad_role_and_consumer_combinations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code = main(["token", "issue", "--sub", "someone", "--ttl", "1h", "--data-dir", str(tmp_path), *args])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert message in err
    assert not (tmp_path / "broker-key.pem").exists()  # nothing signed, nothing created


@pytest.mark.parametrize("bad", [["--role", "root"], ["--role", "ig", "--ttl", "31d"], ["--role", "ig", "--ttl", "8x"]])
def test_the_cli_refuses_unknown_roles_and_bad_lifetimes(tmp_path: Path, bad: list[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["token", "issue", "--sub", "someone", "--ttl", "1h", "--data-dir", str(tmp_path), *bad])
    assert caught.value.code == 2


@pytest.mark.parametrize("path", [["token"], ["token", "issue"], ["token", "jwks"]])
def test_token_help_works(path: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main([*path, "--help"])
    assert caught.value.code == 0
    assert "usage: sv-broker token" in capsys.readouterr().out


# -- issue 11 items 7 and 8: strict claims, and no time value a verifier cannot represent ----------
def _signed_raw_claims(claims_json: bytes) -> str:
    head = b64u_encode(json.dumps({"alg": "EdDSA", "typ": "at+jwt", "kid": KID}).encode())
    signing_input = f"{head}.{b64u_encode(claims_json)}"
    return f"{signing_input}.{b64u_encode(KEY.sign(signing_input.encode()))}"


NUMERIC_LITERALS = [
    "0", "-0", "1", "-1", "1e12", "1e300", "-1e300", "1e308", "1.7976931348623157e308", "5e-324", "-5e-324",
    "253402300799", "253402300800", "9007199254740991", "-9007199254740991", "9007199254740992",
    "1" + "0" * 30, "9" * 5000, "0.5", "1e-400", "true", "false", "null", '"1"', "[]", "{}",
]  # fmt: skip


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
@pytest.mark.parametrize("literal", NUMERIC_LITERALS)
def test_any_time_claim_value_is_accepted_or_refused_never_a_crash(claim: str, literal: str) -> None:
    # The attack: exp 1e12 / 1e300 (or nbf, iat, negative, huge) overflowed datetime: a 500 with no
    # access_denied entry on every protected route. Each value must verify or raise AuthError.
    now = int(T0.timestamp())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "a@example.org", "role": "ig", "iat": now, "exp": now + 600}
    rest = {k: v for k, v in claims.items() if k != claim}
    raw = json.dumps(rest, separators=(",", ":")).encode()[:-1] + f',"{claim}":{literal}}}'.encode()
    outcome: Principal | AuthError
    try:
        outcome = verifier(T0).verify(_signed_raw_claims(raw))
    except AuthError as exc:
        outcome = exc
    if isinstance(outcome, AuthError):
        assert REASONS[outcome.reason].status == 401
    else:
        assert outcome.expires_at is not None


def test_duplicate_consumer_claim_is_refused_not_last_wins() -> None:
    now = int(T0.timestamp())
    raw = (
        b'{"iss":"%s","aud":"%s","sub":"a@example.org","role":"analyst","iat":%d,"exp":%d,'
        b'"consumer":"derby-csp-analysts","consumer":"derbyshire-vru"}'
        % (ISSUER.encode(), AUDIENCE.encode(), now, now + 600)
    )
    with pytest.raises(AuthError) as caught:
        verifier(T0).verify(_signed_raw_claims(raw))
    assert caught.value.reason is Reason.TOKEN_MALFORMED
