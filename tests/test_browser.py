"""The browser-test kit (tests/browser.py) proved on a page of its own: a small aiohttp app with a
labelled form, a CSV link and a strict Content-Security-Policy, driven in Debian's Chromium."""

from __future__ import annotations

import csv
import html
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web
from PIL import Image
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page, expect

from tests.browser import (
    AXE_SCRIPT,
    BROWSER,
    README_MAX_BYTES,
    axe_violations,
    browser_errors,
    chromium_problem,
    download,
    readme_screenshot,
    screenshot,
)

pytestmark = BROWSER

# The console's policy, roughly: nothing inline, nothing from elsewhere.
CSP = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'"
STYLE = """
body { font-family: sans-serif; margin: 0; color: #0b0c0c; background: #fff; }
header { background: #0b0c0c; color: #fff; padding: 12px 30px; font-weight: bold; }
main { max-width: 960px; margin: 0 auto; padding: 20px 30px; }
label { display: block; font-weight: bold; margin-bottom: 5px; }
input { font-size: 1.1rem; padding: 5px; border: 2px solid #0b0c0c; }
button { font-size: 1.1rem; padding: 8px 10px; background: #00703c; color: #fff; border: 0; margin-top: 15px; }
a { color: #1d70b8; }
.faint { color: #d8d8d8; }
"""


def _page(title: str, body: str) -> web.Response:
    text = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        '<link rel="stylesheet" href="/style.css"></head>'
        f"<body><header>Kit check</header><main>{body}</main></body></html>"
    )
    return web.Response(text=text, content_type="text/html", headers={"Content-Security-Policy": CSP})


async def _form(_: web.Request) -> web.Response:
    return _page(
        "Greeting",
        '<h1>Greeting</h1><form method="post" action="/greet">'
        '<label for="name">Name</label><input id="name" name="name" autocomplete="off">'
        '<div><button type="submit">Greet</button></div></form>'
        '<p><a href="/report.csv" download>Download the report (CSV)</a></p>',
    )


async def _greet(request: web.Request) -> web.Response:
    name = (await request.post()).get("name", "")
    return _page("Greeted", f"<h1>Hello, {html.escape(str(name))}</h1>")


async def _report(_: web.Request) -> web.Response:
    return web.Response(
        text="district,count\nE06000015,3\nE07000034,1\n",
        content_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="report.csv"', "Content-Security-Policy": CSP},
    )


async def _bad(_: web.Request) -> web.Response:
    """Two things axe must catch: an input with no label, and text nearly the colour of the page."""
    return _page("Bad", '<h1>Bad</h1><p class="faint">Barely visible</p><form><input name="q"></form>')


async def _inline(_: web.Request) -> web.Response:
    return _page("Inline", "<h1>Inline</h1><script>document.title = 'ran'</script>")


async def _no_icon(_: web.Request) -> web.Response:
    return web.Response(status=204)


async def _style(_: web.Request) -> web.Response:
    return web.Response(text=STYLE, content_type="text/css")


@pytest_asyncio.fixture(loop_scope="session")
async def site() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/", _form)
    app.router.add_post("/greet", _greet)
    app.router.add_get("/report.csv", _report)
    app.router.add_get("/bad", _bad)
    app.router.add_get("/inline", _inline)
    app.router.add_get("/style.css", _style)
    app.router.add_get("/favicon.ico", _no_icon)
    runner = web.AppRunner(app)
    await runner.setup()
    server = web.TCPSite(runner, "127.0.0.1", 0)
    await server.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_fill_a_labelled_input_and_submit(page: Page, site: str) -> None:
    await page.goto(site + "/")
    await page.get_by_label("Name").fill("Ada <Lovelace>")
    await page.get_by_role("button", name="Greet").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Hello, Ada <Lovelace>")
    assert page.url == site + "/greet"
    assert browser_errors(page) == []


async def test_screenshot_is_a_full_page_png(page: Page, site: str) -> None:
    await page.goto(site + "/")
    path = await screenshot(page, "kit-form")
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width == 1200
        assert image.height >= 800


async def test_readme_screenshot_is_small_and_only_on_request(
    page: Page, site: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await page.goto(site + "/")
    monkeypatch.delenv("SV_UPDATE_README_SCREENSHOTS", raising=False)
    assert await readme_screenshot(page, "kit-readme", folder=tmp_path) is None
    assert os.listdir(tmp_path) == []
    monkeypatch.setenv("SV_UPDATE_README_SCREENSHOTS", "1")
    written = await readme_screenshot(page, "kit-readme", folder=tmp_path)
    assert written == tmp_path / "kit-readme.png"
    assert written.stat().st_size < README_MAX_BYTES
    with Image.open(written) as image:
        assert image.mode == "P"
        assert image.width <= 1200


async def test_download_a_csv_through_a_link(page: Page, site: str, tmp_path: Path) -> None:
    await page.goto(site + "/")
    path = await download(page, page.get_by_role("link", name="Download the report (CSV)"), tmp_path / "downloads")
    assert path == tmp_path / "downloads" / "report.csv"
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows == [{"district": "E06000015", "count": "3"}, {"district": "E07000034", "count": "1"}]


async def test_axe_finds_nothing_serious_on_a_good_page(page: Page, site: str) -> None:
    await page.goto(site + "/")
    violations = await axe_violations(page)
    assert not violations, str(violations)
    await page.get_by_label("Name").fill("Grace")
    await page.get_by_role("button", name="Greet").click()
    violations = await axe_violations(page)
    assert not violations, str(violations)


async def test_axe_finds_an_unlabelled_input_and_low_contrast(page: Page, site: str) -> None:
    await page.goto(site + "/bad")
    violations = await axe_violations(page)
    assert {"label", "color-contrast"} <= violations.rules, str(violations)
    text = str(violations)
    assert "critical: label:" in text
    assert "serious: color-contrast:" in text
    assert '<input name="q">' in text
    assert "insufficient color contrast of 1.42" in text


async def test_axe_runs_under_a_strict_csp_that_refuses_script_tags(page: Page, site: str) -> None:
    """The page keeps its CSP: an inline <script> is refused (the browser logs it), so is
    add_script_tag, yet axe goes in through page.evaluate and runs."""
    await page.goto(site + "/inline")
    assert await page.title() == "Inline"  # the page's own inline script did not run
    assert any("Content Security Policy" in error for error in browser_errors(page))
    with pytest.raises(PlaywrightError, match="Content Security Policy"):
        await page.add_script_tag(content=AXE_SCRIPT.read_text(encoding="utf-8"))
    violations = await axe_violations(page)
    assert not violations, str(violations)
    assert await page.evaluate("typeof window.axe") == "object"


async def test_a_missing_browser_is_named_with_the_fix(tmp_path: Path) -> None:
    problem = chromium_problem(str(tmp_path / "no-chromium"))
    assert problem is not None
    assert "apt-get install -y chromium chromium-driver" in problem
