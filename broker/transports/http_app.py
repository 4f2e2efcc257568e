"""HTTP: partner ingest (embedded mode, or beside RabbitMQ), health and readiness (aiohttp)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest

from broker.errors import ApiError
from broker.logs import get_logger
from broker.pipeline.batcher import Batcher
from broker.pipeline.ingest import Pipeline
from broker.stages.outcome import Accepted, Duplicate, Failed, Outcome, receipt
from broker.stages.types import Inbound
from schemas.errors import REASONS, Reason, Unavailable

log = get_logger("sv_broker.http")


class HttpIngest:
    """Posts go into the shared :class:`Batcher` (concurrent posts share one pipeline batch: one
    replay-guard query and one audit commit); each post waits for its own outcome."""

    def __init__(self, pipeline: Pipeline, batch_max: int = 256) -> None:
        self.batcher: Batcher[asyncio.Future[Outcome]] = Batcher(
            pipeline, self._settle, self._fail, batch_max=batch_max
        )

    async def submit(self, inbound: Inbound) -> Outcome:
        self.batcher.start()
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.batcher.put(inbound, future)
        return await future

    @staticmethod
    async def _settle(futures: list[asyncio.Future[Outcome]], outcomes: list[Outcome]) -> None:
        for future, outcome in zip(futures, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)

    @staticmethod
    async def _fail(futures: list[asyncio.Future[Outcome]], exc: Exception) -> bool:
        # Every waiter learns (nothing was acknowledged to anyone); the partner retries the post.
        for future in futures:
            if not future.done():
                future.set_exception(exc)
        return False

    async def close(self) -> None:
        await self.batcher.stop()


READY_CHECKS = web.AppKey("ready_checks", list[Callable[[], Awaitable[bool]]])
PIPELINE = web.AppKey("pipeline", Pipeline)
INGEST = web.AppKey("ingest", HttpIngest)


def problem(
    status: int, reason: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    body = {"reason": reason, "message": message, **extra}
    return web.json_response(body, status=status, headers=headers, dumps=lambda v: json.dumps(v, ensure_ascii=False))


# What HTTP ingest accepts: a signed CloudEvent in structured JSON mode. "application/json" is the
# envelope's own content type; "application/cloudevents+json" is what CloudEvents' HTTP binding
# (structured mode) and our adapter send. Both are UTF-8 JSON, parsed strictly.
INGEST_MEDIA_TYPES = frozenset({"application/json", "application/cloudevents+json"})


def _media_type_refusal(request: web.Request) -> web.Response | None:
    """Threat: a body sent as something else (a form, text/plain from a browser's CORS "simple
    request", XML) being parsed as JSON regardless, so a cross-site form post or a proxy's
    content-type-based filtering reads the body differently than the broker does. Two
    Content-Type headers are ambiguous (which one a proxy honoured is unknown): refused too."""
    values = request.headers.getall("Content-Type", [])
    charset = (request.charset or "utf-8").lower()
    if len(values) == 1 and request.content_type in INGEST_MEDIA_TYPES and charset == "utf-8":
        return None
    return problem(
        415,
        Reason.UNSUPPORTED_MEDIA_TYPE.value,
        "Send the signed event as Content-Type: application/json (or application/cloudevents+json), UTF-8.",
        {"Accept-Post": "application/json, application/cloudevents+json"},
    )


def route_template(request: BaseRequest) -> str | None:
    """The route's template ("/v1/feeds/{consumer}/records"), never the path itself: a path can
    hold a value (a consumer id, a record id, a canary) that must not reach the log."""
    # A BaseRequest (a head aiohttp refused before routing) has no match_info; a web.Request whose
    # routing has not run yet asserts on it.
    match_info = getattr(request, "_match_info", None)
    route = getattr(match_info, "route", None)
    resource = getattr(route, "resource", None)
    return resource.canonical if resource is not None else None


class RouteAccessLogger(AbstractAccessLogger):
    """aiohttp's access log writes the full path and query string and the Referer and User-Agent
    headers (threat: a value from a URL or a header in the log). This one writes the method, the
    route template, the status and the duration, as a JSON line."""

    def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
        route = route_template(request)
        # An accepted event is in the audit trail already (its receipt, ids, outcome): its access
        # line is DEBUG, not one more INFO line per event on the ingest path (issue 15: rendering
        # and writing it was about 6% of the embedded HTTP path in a profile). Refusals and every
        # read stay INFO.
        write = access_log.debug if route == INGEST_ROUTE and response.status < 400 else access_log.info
        write(
            "http_request",
            method=request.method if request.method.isalpha() else "-",
            route=route,
            status=response.status,
            duration_ms=round(time * 1000, 3),
        )


access_log = get_logger("sv_broker.access")
INGEST_ROUTE = "/v1/events"


def runner_options(header_timeout: float, body_timeout: float, max_field_size: int) -> dict[str, Any]:
    """Keyword arguments for ``web.AppRunner`` (passed on to aiohttp's request handler).

    ``keepalive_timeout``: aiohttp starts this timer when a connection opens and after each
    response, and closes the connection if no complete request head has arrived by then (threat:
    slowloris, a client holding a connection open by sending its headers a byte at a time, or not
    at all). ``max_field_size``: above the Authorization limit, so an oversized token reaches
    :func:`~broker.transports.http_access.authenticate` (refused 401, audited) instead of being
    refused unaudited by the parser. ``lingering_time``: after an answer to a request whose body
    was not read (a 408, a 413), aiohttp reads and discards the rest for this long so the client
    sees the answer; bounded by the body timeout, so a stalled client is not held 10 s more."""
    if not 0 < header_timeout <= 3600 or not 0 < body_timeout <= 3600:
        # 0 would switch aiohttp's timer off (no header timeout at all), not make it immediate.
        raise ValueError("http_header_timeout and http_body_timeout must be more than 0 and at most 3600 seconds")
    if max_field_size < 8190:
        raise ValueError("http_max_field_size must be at least aiohttp's default of 8190 bytes")
    return {
        "keepalive_timeout": header_timeout,
        "lingering_time": min(10.0, body_timeout),
        "max_field_size": max_field_size,
        "access_log_class": RouteAccessLogger,
        "access_log": logging.getLogger("sv_broker.access"),
    }


async def read_limited(request: web.Request, limit: int) -> bytes:
    """Read at most ``limit + 1`` bytes: enough to know the body is too large, never more
    (threat: memory exhaustion by an endless body)."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await request.content.read(min(65536, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


async def ingest(request: web.Request) -> web.Response:
    pipeline = request.app[PIPELINE]
    refused = _media_type_refusal(request)
    if refused is not None:
        return refused
    try:
        # Threat: a slow client holding a connection and a handler open by sending its body a
        # byte at a time, or stalling a chunked body (nothing else bounds a body read).
        async with asyncio.timeout(pipeline.settings.http_body_timeout):
            body = await read_limited(request, pipeline.settings.max_body_bytes)
    except TimeoutError:
        log.warning("http_body_timeout", route=route_template(request))
        late = problem(
            408,
            Reason.REQUEST_TIMEOUT.value,
            f"The request body did not arrive within {pipeline.settings.http_body_timeout:g} s; nothing was kept.",
            {"Connection": "close"},
        )
        late.force_close()  # the rest of the body is not read: this connection cannot carry another request
        return late
    try:
        outcome = await request.app[INGEST].submit(Inbound(body=body, transport="http"))
    except Unavailable:
        # The store is down: nothing was kept, so the partner retries later (a 503, not a 500).
        return problem(
            503,
            Reason.UNAVAILABLE.value,
            "The broker cannot store messages right now; it kept nothing. Retry.",
            {"Retry-After": "5"},
        )
    if isinstance(outcome, Failed):
        return problem(
            500, Reason.INTERNAL_ERROR.value, "The broker could not process the message; it kept nothing. Retry."
        )
    answer = receipt(outcome, pipeline.clock())
    if isinstance(outcome, Accepted):
        return web.json_response(answer, status=202)
    if isinstance(outcome, Duplicate):
        return web.json_response(answer, status=200)
    return web.json_response(answer, status=REASONS[outcome.reason].status)


async def openapi(_request: web.Request) -> web.Response:
    from broker.transports.openapi import document

    return web.json_response(document())


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    checks = request.app[READY_CHECKS]
    results = [await check() for check in checks]
    ok = all(results)
    return web.json_response({"ready": ok}, status=200 if ok else 503)


@web.middleware
async def errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Nothing crashes the service and nothing leaks a traceback: unexpected errors become a 500
    with a stable reason; aiohttp's own HTTP errors become JSON with a reason code."""
    try:
        return await handler(request)
    except ApiError as exc:
        return problem(exc.status, exc.reason.value, exc.message, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reason = {404: Reason.NOT_FOUND, 405: Reason.METHOD_NOT_ALLOWED, 413: Reason.BODY_TOO_LARGE}.get(
            exc.status, Reason.HTTP_ERROR
        )
        return problem(exc.status, reason.value, exc.reason)
    except (ConnectionResetError, asyncio.CancelledError):
        raise  # the client went away (e.g. closed an event stream): nothing to answer
    except Exception as exc:
        log.exception("http_handler_failed", route=route_template(request), error=type(exc).__name__)
        return problem(500, Reason.INTERNAL_ERROR.value, "The broker hit an internal error; nothing was kept. Retry.")


def build_app(pipeline: Pipeline, ready_checks: list[Callable[[], Awaitable[bool]]]) -> web.Application:
    app = web.Application(middlewares=[errors_middleware], client_max_size=pipeline.settings.max_body_bytes + 1024)
    app[PIPELINE] = pipeline
    app[INGEST] = HttpIngest(pipeline, pipeline.settings.batch_max)

    async def close_ingest(app: web.Application) -> None:
        await app[INGEST].close()  # after in-flight requests: their batches finish first

    app.on_cleanup.append(close_ingest)
    app[READY_CHECKS] = ready_checks
    app.router.add_post("/v1/events", ingest)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/openapi.json", openapi)
    return app
