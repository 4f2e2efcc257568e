"""Browser tests: Debian's Chromium driven by Playwright (async API), screenshots and an axe-core check.

The browser is a system package, like RabbitMQ: ``apt-get install chromium chromium-driver``
puts it at /usr/bin/chromium (``SV_TEST_CHROMIUM`` names another). Playwright's own browser
download (``playwright install``) is never used. Without the browser the tests skip with the
apt-get line; in CI (CI=true) they fail.

Why the async API on a session loop: the tests in this repository are asyncio tests (auto mode)
and Playwright's sync API refuses to run inside a running loop. One browser serves the whole
session, so it lives on pytest-asyncio's session loop, and so must every test and fixture that
touches it (Playwright objects belong to the loop that made them). A browser test module says::

    pytestmark = BROWSER

and starts any server it drives in a fixture with ``loop_scope="session"`` (the ``broker``
fixture of conftest.py runs on a function loop, which is not running while such a test runs).

Helpers: :func:`screenshot` (full page, into a scratch folder, never committed),
:func:`readme_screenshot` (a small palette PNG for the README, written only when
``SV_UPDATE_README_SCREENSHOTS=1``), :func:`download` (click, save into the test's tmp_path),
:func:`axe_violations` (the vendored axe-core, tests/assets/axe.min.js) and
:func:`browser_errors` (what the page logged as an error: a CSP violation, an uncaught exception).
"""

from __future__ import annotations

import io
import os
import shutil
import weakref
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio

from tests.rabbitmq_cluster import skip_or_fail

if TYPE_CHECKING:
    from playwright.async_api import Browser, Locator, Page

# Every browser test runs on the session loop (see the module docstring).
BROWSER = pytest.mark.asyncio(loop_scope="session")

CHROMIUM = os.environ.get("SV_TEST_CHROMIUM", "/usr/bin/chromium")
INSTALL_HINT = "apt-get update && apt-get install -y chromium chromium-driver"
# The flags this machine's probe starts Chromium with. Without the background-networking ones the
# browser keeps dialling Google's hosts, which a closed network refuses. Playwright adds --headless,
# --no-sandbox (chromium_sandbox=False: the tests run as root in CI) and a new empty
# --user-data-dir of its own (it refuses one in ``args``).
CHROMIUM_ARGS = (
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
# One viewport for every page: screenshots are 1200 CSS pixels wide at scale 1, the README's width.
VIEWPORT = {"width": 1200, "height": 800}

# A locator that finds nothing fails in 10 s, not Playwright's 30 (two cores, a page on loopback).
ACTION_TIMEOUT_MS = 10_000

ASSETS = Path(__file__).resolve().parent / "assets"
AXE_SCRIPT = ASSETS / "axe.min.js"
README_SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
README_MAX_BYTES = 150_000
README_COLOURS = 64  # palette size: text anti-aliasing survives, the file stays small
README_MAX_HEIGHT = 1600  # a README picture shows the top of a long page (the scratch copy keeps all of it)


def chromium_problem(executable: str = CHROMIUM) -> str | None:
    """None if a browser can be started from ``executable``, else why not (with the fix)."""
    path = Path(executable) if os.sep in executable else None
    found = str(path) if path is not None else shutil.which(executable)
    if found is None or not Path(found).is_file():
        return f"Chromium is not installed at {executable} (SV_TEST_CHROMIUM); install it with `{INSTALL_HINT}`"
    if not os.access(found, os.X_OK):
        return f"{found} is not executable"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError as exc:
        return f"playwright is not installed ({exc}): `.venv/bin/pip install -e '.[dev]'`"
    return None


@dataclass
class _Session:
    """Where this session's screenshots go and what was written there (the summary prints it)."""

    screenshot_dir: Path | None = None
    taken: list[Path] = field(default_factory=list)


SESSION = _Session()


def _screenshot_dir() -> Path:
    if SESSION.screenshot_dir is None:
        raise RuntimeError("screenshot() needs the `browser` fixture (it chooses the folder)")
    SESSION.screenshot_dir.mkdir(parents=True, exist_ok=True)
    return SESSION.screenshot_dir


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Browser]:
    """Headless Debian Chromium for the whole session. Missing: skipped, or failed in CI."""
    problem = chromium_problem()
    if problem is not None:
        skip_or_fail(problem)
    from playwright.async_api import async_playwright

    chosen = os.environ.get("SV_SCREENSHOT_DIR")
    SESSION.screenshot_dir = Path(chosen) if chosen else tmp_path_factory.getbasetemp() / "screenshots"
    async with async_playwright() as playwright:
        instance = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, chromium_sandbox=False, args=list(CHROMIUM_ARGS)
        )
        try:
            yield instance
        finally:
            await instance.close()


_ERRORS: weakref.WeakKeyDictionary[Any, list[str]] = weakref.WeakKeyDictionary()


@pytest_asyncio.fixture(loop_scope="session")
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A fresh context (no cookies, no storage, en-GB) and page for one test; downloads accepted (save
    them with :func:`download`); what the page logs as an error is kept for :func:`browser_errors`."""
    context = await browser.new_context(
        viewport=VIEWPORT, accept_downloads=True, device_scale_factor=1, locale="en-GB"
    )  # en-GB: the pages' language, so a date field reads dd/mm/yyyy as a British user's browser shows it
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    opened = await context.new_page()
    errors: list[str] = []
    _ERRORS[opened] = errors
    opened.on(
        "console",
        lambda message: (
            errors.append(f"{message.text} ({message.location.get('url', '')})") if message.type == "error" else None
        ),
    )
    opened.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))
    try:
        yield opened
    finally:
        await context.close()


def browser_errors(page: Page) -> list[str]:
    """What the page logged as an error so far (CSP refusals, uncaught exceptions, failed loads)."""
    return list(_ERRORS.get(page, []))


async def screenshot(page: Page, name: str) -> Path:
    """A full-page PNG of what the page shows now, in the session's screenshot folder
    (``SV_SCREENSHOT_DIR``, else ``<pytest basetemp>/screenshots``). Never committed."""
    path = _screenshot_dir() / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    SESSION.taken.append(path)
    print(f"screenshot: {path}")
    return path


async def readme_screenshot(page: Page, name: str, folder: Path = README_SCREENSHOTS) -> Path | None:
    """:func:`screenshot`, and with ``SV_UPDATE_README_SCREENSHOTS=1`` a small copy for the README
    in tests/screenshots/ (at most 1200 px wide and 1600 px high, the top of a longer page, a
    64-colour palette PNG, under 150 KB). Returns the README copy's path, or None when not asked to
    update them."""
    full = await screenshot(page, name)
    if os.environ.get("SV_UPDATE_README_SCREENSHOTS") != "1":
        return None
    return shrink_png(full, folder / f"{name}.png")


def shrink_png(source: Path, target: Path, width: int = VIEWPORT["width"], max_height: int = README_MAX_HEIGHT) -> Path:
    """``source`` at most ``width`` px wide (scaled) and ``max_height`` px high (its top kept),
    mapped onto a palette and optimised, written to ``target``."""
    from PIL import Image

    with Image.open(source) as image:
        picture = image.convert("RGB")
    if picture.width > width:
        picture = picture.resize((width, round(picture.height * width / picture.width)), Image.Resampling.LANCZOS)
    if picture.height > max_height:
        picture = picture.crop((0, 0, picture.width, max_height))
    palette = picture.quantize(colors=README_COLOURS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG", optimize=True)
    if buffer.tell() > README_MAX_BYTES:
        raise AssertionError(
            f"{target.name} would be {buffer.tell()} bytes (limit {README_MAX_BYTES}): shorten the page shown"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(buffer.getvalue())
    print(f"README screenshot: {target} ({buffer.tell()} bytes)")
    return target


async def download(page: Page, trigger: Locator, into: Path) -> Path:
    """Click ``trigger`` (a link or button that downloads) and save the file into ``into``."""
    async with page.expect_download() as info:
        await trigger.click()
    got = await info.value
    failure = await got.failure()
    if failure is not None:
        raise AssertionError(f"download of {got.url} failed: {failure}")
    path = into / got.suggested_filename  # save_as makes the folder
    await got.save_as(path)
    return path


@dataclass(frozen=True, slots=True)
class Violation:
    """One axe-core rule a page breaks, with the elements that break it."""

    rule: str
    impact: str
    help: str
    help_url: str
    targets: tuple[str, ...]  # CSS selectors of the offending elements
    snippets: tuple[str, ...]  # their HTML, as axe quotes it
    summaries: tuple[str, ...]  # what would fix each

    def __str__(self) -> str:
        lines = [f"{self.impact}: {self.rule}: {self.help} ({self.help_url})"]
        for target, snippet, summary in zip(self.targets, self.snippets, self.summaries, strict=True):
            lines.append(f"    at {target}: {snippet}")
            lines.extend(f"      {line.strip()}" for line in summary.splitlines() if line.strip())
        return "\n".join(lines)


class Violations(list[Violation]):
    """A list of violations whose text is readable in an assertion message."""

    def __str__(self) -> str:
        if not self:
            return "no accessibility violations"
        return f"{len(self)} accessibility violation(s):\n" + "\n".join(str(v) for v in self)

    @property
    def rules(self) -> set[str]:
        return {v.rule for v in self}


_AXE_RUN = """async (impacts) => {
    const results = await axe.run(document, {resultTypes: ["violations"]});
    return results.violations
        .filter(v => impacts.includes(v.impact))
        .map(v => ({
            rule: v.id, impact: v.impact, help: v.help, help_url: v.helpUrl,
            targets: v.nodes.map(n => n.target.join(" ")),
            snippets: v.nodes.map(n => n.html),
            summaries: v.nodes.map(n => n.failureSummary || ""),
        }));
}"""


async def axe_violations(page: Page, impacts: Iterable[str] = ("serious", "critical")) -> Violations:
    """Run the vendored axe-core on the page as it is now; the violations of the given impacts.

    The script goes in through ``page.evaluate`` (the DevTools protocol's Runtime.evaluate), which a
    page's Content-Security-Policy does not govern, so the page under test keeps its real CSP and
    no ``bypass_csp`` context is needed: ``page.add_script_tag`` would insert an inline <script>
    that a strict CSP (the console's) refuses (tests/test_browser.py shows both)."""
    if not await page.evaluate("typeof window.axe !== 'undefined'"):
        await page.evaluate(AXE_SCRIPT.read_text(encoding="utf-8") + "\n;undefined")
    found = await page.evaluate(_AXE_RUN, list(impacts))
    return Violations(
        Violation(
            rule=v["rule"],
            impact=v["impact"],
            help=v["help"],
            help_url=v["help_url"],
            targets=tuple(v["targets"]),
            snippets=tuple(v["snippets"]),
            summaries=tuple(v["summaries"]),
        )
        for v in found
    )
