"""POSTing signed events to the broker's HTTP ingest (the embedded mode), a window at a time.

The broker answers only once the event's audit entries and records are durable: 202 accepted,
200 duplicate, 4xx rejected with a reason (the receipt is the response), 5xx kept nothing. So an
answer is this transport's confirm; no answer (timeout, connection lost) is "not confirmed" and
the row is sent again by the next run.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from adapters.publish_amqp import CONTENT_TYPE
from adapters.sink import OnResult, Outgoing, Result, Verdict


def ingest_url(base: str) -> str:
    base = base.rstrip("/")
    return base if base.endswith("/v1/events") else f"{base}/v1/events"


class HttpSink:
    transport = "http"

    def __init__(self, url: str, on_result: OnResult, *, window: int = 32, timeout: float = 30.0) -> None:
        self.url = ingest_url(url)
        self.on_result = on_result
        self.window = asyncio.Semaphore(max(1, window))
        self.limit = max(1, window)
        self.timeout = timeout
        self.description = self.url
        self._broken: str | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def broken(self) -> str | None:
        return self._broken

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            connector=aiohttp.TCPConnector(limit=self.limit),
        )

    async def send(self, item: Outgoing) -> None:
        if self._broken is not None:
            raise ConnectionError(self._broken)
        await self.window.acquire()
        task = asyncio.create_task(self._post(item))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, item: Outgoing) -> None:
        assert self._session is not None
        result: Result
        try:
            async with self._session.post(self.url, data=item.body, headers={"Content-Type": CONTENT_TYPE}) as response:
                raw = await response.read()
                status = response.status
            receipt = _json(raw)
            if status == 202:
                records, notices = receipt.get("records"), receipt.get("withdrawn", 0)
                result = Result(
                    item,
                    Verdict.ACCEPTED,
                    records=records if isinstance(records, int) else None,
                    notices=notices if isinstance(notices, int) else 0,
                )
            elif status == 200 and receipt.get("status") == "duplicate":
                result = Result(item, Verdict.DUPLICATE)
            elif 400 <= status < 500 or receipt.get("status") == "rejected":  # a policy refusal is a 200
                result = Result(
                    item,
                    Verdict.REJECTED,
                    str(receipt.get("reason") or f"http_{status}"),
                    str(receipt.get("message") or ""),
                )
            else:
                message = str(receipt.get("message") or "")
                result = Result(item, Verdict.FAILED, "not_confirmed", f"the broker answered HTTP {status}: {message}")
        except aiohttp.ClientConnectorError as exc:
            if self._broken is None:
                self._broken = f"cannot reach the broker at {self.url}: {exc.os_error or exc}"
            result = Result(item, Verdict.FAILED, "not_confirmed", self._broken)
        except (aiohttp.ClientError, TimeoutError) as exc:
            result = Result(item, Verdict.FAILED, "not_confirmed", f"no answer from the broker ({type(exc).__name__})")
        except asyncio.CancelledError:
            result = Result(item, Verdict.FAILED, "not_confirmed", "cancelled before the broker answered")
        finally:
            self.window.release()
        self.on_result(result)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
