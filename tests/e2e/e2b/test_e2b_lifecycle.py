"""Sandbox lifecycle through the unmodified ``e2b`` SDK against Corral's E2B API."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import httpx
import pytest
from e2b import Sandbox, SandboxQuery
from e2b.exceptions import (
    AuthenticationException,
    NotFoundException,
    SandboxException,
)

from corral.testing.stack import StackInfo

pytestmark = pytest.mark.usefixtures("e2b_stack")


def test_create_with_template_timeout_metadata_and_envs() -> None:
    """``Sandbox.create`` places a Corral sandbox; its envs reach commands."""
    sbx = Sandbox.create(
        template="base", timeout=120, metadata={"suite": "e2b-create"}, envs={"GREETING": "hi"}
    )
    try:
        assert sbx.sandbox_id
        info = sbx.get_info()
        assert info.template_id == "base"
        assert info.metadata == {"suite": "e2b-create"}
        left = (info.end_at - datetime.now(UTC)).total_seconds()
        assert 60 < left <= 121
        assert sbx.commands.run("echo $GREETING").stdout == "hi\n"
    finally:
        sbx.kill()


def test_list_filters_by_metadata() -> None:
    """``Sandbox.list`` with a metadata query returns only the matching running sandboxes."""
    a = Sandbox.create(timeout=120, metadata={"suite": "e2b-list", "which": "a"})
    b = Sandbox.create(timeout=120, metadata={"suite": "e2b-list", "which": "b"})
    try:
        found = Sandbox.list(query=SandboxQuery(metadata={"suite": "e2b-list"})).next_items()
        assert {s.sandbox_id for s in found} == {a.sandbox_id, b.sandbox_id}
        only_a = Sandbox.list(
            query=SandboxQuery(metadata={"suite": "e2b-list", "which": "a"})
        ).next_items()
        assert [s.sandbox_id for s in only_a] == [a.sandbox_id]
        assert only_a[0].metadata == {"suite": "e2b-list", "which": "a"}
        b.kill()
        after = Sandbox.list(query=SandboxQuery(metadata={"suite": "e2b-list"})).next_items()
        assert [s.sandbox_id for s in after] == [a.sandbox_id]
    finally:
        a.kill()
        b.kill()


def test_connect_by_id_reaches_the_same_sandbox() -> None:
    """``Sandbox.connect(id)`` gets a fresh token and sees the first handle's files."""
    first = Sandbox.create(timeout=120)
    try:
        first.files.write("/root/marker.txt", "same sandbox")
        second = Sandbox.connect(first.sandbox_id)
        assert second.sandbox_id == first.sandbox_id
        assert second.files.read("/root/marker.txt") == "same sandbox"
    finally:
        first.kill()


def test_get_info_and_set_timeout_move_the_deadline() -> None:
    """``get_info`` reports the deadline; ``set_timeout`` moves it."""
    sbx = Sandbox.create(timeout=60)
    try:
        before = sbx.get_info().end_at
        sbx.set_timeout(600)
        after = sbx.get_info()
        assert after.end_at > before
        assert 500 < (after.end_at - datetime.now(UTC)).total_seconds() <= 601
        assert after.state == "running"
        assert after.cpu_count >= 1
        assert after.memory_mb >= 128
    finally:
        sbx.kill()


def test_kill_ends_the_sandbox() -> None:
    """After ``kill`` the sandbox is gone for the SDK: not running, not found, not listed."""
    sbx = Sandbox.create(timeout=120, metadata={"suite": "e2b-kill"})
    sbx.kill()
    assert not sbx.is_running()
    with pytest.raises(NotFoundException):
        Sandbox.get_info(sbx.sandbox_id)
    assert Sandbox.kill(sbx.sandbox_id) is False
    assert Sandbox.list(query=SandboxQuery(metadata={"suite": "e2b-kill"})).next_items() == []


def test_a_sandbox_times_out_like_on_e2b() -> None:
    """A sandbox past its timeout is ended by the agent and then unknown to the SDK."""
    sbx = Sandbox.create(timeout=2)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and sbx.is_running():
        time.sleep(0.5)
    assert not sbx.is_running()
    # The control plane learns it from the agent's signed event, a moment later.
    while time.monotonic() < deadline and _known(sbx.sandbox_id):
        time.sleep(0.5)
    with pytest.raises(NotFoundException):
        Sandbox.connect(sbx.sandbox_id)


def _known(sandbox_id: str) -> bool:
    try:
        Sandbox.get_info(sandbox_id)
    except NotFoundException:
        return False
    return True


def test_a_wrong_api_key_is_an_authentication_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A key Corral does not know gets E2B's 401, which the SDK raises as its own error."""
    monkeypatch.setenv("E2B_API_KEY", "ck_nope_definitelynotakey")
    with pytest.raises(AuthenticationException):
        Sandbox.create(timeout=30)
    with pytest.raises(AuthenticationException):
        Sandbox.list().next_items()


def test_an_unknown_sandbox_is_not_found() -> None:
    """Connecting to, reading or extending a sandbox id nobody created is a not-found."""
    with pytest.raises(NotFoundException):
        Sandbox.connect("sbx_doesnotexist")
    with pytest.raises(NotFoundException):
        Sandbox.get_info("sbx_doesnotexist")
    with pytest.raises(NotFoundException):
        Sandbox.set_timeout("sbx_doesnotexist", 30)
    assert Sandbox.kill("sbx_doesnotexist") is False


def test_an_unknown_template_is_refused() -> None:
    """A template no agent offers is E2B's 404 on create."""
    with pytest.raises(SandboxException) as err:
        Sandbox.create(template="no-such-template", timeout=30)
    assert "404" in str(err.value)
    assert "no-such-template" in str(err.value) or "template" in str(err.value)


def test_pause_is_reported_as_not_supported(e2b_stack: StackInfo) -> None:
    """Pause needs the microVM runtime; until then the SDK gets a clear 501."""
    sbx = Sandbox.create(timeout=60)
    try:
        with pytest.raises(SandboxException) as err:
            sbx.pause()
        assert "501" in str(err.value)
        assert sbx.is_running()
    finally:
        sbx.kill()


@pytest.mark.asyncio
async def test_the_async_sdk_works_the_same_way() -> None:
    """``AsyncSandbox``: create, run, write, read, list, kill."""
    from e2b import AsyncSandbox

    sbx = await AsyncSandbox.create(timeout=120, metadata={"suite": "e2b-async"})
    try:
        result = await sbx.commands.run("echo async-ok")
        assert result.stdout == "async-ok\n"
        await sbx.files.write("/root/async.txt", "from asyncio")
        assert await sbx.files.read("/root/async.txt") == "from asyncio"
        listed = await AsyncSandbox.list(
            query=SandboxQuery(metadata={"suite": "e2b-async"})
        ).next_items()
        assert [s.sandbox_id for s in listed] == [sbx.sandbox_id]
    finally:
        await sbx.kill()


def test_an_e2b_sandbox_is_recorded_and_metered_like_any_other(e2b_stack: StackInfo) -> None:
    """Same service underneath: Corral's API sees it, and the agent's meter bills it."""
    sbx = Sandbox.create(timeout=120, metadata={"suite": "e2b-metered"})
    # Records cover whole seconds; a sandbox that lives less than one may bill none.
    sbx.commands.run("sleep 1.5")
    sbx.kill()
    tenant = {"authorization": f"Bearer {e2b_stack.api_key}"}
    records: list[dict[str, object]] = []
    deadline = time.monotonic() + 20
    with httpx.Client(base_url=e2b_stack.api_url, timeout=5) as http:
        while time.monotonic() < deadline:
            own = http.get(f"/v1/sandboxes/{sbx.sandbox_id}", headers=tenant).json()
            records = _usage(http, e2b_stack, sbx.sandbox_id)
            if own["state"] == "killed" and records:
                break
            time.sleep(0.3)
    assert own["state"] == "killed"
    assert own["template"] == "base"
    assert own["metadata"] == {"suite": "e2b-metered"}
    assert records, "the agent's meter sent no usage record for the E2B sandbox"


def _usage(http: httpx.Client, info: StackInfo, sandbox_id: str) -> list[dict[str, object]]:
    """The sandbox's usage records this month, following pagination."""
    params = {"period": datetime.now(UTC).strftime("%Y-%m"), "tenant_id": info.tenant_id,
              "limit": "50"}
    headers = {"authorization": f"Bearer {info.admin_token}"}
    found: list[dict[str, object]] = []
    while True:
        page = http.get("/v1/billing/usage", params=params, headers=headers)
        page.raise_for_status()
        body = page.json()
        found += [u for u in body["items"] if u["sandbox_id"] == sandbox_id]
        if not body["next_cursor"]:
            return found
        params["cursor"] = body["next_cursor"]
