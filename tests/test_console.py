"""The IG console over real HTTP on loopback, against an embedded broker filled with synthetic
events: sign-in with a real token, every page, the audit of every view, sessions that end (on
this broker and on a second one sharing the store), CSRF and origin refusals, roles, headers,
and no asset or token where it must not be."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from broker.auth.broker_key import load_or_create_broker_key
from broker.console import session as sessions
from broker.demo import DemoEnvironment
from broker.service import Broker
from broker.settings import Settings
from tests.helpers import audit_entries
from tests.test_http_access import auth, db, send, token

CONSOLE_PAGES = [
    "/console",
    "/console/agreements",
    "/console/agreements/dsa-nte-police-licensing-2026",
    "/console/flow-map",
    "/console/flow-map.svg",
    "/console/access",
    "/console/access.csv",
    "/console/trace",
    "/console/integrity",
    "/console/quarantine",
    "/console/held",
    "/console/figures",
]
ANALYST_PAGES = ["/console", "/console/agreements", "/console/flow-map", "/console/flow-map.svg"]
IG_ONLY = ["/console/access", "/console/access.csv", "/console/trace", "/console/integrity", "/console/quarantine",
           "/console/held", "/console/figures", "/console/figures/pack"]  # fmt: skip
# Every console route, with whether it is a form post (a new route fails the coverage test below).
CONSOLE_ROUTES = {
    ("GET", "/console"),
    ("GET", "/console/"),
    ("GET", "/console/sign-in"),
    ("POST", "/console/sign-in"),
    ("POST", "/console/sign-out"),
    ("GET", "/console/agreements"),
    ("GET", "/console/agreements/{agreement_id}"),
    ("GET", "/console/flow-map"),
    ("GET", "/console/flow-map.svg"),
    ("GET", "/console/access"),
    ("GET", "/console/access.csv"),
    ("GET", "/console/trace"),
    ("POST", "/console/trace"),
    ("GET", "/console/integrity"),
    ("GET", "/console/quarantine"),
    ("GET", "/console/held"),
    ("GET", "/console/figures"),
    ("GET", "/console/figures/pack"),
    ("POST", "/console/held/release"),
    ("POST", "/console/held/discard"),
    ("GET", "/console/static/{name}"),
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}


class Page(HTMLParser):
    """What a test reads from a page: its title, headings, forms, the URLs it names, ids, text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.title = ""
        self.headings: list[str] = []
        self.urls: list[str] = []
        self.ids: set[str] = set()
        self.forms: list[dict[str, Any]] = []
        self.text: list[str] = []
        self.inline: list[str] = []  # style attributes and <script>/<style> elements (the CSP forbids them)
        self.lang = ""
        self._in: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self._in.append(tag)
        if tag == "html":
            self.lang = a.get("lang", "")
        if "id" in a:
            self.ids.add(a["id"])
        if "style" in a:
            self.inline.append(f"style on <{tag}>")
        if tag in ("script", "style"):
            self.inline.append(tag)
        for name in ("href", "src", "action", "formaction"):
            if name in a:
                self.urls.append(a[name])
        if tag == "form":
            self.forms.append({"action": a.get("action"), "method": a.get("method", "get"), "fields": {}})
        if tag in ("input", "textarea", "select") and self.forms and a.get("name"):
            self.forms[-1]["fields"][a["name"]] = a.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if self._in and self._in[-1] == tag:
            self._in.pop()

    def handle_data(self, data: str) -> None:
        if self._in and self._in[-1] == "title":
            self.title += data
        if self._in and self._in[-1] in ("h1", "h2"):
            self.headings.append(data.strip())
        self.text.append(data)

    @property
    def body(self) -> str:
        return " ".join(" ".join(self.text).split())

    def form(self, action: str) -> dict[str, Any]:
        return next(f for f in self.forms if f["action"] == action)


class Console:
    """A browser-like client of one broker: a cookie jar, same-origin headers on posts."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))  # 127.0.0.1 is an IP
        self.origin = broker.url

    async def close(self) -> None:
        await self.http.close()

    async def get(self, path: str, **params: str) -> tuple[int, str, dict[str, str]]:
        async with self.http.get(self.broker.url + path, params=params, allow_redirects=False) as resp:
            return resp.status, await resp.text(), dict(resp.headers)

    async def post(
        self, path: str, data: dict[str, Any] | list[tuple[str, str]], origin: str | None = "same"
    ) -> tuple[int, str, dict[str, str]]:
        headers = {} if origin is None else {"Origin": self.origin if origin == "same" else origin}
        async with self.http.post(self.broker.url + path, data=data, headers=headers, allow_redirects=False) as resp:
            return resp.status, await resp.text(), dict(resp.headers)

    async def sign_in(self, tok: str) -> tuple[int, dict[str, str]]:
        status, _, headers = await self.post("/console/sign-in", {"token": tok})
        return status, headers

    def cookie(self) -> str | None:
        for c in self.http.cookie_jar:
            if c.key == sessions.COOKIE:
                return c.value
        return None


@pytest.fixture
async def console(broker: Broker) -> Any:
    client = Console(broker)
    try:
        yield client
    finally:
        await client.close()


async def signed_in(console: Console, role: str = "ig", consumer: str | None = None, sub: str = "ig-lead") -> None:
    status, headers = await console.sign_in(token(console.broker, role, consumer, sub=sub))
    assert status == 303, headers
    assert headers["Location"] == "/console"


def console_reads(broker: Broker) -> list[dict[str, Any]]:
    return [e for e in audit_entries(db(broker), "accessed") if str(e.get("resource", "")).startswith("console:")]


# -- sign-in and the cookie ------------------------------------------------------------------------
async def test_sign_in_sets_a_strict_httponly_cookie_for_the_console_only(console: Console) -> None:
    status, html, headers = await console.get("/console/sign-in")
    assert status == 200
    page = Page(html)
    assert page.title == "Sign in – sv-broker IG console"
    assert {"token", "sign-in", "sign-in-form"} <= page.ids
    status, headers = await console.sign_in(token(console.broker, "ig", sub="ig-lead"))
    assert status == 303
    cookie = headers["Set-Cookie"]
    assert cookie.startswith(f"{sessions.COOKIE}=")
    flags = {part.strip().split("=")[0].lower(): part.strip() for part in cookie.split(";")[1:]}
    assert "httponly" in flags
    assert flags["samesite"].lower() == "samesite=strict"
    assert flags["path"] == "Path=/console"
    assert "secure" not in flags  # plain HTTP on loopback, no --console-behind-tls
    assert 0 < int(flags["max-age"].split("=")[1]) <= 8 * 3600
    signed = [e for e in console_reads(console.broker) if e["resource"] == "console:sign-in"]
    assert signed[-1]["sub"] == "ig-lead"


async def test_the_cookie_is_secure_behind_tls(env: DemoEnvironment, tmp_path: Path) -> None:
    settings = Settings(
        policy_dir=env.policy_dir, keys_dir=env.keys_dir, secrets_file=env.secrets_file, data_dir=tmp_path,
        http_port=0, console_behind_tls=True,
    )  # fmt: skip
    broker = Broker(settings)
    await broker.start()
    client = Console(broker)
    try:
        client.origin = broker.url.replace("http://", "https://")  # what a browser sends behind the proxy
        status, headers = await client.sign_in(token(broker, "ig"))
        assert status == 303
        assert "secure" in headers["Set-Cookie"].lower()
    finally:
        await client.close()
        await broker.stop()


async def test_a_refused_token_is_401_audited_and_never_stored(console: Console) -> None:
    tok = token(console.broker, "ig")
    forged = tok[:-4] + ("AAAA" if not tok.endswith("AAAA") else "BBBB")
    status, html, _ = await console.post("/console/sign-in", {"token": forged})
    assert status == 401
    page = Page(html)
    assert page.title.startswith("Error: Sign in")
    assert "error-summary" in page.ids
    assert console.cookie() is None
    denied = audit_entries(db(console.broker), "access_denied")
    assert denied[-1]["route"] == "/console/sign-in"
    assert denied[-1]["reason"] == "token_bad_signature"
    everything = db(console.broker).read_bytes()
    for secret in (tok, forged, tok.split(".")[2], forged.split(".")[2]):
        assert secret.encode() not in everything


# -- every page ------------------------------------------------------------------------------------
async def test_every_page_opens_with_headers_nav_and_only_its_own_assets(
    console: Console, env: DemoEnvironment
) -> None:
    await send(console.broker, env, 3, seed=11)
    await signed_in(console)
    for path in CONSOLE_PAGES:
        status, body, headers = await console.get(path)
        assert status == 200, (path, body[:500])
        for name, value in SECURITY_HEADERS.items():
            assert headers.get(name) == value, (path, name)
        if path.endswith((".csv", ".svg")):
            continue
        assert headers["Content-Type"] == "text/html; charset=utf-8"
        page = Page(body)
        assert page.lang == "en-GB"
        assert page.title.endswith(" – sv-broker IG console"), page.title
        assert {"main-content", "skip-link", "nav", "sign-out", "page-heading"} <= page.ids, path
        assert page.inline == [], path
        sign_out = page.form("/console/sign-out")
        assert sign_out["method"] == "post"
        assert sessions.CSRF_FIELD in sign_out["fields"]
        for url in page.urls:
            # every asset and link is the broker's own: no scheme, no host, no protocol-relative URL
            assert url.startswith(("/console", "#")), (path, url)
            if url.startswith("/console/static/") or url.startswith("/console/flow-map.svg"):
                status, _, _ = await console.get(url.replace("&amp;", "&"))
                assert status == 200, url
    # The refusal pages too carry the headers.
    status, _, headers = await console.get("/console/no-such-page")
    assert status == 404
    assert headers["Content-Security-Policy"] == SECURITY_HEADERS["Content-Security-Policy"]


async def test_pages_show_the_facts(console: Console, env: DemoEnvironment) -> None:
    await send(console.broker, env, 4, seed=12)
    reader = token(console.broker, "analyst", "derbyshire-police-licensing", sub="lic-analyst@example.org")
    async with (
        aiohttp.ClientSession() as http,
        http.get(console.broker.url + "/v1/feeds/derbyshire-police-licensing/records", headers=auth(reader)) as resp,
    ):
        assert resp.status == 200
        records = (await resp.json())["records"]
    assert records
    await signed_in(console)

    _, html, _ = await console.get("/console/agreements")
    page = Page(html)
    assert "Agreements register" in page.headings
    assert "dsa-nte-police-licensing-2026" in page.body
    assert "in force" in page.body

    _, html, _ = await console.get("/console/agreements/dsa-nte-police-licensing-2026")
    page = Page(html)
    assert "agreement-id" in page.ids
    assert "dropped" in page.body
    assert "kept" in page.body
    assert "Revision history" in page.headings

    _, html, _ = await console.get("/console/flow-map")
    page = Page(html)
    assert "volumes" in page.ids
    row = re.search(r'data-consumer="derbyshire-police-licensing">(.*?)</tr>', html, re.S)
    assert row is not None
    assert re.search(r'class="numeric">4</td>', row.group(1))

    _, html, _ = await console.get("/console/access")
    assert "lic-analyst@example.org" in Page(html).body
    _, html, _ = await console.get(
        "/console/access", sub="lic-analyst@example.org", consumer="derbyshire-police-licensing"
    )
    assert "lic-analyst@example.org" in Page(html).body
    _, html, _ = await console.get("/console/access", sub="somebody-else")
    assert "no-reads" in Page(html).ids
    status, text, headers = await console.get("/console/access.csv", sub="lic-analyst@example.org")
    assert status == 200
    assert headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows
    assert rows[0]["sub"] == "lic-analyst@example.org"
    assert records[0]["record_id"] in rows[0]["record_ids"]

    record_id = records[0]["record_id"]
    _, html, _ = await console.get("/console/trace", record_id=record_id)
    page = Page(html)
    assert "recipients" in page.ids
    assert "derbyshire-police-licensing" in page.body
    assert "lic-analyst@example.org" in page.body  # who read it
    assert "released" in page.body
    assert "received" in page.body
    message = re.search(r'id="traced-message">([^<]+)<', html)
    assert message is not None
    _, html, _ = await console.get("/console/trace", message_id=message.group(1))
    assert record_id in html

    _, html, _ = await console.get("/console/integrity")
    page = Page(html)
    assert "verified" in page.body
    entries = len(audit_entries(db(console.broker)))
    count = re.search(r'id="entry-count">(\d+)<', html)
    assert count is not None
    assert entries - 2 <= int(count.group(1)) <= entries  # this view's own entry comes after the count

    status, html, _ = await console.get("/console/trace", record_id="not-a-record")
    assert status == 400
    assert "error-summary" in Page(html).ids


async def test_every_view_is_an_accessed_entry_and_no_token_is_kept(
    console: Console, env: DemoEnvironment, capsys: pytest.CaptureFixture[str]
) -> None:
    await send(console.broker, env, 2, seed=13)
    tok = token(console.broker, "ig", sub="ig-lead")
    status, _ = await console.sign_in(tok)
    assert status == 303
    for path in CONSOLE_PAGES:
        await console.get(path)
    resources = {e["resource"] for e in console_reads(console.broker)}
    assert {
        "console:home", "console:agreements", "console:agreement", "console:flow-map", "console:flow-map.svg",
        "console:access", "console:access.csv", "console:trace", "console:integrity", "console:quarantine",
        "console:held",
    } <= resources  # fmt: skip
    cookie = console.cookie()
    assert cookie is not None
    stored = b"".join(p.read_bytes() for p in Path(db(console.broker)).parent.glob("broker.db*"))
    logged = "".join(capsys.readouterr())
    assert "http_request" in logged  # the logs were captured
    for secret in (tok, tok.split(".")[2], cookie, cookie.split(".")[2]):
        assert secret.encode() not in stored
        assert secret not in logged  # nor in the logs (the access log writes route templates only)


# -- sessions that end ----------------------------------------------------------------------------
async def test_sign_out_ends_the_session_here_and_on_another_broker_on_the_store(
    console: Console, env: DemoEnvironment, tmp_path: Path
) -> None:
    await signed_in(console)
    cookie = console.cookie()
    assert cookie is not None
    _, html, _ = await console.get("/console")
    csrf = Page(html).form("/console/sign-out")["fields"][sessions.CSRF_FIELD]
    status, _, headers = await console.post("/console/sign-out", {sessions.CSRF_FIELD: csrf})
    assert status == 303
    assert headers["Location"] == "/console/sign-in?signed_out=1"
    # The browser dropped the cookie; a copy made before is refused.
    replay = {"Cookie": f"{sessions.COOKIE}={cookie}"}
    async with (
        aiohttp.ClientSession() as http,
        http.get(console.broker.url + "/console/agreements", headers=replay) as resp,
    ):
        assert resp.status == 401
    assert audit_entries(db(console.broker), "access_denied")[-1]["reason"] == "session_ended"
    # A second broker process on the same store (another host): the same key, the same answer.
    await console.broker.stop()
    settings = replace(console.broker.settings, http_port=0)
    other = Broker(settings)
    await other.start()
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(other.url + "/console/agreements", headers=replay) as resp,
        ):
            assert resp.status == 401
            assert "signed out" in await resp.text()
    finally:
        await other.stop()
        await console.broker.start()  # the fixture stops it again


def forge(broker: Broker, **changes: Any) -> str:
    _, key = load_or_create_broker_key(broker.settings.effective_broker_key)
    now = datetime.now(UTC)
    base = sessions.open_session("ig-lead", "ig", None, None, now, sessions.Limits())
    return sessions.encode(replace(base, **changes), sessions.session_key(key))


async def test_expired_forged_and_tampered_cookies_are_refused_and_audited(console: Console) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    _, other_key = load_or_create_broker_key(Path(console.broker.settings.data_dir) / "other-key.pem")
    good = forge(console.broker)
    idle = forge(console.broker, issued=now - timedelta(hours=1), seen=now - timedelta(minutes=31))
    old = forge(console.broker, issued=now - timedelta(hours=9), seen=now - timedelta(minutes=1), ends=now)
    stranger = sessions.open_session("x", "admin", None, None, now, sessions.Limits())
    head, claims, mac = good.split(".")
    cases = {
        "idle": (idle, "session_expired"),
        "absolute": (old, "session_expired"),
        "other key": (sessions.encode(stranger, sessions.session_key(other_key)), "session_invalid"),
        "tampered": (f"{head}.{claims[:-2]}AA.{mac}", "session_invalid"),
        "garbage": ("s1.e30.AAAA", "session_invalid"),
        "missing": ("", "session_missing"),
    }
    async with aiohttp.ClientSession() as http:
        async with http.get(console.broker.url + "/console", headers={"Cookie": f"{sessions.COOKIE}={good}"}) as resp:
            assert resp.status == 200
        for name, (cookie, reason) in cases.items():
            headers = {"Cookie": f"{sessions.COOKIE}={cookie}"} if cookie else {}
            async with http.get(console.broker.url + "/console/integrity", headers=headers) as resp:
                assert resp.status == 401, name
                assert "sign-in-link" in Page(await resp.text()).ids
                assert resp.headers["Cache-Control"] == "no-store"
            assert audit_entries(db(console.broker), "access_denied")[-1]["reason"] == reason, name


async def test_a_session_never_outlives_its_token(console: Console) -> None:
    expires = datetime.now(UTC) + timedelta(minutes=5)
    session = sessions.open_session("ig-lead", "ig", None, expires, datetime.now(UTC), sessions.Limits())
    assert session.ends <= expires
    status, headers = await console.sign_in(token(console.broker, "ig"))  # a 10-minute token
    assert status == 303
    max_age = int(re.search(r"Max-Age=(\d+)", headers["Set-Cookie"]).group(1))  # type: ignore[union-attr]
    assert max_age <= 600


# -- forms: CSRF and origin ------------------------------------------------------------------------
async def test_posts_without_the_csrf_token_or_from_another_origin_are_403_and_audited(console: Console) -> None:
    await signed_in(console)
    status, html, _ = await console.post("/console/sign-out", {})
    assert status == 403
    assert audit_entries(db(console.broker), "access_denied")[-1]["reason"] == "csrf_failed"
    _, html, _ = await console.get("/console/held")
    release_csrf = Page(html).forms  # no held group: take a token for another action instead
    _, home, _ = await console.get("/console")
    sign_out_csrf = Page(home).form("/console/sign-out")["fields"][sessions.CSRF_FIELD]
    # A token of one form does not post another.
    status, _, _ = await console.post(
        "/console/held/release", {sessions.CSRF_FIELD: sign_out_csrf, "agreement_id": "dsa-nte-police-licensing-2026"}
    )
    assert status == 403
    assert audit_entries(db(console.broker), "access_denied")[-1]["reason"] == "csrf_failed"
    # The right token from another origin, or with no Origin at all.
    for origin in ("https://evil.example", None):
        status, _, _ = await console.post("/console/sign-out", {sessions.CSRF_FIELD: sign_out_csrf}, origin=origin)
        assert status == 403
        assert audit_entries(db(console.broker), "access_denied")[-1]["reason"] == "cross_origin"
    # A cross-site sign-in (login CSRF) is refused too.
    status, _, _ = await console.post(
        "/console/sign-in", {"token": token(console.broker, "ig")}, origin="https://evil.example"
    )
    assert status == 403
    # Still signed in: nothing above signed the session out.
    status, _, _ = await console.get("/console")
    assert status == 200
    assert release_csrf is not None


# -- roles -------------------------------------------------------------------------------------------
async def test_an_analyst_sees_their_own_agreements_and_no_ig_page(console: Console, env: DemoEnvironment) -> None:
    await send(console.broker, env, 2, seed=14)
    await signed_in(console, "analyst", "derbyshire-police-licensing", sub="lic-analyst")
    for path in ANALYST_PAGES:
        status, _, _ = await console.get(path)
        assert status == 200, path
    _, html, _ = await console.get("/console/agreements")
    page = Page(html)
    named = re.findall(r'id="agreement-([a-z0-9-]+)"', html)
    assert named
    for agreement_id in named:
        assert "derbyshire-police-licensing" in console.broker.policy.agreements[agreement_id].parties  # type: ignore[union-attr]
    assert "/console/access" not in page.urls  # the nav offers only what the role may open
    for path in IG_ONLY:
        status, _, _ = await console.get(path)
        assert status == 403, path
        denied = audit_entries(db(console.broker), "access_denied")[-1]
        assert (denied["reason"], denied["sub"], denied["route"]) == ("role_not_allowed", "lic-analyst", path)
    others = [
        a for a, ag in console.broker.policy.agreements.items() if "derbyshire-police-licensing" not in ag.parties
    ]  # type: ignore[union-attr]
    if others:
        status, _, _ = await console.get(f"/console/agreements/{others[0]}")
        assert status == 403


def test_every_console_route_is_covered_here(broker: Broker) -> None:
    assert broker.runner is not None
    served = {
        (r.method, r.resource.canonical)
        for r in broker.runner.app.router.routes()
        if r.resource is not None and r.method != "HEAD" and r.resource.canonical.startswith("/console")
    }
    assert served == CONSOLE_ROUTES


async def test_posts_need_a_session_first(console: Console) -> None:
    for path in ("/console/sign-out", "/console/held/release", "/console/held/discard", "/console/trace"):
        status, _, headers = await console.post(path, {})
        assert status == 401, path
        assert headers["X-Frame-Options"] == "DENY"


async def test_trace_by_record_key_without_id_keys_says_how_to_get_the_message_id(console: Console) -> None:
    await signed_in(console)
    _, html, _ = await console.get("/console/trace")
    page = Page(html)
    assert "no-id-keys" in page.ids
    assert "sv-broker adapter message-id" in page.body
    by_key = next(f for f in page.forms if f["action"] == "/console/trace" and f["method"] == "post")
    csrf = by_key["fields"][sessions.CSRF_FIELD]
    status, html, _ = await console.post(
        "/console/trace", {sessions.CSRF_FIELD: csrf, "partner": "derby-pubwatch", "record_key": "CASE-1"}
    )
    assert status == 400
    assert "cannot be derived" in Page(html).body
    assert "CASE-1" not in str(audit_entries(db(console.broker)))


async def test_trace_by_a_partners_record_key_with_the_operators_id_keys(env: DemoEnvironment, tmp_path: Path) -> None:
    from adapters.synthetic import SyntheticGenerator

    id_keys = tmp_path / "id-keys"
    id_keys.mkdir(mode=0o700)
    signer = env.signers["derby-pubwatch"]
    key_file = id_keys / "derby-pubwatch.idkey"
    key_file.write_text(signer.id_key.hex() + "\n", encoding="ascii")
    key_file.chmod(0o600)
    settings = Settings(
        policy_dir=env.policy_dir, keys_dir=env.keys_dir, secrets_file=env.secrets_file, data_dir=tmp_path / "var",
        http_port=0, id_keys_dir=id_keys,
    )  # fmt: skip
    broker = Broker(settings)
    await broker.start()
    client = Console(broker)
    try:
        rec = SyntheticGenerator(seed=21).nte_incident("derby-pubwatch")
        body = signer.sign_bytes("nte_incident", rec.data(), source_key=rec.source_key)
        async with client.http.post(
            broker.url + "/v1/events", data=body, headers={"Content-Type": "application/json"}
        ) as r:
            assert r.status == 202
        await signed_in(client)
        _, html, _ = await client.get("/console/trace")
        page = Page(html)
        assert "no-id-keys" not in page.ids
        by_key = next(f for f in page.forms if f["action"] == "/console/trace" and f["method"] == "post")
        status, html, _ = await client.post(
            "/console/trace",
            {sessions.CSRF_FIELD: by_key["fields"][sessions.CSRF_FIELD], "partner": "derby-pubwatch",
             "record_key": rec.source_key},
        )  # fmt: skip
        assert status == 200, html
        assert signer.message_id(rec.source_key) in html
        assert "derbyshire-police-licensing" in Page(html).body
        trace = [
            e
            for e in audit_entries(broker.settings.data_dir / "broker.db", "accessed")
            if e["resource"] == "console:trace"
        ]
        assert trace[-1]["partner"] == "derby-pubwatch"
        assert trace[-1]["message_id"] == signer.message_id(rec.source_key)
        assert rec.source_key not in str(audit_entries(broker.settings.data_dir / "broker.db"))
    finally:
        await client.close()
        await broker.stop()
