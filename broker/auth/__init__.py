"""Authentication for the HTTP API: bearer tokens (EdDSA JWTs, RFC 8725 / RFC 9068)."""
