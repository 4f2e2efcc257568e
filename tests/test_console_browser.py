"""The IG console (issue 13) in a real browser (headless Debian Chromium, tests/browser.py): sign in
by pasting a token, every page on a store filled with the demo's synthetic events, a record found
by trace, the access log filtered and downloaded as CSV, held events released and discarded, sign
out; every POST form refused without its CSRF token; an analyst kept out of the IG pages; every
view audited; a screenshot of each page and axe-core on each with no serious or critical finding.

Locators go by role and label where the markup gives them (what a screen reader announces), by
the console's ids where it does not (a table, a form's submit button among several alike).
"""

from __future__ import annotations

import csv
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
import pytest_asyncio
from playwright.async_api import Page, expect

from adapters.synthetic import SyntheticGenerator
from broker.auth.broker_key import load_or_create_broker_key
from broker.auth.tokens import DEFAULT_AUDIENCE, DEFAULT_ISSUER, issue_token
from broker.console.session import COOKIE, CSRF_FIELD
from broker.demo import DemoEnvironment, bad_messages, good_messages, lifecycle_messages
from broker.service import Broker
from broker.settings import Settings
from tests.browser import BROWSER, axe_violations, browser_errors, download, readme_screenshot, screenshot
from tests.helpers import audit_entries, stored_records
from tests.test_held import AGREEMENT as HELD_AGREEMENT
from tests.test_held import past_review, police

pytestmark = BROWSER


@dataclass(frozen=True, slots=True)
class ConsolePage:
    link: str  # the navigation link's text
    path: str  # where it leads
    heading: str  # its <h1>
    resource: str  # the audit entry's resource for a view of it
    shot: str  # screenshot name (tests/screenshots/<shot>.png)
    readme: bool = True  # False: the README's picture of it is taken where it shows more (a found trace)


HOME = ConsolePage("Home", "/console", "Home", "console:home", "console-home")
PAGES = (
    HOME,
    ConsolePage("Agreements", "/console/agreements", "Agreements register", "console:agreements", "console-agreements"),
    ConsolePage("Flow map", "/console/flow-map", "Flow map", "console:flow-map", "console-flow-map"),
    ConsolePage("Access log", "/console/access", "Access log", "console:access", "console-access-log"),
    ConsolePage("Record trace", "/console/trace", "Record trace", "console:trace", "console-record-trace", False),
    ConsolePage("Trail integrity", "/console/integrity", "Trail integrity", "console:integrity", "console-integrity"),
    ConsolePage("Quarantine", "/console/quarantine", "Quarantine", "console:quarantine", "console-quarantine"),
    ConsolePage("Held events", "/console/held", "Held events", "console:held", "console-held-events"),
)
PAGE_BY_LINK = {p.link: p for p in PAGES}
ANALYST_LINKS = ("Home", "Agreements", "Flow map")
IG_ONLY = tuple(p for p in PAGES if p.link not in ANALYST_LINKS)
AGREEMENT = "dsa-nte-police-licensing-2026"  # the one the detail page test opens

ANALYST_SUB = "lic-analyst@derbyshire.police.uk"
ANALYST_CONSUMER = "derbyshire-police-licensing"
HELD_EVENTS = 6  # police events posted to be held (the policy copy's police agreement is past review,
# with a [hold]); the demo's mixed events add their police ones


# -- A broker with the demo's events in it -------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Console:
    broker: Broker
    base: str  # http://127.0.0.1:PORT

    def url(self, path: str) -> str:
        return self.base + path

    def token(self, role: str, sub: str, consumer: str | None = None) -> str:
        kid, key = load_or_create_broker_key(self.broker.settings.effective_broker_key)
        return issue_token(
            key, kid, sub=sub, role=role, consumer=consumer, ttl=timedelta(minutes=10),
            issuer=DEFAULT_ISSUER, audience=DEFAULT_AUDIENCE,
        )  # fmt: skip

    @property
    def store(self) -> Path:
        return self.broker.settings.data_dir / "broker.db"


async def _post(url: str, bodies: list[bytes]) -> list[int]:
    statuses = []
    async with aiohttp.ClientSession() as session:
        for body in bodies:
            async with session.post(
                url + "/v1/events", data=body, headers={"Content-Type": "application/cloudevents+json"}
            ) as resp:
                await resp.read()
                statuses.append(resp.status)
    return statuses


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def console(env: DemoEnvironment, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Console]:
    """One embedded broker for the module (on the session loop, where the browser lives), filled as
    the demo fills it: mixed good events, the refused ones (quarantine), a correction and a
    withdrawal; on a policy copy whose police agreement is past its review date and holds its
    events (``tests/test_held.py``), so the held page has events to release and discard; then an
    analyst's read of their feed, so the access log has someone else in it."""
    here = tmp_path_factory.mktemp("console")
    policy, keys = past_review(env, here)
    settings = Settings(
        policy_dir=policy, keys_dir=keys, secrets_file=env.secrets_file, data_dir=here / "data", http_port=0
    )
    instance = Broker(settings)
    await instance.start()
    try:
        gen = SyntheticGenerator(seed=13)
        originals, later = lifecycle_messages(env, gen)
        await _post(instance.url, [body for _, body in good_messages(env, gen, 40)])
        await _post(instance.url, originals)
        await _post(instance.url, later)
        await _post(instance.url, [body for _, body in bad_messages(env, gen)])
        assert await _post(instance.url, police(env, HELD_EVENTS, seed=13)) == [202] * HELD_EVENTS
        made = Console(instance, instance.url)
        analyst = made.token("analyst", ANALYST_SUB, ANALYST_CONSUMER)
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{instance.url}/v1/feeds/{ANALYST_CONSUMER}/records", headers={"Authorization": f"Bearer {analyst}"}
            ) as resp,
        ):
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["records"], "the analyst's feed is empty"
        yield made
    finally:
        await instance.stop()


def ig_sub() -> str:
    """A person of our own per test, so their audit entries are theirs alone."""
    return f"ig-{uuid.uuid4().hex[:8]}@derbyshire.gov.uk"


def mine(console: Console, sub: str, kind: str) -> list[dict[str, Any]]:
    return [e for e in audit_entries(console.store, kind) if e.get("sub") == sub]


async def sign_in(page: Page, console: Console, token: str) -> None:
    """As a person does: open the console, follow the refusal page's link to the sign-in form,
    paste the token, press the button."""
    await page.goto(console.url("/console"))
    await page.get_by_role("link", name="Sign in to the console").click()
    await page.get_by_label("Access token").fill(token)
    await page.get_by_role("button", name="Sign in").click()


async def sign_in_as_ig(page: Page, console: Console, sub: str | None = None) -> str:
    sub = sub or ig_sub()
    await sign_in(page, console, console.token("ig", sub))
    await expect(page.get_by_role("heading", level=1)).to_have_text(HOME.heading)
    await expect(page.locator("#signed-in-as")).to_contain_text(sub)
    return sub


def nav(page: Page) -> Any:
    return page.get_by_role("navigation", name="Console")


async def open_page(page: Page, target: ConsolePage) -> None:
    """Follow the navigation link, as a person does; the page is the current one in the nav."""
    link = nav(page).get_by_role("link", name=target.link, exact=True)
    await link.click()
    await expect(page.get_by_role("heading", level=1)).to_have_text(target.heading)
    assert urlsplit(page.url).path == target.path, page.url
    await expect(link).to_have_attribute("aria-current", "page")


SUBRESOURCES = ("/console/static/", "/console/flow-map.svg")


def page_errors(page: Page) -> list[str]:
    """What the page logged as an error, less what a browser logs for any page answered with an
    error status on purpose (a refusal, a form's errors: "Failed to load resource ... 401 (the
    page's own URL)") and for the icon it asks the origin's root for by itself (``/favicon.ico``,
    outside the console). A stylesheet or the map failing, a CSP refusal, a script error remain."""
    out = []
    for error in browser_errors(page):
        url = error.rsplit("(", 1)[-1].rstrip(")")
        if error.startswith("Failed to load resource") and (
            urlsplit(url).path == "/favicon.ico" or not urlsplit(url).path.startswith(SUBRESOURCES)
        ):
            continue
        out.append(error)
    return out


async def no_serious_findings(page: Page, what: str) -> None:
    assert page_errors(page) == [], what  # nothing refused by the console's own CSP, every asset loaded
    violations = await axe_violations(page)
    assert not violations, f"{what}: {violations}"


def session_cookies(cookies: list[Any]) -> list[Any]:
    return [c for c in cookies if c["name"] == COOKIE]


# -- sign in and out ---------------------------------------------------------------------------------------
async def test_sign_in_by_pasting_a_token_then_sign_out(page: Page, console: Console) -> None:
    response = await page.goto(console.url("/console"))
    assert response is not None
    assert response.status == 401
    await expect(page.locator("#refusal-message")).to_be_visible()
    await no_serious_findings(page, "the signed-out refusal page")
    await page.get_by_role("link", name="Sign in to the console").click()
    assert urlsplit(page.url).path == "/console/sign-in"
    await expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    await readme_screenshot(page, "console-sign-in")
    await no_serious_findings(page, "the sign-in page")

    sub = ig_sub()
    token = console.token("ig", sub)
    await page.get_by_label("Access token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text(HOME.heading)
    assert urlsplit(page.url).path == "/console"
    await expect(page.locator("#signed-in-as")).to_contain_text(f"{sub} (ig)")
    [cookie] = session_cookies(await page.context.cookies())
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/console"
    assert token not in cookie["value"]  # a session, not the bearer token kept in the browser
    assert token.split(".")[2] not in cookie["value"]

    # The skip link is the first thing the keyboard reaches, and it lands on the main content.
    await page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to main content")
    await expect(skip).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(page.locator("main#main-content")).to_be_focused()

    await page.get_by_role("button", name="Sign out").click()
    assert urlsplit(page.url).path == "/console/sign-in"
    assert parse_qs(urlsplit(page.url).query) == {"signed_out": ["1"]}
    await expect(page.get_by_role("status")).to_contain_text("You have signed out")
    await expect(page.get_by_label("Access token")).to_be_visible()
    assert session_cookies(await page.context.cookies()) == []
    response = await page.goto(console.url(PAGE_BY_LINK["Agreements"].path))
    assert response is not None
    assert response.status == 401
    await expect(page.get_by_role("link", name="Sign in to the console")).to_be_visible()
    assert page_errors(page) == []
    resources = [e["resource"] for e in mine(console, sub, "accessed")]
    assert resources[0] == "console:sign-in"
    assert resources[-1] == "console:sign-out"


async def test_a_bad_token_is_refused_at_sign_in(page: Page, console: Console) -> None:
    await sign_in(page, console, "not-a-token")
    summary = page.get_by_role("alert")  # the GOV.UK error summary
    await expect(summary).to_contain_text("There is a problem")
    await expect(summary).to_contain_text("token_malformed")
    await expect(page).to_have_title("Error: Sign in – sv-broker IG console")
    # the summary's link leads to the field, which names the error too
    await summary.get_by_role("link").click()
    await expect(page.get_by_label("Access token")).to_be_focused()
    await expect(page.locator("#token-error")).to_be_visible()
    assert session_cookies(await page.context.cookies()) == []
    await screenshot(page, "console-sign-in-refused")
    await no_serious_findings(page, "the sign-in page with an error")
    denied = audit_entries(console.store, "access_denied")
    assert (denied[-1]["route"], denied[-1]["reason"]) == ("/console/sign-in", "token_malformed")


# -- every page --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", PAGES, ids=[p.shot for p in PAGES])
async def test_each_page_opens_with_a_screenshot_and_no_serious_accessibility_finding(
    page: Page, console: Console, target: ConsolePage
) -> None:
    await sign_in_as_ig(page, console)
    if target is not HOME:
        await open_page(page, target)
    await expect(page).to_have_title(f"{target.heading} – sv-broker IG console")
    await (readme_screenshot if target.readme else screenshot)(page, target.shot)
    await no_serious_findings(page, target.link)


async def test_an_agreement_opens_from_the_register(page: Page, console: Console) -> None:
    await sign_in_as_ig(page, console)
    await open_page(page, PAGE_BY_LINK["Agreements"])
    row = page.locator(f"tr#agreement-{AGREEMENT}")
    await expect(row).to_contain_text("in force")
    await row.get_by_role("link").click()
    assert urlsplit(page.url).path == f"/console/agreements/{AGREEMENT}"
    await expect(page.locator("#agreement-id")).to_contain_text(AGREEMENT)
    await expect(page.locator("dl#agreement-summary")).to_be_visible()
    await expect(page.get_by_role("heading", name="Revision history")).to_be_visible()
    await expect(page.locator("dl#checklist")).to_be_visible()
    fields = page.locator("table[id^='fields-']").first
    await expect(fields).to_contain_text("dropped")
    await readme_screenshot(page, "console-agreement")
    await no_serious_findings(page, f"agreement {AGREEMENT}")


async def test_the_flow_map_shows_a_chosen_period(page: Page, console: Console) -> None:
    await sign_in_as_ig(page, console)
    await open_page(page, PAGE_BY_LINK["Flow map"])
    image = page.locator("img#flow-map-image")
    await expect(image).to_have_attribute("alt", await page.locator("main p.body").first.inner_text())
    assert await image.evaluate("img => img.complete && img.naturalWidth > 0"), "the map did not load"
    await page.get_by_label("From").fill("2020-01-01")
    await page.get_by_label("To", exact=True).fill("2099-12-31")
    await page.get_by_role("button", name="Show").click()
    assert parse_qs(urlsplit(page.url).query) == {"since": ["2020-01-01"], "until": ["2099-12-31"]}
    await expect(image).to_have_attribute("src", "/console/flow-map.svg?since=2020-01-01&until=2099-12-31")
    assert await image.evaluate("img => img.complete && img.naturalWidth > 0")
    caption = page.locator("table#volumes caption")
    await expect(caption).to_contain_text("2020-01-01 to 2099-12-31")
    total = int((await caption.inner_text()).rsplit(":", 1)[1].split()[0])
    assert total > 0, "no record released over the period"
    # A period that ends before it starts: the error summary, the fields named.
    await page.get_by_label("From").fill("2026-03-31")
    await page.get_by_label("To", exact=True).fill("2026-01-01")
    await page.get_by_role("button", name="Show").click()
    await expect(page.get_by_role("alert")).to_contain_text("The start of the period must be on or before its end")
    await no_serious_findings(page, "the flow map with an error")


# -- a record by trace, the access log -----------------------------------------------------------------------
async def test_find_a_record_by_trace(page: Page, console: Console) -> None:
    held = stored_records(console.store)[0]
    record_id = held.record["record_id"]
    await sign_in_as_ig(page, console)
    await open_page(page, PAGE_BY_LINK["Record trace"])
    await page.get_by_label("or a record id").fill(record_id)
    await page.locator("#trace-submit").click()
    assert parse_qs(urlsplit(page.url).query).get("record_id") == [record_id]
    recipients = page.locator("table#recipients")
    await expect(recipients).to_contain_text(record_id)
    timeline = page.locator("table#timeline")
    await expect(timeline.locator("tr[data-kind='received']")).to_have_count(1)
    await expect(timeline.locator("tr[data-kind='released']").first).to_contain_text(record_id)
    await expect(page.locator("#traced-message")).not_to_be_empty()
    await readme_screenshot(page, "console-record-trace")
    await no_serious_findings(page, "a record's trace")

    # By the message id the trace named: the same message.
    message = await page.locator("#traced-message").inner_text()
    await page.get_by_label("or a record id").fill("")
    await page.get_by_label("Message id").fill(message)
    await page.locator("#trace-submit").click()
    await expect(page.locator("#traced-message")).to_have_text(message)
    await expect(page.locator("table#recipients")).to_contain_text(record_id)

    # Not a record id: the error summary links to the field.
    await page.get_by_label("Message id").fill("")
    await page.get_by_label("or a record id").fill("rec-nothex")
    await page.locator("#trace-submit").click()
    await page.get_by_role("alert").get_by_role("link").click()
    await expect(page.get_by_label("or a record id")).to_be_focused()
    await no_serious_findings(page, "the trace page with an error")
    details = [e for e in audit_entries(console.store, "accessed") if e.get("resource") == "console:trace"]
    assert any(e.get("record_id") == record_id for e in details), details[-3:]
    # Without id keys, the by-record-key form says why and cannot be sent.
    await expect(page.locator("#no-id-keys")).to_be_visible()
    await expect(page.get_by_role("button", name="Trace by record key")).to_be_disabled()


async def test_filter_the_access_log_and_download_it_as_csv(page: Page, console: Console, tmp_path: Path) -> None:
    await sign_in_as_ig(page, console)
    await open_page(page, PAGE_BY_LINK["Access log"])
    await page.get_by_label("Person (sub)").fill(ANALYST_SUB)
    await page.get_by_label("Consumer").select_option(ANALYST_CONSUMER)
    await page.get_by_role("button", name="Filter").click()
    query = parse_qs(urlsplit(page.url).query)
    assert query["sub"] == [ANALYST_SUB]
    assert query["consumer"] == [ANALYST_CONSUMER]
    rows = page.locator("table#access tbody tr")
    await expect(rows.first).to_contain_text(ANALYST_SUB)
    shown = await rows.count()
    for index in range(shown):
        await expect(rows.nth(index)).to_contain_text(ANALYST_SUB)
        await expect(rows.nth(index)).to_contain_text(ANALYST_CONSUMER)
    await expect(page.get_by_label("Person (sub)")).to_have_value(ANALYST_SUB)  # the filter is kept
    await screenshot(page, "console-access-log-filtered")
    await no_serious_findings(page, "the filtered access log")

    link = page.get_by_role("link", name="Download these reads as CSV")
    path = await download(page, link, tmp_path)
    assert path.name == "sv-broker-access.csv"
    with path.open(newline="", encoding="utf-8") as handle:
        records = list(csv.DictReader(handle))
    assert records, "the CSV is empty"
    assert {r["sub"] for r in records} == {ANALYST_SUB}
    assert {r["consumer"] for r in records} == {ANALYST_CONSUMER}
    assert len(records) == shown  # fewer than a page: the page shows every match, so does the CSV

    # Someone who read nothing: no row, said so.
    await page.get_by_label("Person (sub)").fill("nobody@example.org")
    await page.get_by_role("button", name="Filter").click()
    await expect(page.locator("#no-reads")).to_have_text("No read matches these filters.")
    await page.get_by_role("link", name="Clear filters").click()
    await expect(page.get_by_label("Person (sub)")).to_have_value("")
    exported = [e for e in audit_entries(console.store, "accessed") if e.get("resource") == "console:access.csv"]
    assert exported
    assert exported[-1]["count"] == len(records)


# -- held events -------------------------------------------------------------------------------------------------
async def test_release_keeps_lapsed_events_held_and_a_discard_needs_a_reason(page: Page, console: Console) -> None:
    sub = await sign_in_as_ig(page, console)
    await open_page(page, PAGE_BY_LINK["Held events"])
    items = page.locator(f"table#held-items-{HELD_AGREEMENT} tbody tr")
    before = await items.count()
    assert before >= 1
    await expect(page.locator("table#held-counts")).to_contain_text("review_overdue")

    # Still past review: releasing decides them again and keeps every one held.
    await page.get_by_role("button", name=f"Release held events of {HELD_AGREEMENT}").click()
    await expect(page.get_by_role("status")).to_have_text(
        f"{HELD_AGREEMENT}: 0 released, {before} held, 0 discarded, 0 unreadable."
    )
    await expect(items).to_have_count(before)

    # A discard without a reason: refused, the error summary leads to the reason field.
    ticks = page.locator(f"input[type='checkbox'][name='ids'][form='discard-form-{HELD_AGREEMENT}']")
    first = await ticks.first.get_attribute("value")
    assert first is not None
    await page.get_by_label(f"Discard {first}").check()
    await page.locator(f"#discard-{HELD_AGREEMENT}").click()
    await page.get_by_role("alert").get_by_role("link", name="Give a reason for discarding").click()
    reason = page.get_by_label("Reason for discarding")
    await expect(reason).to_be_focused()
    await no_serious_findings(page, "the held page with an error")
    await expect(items).to_have_count(before)

    # With a reason: the ticked event is deleted, audited with who and why (the reason as a digest).
    await page.get_by_label(f"Discard {first}").check()
    await reason.fill("a duplicate of a corrected export")
    await page.locator(f"#discard-{HELD_AGREEMENT}").click()
    await expect(page.get_by_role("status")).to_have_text(f"{HELD_AGREEMENT}: 1 discarded.")
    await expect(items).to_have_count(before - 1)
    await expect(page.locator(f"#discard-{first}")).to_have_count(0)
    discarded = [e for e in audit_entries(console.store, "held_discarded") if e.get("sub") == sub]
    assert len(discarded) == 1, discarded
    assert discarded[0]["reason"] == "discarded_by_ig"
    assert "a duplicate of a corrected export" not in str(discarded[0])
    resources = [e["resource"] for e in mine(console, sub, "accessed")]
    assert "console:held-release" in resources
    assert "console:held-discard" in resources


# -- refusals ------------------------------------------------------------------------------------------------------
async def test_a_form_posted_without_its_csrf_token_is_refused(page: Page, console: Console) -> None:
    """Every POST form the console shows, sent by the browser itself (same origin, session cookie)
    with its CSRF field taken out: refused 403 and audited ``csrf_failed``; nothing happened (held
    events stay held) and the person is still signed in."""
    sub = await sign_in_as_ig(page, console)
    forms: dict[str, tuple[ConsolePage, str]] = {}  # action -> (a page showing it, its form's id)
    for target in PAGES:
        if target is not HOME:
            await open_page(page, target)
        found = await page.eval_on_selector_all(
            "form[method='post']", "forms => forms.map(f => [new URL(f.action).pathname, f.id])"
        )
        for action, form_id in found:
            forms.setdefault(action, (target, form_id))
    assert set(forms) == {"/console/sign-out", "/console/trace", "/console/held/release", "/console/held/discard"}
    held_before = await page.locator("input[type='checkbox'][id^='release-']").count()
    for action, (target, form_id) in forms.items():
        await open_page(page, target)
        form = page.locator(f"form#{form_id}")
        await expect(form.locator(f"input[name='{CSRF_FIELD}']")).to_have_count(1)
        if action == "/console/held/discard":
            await form.get_by_label("Reason for discarding").fill("no token")
            await form.locator("input[name='all']").check()
        async with page.expect_response(lambda r: r.request.method == "POST") as info:
            await form.evaluate(
                "(f, name) => { f.querySelector(`input[name='${name}']`).remove(); f.requestSubmit(); }", CSRF_FIELD
            )
        response = await info.value
        assert response.status == 403, f"{action} without its CSRF token: HTTP {response.status}"
        await expect(page.get_by_role("heading", level=1)).to_have_text("Request refused")
        await expect(page.locator("#refusal-message")).to_contain_text("security token is missing")
        await no_serious_findings(page, f"the refusal of {action}")
    await screenshot(page, "console-csrf-refused")
    denied = [e for e in mine(console, sub, "access_denied") if e.get("reason") == "csrf_failed"]
    assert sorted(e["route"] for e in denied) == sorted(forms)
    await open_page(page, PAGE_BY_LINK["Held events"])  # still signed in
    assert await page.locator("input[type='checkbox'][id^='release-']").count() == held_before
    assert not [e for e in audit_entries(console.store, "held_discarded") if e.get("sub") == sub]


async def test_an_analyst_cannot_open_ig_pages(page: Page, console: Console) -> None:
    sub = f"analyst-{uuid.uuid4().hex[:8]}@derbyshire.police.uk"
    await sign_in(page, console, console.token("analyst", sub, ANALYST_CONSUMER))
    await expect(page.locator("#signed-in-as")).to_contain_text(f"{sub} (analyst, {ANALYST_CONSUMER})")
    links = await nav(page).get_by_role("link").all_inner_texts()
    assert tuple(links) == ANALYST_LINKS  # the IG pages are not offered
    for link in ANALYST_LINKS[1:]:
        await open_page(page, PAGE_BY_LINK[link])
        await no_serious_findings(page, f"{link} for an analyst")
    await expect(page.locator("table#volumes")).not_to_contain_text("dsa-police-sv-csp-2026")  # not theirs
    for target in IG_ONLY:
        response = await page.goto(console.url(target.path))
        assert response is not None
        assert response.status == 403, f"{target.path}: HTTP {response.status}"
        await expect(page.get_by_role("heading", level=1)).to_have_text("You cannot open this page")
        await expect(page.locator("#refusal-message")).to_have_text("The analyst role may not open this page.")
        await expect(page.get_by_role("main")).not_to_contain_text(ANALYST_SUB)  # nothing of the page leaks
    await screenshot(page, "console-analyst-refused")
    await no_serious_findings(page, "the analyst's refusal")
    await page.get_by_role("link", name="Back to the console home page").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text(HOME.heading)
    denied = mine(console, sub, "access_denied")
    assert sorted(e["route"] for e in denied) == sorted(t.path for t in IG_ONLY)
    assert {(e["status"], e["reason"]) for e in denied} == {(403, "role_not_allowed")}
    assert not [e for e in mine(console, sub, "accessed") if e["resource"] in {t.resource for t in IG_ONLY}]


async def test_every_view_appears_in_the_audit(page: Page, console: Console) -> None:
    sub = await sign_in_as_ig(page, console)
    for target in PAGES[1:]:
        await open_page(page, target)
    await open_page(page, PAGE_BY_LINK["Agreements"])
    await page.locator(f"tr#agreement-{AGREEMENT}").get_by_role("link").click()
    await expect(page.locator("#agreement-id")).to_contain_text(AGREEMENT)
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.locator("#signed-out-banner")).to_be_visible()
    entries = mine(console, sub, "accessed")
    assert all(e["role"] == "ig" for e in entries)
    seen = [(e["resource"], e["route"]) for e in entries]
    expected = [("console:sign-in", "/console/sign-in"), (HOME.resource, HOME.path)]
    for target in PAGES[1:]:
        expected.append((target.resource, target.path))
        if target.link == "Flow map":  # the map itself, fetched by the <img>
            expected.append(("console:flow-map.svg", "/console/flow-map.svg"))
    expected += [
        (PAGE_BY_LINK["Agreements"].resource, PAGE_BY_LINK["Agreements"].path),
        ("console:agreement", "/console/agreements/{agreement_id}"),
        ("console:sign-out", "/console/sign-out"),
    ]
    assert seen == expected
    assert next(e for e in entries if e["resource"] == "console:agreement")["agreement_id"] == AGREEMENT


async def test_a_null_origin_is_trusted_only_with_the_browsers_same_origin_mark(console: Console) -> None:
    """Chromium sends ``Origin: null`` on every console form POST (the pages' ``Referrer-Policy:
    no-referrer``), which every test above relies on; the console takes that null origin only with
    ``Sec-Fetch-Site: same-origin``, a header pages cannot set. Without it, or cross-site: refused."""
    token = console.token("ig", ig_sub())
    async with aiohttp.ClientSession() as session:
        for site, status in ((None, 403), ("cross-site", 403), ("same-site", 403), ("same-origin", 303)):
            headers = {"Origin": "null"} | ({"Sec-Fetch-Site": site} if site else {})
            async with session.post(
                console.url("/console/sign-in"), data={"token": token}, headers=headers, allow_redirects=False
            ) as resp:
                assert resp.status == status, (site, await resp.text())
            if status == 403:
                denied = audit_entries(console.store, "access_denied")[-1]
                assert (denied["route"], denied["reason"]) == ("/console/sign-in", "cross_origin")
