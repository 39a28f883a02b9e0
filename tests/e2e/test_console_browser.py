"""The web console in a real headless Chromium (Debian's ``chromium``, driven by Playwright)
against the whole stack: a gVisor agent, NATS, the control plane, sandboxes from the SDK.

Screenshots of every page, wide (1280x800) and narrow (390x844), go to the directory in
``CORRAL_CONSOLE_SCREENSHOTS`` (``docs/console`` to refresh the README's), else a temp dir.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from corral import Sandbox
from corral.testing import eventually_sync
from corral.testing.stack import StackInfo

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, ViewportSize

pytestmark = [pytest.mark.console, pytest.mark.e2e, pytest.mark.gvisor, pytest.mark.nats]

WIDE: ViewportSize = {"width": 1280, "height": 800}
NARROW: ViewportSize = {"width": 390, "height": 844}


def _chromium() -> str:
    found = os.environ.get("CORRAL_CHROMIUM") or shutil.which("chromium")
    if not found:
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Browser, info: StackInfo) -> Iterator[Page]:
    """A fresh browser context, signed in as the stack's first console user; every request
    it makes must go to the control plane, and no page may log a CSP violation."""
    assert info.console_user, "the stack did not create a console user"
    context = browser.new_context(viewport=WIDE)
    pg = context.new_page()
    foreign: list[str] = []
    problems: list[str] = []
    pg.on("request", lambda r: None if r.url.startswith(info.api_url) else foreign.append(r.url))
    pg.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    pg.goto(info.console_url)
    assert "/console/login" in pg.url
    pg.get_by_label("Username").fill(info.console_user)
    pg.get_by_label("Password").fill(info.console_password)
    pg.get_by_role("button", name="Sign in").click()
    pg.wait_for_url(info.console_url)
    try:
        yield pg
    finally:
        context.close()
    assert foreign == [], "the console loaded something from another origin"
    assert [p for p in problems if "Content Security Policy" in p] == []


def _focused(page: Page) -> str:
    return str(
        page.evaluate(
            "() => { const e = document.activeElement;"
            " return e ? (e.innerText || e.value || e.getAttribute('aria-label') || e.id"
            " || e.tagName).trim() : ''; }"
        )
    )


def _tab_to(page: Page, text: str, limit: int = 60) -> list[str]:
    """Press Tab until the focused element reads ``text``; return what was focused on the way."""
    seen = []
    for _ in range(limit):
        page.keyboard.press("Tab")
        seen.append(_focused(page))
        if seen[-1] == text:
            return seen
    raise AssertionError(f"Tab never reached {text!r}; it went through {seen}")


def test_sign_in_then_create_a_tenant_and_an_api_key_by_keyboard(
    page: Page, info: StackInfo
) -> None:
    """From the skip link, Tab reaches the form; the key is shown once and works."""
    page.goto(f"{info.api_url}/console/tenants")
    page.keyboard.press("Tab")
    assert _focused(page) == "Skip to content"
    page.keyboard.press("Enter")
    _tab_to(page, "Create tenant", limit=3)  # name field, then the button
    page.keyboard.press("Shift+Tab")
    name = f"browser-{time.time_ns()}"
    page.keyboard.type(name)
    page.keyboard.press("Enter")
    page.wait_for_selector("text=is shown this once")
    first_key = page.get_by_label("API key").input_value()
    assert first_key.startswith("ck_")
    page.get_by_role("link", name=f"Go to tenant {name}").click()
    assert first_key not in page.content()
    page.get_by_label("Key name").fill("ci")
    page.get_by_role("button", name="Create API key").click()
    key = page.get_by_label("API key").input_value()
    assert key.startswith("ck_")
    assert key != first_key
    r = httpx.get(f"{info.api_url}/v1/sandboxes", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200
    page.get_by_role("link", name="Back to the tenant").click()
    assert page.get_by_role("button", name="Revoke API key ci").is_visible()
    assert key not in page.content()


def test_a_sandbox_from_the_sdk_appears_and_is_killed_from_the_console(
    page: Page, info: StackInfo
) -> None:
    """Filter by metadata, open the sandbox, kill it, and see the state and its history."""
    tag = f"console-{time.time_ns()}"
    sb = Sandbox.create(
        api_url=info.api_url, api_key=info.api_key, metadata={"suite": tag}, timeout=300
    )
    try:
        page.goto(f"{info.api_url}/console/sandboxes")
        page.get_by_label("Metadata (key=value …)").fill(f"suite={tag}")
        page.get_by_label("State").select_option("running")
        page.get_by_role("button", name="Filter").click()
        row = page.get_by_role("row").filter(has_text=sb.id)
        assert row.count() == 1
        assert "running" in row.inner_text()
        page.get_by_role("link", name=sb.id).click()
        assert "running" in page.locator("#sandbox-state").inner_text()
        page.focus("body")
        _tab_to(page, "Kill sandbox")
        page.keyboard.press("Enter")
        page.wait_for_selector("text=Kill sent")
        assert "killed" in page.locator("#sandbox-state").inner_text()
        history = page.get_by_role("table", name="Every state change, oldest first")
        assert [c.strip() for c in history.locator("tbody td:nth-child(3)").all_inner_texts()] == [
            "pending", "running", "killed"
        ]
        assert page.get_by_role("button", name="Kill sandbox").count() == 0
        assert sb.get_info().state == "killed"
        page.goto(f"{info.api_url}/console/jobs?tenant={info.tenant_id}")
        assert page.get_by_role("row").filter(has_text=sb.id).count() >= 2
    finally:
        sb.kill()


def _usage_recorded(info: StackInfo, period: str, sandbox_id: str) -> bool:
    """Whether the control plane holds a usage record of the sandbox (every page)."""
    cursor = None
    while True:
        params = {"period": period, "tenant_id": info.tenant_id, "limit": "200"}
        if cursor:
            params["cursor"] = cursor
        r = httpx.get(
            f"{info.api_url}/v1/billing/usage",
            params=params,
            headers={"Authorization": f"Bearer {info.admin_token}"},
        )
        r.raise_for_status()
        page = r.json()
        if any(item["sandbox_id"] == sandbox_id for item in page["items"]):
            return True
        cursor = page["next_cursor"]
        if not cursor:
            return False


def test_a_focus_export_downloads_with_the_sandboxes_usage(page: Page, info: StackInfo) -> None:
    """The billing page charts the month and its FOCUS download lists the sandbox."""
    with Sandbox.create(api_url=info.api_url, api_key=info.api_key, timeout=300) as sb:
        sb.commands.run("sleep 2")  # metered in whole seconds: live past one boundary
    period = time.strftime("%Y-%m", time.gmtime())
    eventually_sync(
        lambda: _usage_recorded(info, period, sb.id),
        within_s=60,
        every_s=0.2,
        what="the sandbox's usage to reach the control plane",
    )
    page.goto(f"{info.api_url}/console/billing")
    assert page.get_by_role("img", name=f"Daily vCPU-hours per tenant for {period}").is_visible()
    assert page.get_by_label("Format").input_value() == "focus"
    with page.expect_download() as download_info:
        page.get_by_role("button", name=f"Download export for {period}").click()
    download = download_info.value
    assert download.suggested_filename == f"corral-usage-{period}-focus.csv"
    text = Path(download.path()).read_text()
    header = text.splitlines()[0]
    for column in ("BilledCost", "ChargePeriodStart", "ResourceId", "SubAccountId"):
        assert column in header
    assert sb.id in text


def test_the_audit_log_filters_and_verifies_by_keyboard(page: Page, info: StackInfo) -> None:
    """The stack's agent enrollment is in the log; Tab reaches the filters and Verify chain,
    and the verified chain is shown on the page."""
    page.goto(f"{info.api_url}/console/audit")
    page.keyboard.press("Tab")
    assert _focused(page) == "Skip to content"
    page.keyboard.press("Enter")
    seen = _tab_to(page, "Verify chain", limit=6)
    assert seen[-2] == "Filter"
    page.keyboard.press("Enter")
    page.wait_for_selector("#verify-result")
    assert "Chain verified" in page.locator("#verify-result").inner_text()
    page.get_by_label("Action").select_option("agent.enrolled")
    page.get_by_label("Tenant").select_option(info.tenant_id)
    page.get_by_role("button", name="Filter").click()
    table = page.get_by_role("table", name="Audit entries, newest first")
    actions = table.locator("tbody td:nth-child(5)").all_inner_texts()
    assert actions
    assert {a.strip() for a in actions} == {"agent.enrolled"}
    assert page.locator("#verify-result").count() == 0


PAGES = [
    ("overview", "/console/"),
    ("tenants", "/console/tenants"),
    ("agents", "/console/agents"),
    ("hosts", "/console/hosts"),
    ("sandboxes", "/console/sandboxes"),
    ("jobs", "/console/jobs"),
    ("audit-log", "/console/audit?verify=1"),
    ("billing", "/console/billing"),
    ("signing-keys", "/console/keys"),
    ("not-found", "/console/no-such-page"),
]

UNLABELLED = """() => [...document.querySelectorAll('input, select, textarea')]
  .filter(e => e.type !== 'hidden' && !(e.labels && e.labels.length)
               && !e.getAttribute('aria-label'))
  .map(e => e.outerHTML)"""
NAMELESS_BUTTONS = """() => [...document.querySelectorAll('button, a')]
  .filter(e => !(e.innerText || '').trim() && !e.getAttribute('aria-label'))
  .map(e => e.outerHTML)"""
OVERFLOW = "() => document.documentElement.scrollWidth - window.innerWidth"


def test_every_page_is_labelled_fits_narrow_windows_and_is_screenshotted(
    page: Page, info: StackInfo, tmp_path: Path
) -> None:
    """Labels on every field, names on every control, no sideways scroll at 390 px."""
    out = Path(os.environ.get("CORRAL_CONSOLE_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    with Sandbox.create(api_url=info.api_url, api_key=info.api_key, metadata={"shot": "1"}) as sb:
        pages = [*PAGES, ("sandbox", f"/console/sandboxes/{sb.id}"),
                 ("tenant", f"/console/tenants/{info.tenant_id}")]
        for size_name, size in (("wide", WIDE), ("narrow", NARROW)):
            page.set_viewport_size(size)
            for name, path in pages:
                response = page.goto(info.api_url + path)
                assert response is not None
                assert response.status == (404 if name == "not-found" else 200), path
                assert "default-src 'none'" in response.headers["content-security-policy"]
                assert page.evaluate(UNLABELLED) == [], path
                assert page.evaluate(NAMELESS_BUTTONS) == [], path
                assert page.locator("h1").count() == 1, path
                if size_name == "narrow":
                    assert page.evaluate(OVERFLOW) <= 0, f"{path} scrolls sideways at 390 px"
                shot = out / f"{name}-{size_name}.png"
                page.screenshot(path=str(shot))
                assert shot.stat().st_size > 5000
    page.context.clear_cookies()
    for size_name, size in (("wide", WIDE), ("narrow", NARROW)):
        page.set_viewport_size(size)
        page.goto(info.console_url)
        assert page.evaluate(UNLABELLED) == []
        page.screenshot(path=str(out / f"login-{size_name}.png"))
