"""The broker's leaves of the one error tree (the root and the reason registry: ``schemas/errors.py``).

    SvError
    ├── Rejected                       the caller's fault (reason code, sentence, HTTP status hint)
    │   ├── ContractError              a message refused by the wire contract (schemas/)
    │   ├── AuthError                  a bearer token refused (broker/auth/tokens.py)
    │   └── ApiError                   a read-API request refused: role, feed, query parameter
    ├── ConfigurationError             ours, at start or reload; the broker refuses to start
    │   ├── RegistryError              parties.toml and key files (broker/registry.py)
    │   ├── PolicyError                agreements, with every problem found (broker/policy/loader.py)
    │   ├── SpecError                  one problem in one agreement item (collected by the loader)
    │   ├── SecretsError               pseudonymisation secrets (broker/policy/secrets.py)
    │   ├── JwksError                  an identity provider's JWKS file (broker/auth/tokens.py)
    │   └── StartupError               a setting or state the broker will not start with
    └── Unavailable                    a dependency is down: retry, never dead-letter
        ├── StoreUnavailable           SQLite (broker/ports/sqlite_store.py)
        └── BusUnavailable             RabbitMQ: connection, channel, publish not confirmed
            └── DeliveryFailed         a publish nacked, returned or not confirmed in time

Each dependency's own exceptions (sqlite3, aiormq/aio-pika, aiohttp, pydantic, jwt, tomllib) are
translated into these in the one module that imports that dependency.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from schemas.errors import CheckCode, ConfigurationError, ContractError, Reason, Rejected, SvError, Unavailable

__all__ = [
    "ApiError",
    "AuthError",
    "BusUnavailable",
    "CheckCode",
    "ConfigurationError",
    "ContractError",
    "DeliveryFailed",
    "JwksError",
    "PolicyError",
    "Reason",
    "RegistryError",
    "Rejected",
    "SecretsError",
    "SpecError",
    "StartupError",
    "StoreUnavailable",
    "SvError",
    "Unavailable",
]


# -- rejected -------------------------------------------------------------------------------------
class AuthError(Rejected):
    """A refused token. The sentence never echoes the token or any value taken from it (a token
    in a log is a credential in a log)."""


class ApiError(Rejected):
    """A read-API request refused: rendered as ``{"reason", "message"}`` with its HTTP status."""


# -- configuration --------------------------------------------------------------------------------
class RegistryError(ConfigurationError):
    """A registry file refused at load, naming the file and the entry."""

    def __init__(self, reason: Reason, path: Path | str, entry: str, message: str) -> None:
        super().__init__(f"{reason.value}: {path}: {entry}: {message}")
        self.reason = reason
        self.message = f"{path}: {entry}: {message}"
        self.field = entry
        self.path = str(path)
        self.entry = entry


class SpecError(ConfigurationError):
    """One problem in one item of an agreement, raised by the compile helpers and recorded by the
    loader with the file and key path (so one bad rule does not hide the next)."""

    def __init__(self, code: CheckCode, message: str, key: str = "") -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        self.key = key


class PolicyError(ConfigurationError):
    """Agreements refused at load: the first error, with every problem found in ``problems``.

    A problem is anything with ``path``, ``key``, ``line``, ``code`` and ``message`` (the loader's
    ``Problem``)."""

    def __init__(self, problem: Any, problems: Iterable[Any] = ()) -> None:
        super().__init__(str(problem))
        self.path: str = problem.path
        self.key: str = problem.key
        self.line: int | None = problem.line
        self.reason: str = problem.code.value
        self.message: str = problem.message
        self.problems = tuple(problems) or (problem,)


class SecretsError(ConfigurationError):
    """Pseudonymisation secrets refused at load (the sentence never holds a secret)."""


class JwksError(ConfigurationError):
    """A JWKS file refused at load, naming the file and the key."""


class StartupError(ConfigurationError):
    """A configuration the broker refuses to start with (reported without a traceback)."""


# -- unavailable ----------------------------------------------------------------------------------
class StoreUnavailable(Unavailable):
    """The store could not be read or written (locked past its timeout, disk full, I/O error)."""


class BusUnavailable(Unavailable):
    """RabbitMQ could not be reached, or a channel or connection closed under us."""


class DeliveryFailed(BusUnavailable):
    """A publish was nacked, returned or not confirmed in time: the batch is not acknowledged."""
