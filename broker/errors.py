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
    │   ├── ConfigurationRefused       registry, secrets and agreements refused together (reload, start)
    │   └── StartupError               a setting or state the broker will not start with
    └── Unavailable                    a dependency is down: retry, never dead-letter
        ├── StoreUnavailable           SQLite (broker/ports/sqlite_store.py)
        └── BusUnavailable             RabbitMQ: connection, channel, publish not confirmed
            └── DeliveryFailed         a publish nacked, returned or not confirmed in time

Each dependency's own exceptions (sqlite3, aiormq/aio-pika, aiohttp, pydantic, jwt, tomllib) are
translated into these in the one module that imports that dependency.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.errors import CheckCode, ConfigurationError, ContractError, Reason, Rejected, SvError, Unavailable

__all__ = [
    "ApiError",
    "AuthError",
    "BusUnavailable",
    "CheckCode",
    "ConfigurationError",
    "ConfigurationRefused",
    "ContractError",
    "DeliveryFailed",
    "JwksError",
    "PolicyError",
    "Reason",
    "RegistryError",
    "RegistryProblem",
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
@dataclass(frozen=True, slots=True)
class RegistryProblem:
    """One problem in one registry file: the file, the entry (``partner 'x' keys[0] (kid k1)``,
    ``key[2]``, ``file``), a stable reason code and a sentence (never key material or a secret)."""

    path: str
    entry: str
    reason: Reason
    sentence: str

    def __str__(self) -> str:
        return f"{self.path}: {self.entry}: {self.reason.value}: {self.sentence}"


class RegistryError(ConfigurationError):
    """Registry files refused at load: the first problem (``reason``, ``path``, ``entry``,
    ``message``), with every problem found across every file and entry in ``problems``."""

    def __init__(
        self, reason: Reason, path: Path | str, entry: str, message: str, problems: Iterable[RegistryProblem] = ()
    ) -> None:
        self.problems: tuple[RegistryProblem, ...] = tuple(problems) or (
            RegistryProblem(str(path), entry, reason, message),
        )
        more = len(self.problems) - 1
        suffix = f" (and {more} more problem(s))" if more else ""
        super().__init__(f"{reason.value}: {path}: {entry}: {message}{suffix}")
        self.reason = reason
        self.message = f"{path}: {entry}: {message}"
        self.field = entry
        self.path = str(path)
        self.entry = entry

    @classmethod
    def of(cls, problems: Sequence[RegistryProblem]) -> RegistryError:
        """One error carrying every problem (the first named in its own attributes)."""
        first = problems[0]
        return cls(first.reason, first.path, first.entry, first.sentence, problems)


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


class ConfigurationRefused(ConfigurationError):
    """The registry, keys, secrets and agreements checked together and refused: every error of
    every loader (``errors``), so a reload or a start with a bad key file and a bad agreement
    reports both, not the first loader's alone. Raised only when more than one loader refused."""

    def __init__(self, errors: Sequence[ConfigurationError]) -> None:
        self.errors = tuple(errors)
        super().__init__("; ".join(str(e) for e in self.errors))


class StartupError(ConfigurationError):
    """A configuration the broker refuses to start with (reported without a traceback)."""


# -- unavailable ----------------------------------------------------------------------------------
class StoreUnavailable(Unavailable):
    """The store could not be read or written (locked past its timeout, disk full, I/O error)."""


class BusUnavailable(Unavailable):
    """RabbitMQ could not be reached, or a channel or connection closed under us."""


class DeliveryFailed(BusUnavailable):
    """A publish was nacked, returned or not confirmed in time: the batch is not acknowledged."""
