"""Ed25519 signing and verification for the contract, with the checks a library leaves to us.

``cryptography`` (OpenSSL) verifies RFC 8032 signatures, but it happily *loads* public keys that
no honest partner would hold: small-order points (any signature made with a known "private key"
verifies for many messages), keys with a torsion component (signatures that verify under one
implementation and not another) and non-canonical encodings (two byte strings for one key, so
key-id pinning can be sidestepped).  The registry refuses those at load with
:func:`check_public_key`; :func:`verify_raw` adds the length and ``S < L`` checks (RFC 8032
5.1.7, signature malleability) before handing over to OpenSSL.
"""

from __future__ import annotations

import base64
import binascii

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from schemas.errors import ContractError, Reason

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = (-121665 * pow(121666, P - 2, P)) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)

_Point = tuple[int, int, int, int]  # extended coordinates (X, Y, Z, T)
_IDENTITY: _Point = (0, 1, 1, 0)


def _add(a: _Point, b: _Point) -> _Point:
    # RFC 8032 5.1.4, "add-2008-hwcd-3" for a = -1.
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    aa = (y1 - x1) * (y2 - x2) % P
    bb = (y1 + x1) * (y2 + x2) % P
    cc = 2 * t1 * t2 * D % P
    dd = 2 * z1 * z2 % P
    e, f, g, h = bb - aa, dd - cc, dd + cc, bb + aa
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _mul(scalar: int, point: _Point) -> _Point:
    result = _IDENTITY
    addend = point
    while scalar:
        if scalar & 1:
            result = _add(result, addend)
        addend = _add(addend, addend)
        scalar >>= 1
    return result


def _is_identity(point: _Point) -> bool:
    x, y, z, _ = point
    return x % P == 0 and (y - z) % P == 0


def _decode_point(raw: bytes) -> _Point:
    """RFC 8032 5.1.3 decoding, refusing the non-canonical encodings it tolerates."""
    if len(raw) != 32:
        raise ContractError(Reason.KEY_MALFORMED, f"An Ed25519 public key is 32 bytes, not {len(raw)}.")
    encoded = int.from_bytes(raw, "little")
    sign = encoded >> 255
    y = encoded & ((1 << 255) - 1)
    if y >= P:
        raise ContractError(Reason.KEY_NON_CANONICAL, "The key's y coordinate is not reduced mod p.")
    u = (y * y - 1) % P
    v = (D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P
    if (v * x * x - u) % P != 0:
        x = x * SQRT_M1 % P
        if (v * x * x - u) % P != 0:
            raise ContractError(Reason.KEY_MALFORMED, "The key is not a point on edwards25519.")
    if x == 0 and sign:
        raise ContractError(Reason.KEY_NON_CANONICAL, "The key encodes x = 0 with the sign bit set.")
    if x & 1 != sign:
        x = P - x
    return (x, y, 1, x * y % P)


def check_public_key(raw: bytes) -> None:
    """Refuse malformed, non-canonical, small-order and mixed-order Ed25519 public keys."""
    point = _decode_point(raw)
    if _is_identity(_mul(8, point)):
        raise ContractError(Reason.KEY_LOW_ORDER, "The key is a small-order point (order divides 8).")
    if not _is_identity(_mul(L, point)):
        raise ContractError(
            Reason.KEY_NOT_PRIME_ORDER, "The key has a torsion component (not in the prime-order subgroup)."
        )


def verify_raw(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True only for a well-formed RFC 8032 signature of ``message`` under ``public_key``."""
    if len(public_key) != 32 or len(signature) != 64:
        return False  # truncated or padded signatures: Wycheproof "SignatureWithGarbage"
    if int.from_bytes(signature[32:], "little") >= L:
        return False  # S >= L: malleable signature (RFC 8032 5.1.7)
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def sign_raw(private_key: Ed25519PrivateKey, message: bytes) -> bytes:
    return private_key.sign(message)


def b64u_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64u_decode(text: str, *, expected_len: int | None = None) -> bytes:
    """Strict unpadded base64url: one encoding per byte string, so signatures are not malleable."""
    if not isinstance(text, str) or not text.isascii() or "=" in text:
        raise ValueError("not unpadded base64url")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None
    if b64u_encode(raw) != text:
        raise ValueError("non-canonical base64url (stray bits)")
    if expected_len is not None and len(raw) != expected_len:
        raise ValueError(f"expected {expected_len} bytes, got {len(raw)}")
    return raw
