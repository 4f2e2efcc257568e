"""The broker's own token-signing key: one Ed25519 key in a 0600 PEM file under the data directory.

Its key id is the RFC 7638 JWK thumbprint of the public key, so the id is derived from the key
itself (two different keys can never share an id, and a verifier can recompute it).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from schemas.keyfile import load_private_key, write_private_key
from schemas.signing import b64u_encode

DEFAULT_KEY_FILE = "broker-key.pem"  # under --data-dir


def public_jwk(public_key: Ed25519PublicKey) -> dict[str, str]:
    """The required members of an OKP public JWK (RFC 8037 section 2)."""
    x = b64u_encode(public_key.public_bytes(Encoding.Raw, PublicFormat.Raw))
    return {"crv": "Ed25519", "kty": "OKP", "x": x}


def jwk_thumbprint(public_key: Ed25519PublicKey) -> str:
    """RFC 7638: SHA-256 over the required members, lexicographically ordered, no whitespace."""
    canonical = json.dumps(public_jwk(public_key), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return b64u_encode(hashlib.sha256(canonical.encode("ascii")).digest())


BrokerKey = tuple[str, Ed25519PrivateKey]  # (kid: the JWK thumbprint, the private key)


def load_or_create_broker_key(path: Path) -> BrokerKey:
    """Load the key at ``path`` or, if there is none, create it (mode 0600 from the first byte).

    An existing file readable by group or others is refused (``PermissionError``): anyone who can
    read it can mint admin tokens.
    """
    try:
        key = load_private_key(path)
    except FileNotFoundError:
        key = Ed25519PrivateKey.generate()
        try:
            write_private_key(key, path)  # O_EXCL: never overwrites a key another process just made
        except FileExistsError:
            key = load_private_key(path)
    return jwk_thumbprint(key.public_key()), key


def broker_public_jwks(kid: str, private_key: Ed25519PrivateKey) -> dict[str, Any]:
    """The JWK Set (RFC 7517) holding the broker's public key, for clients that verify tokens."""
    jwk: dict[str, str] = {**public_jwk(private_key.public_key()), "kid": kid, "use": "sig", "alg": "EdDSA"}
    return {"keys": [jwk]}
