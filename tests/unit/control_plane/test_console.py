"""The web console without a browser: sign-in, sessions, CSRF, roles, pages, errors, CSP."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from control_plane.api import create_app
from control_plane.api.services import Services
from control_plane.console.roles import ConsoleRole, Permission, allowed
from control_plane.console.web import CSP, SESSION_COOKIE
from control_plane.store import Database, console_users
from control_plane.testing import ADMIN_TOKEN, make_settings
from control_plane.transport import MemoryPublisher
from corral.testing import eventually_sync

pytestmark = pytest.mark.console

OPERATOR = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PASSWORD = "correct horse battery"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def client(database_url: str, tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(make_settings(tmp_path, database_url), publisher=MemoryPublisher())
    with TestClient(app, raise_server_exceptions=False, follow_redirects=False) as c:
        yield c


def make_user(client: TestClient, name: str = "ops", role: str = "admin") -> None:
    r = client.post(
        "/v1/console/users",
        json={"username": name, "password": PASSWORD, "role": role},
        headers=OPERATOR,
    )
    assert r.status_code == 201, r.text
    assert r.json()["role"] == role
    assert "password" not in r.text


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "page has no CSRF field"
    return found.group(1)


def sign_in(client: TestClient, name: str = "ops", password: str = PASSWORD) -> int:
    page = client.get("/console/login")
    assert page.status_code == 200
    r = client.post(
        "/console/login",
        data={"username": name, "password": password, "csrf_token": csrf_of(page.text)},
    )
    return r.status_code


def test_pages_need_a_session_and_send_you_to_sign_in(client: TestClient) -> None:
    """Without a session every page redirects to the login page, remembering where to go."""
    for path in ("/console/", "/console/tenants", "/console/audit", "/console/billing",
                 "/console/keys"):
        r = client.get(path)
        assert r.status_code == 303, path
        assert r.headers["location"] == "/console/login?" + urlencode({"next": path})
    r = client.get("/console/jobs", params={"status": "rejected"})
    assert r.headers["location"] == "/console/login?next=%2Fconsole%2Fjobs%3Fstatus%3Drejected"
    assert client.get("/console").headers["location"] == "/console/"


def test_a_user_signs_in_sees_the_overview_and_signs_out(client: TestClient) -> None:
    """The session cookie is HttpOnly and SameSite; after sign-out the old cookie is dead."""
    make_user(client)
    assert sign_in(client, password="wrong password!") == 401
    page = client.get("/console/login")
    r = client.post(
        "/console/login",
        data={"username": "ops", "password": PASSWORD, "csrf_token": csrf_of(page.text),
              "next": "/console/keys"},
    )
    assert r.status_code == 303
    assert r.headers["location"] == "/console/keys"
    cookie = next(v for k, v in r.headers.multi_items() if k == "set-cookie"
                  and v.startswith(SESSION_COOKIE))
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Path=/console" in cookie
    assert "Secure" not in cookie  # plain http here; https requests get Secure
    overview = client.get("/console/")
    assert overview.status_code == 200
    assert "agents online" in overview.text
    assert "sandboxes running" in overview.text
    token = client.cookies.get(SESSION_COOKIE)
    out = client.post("/console/logout", data={"csrf_token": csrf_of(overview.text)})
    assert out.status_code == 303
    client.cookies.set(SESSION_COOKIE, token or "", path="/console")
    assert client.get("/console/").status_code == 303


def test_cookies_are_secure_over_https(client: TestClient) -> None:
    """Behind HTTPS the login and session cookies get the Secure flag."""
    make_user(client)
    page = client.get("https://testserver/console/login")
    assert "Secure" in page.headers["set-cookie"]
    r = client.post(
        "https://testserver/console/login",
        data={"username": "ops", "password": PASSWORD, "csrf_token": csrf_of(page.text)},
    )
    assert r.status_code == 303
    session = [v for k, v in r.headers.multi_items() if k == "set-cookie"
               and v.startswith(SESSION_COOKIE + "=")]
    assert len(session) == 1
    assert "Secure" in session[0]


def test_an_open_redirect_after_sign_in_is_refused(client: TestClient) -> None:
    """``next`` may only point inside the console."""
    make_user(client)
    page = client.get("/console/login")
    r = client.post(
        "/console/login",
        data={"username": "ops", "password": PASSWORD, "csrf_token": csrf_of(page.text),
              "next": "//evil.example/console/"},
    )
    assert r.headers["location"] == "/console/"


def test_every_form_post_needs_the_csrf_token(client: TestClient) -> None:
    """A POST without the session's token changes nothing and gets the 403 page."""
    make_user(client)
    assert sign_in(client) == 303
    assert client.post("/console/tenants", data={"name": "evil"}).status_code == 403
    r = client.post("/console/tenants", data={"name": "evil", "csrf_token": "forged"})
    assert r.status_code == 403
    assert "security token" in r.text
    assert "evil" not in client.get("/console/tenants").text
    login = client.post("/console/login", data={"username": "ops", "password": PASSWORD})
    assert login.status_code == 403


def test_an_admin_creates_a_tenant_and_keys_shown_once_then_revokes(client: TestClient) -> None:
    """The first key and a new key appear once; the listing never shows secrets."""
    make_user(client)
    sign_in(client)
    token = csrf_of(client.get("/console/tenants").text)
    created = client.post("/console/tenants", data={"name": "acme", "csrf_token": token})
    assert created.status_code == 200
    first_key = re.search(r'value="(ck_[^"]+)"', created.text)
    assert first_key
    tenant_id = re.search(r'href="/console/tenants/(t_[0-9a-f]+)"', created.text)
    assert tenant_id
    page = client.get(f"/console/tenants/{tenant_id.group(1)}")
    assert first_key.group(1) not in page.text
    made = client.post(
        f"/console/tenants/{tenant_id.group(1)}/api-keys", data={"name": "ci", "csrf_token": token}
    )
    key = re.search(r'value="(ck_[^"]+)"', made.text)
    assert key
    listed = client.get("/v1/sandboxes", headers={"Authorization": f"Bearer {key.group(1)}"})
    assert listed.status_code == 200
    key_id = key.group(1).split("_")[1]
    r = client.post(
        f"/console/tenants/{tenant_id.group(1)}/api-keys/{key_id}/revoke",
        data={"csrf_token": token},
    )
    assert r.status_code == 303
    again = client.get("/v1/sandboxes", headers={"Authorization": f"Bearer {key.group(1)}"})
    assert again.status_code == 401
    assert "revoked" in client.get(r.headers["location"]).text


def test_a_billing_user_sees_billing_only_and_changes_nothing(client: TestClient) -> None:
    """Roles mirror the API: billing reads usage, invoices and exports; 403 elsewhere."""
    make_user(client, "finance", "billing")
    sign_in(client, "finance")
    assert client.get("/console/billing").status_code == 200
    export = client.get("/console/billing/export", params={"period": "2026-11", "format": "focus"})
    assert export.status_code == 200
    assert export.headers["content-disposition"].endswith('focus.csv"')
    assert "BilledCost" in export.text.splitlines()[0]
    for path in ("/console/tenants", "/console/sandboxes", "/console/jobs", "/console/audit",
                 "/console/keys"):
        r = client.get(path)
        assert r.status_code == 403, path
        assert "Not allowed" in r.text
    home = client.get("/console/")
    assert 'href="/console/tenants"' not in home.text
    r = client.post("/console/tenants", data={"name": "x", "csrf_token": csrf_of(home.text)})
    assert r.status_code == 403


def test_a_viewer_reads_everything_and_gets_no_forms(client: TestClient) -> None:
    """The viewer sees operations pages without action forms, and a POST is refused."""
    make_user(client, "watcher", "viewer")
    sign_in(client, "watcher")
    page = client.get("/console/tenants")
    assert page.status_code == 200
    assert "Create tenant" not in page.text
    assert "Rotate signing key" not in client.get("/console/keys").text
    r = client.post("/console/keys/rotate", data={"csrf_token": csrf_of(page.text)})
    assert r.status_code == 403


def test_the_role_check_is_one_function() -> None:
    """Admin may everything, viewer reads, billing reads billing, unknown roles nothing."""
    assert all(allowed(ConsoleRole.ADMIN, p) for p in Permission)
    assert allowed("viewer", Permission.VIEW_OPERATIONS)
    assert not allowed("viewer", Permission.OPERATE)
    assert allowed("billing", Permission.VIEW_BILLING)
    assert not allowed("billing", Permission.VIEW_OPERATIONS)
    assert not allowed("owner", Permission.VIEW_BILLING)


def test_passwords_are_stored_as_argon2id_hashes(client: TestClient, database_url: str) -> None:
    """No clear text in the database; weak passwords and bad roles are refused (400)."""
    make_user(client)
    db = Database(database_url)
    try:
        found = db.run_sync(lambda s: console_users.credentials(s, "ops"))
    finally:
        db.dispose()
    assert found is not None
    assert found[1].startswith("$argon2id$")
    assert PASSWORD not in found[1]
    weak = client.post("/v1/console/users", json={"username": "x", "password": "short"},
                       headers=OPERATOR)
    assert weak.status_code == 400
    assert weak.json()["error"]["field"] == "password"
    bad_role = client.post("/v1/console/users",
                           json={"username": "y", "password": PASSWORD, "role": "root"},
                           headers=OPERATOR)
    assert bad_role.json()["error"]["field"] == "role"
    taken = client.post("/v1/console/users", json={"username": "OPS", "password": PASSWORD},
                        headers=OPERATOR)
    assert taken.status_code == 409
    no_token = client.post("/v1/console/users", json={"username": "z", "password": PASSWORD})
    assert no_token.status_code == 401


def test_responses_carry_a_strict_csp_and_assets_are_local(client: TestClient) -> None:
    """Every console response has the CSP; the page links only to /console assets."""
    page = client.get("/console/login")
    assert page.headers["content-security-policy"] == CSP
    assert "script-src" not in CSP
    assert "default-src 'none'" in CSP
    assert page.headers["x-frame-options"] == "DENY"
    assert "<script" not in page.text
    for ref in re.findall(r'(?:href|src)="([^"]+)"', page.text):
        assert ref.startswith(("/console/", "#")), ref
    css = client.get("/console/static/console.css")
    assert css.status_code == 200
    assert "http" not in css.text
    assert css.headers["content-security-policy"] == CSP


def test_error_pages_are_styled_html(client: TestClient) -> None:
    """404, 400 and 403 are console pages, not JSON; the API keeps its JSON errors."""
    make_user(client)
    sign_in(client)
    missing = client.get("/console/no-such-page")
    assert missing.status_code == 404
    assert "text/html" in missing.headers["content-type"]
    assert "console.css" in missing.text
    sandbox = client.get("/console/sandboxes/sb_000000000000ffffffffffffffff")
    assert sandbox.status_code == 404
    bad = client.get("/console/billing", params={"period": "2026-13"})
    assert bad.status_code == 400
    assert "period" in bad.text
    state = client.get("/console/sandboxes", params={"state": "dancing"})
    assert state.status_code == 400
    assert client.get("/v1/nothing").headers["content-type"].startswith("application/json")


def test_an_unexpected_failure_is_a_styled_500_without_details(
    client: TestClient, database_url: str
) -> None:
    """A broken database (a table gone) gives the 500 page, never a stack trace."""
    from sqlalchemy import text

    make_user(client)
    sign_in(client)
    db = Database(database_url)
    try:
        db.run_sync(lambda s: s.execute(text("DROP TABLE usage_records")))
    finally:
        db.dispose()
    r = client.get("/console/hosts")
    assert r.status_code == 500
    assert "Something went wrong" in r.text
    assert "usage_records" not in r.text
    assert "Traceback" not in r.text
    assert r.headers["content-security-policy"] == CSP


def test_lists_page_with_next_and_first_links(client: TestClient) -> None:
    """With limit=2, three tenants make two pages; the next link keeps the limit."""
    make_user(client)
    sign_in(client)
    for name in ("a1", "a2", "a3"):
        assert client.post("/v1/tenants", json={"name": name}, headers=OPERATOR).status_code == 201
    first = client.get("/console/tenants", params={"limit": 2})
    names = re.findall(r'href="/console/tenants/t_[0-9a-f]+">(a\d)<', first.text)
    assert names == ["a3", "a2"]
    nxt = re.search(r'href="([^"]+)" rel="next"', first.text)
    assert nxt
    second = client.get(nxt.group(1).replace("&amp;", "&"))
    assert re.findall(r'href="/console/tenants/t_[0-9a-f]+">(a\d)<', second.text) == ["a1"]
    assert 'rel="next"' not in second.text
    assert "First page" in second.text


def test_empty_lists_say_so(client: TestClient) -> None:
    """A fresh install shows an empty state on every list page, not a blank table."""
    make_user(client)
    sign_in(client)
    expectations = {
        "/console/tenants": "No tenants yet",
        "/console/agents": "No agent has enrolled yet",
        "/console/hosts": "No host has reported usage",
        "/console/sandboxes": "No sandbox has been created yet",
        "/console/jobs": "No job has been sent yet",
        "/console/audit": "The audit log is empty.",
        "/console/billing": "No usage in",
    }
    for path, text in expectations.items():
        r = client.get(path)
        assert r.status_code == 200, path
        assert text in r.text, path


def test_rotating_the_signing_key_from_the_console(client: TestClient) -> None:
    """Rotate makes a new active key; the old one is retired, still published to agents."""
    make_user(client)
    sign_in(client)
    before = client.get("/v1/signing-keys").json()["keys"]
    page = client.get("/console/keys")
    assert before[0]["kid"] in page.text
    r = client.post("/console/keys/rotate", data={"csrf_token": csrf_of(page.text)})
    assert r.status_code == 303
    after = {k["kid"]: k["status"] for k in client.get("/v1/signing-keys").json()["keys"]}
    assert after[before[0]["kid"]] == "retired"
    assert list(after.values()).count("active") == 1
    assert "new signing key is active" in client.get(r.headers["location"]).text


def test_an_enrollment_token_is_shown_once_and_enrolls(client: TestClient) -> None:
    """The token from the agents page is a real one-use enrollment token."""
    make_user(client)
    sign_in(client)
    tenant = client.post("/v1/tenants", json={"name": "acme"}, headers=OPERATOR).json()
    page = client.get("/console/agents")
    token = csrf_of(page.text)
    r = client.post(
        "/console/agents/enrollment-tokens",
        data={"tenant_id": tenant["tenant"]["id"], "ttl_s": "600", "csrf_token": token},
    )
    assert r.status_code == 200
    assert re.search(r'value="cet_[^"]+"', r.text)
    bad = client.post(
        "/console/agents/enrollment-tokens",
        data={"tenant_id": tenant["tenant"]["id"], "ttl_s": "5", "csrf_token": csrf_of(page.text)},
    )
    assert bad.status_code == 400


# ---- pages over a seeded store: one tenant, one agent, sandboxes, jobs and usage ----------


def seed(database_url: str) -> dict[str, str]:
    """A tenant with an online agent on host ``rack-7``, two sandboxes (one running with
    labels, one killed), a rejected job with its reason, and 2 h of 2-vCPU usage today."""
    from datetime import timedelta

    from byoc_agent.protocol.messages import JobKind, JobStatus, SandboxState
    from control_plane.store import agents, jobs, new_id, sandboxes, tenants, usage, utcnow
    from control_plane.store.agents import AgentReport, Capacity
    from control_plane.store.sandboxes import NewSandbox
    from control_plane.store.usage import Usage

    db = Database(database_url)
    report = AgentReport(
        data_plane_url="http://10.0.0.7:8788", runtimes=("gvisor",), templates=("base",),
        capacity=Capacity(8, 6, 8192, 4096, 1), version="9.9.9-test",
    )  # fmt: skip

    def work(s: Session) -> dict[str, str]:
        tenant, _ = tenants.create_tenant(s, "seeded")
        token = agents.create_enrollment_token(s, tenant.id, 600)
        agent = agents.enroll(s, token.token, "rack-agent", "pk", report)
        agents.record_heartbeat(s, agent.id, report)
        running = sandboxes.create_sandbox(
            s, NewSandbox(tenant.id, agent.id, "base", 2, 512, 600, {"team": "ml", "run": "a"})
        )
        sandboxes.transition(s, running.id, SandboxState.RUNNING)
        killed = sandboxes.create_sandbox(
            s, NewSandbox(tenant.id, agent.id, "base", 1, 256, 600, {"team": "web"})
        )
        sandboxes.transition(s, killed.id, SandboxState.RUNNING)
        sandboxes.transition(s, killed.id, SandboxState.KILLED, reason="killed", source="api")
        job_id = new_id("j")
        jobs.create_job(s, job_id=job_id, tenant_id=tenant.id, agent_id=agent.id,
                        sandbox_id=running.id, kind=JobKind.SET_TIMEOUT, seq=7)
        jobs.complete_job(s, job_id, JobStatus.REJECTED, error_code="seq_not_increasing",
                          error_message="seq 7 is not above 9")
        now = utcnow().replace(microsecond=0)
        start = max(now - timedelta(hours=2), now.replace(hour=0, minute=0, second=0))
        end = max(now, start + timedelta(seconds=1))
        usage.record_usage(
            s,
            Usage(tenant.id, agent.id, "u-1", running.id, start, end, 2, 512, 0, None,
                  "gvisor", "base", "rack-7"),
            received_at=now,
        )
        return {"tenant": tenant.id, "agent": agent.id, "running": running.id,
                "killed": killed.id, "job": job_id}

    try:
        return db.run_sync(work)
    finally:
        db.dispose()


def test_pages_show_what_the_store_holds(client: TestClient, database_url: str) -> None:
    """Overview counts, agent status and hosts, sandbox filters and history, the rejected
    job's reason, and a usage chart with an invoice for the month."""
    ids = seed(database_url)
    make_user(client)
    sign_in(client)
    overview = client.get("/console/").text
    assert re.search(r'<span class="big">1</span> <span>agents online</span>', overview)
    assert re.search(r'<span class="big">1</span> <span>sandboxes running</span>', overview)
    assert re.search(r'<span class="big">1</span> <span>jobs rejected today</span>', overview)
    assert "vCPU-hours today" in overview

    agents_page = client.get("/console/agents").text
    assert "9.9.9-test" in agents_page
    assert "online" in agents_page
    assert "rack-7" in agents_page
    assert "rack-7" in client.get("/console/hosts").text

    def listed(**params: str) -> set[str]:
        r = client.get("/console/sandboxes", params=params)
        assert r.status_code == 200
        return set(re.findall(r'href="/console/sandboxes/(sb_[0-9a-f]+)"', r.text))

    assert listed() == {ids["running"], ids["killed"]}
    assert listed(state="killed") == {ids["killed"]}
    assert listed(metadata="team=ml run=a") == {ids["running"]}
    assert listed(metadata="team=ml", state="killed") == set()
    assert listed(tenant=ids["tenant"]) == {ids["running"], ids["killed"]}
    assert listed(tenant="t_nobody") == set()
    assert client.get("/console/sandboxes", params={"metadata": "nonsense"}).status_code == 400

    detail = client.get(f"/console/sandboxes/{ids['killed']}").text
    assert [s for s in re.findall(r'state state-(\w+)">', detail)][1:] == [
        "pending", "running", "killed"
    ]
    assert "Kill sandbox" not in detail
    assert "Kill sandbox" in client.get(f"/console/sandboxes/{ids['running']}").text

    rejected = client.get("/console/jobs", params={"status": "rejected"}).text
    assert ids["job"] in rejected
    assert "seq_not_increasing" in rejected
    assert "seq 7 is not above 9" in rejected
    assert ids["job"] not in client.get("/console/jobs", params={"status": "succeeded"}).text

    billing = client.get("/console/billing").text
    assert billing.count('<rect class="series-0"') == 2  # one day: vCPU-hours and cost
    assert "seeded" in billing
    assert re.search(r"vCPU.*?h \u00d7 ", billing, re.S)
    assert "Download export for" in billing


def test_daily_usage_splits_records_at_utc_midnight(database_url: str) -> None:
    """A record from 23:00 to 01:00 across a month end counts one hour on each day, priced
    at the list rates (vCPU-hours and GiB-hours)."""
    from datetime import UTC, date, datetime
    from decimal import Decimal

    from billing import PriceBook
    from control_plane.console import queries
    from control_plane.store import upgrade_to_head, usage, utcnow
    from control_plane.store.usage import Usage

    upgrade_to_head(database_url)
    ids = seed(database_url)
    db = Database(database_url)
    start = datetime(2020, 10, 31, 23, tzinfo=UTC)
    end = datetime(2020, 11, 1, 1, tzinfo=UTC)
    try:
        db.run_sync(lambda s: usage.record_usage(
            s, Usage(ids["tenant"], ids["agent"], "midnight", ids["running"], start, end, 4,
                     2048, 0, None, "gvisor", "base", "rack-7"), received_at=utcnow()))
        october = db.run_sync(lambda s: queries.daily_usage(
            s, start=datetime(2020, 10, 1, tzinfo=UTC), end=datetime(2020, 11, 1, tzinfo=UTC),
            pricebook=PriceBook()))
        first_of_november = db.run_sync(lambda s: queries.daily_usage(
            s, start=datetime(2020, 11, 1, tzinfo=UTC), end=datetime(2020, 11, 2, tzinfo=UTC),
            pricebook=PriceBook()))
    finally:
        db.dispose()
    assert [(d.day, d.vcpu_hours, d.gib_hours) for d in october] == [
        (date(2020, 10, 31), Decimal(4), Decimal(2))
    ]
    assert october[0].cost == Decimal(4) * Decimal("0.01667") + Decimal(2) * Decimal("0.00833")
    assert [(d.day, d.vcpu_hours) for d in first_of_november] == [(date(2020, 11, 1), Decimal(4))]


# ---- audit log and signing-key revocation -------------------------------------------------


def audit_rows(html: str) -> list[tuple[int, str]]:
    """(seq, action) of each row on the audit page, in page order."""
    return [(int(seq), action) for seq, action in re.findall(
        r"<tr(?: class=\"bad-entry\")?><td>(\d+)</td><td>[^<]*</td><td class=\"mono\">[^<]*</td>"
        r"\s*<td>[^<]*</td>\s*<td>([a-z_.]+)</td>", html)]


def test_the_audit_page_lists_filters_pages_and_verifies_the_chain(
    client: TestClient, database_url: str
) -> None:
    """Newest first; filters by tenant and action; ``verify`` says ok, then names the
    first entry an edit in the database broke."""
    from sqlalchemy import update

    from control_plane.store.audit import AuditEntryRow

    make_user(client)
    sign_in(client)
    empty = client.get("/console/audit")
    assert empty.status_code == 200
    assert "The audit log is empty." in empty.text
    acme = client.post("/v1/tenants", json={"name": "acme"}, headers=OPERATOR).json()
    other = client.post("/v1/tenants", json={"name": "other"}, headers=OPERATOR).json()
    for tenant in (acme, other, acme):
        r = client.post("/v1/agents/enrollment-tokens",
                        json={"tenant_id": tenant["tenant"]["id"], "ttl_s": 600},
                        headers=OPERATOR)
        assert r.status_code == 201
    page = client.get("/console/audit")
    assert 'aria-current="page">Audit log<' in page.text
    rows = audit_rows(page.text)
    assert [seq for seq, _ in rows] == [3, 2, 1]
    assert {a for _, a in rows} == {"enrollment_token.created"}
    assert "verify-result" not in page.text  # verifying reads the whole log: on demand

    mine = audit_rows(client.get("/console/audit",
                                 params={"tenant": acme["tenant"]["id"]}).text)
    assert [seq for seq, _ in mine] == [3, 1]
    none = client.get("/console/audit", params={"action": "signing_key.revoked"})
    assert "No audit entry matches these filters." in none.text
    first = client.get("/console/audit", params={"limit": 2, "verify": "1"})
    assert [seq for seq, _ in audit_rows(first.text)] == [3, 2]
    nxt = re.search(r'href="([^"]+)" rel="next"', first.text)
    assert nxt
    assert "verify" not in nxt.group(1)  # paging does not re-verify
    second = client.get(nxt.group(1).replace("&amp;", "&"))
    assert [seq for seq, _ in audit_rows(second.text)] == [1]
    assert client.get("/console/audit", params={"after": "x"}).status_code == 400

    ok = client.get("/console/audit", params={"verify": "1"}).text
    assert "Chain verified: all 3 entries match their hashes." in ok
    db = Database(database_url)
    try:
        db.run_sync(lambda s: s.execute(
            update(AuditEntryRow).where(AuditEntryRow.seq == 2).values(actor="someone-else")
        ))
    finally:
        db.dispose()
    bad = client.get("/console/audit", params={"verify": "1"})
    assert bad.status_code == 200
    assert "Chain broken at entry #2</strong>: entry content does not match hash" in bad.text
    assert '<tr class="bad-entry"><td>2</td>' in bad.text
    assert 'href="/console/audit?after=3"' in bad.text
    assert "Chain verified" not in bad.text


def test_a_rejected_job_is_in_the_audit_log_with_its_reason(
    database_url: str, tmp_path: Path
) -> None:
    """A job an agent refuses (its signed result says rejected) is audited as
    ``job.rejected`` with the agent's reason, and the audit page shows it."""

    publisher = MemoryPublisher()
    app = create_app(make_settings(tmp_path, database_url), publisher=publisher)
    with TestClient(app, raise_server_exceptions=False, follow_redirects=False) as client:
        svc = app.state.services
        assert isinstance(svc, Services)
        _refused_job_is_audited(client, svc, publisher)


def _refused_job_is_audited(client: TestClient, svc: Services, publisher: MemoryPublisher) -> None:
    import threading

    from byoc_agent.protocol import cosign, subjects, verify
    from byoc_agent.protocol.signing import SigningKey
    from control_plane.testing import heartbeat_message, result_message

    make_user(client)
    sign_in(client)
    made = client.post("/v1/tenants", json={"name": "acme"}, headers=OPERATOR).json()
    tenant_id = made["tenant"]["id"]
    auth = {"Authorization": f"Bearer {made['api_key']['key']}"}
    token = client.post("/v1/agents/enrollment-tokens",
                        json={"tenant_id": tenant_id, "ttl_s": 600}, headers=OPERATOR).json()
    key = SigningKey.generate()
    enrolled = client.post("/v1/agents/enroll", json={
        "token": token["token"], "name": "edge", "public_key": key.public_text,
        "data_plane_url": "http://10.0.0.5:8788", "runtimes": ["gvisor"],
        "templates": ["base"],
        "capacity": {"cpu_total": 16, "cpu_free": 16, "memory_mb_total": 32768,
                     "memory_mb_free": 32768, "sandboxes": 0},
    })
    assert enrolled.status_code == 201, enrolled.text
    agent_id = enrolled.json()["agent_id"]
    portal = client.portal  # type: ignore[attr-defined]
    portal.call(svc.inbox.handle, subjects.heartbeat(tenant_id, agent_id),
                heartbeat_message(key, agent_id=agent_id, tenant_id=tenant_id, cpu_free=16,
                                  memory_mb_free=32768))

    def agent_refuses() -> None:  # the agent's side: answer the published job, rejected
        data = eventually_sync(lambda: publisher.published, every_s=0.01, what="the job")[0].data
        job = verify.verify_signed_job(cosign.split(data)[0], keyring=verify.Keyring(
            {svc.keys.active.kid: svc.keys.active.public_key}))
        msg = result_message(key, job, status="rejected", error_code="rejected",
                             error_message="seq_not_increasing: seq 1 is not above 4")
        portal.call(svc.inbox.handle, subjects.results(tenant_id, agent_id), msg)

    agent = threading.Thread(target=agent_refuses)
    agent.start()
    created = client.post("/v1/sandboxes", json={"template": "base"}, headers=auth)
    agent.join()
    assert created.status_code >= 400  # the agent refused the create job
    page = client.get("/console/audit", params={"action": "job.rejected"}).text
    rows = audit_rows(page)
    assert [a for _, a in rows] == ["job.rejected"]
    assert "reason=seq_not_increasing" in page
    assert f"agent:{agent_id}" in page
    jobs_page = client.get("/console/jobs", params={"status": "rejected"}).text
    assert "seq 1 is not above 4" in jobs_page


def test_revoking_a_signing_key_from_the_console(client: TestClient) -> None:
    """Revoke marks a retired key revoked, is audited with the console user as actor;
    revoking the active key makes a new one active first; a viewer gets 403."""
    make_user(client)
    make_user(client, "watcher", "viewer")
    sign_in(client)
    page = client.get("/console/keys")
    assert "every agent refuses jobs and sandbox tokens signed with that kid" in page.text
    assert "within one key-refresh interval" in page.text
    token = csrf_of(page.text)
    assert client.post("/console/keys/rotate", data={"csrf_token": token}).status_code == 303
    keys = {k["kid"]: k["status"] for k in client.get("/v1/signing-keys").json()["keys"]}
    retired = next(kid for kid, status in keys.items() if status == "retired")
    active = next(kid for kid, status in keys.items() if status == "active")
    page = client.get("/console/keys").text
    assert f'action="/console/keys/{retired}/revoke"' in page
    assert f'aria-label="Revoke signing key {retired}"' in page

    r = client.post(f"/console/keys/{retired}/revoke", data={"csrf_token": token})
    assert r.status_code == 303
    assert "Agents refuse it from their next key refresh" in client.get(
        r.headers["location"]).text
    keys = {k["kid"]: k["status"] for k in client.get("/v1/signing-keys").json()["keys"]}
    assert keys[retired] == "revoked"
    assert keys[active] == "active"
    page = client.get("/console/keys").text
    assert f'action="/console/keys/{retired}/revoke"' not in page  # nothing left to revoke
    log = client.get("/console/audit", params={"action": "signing_key.revoked"}).text
    assert [a for _, a in audit_rows(log)] == ["signing_key.revoked"]
    assert retired in log
    assert "console:ops" in log
    rotated = client.get("/console/audit", params={"action": "signing_key.rotated"}).text
    assert len(audit_rows(rotated)) == 1  # the console's rotate goes through the keyring

    r = client.post(f"/console/keys/{active}/revoke", data={"csrf_token": token})
    assert r.status_code == 303
    assert "a new key was made active" in client.get(r.headers["location"]).text
    keys = {k["kid"]: k["status"] for k in client.get("/v1/signing-keys").json()["keys"]}
    assert keys[active] == "revoked"
    assert list(keys.values()).count("active") == 1
    missing = client.post("/console/keys/k_nope/revoke", data={"csrf_token": token})
    assert missing.status_code == 404

    client.cookies.clear()
    sign_in(client, "watcher")
    viewer_page = client.get("/console/keys").text
    assert "/revoke" not in viewer_page
    new_active = next(kid for kid, status in keys.items() if status == "active")
    refused = client.post(f"/console/keys/{new_active}/revoke",
                          data={"csrf_token": csrf_of(viewer_page)})
    assert refused.status_code == 403
    keys = {k["kid"]: k["status"] for k in client.get("/v1/signing-keys").json()["keys"]}
    assert keys[new_active] == "active"
    assert client.get("/console/audit").status_code == 200  # the viewer reads the log
