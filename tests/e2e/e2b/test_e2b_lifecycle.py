"""Sandbox lifecycle through the unmodified ``e2b`` SDK against Corral's E2B API."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest
from e2b import Sandbox, SandboxInfo, SandboxQuery
from e2b import SandboxState as State
from e2b.exceptions import (
    AuthenticationException,
    NotFoundException,
    SandboxException,
    ServiceBusyException,
)

from corral.testing import eventually_sync
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
    eventually_sync(lambda: not sbx.is_running(), every_s=0.5, what="the sandbox to time out")
    # The control plane learns it from the agent's signed event, a moment later.
    eventually_sync(
        lambda: not _known(sbx.sandbox_id), every_s=0.5, what="the sandbox to be unknown"
    )
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


def test_pause_then_connect_keeps_files_and_processes() -> None:
    """``sbx.pause()`` → paused (listed, info, not running) → ``Sandbox.connect(id)`` resumes
    it: the file written and the background process started before the pause are still
    there; a second ``pause()`` of a paused sandbox is E2B's 409, which the SDK returns as
    False."""
    sbx = Sandbox.create(timeout=300, metadata={"suite": "e2b-pause"})
    try:
        sbx.files.write("/root/before-pause.txt", "kept across the pause")
        pid = sbx.commands.run("nohup sleep 900 >/dev/null 2>&1 & echo $!").stdout.strip()
        left_before = (sbx.get_info().end_at - datetime.now(UTC)).total_seconds()

        assert sbx.pause() is True
        assert not sbx.is_running()
        info = Sandbox.get_info(sbx.sandbox_id)
        assert info.state == "paused"
        # The timeout stands still while paused: what is left does not shrink.
        left_paused = (info.end_at - datetime.now(UTC)).total_seconds()
        assert left_before - 30 < left_paused <= left_before + 1
        paused = _listed(SandboxQuery(metadata={"suite": "e2b-pause"}, state=[State.PAUSED]))
        assert [(s.sandbox_id, s.state) for s in paused] == [(sbx.sandbox_id, "paused")]
        assert _listed(SandboxQuery(metadata={"suite": "e2b-pause"}, state=[State.RUNNING])) == []
        assert [s.state for s in _listed(SandboxQuery(metadata={"suite": "e2b-pause"}))] == [
            "paused"
        ]
        assert Sandbox.pause(sbx.sandbox_id) is False  # already paused: 409

        again = Sandbox.connect(sbx.sandbox_id)  # E2B's connect resumes a paused sandbox
        assert again.sandbox_id == sbx.sandbox_id
        assert again.is_running()
        assert again.get_info().state == "running"
        assert again.files.read("/root/before-pause.txt") == "kept across the pause"
        assert again.commands.run(f"kill -0 {pid} && echo alive").stdout == "alive\n"
        assert [s.state for s in _listed(SandboxQuery(metadata={"suite": "e2b-pause"}))] == [
            "running"
        ]
    finally:
        sbx.kill()


def test_pause_waits_for_commands_started_through_the_api() -> None:
    """A command still running from ``commands.run(background=True)`` holds a connection
    a pause cannot keep: the pause is refused (E2B's 503, ``ServiceBusyException``) and the sandbox
    keeps running; once the command is killed the pause goes through."""
    sbx = Sandbox.create(timeout=120)
    try:
        handle = sbx.commands.run("sleep 600", background=True)
        with pytest.raises(ServiceBusyException) as busy:
            sbx.pause()
        assert "nohup" in str(busy.value)
        assert sbx.is_running()
        assert Sandbox.get_info(sbx.sandbox_id).state == "running"
        assert handle.kill() is True
        eventually_sync(
            lambda: not sbx.commands.list(), within_s=20, every_s=0.2, what="no command left"
        )
        assert sbx.pause() is True
        assert Sandbox.get_info(sbx.sandbox_id).state == "paused"
    finally:
        sbx.kill()


def test_resume_through_the_api_and_of_a_running_sandbox() -> None:
    """E2B's ``POST /sandboxes/{id}/resume`` (the SDK's own API client): 201 with a fresh
    token for a paused sandbox, 409 for a running one; ``connect`` of a running sandbox is
    a plain 200; pausing an ended or unknown sandbox is not found."""
    from e2b.api.client.api.sandboxes import (
        post_sandboxes_sandbox_id_resume,
        post_v_2_sandboxes_sandbox_id_connect,
    )
    from e2b.api.client.models import ConnectSandboxV2, ResumedSandbox
    from e2b.api.client_sync import get_api_client
    from e2b.connection_config import ConnectionConfig

    sbx = Sandbox.create(timeout=120)
    try:
        client = get_api_client(ConnectionConfig())
        running = post_sandboxes_sandbox_id_resume.sync_detailed(
            sbx.sandbox_id, client=client, body=ResumedSandbox()
        )
        assert running.status_code == 409
        connected = post_v_2_sandboxes_sandbox_id_connect.sync_detailed(
            sbx.sandbox_id, client=client, body=ConnectSandboxV2()
        )
        assert connected.status_code == 200
        sbx.files.write("/root/state.txt", "before")
        assert sbx.pause() is True
        resumed = post_sandboxes_sandbox_id_resume.sync_detailed(
            sbx.sandbox_id, client=client, body=ResumedSandbox(timeout=200)
        )
        assert resumed.status_code == 201, resumed.content
        assert sbx.get_info().state == "running"
        left = (sbx.get_info().end_at - datetime.now(UTC)).total_seconds()
        assert 150 < left <= 201  # the resume's timeout is the time to live from now
        assert sbx.files.read("/root/state.txt") == "before"
        sbx.kill()
        with pytest.raises(NotFoundException):
            sbx.pause()
    finally:
        sbx.kill()
    with pytest.raises(NotFoundException):
        Sandbox.pause("sbx_doesnotexist")


def test_a_paused_sandbox_can_be_killed() -> None:
    """``kill`` of a paused sandbox ends it, as on E2B."""
    sbx = Sandbox.create(timeout=120, metadata={"suite": "e2b-pause-kill"})
    try:
        assert sbx.pause() is True
        assert sbx.kill() is True
        with pytest.raises(NotFoundException):
            Sandbox.get_info(sbx.sandbox_id)
        assert _listed(SandboxQuery(metadata={"suite": "e2b-pause-kill"})) == []
    finally:
        sbx.kill()


def test_filesystem_only_pause_and_reboot_resume_are_refused() -> None:
    """Corral keeps memory with every pause: ``mode="filesystem"`` and ``on_resume="reboot"``
    are refused with a reason, and the sandbox is left as it was."""
    sbx = Sandbox.create(timeout=120)
    try:
        with pytest.raises(SandboxException) as err:
            sbx.pause(mode="filesystem")
        assert "memory" in str(err.value)
        assert sbx.is_running()
        assert sbx.pause() is True
        with pytest.raises(SandboxException) as err:
            Sandbox.connect(sbx.sandbox_id, on_resume="reboot")
        assert "memory" in str(err.value)
        assert Sandbox.get_info(sbx.sandbox_id).state == "paused"
    finally:
        sbx.kill()


def _listed(query: SandboxQuery) -> list[SandboxInfo]:
    return Sandbox.list(query=query).next_items()


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
    with httpx.Client(base_url=e2b_stack.api_url, timeout=5) as http:

        def killed_and_billed() -> tuple[dict[str, object], list[dict[str, object]]] | None:
            own = http.get(f"/v1/sandboxes/{sbx.sandbox_id}", headers=tenant).json()
            records = _usage(http, e2b_stack, sbx.sandbox_id)
            return (own, records) if own["state"] == "killed" and records else None

        got = eventually_sync(
            killed_and_billed, within_s=20, every_s=0.3, what="the killed sandbox's usage"
        )
    assert got is not None
    own, records = got
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
