"""Logs are JSON lines and hold no request data (issue 11 item 12), tested as the attack.

A real ``sv-broker serve`` process, its stderr captured as the operator's log shipper would get it.
Traffic: malformed HTTP, over-long headers, a unique canary in headers, paths, query strings and
a bearer token, refused ingest bodies, and clients that disconnect in the middle of an audit export
and of an event stream. Afterwards every line on stderr must parse as one JSON object and the
canary must appear nowhere in it.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import aiohttp

from adapters.synthetic import SyntheticGenerator
from broker.auth.broker_key import load_or_create_broker_key
from broker.auth.tokens import DEFAULT_AUDIENCE, DEFAULT_ISSUER, issue_token
from broker.demo import DemoEnvironment

ROOT = Path(__file__).resolve().parents[1]


class ServeProcess:
    def __init__(self, env: DemoEnvironment, work: Path) -> None:
        self.data_dir = work / "var"
        self.ready = work / "ready"
        self.log_path = work / "stderr.log"
        self.args = [
            sys.executable, "-m", "broker.cli", "serve",
            "--data-dir", str(self.data_dir), "--keys-dir", str(env.keys_dir), "--secrets", str(env.secrets_file),
            "--port", "0", "--ready-file", str(self.ready), "--log-level", "DEBUG",
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not self.ready.exists() or not self.ready.read_text():
            assert self.proc.poll() is None, self.log_path.read_text()[-2000:]
            assert time.monotonic() < deadline, "the broker did not become ready"
            time.sleep(0.05)
        self.url = self.ready.read_text()

    def stop(self) -> str:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def token(self, role: str, consumer: str | None = None) -> str:
        kid, key = load_or_create_broker_key(self.data_dir / "broker-key.pem")
        return issue_token(
            key,
            kid,
            sub=f"{role}@example.org",
            role=role,
            consumer=consumer,
            ttl=timedelta(minutes=10),
            issuer=DEFAULT_ISSUER,
            audience=DEFAULT_AUDIENCE,
        )


async def raw(url: str, data: bytes, read: int | None = None, linger: float = 0.0) -> bytes:
    """Send raw bytes; read up to ``read`` bytes (or to EOF), then drop the connection."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        if read is None:
            return await asyncio.wait_for(reader.read(), 10)
        got = await asyncio.wait_for(reader.read(read), 10)
        await asyncio.sleep(linger)
        return got
    finally:
        writer.transport.abort()  # a client vanishing, not a polite close


async def traffic(serve: ServeProcess, env: DemoEnvironment, canary: str) -> list[str]:
    url = serve.url
    analyst = serve.token("analyst", "derbyshire-police-licensing")
    ig = serve.token("ig")
    gen = SyntheticGenerator(seed=5)
    async with aiohttp.ClientSession() as session:
        # enough records and audit entries that an export is still being written when dropped
        for _ in range(60):
            rec = gen.nte_incident("derby-pubwatch")
            body = env.signers["derby-pubwatch"].sign_bytes("nte_incident", rec.data(), source_key=rec.source_key)
            async with session.post(url + "/v1/events", data=body, headers={"Content-Type": "application/json"}) as r:
                assert r.status == 202
        # the canary in a path, a query string, headers, a bearer token, a body
        hostile = {
            "X-Canary": canary,
            "User-Agent": canary,
            "Referer": f"https://{canary}.example/",
            "Authorization": f"Bearer {canary}",
        }
        for path in (
            f"/v1/feeds/{canary}/records",
            f"/v1/feeds/derbyshire-police-licensing/records?after={canary}&limit={canary}",
            f"/v1/audit/trace/{canary}",
            f"/{canary}",
            f"/v1/agreements?{canary}={canary}",
        ):
            async with session.get(url + path, headers=hostile) as r:
                assert r.status in (400, 401, 404)
        async with session.get(
            url + f"/v1/feeds/derbyshire-police-licensing/records?after={canary}",
            headers={"Authorization": f"Bearer {analyst}", "X-Canary": canary},
        ) as r:
            assert r.status == 400
        async with session.get(
            url + f"/v1/audit/trace/derby-pubwatch:{canary}", headers={"Authorization": f"Bearer {ig}"}
        ) as r:
            assert r.status in (400, 404)
        for content_type in ("application/json", "text/plain"):
            async with session.post(
                url + f"/v1/events?{canary}",
                data=canary.encode(),
                headers={"Content-Type": content_type, "X-C": canary},
            ) as r:
                assert r.status in (400, 415)
        async with session.post(
            url + "/v1/events",
            data=json.dumps({"id": canary, canary: canary}),
            headers={"Content-Type": "application/json"},
        ) as r:
            assert r.status == 400
    c = canary.encode()
    # malformed HTTP: aiohttp's parser refuses these and logs (BadHttpMessage texts echo the input)
    for bad in (
        b"GET /" + c + b" HTTP/1.1\r\nHost: x\r\nX-Bad\x01: " + c + b"\r\n\r\n",
        b"GET /" + c + b" HTTP/1.1\r\nHost: x\r\n" + c + b"\r\n\r\n",
        b"GET /" + c + b" HTTP/1.1\r\nHost: x\r\nX-A: " + c + b"\x00" + c + b"\r\n\r\n",
        b"GET /v1/agreements?" + c + b" HTTP/1.1\r\nHost: x\r\nContent-Length: " + c + b"\r\n\r\n",
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + c
        + b"\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Canary: " + c * (40_000 // len(c)) + b"\r\n\r\n",  # over-long header
        b"GET /" + c * (10_000 // len(c)) + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # over-long request line
        b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + c * (40_000 // len(c)) + b"\r\n\r\n",
        b"GET /v1/agreements HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-%d: %s\r\n" % (i, c) for i in range(200))
        + b"\r\n",
        c + b" / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + c + b" /" + c + b" HTTP/1.1\r\n\r\n",  # a second, bad request
    ):
        await raw(url, bad)
    # clients that drop the connection in the middle of an export and of an event stream
    await raw(
        url,
        b"GET /v1/audit/export?format=csv&" + c + b"=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + ig.encode() + b"\r\nX-Canary: " + c + b"\r\n\r\n",
        read=200,
    )  # fmt: skip
    await raw(
        url,
        b"GET /v1/feeds/derbyshire-police-licensing/stream?" + c + b"=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + analyst.encode() + b"\r\nX-Canary: " + c + b"\r\n\r\n",
        read=200,
        linger=0.5,
    )  # fmt: skip
    await raw(
        url,
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 900\r\nX-C: "
        + c + b"\r\n\r\n{\"id\":\"" + c,
        read=0,
    )  # fmt: skip
    await asyncio.sleep(1.0)  # the stream's next write finds the connection gone
    return [analyst, ig]


def test_every_log_line_is_json_and_holds_no_request_data(env: DemoEnvironment, tmp_path: Path) -> None:
    canary = "cnry" + secrets.token_hex(8)
    serve = ServeProcess(env, tmp_path)
    serve.start()
    tokens: list[str] = []
    try:
        tokens = asyncio.run(traffic(serve, env, canary))
    finally:
        output = serve.stop()
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) > 60  # the access log line of each request, at least
    not_json = []
    for line in lines:
        try:
            parsed = json.loads(line)
        except ValueError:
            not_json.append(line)
            continue
        if not isinstance(parsed, dict) or "event" not in parsed:
            not_json.append(line)
    assert not_json == [], "\n".join(not_json[:20])
    assert canary not in output
    assert tokens
    assert all(tok.split(".")[1] not in output and tok.split(".")[2] not in output for tok in tokens)
    assert canary.upper() not in output.upper()
    events = [json.loads(line) for line in lines]
    access = [e for e in events if e["event"] == "http_request"]
    assert access
    assert all(set(e) >= {"method", "route", "status", "duration_ms"} for e in access)
    assert all(e["route"] is None or e["route"].startswith("/") for e in access)
    # aiohttp's refusals of malformed HTTP reached the log, as JSON with the exception class only
    refused = [e for e in events if e.get("logger") == "aiohttp.server"]
    assert refused
    assert all("exc_type" in e for e in refused if e["level"] == "error")
