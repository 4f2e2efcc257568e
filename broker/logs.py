"""structlog, configured in one place: JSON lines on stderr carrying ids, codes and counts only.

Never pass a payload, a record or a secret to a logger (DESIGN.md invariant 5); bind message id,
partner, consumer and reason code instead.

Every line on stderr is one JSON object, ours or a library's: the standard-library loggers
(aiohttp.access, aiohttp.server, aiohttp.web, asyncio, ...) go through structlog's
``ProcessorFormatter`` to the same renderer (threat: a plain-text traceback that a log shipper
splits into many unparsed lines, and that carries request data). Records from other libraries
keep only their fixed message template, never its arguments; exceptions are logged as their class
and the frames they passed through, never ``str(exc)`` (aiohttp's ``BadHttpMessage`` texts echo
request header values; a ``KeyError`` echoes a payload's field value).
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import MutableMapping
from types import TracebackType
from typing import Any

import structlog

# Loggers of code that is not ours whose records reach stderr. Their message templates are fixed
# strings in the library, their arguments (a peer address, a request line, a repr of a task with
# its arguments) are not ours to vouch for.
_FOREIGN_FIXED_EVENTS = {"asyncio": "asyncio_record"}
_MAX_EVENT_CHARS = 120

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def _exc_info(value: Any) -> ExcInfo | None:
    if isinstance(value, BaseException):
        return type(value), value, value.__traceback__
    if isinstance(value, tuple) and len(value) == 3 and isinstance(value[1], BaseException):
        return value
    if value is True:
        current = sys.exc_info()
        if current[1] is not None:
            return current
    return None


def scrub_exception(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """An exception becomes ``exc_type`` (its class) and ``stack`` (file:line function, innermost
    last), for every exception in the chain; its message is never rendered."""
    raw = event.pop("exc_info", None)
    event.pop("exception", None)
    event.pop("stack_info", None)
    info = _exc_info(raw)
    if info is None:
        return event
    chain: list[str] = []
    exc: BaseException | None = info[1]
    stack: list[str] = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen and len(chain) < 8:
        seen.add(id(exc))
        chain.append(f"{type(exc).__module__}.{type(exc).__qualname__}")
        if not stack:
            stack = [f"{f.filename}:{f.lineno} {f.name}" for f in traceback.extract_tb(exc.__traceback__)][-20:]
        exc = exc.__cause__ or exc.__context__
    event["exc_type"] = chain[0]
    if len(chain) > 1:
        event["exc_chain"] = chain[1:]
    event["stack"] = stack
    return event


def _foreign_event(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A standard-library record: its logger name and its message *template* (first line, bounded),
    never the formatted message (threat: arguments holding request data)."""
    record: logging.LogRecord | None = event.get("_record")
    if record is None:
        return event
    event["logger"] = record.name
    fixed = _FOREIGN_FIXED_EVENTS.get(record.name.split(".")[0])
    if fixed is not None:
        event["event"] = fixed  # asyncio's messages are formatted already (a repr of a task and its arguments)
    else:
        template = str(record.msg).splitlines()[0] if str(record.msg) else ""
        event["event"] = template[:_MAX_EVENT_CHARS]
    event.pop("positional_args", None)
    return event


def _shared() -> list[structlog.types.Processor]:
    return [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def configure(level: str = "INFO", *, json: bool = True) -> None:
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*_shared(), _foreign_event, scrub_exception],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_sv_broker", False) or type(old) is logging.StreamHandler:
            root.removeHandler(old)
    handler._sv_broker = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # aiohttp's own access logger writes full paths and query strings: never enabled (the broker
    # logs its own access line, broker.transports.http_app.RouteAccessLogger).
    logging.getLogger("aiohttp.access").disabled = True
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *_shared(),
            scrub_exception,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
