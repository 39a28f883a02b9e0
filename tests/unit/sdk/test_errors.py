"""HTTP failures become typed, actionable errors; sandbox tokens refresh themselves."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from corral import (
    APIError,
    AuthenticationError,
    CapacityError,
    ConflictError,
    CorralError,
    FileNotFoundInSandboxError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    Sandbox,
    SandboxNotFoundError,
    SandboxNotRunningError,
    SandboxTimeoutError,
    ServiceUnavailableError,
    TemplateNotFoundError,
)
from corral.testing import free_port

from .fake_corral import FakeCorral


@pytest.fixture
def sandbox(fake: FakeCorral) -> Iterator[Sandbox]:
    """A running sandbox on the fake, killed after the test."""
    with Sandbox.create() as sb:
        yield sb


@pytest.mark.parametrize(
    ("status", "code", "expected", "hint"),
    [
        (400, "invalid_argument", InvalidArgumentError, "for 'memory_mb'"),
        (413, "payload_too_large", InvalidArgumentError, "Send less data"),
        (401, "unauthenticated", AuthenticationError, "CORRAL_API_KEY"),
        (403, "forbidden", PermissionDeniedError, "CORRAL_ADMIN_TOKEN"),
        (404, "template_not_found", TemplateNotFoundError, "corral admin agents"),
        (409, "conflict", ConflictError, "Conflict"),
        (409, "sandbox_not_running", SandboxNotRunningError, "Create a new sandbox"),
        (503, "capacity", CapacityError, "Retry later"),
        (503, "unavailable", ServiceUnavailableError, "Retry in a moment"),
        (504, "timeout", ServiceUnavailableError, "corral sandbox ls"),
        (502, None, ServiceUnavailableError, "Bad gateway"),
        (500, "internal", APIError, "Unexpected HTTP 500"),
        (418, None, APIError, "Unexpected HTTP 418"),
    ],
)
def test_each_control_plane_error_status_maps_to_its_exception(
    fake: FakeCorral, status: int, code: str | None, expected: type[CorralError], hint: str
) -> None:
    """Every documented status raises its typed error carrying status, code and a hint."""
    fake.fail_next("control", status, code, "server says no", field="memory_mb")
    with pytest.raises(expected) as info:
        Sandbox.create()
    error = info.value
    assert type(error) is expected
    assert error.status_code == status
    assert error.code == code
    assert error.request_id == "req-injected"
    assert hint in str(error)
    assert "server says no" in str(error)
    assert error.retryable is (expected in (CapacityError, ServiceUnavailableError))


def test_invalid_argument_carries_the_field(fake: FakeCorral) -> None:
    """A real 400 from the server names the offending field."""
    with pytest.raises(InvalidArgumentError) as info:
        Sandbox.create(cpu=0)
    assert info.value.field == "cpu"
    assert "'cpu'" in str(info.value)


def test_unknown_template_raises_template_not_found(fake: FakeCorral) -> None:
    """A template no agent offers raises TemplateNotFoundError, a NotFoundError."""
    with pytest.raises(TemplateNotFoundError) as info:
        Sandbox.create(template="nope")
    assert isinstance(info.value, NotFoundError)


def test_too_many_cpus_raises_a_retryable_capacity_error(fake: FakeCorral) -> None:
    """Asking for more than any agent has raises CapacityError suggesting a smaller ask."""
    with pytest.raises(CapacityError, match="fewer CPUs") as info:
        Sandbox.create(cpu=64)
    assert info.value.retryable


def test_a_wrong_api_key_raises_authentication_error(
    fake: FakeCorral, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rejected key raises AuthenticationError naming the variable to check."""
    monkeypatch.setenv("CORRAL_API_KEY", "ck_wrong_key")
    with pytest.raises(AuthenticationError, match="Check CORRAL_API_KEY"):
        Sandbox.list()


def test_a_non_json_error_body_is_quoted_in_the_message(fake: FakeCorral) -> None:
    """An HTML error page from a proxy still gives a typed error with its text."""
    fake.fail_next("control", 502, raw="<html>upstream down</html>")
    with pytest.raises(ServiceUnavailableError, match="upstream down") as info:
        Sandbox.list()
    assert info.value.code is None


def test_an_unreadable_success_body_raises_api_error(fake: FakeCorral) -> None:
    """A 200 whose body is not the expected shape raises APIError, not a pydantic error."""
    fake.fail_next("control", 200, raw="not json at all")
    with pytest.raises(APIError, match="compatible"):
        Sandbox.list()


def test_an_unreachable_api_raises_service_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused connection becomes ServiceUnavailableError naming the URL and variable."""
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServiceUnavailableError, match="CORRAL_API_URL") as info:
        Sandbox.list(api_key="ck_x", api_url=url)
    assert url in str(info.value)
    assert info.value.retryable
    assert info.value.__cause__ is not None


def test_data_plane_404_for_the_sandbox_raises_sandbox_not_found(
    sandbox: Sandbox, fake: FakeCorral
) -> None:
    """A data plane that no longer knows the sandbox raises SandboxNotFoundError."""
    fake.fail_next("data", 404, "not_found", "no such sandbox", path_contains="/files")
    with pytest.raises(SandboxNotFoundError):
        sandbox.files.read("/tmp/x")


def test_data_plane_timeout_code_raises_sandbox_timeout(sandbox: Sandbox, fake: FakeCorral) -> None:
    """A data-plane timeout is a SandboxTimeoutError, not a generic failure."""
    fake.fail_next("data", 504, "timeout", "runtime did not answer", path_contains="/exec")
    with pytest.raises(SandboxTimeoutError, match="runtime did not answer"):
        sandbox.commands.run("true")


def test_exec_on_a_killed_sandbox_raises_not_running(sandbox: Sandbox, fake: FakeCorral) -> None:
    """Exec after the sandbox ended raises SandboxNotRunningError."""
    fake.sandboxes[sandbox.id].state = "killed"
    with pytest.raises(SandboxNotRunningError):
        sandbox.commands.run("true")


def test_file_not_found_code_from_the_data_plane_maps_to_file_error(
    sandbox: Sandbox, fake: FakeCorral
) -> None:
    """A file_not_found code maps to FileNotFoundInSandboxError even on list."""
    with pytest.raises(FileNotFoundInSandboxError, match="/missing"):
        sandbox.files.list("/missing")


def test_a_401_from_the_data_plane_refreshes_the_token_and_retries_once(
    sandbox: Sandbox, fake: FakeCorral
) -> None:
    """An expired token is replaced via the control plane and the call succeeds."""
    sandbox.commands.run("true")
    before = len(fake.requests("control", "/token"))
    fake.expire_tokens()
    assert sandbox.commands.run("echo again").stdout == "again\n"
    assert len(fake.requests("control", "/token")) == before + 1
    assert len(fake.requests("data", "/exec")) == 3


def test_a_401_on_an_upload_retries_with_the_whole_body(sandbox: Sandbox, fake: FakeCorral) -> None:
    """A retried upload resends the full body, including from a seekable file object."""
    import io

    fake.expire_tokens()
    sandbox.files.write("/tmp/retry.bin", io.BytesIO(b"0123456789" * 1000))
    assert sandbox.files.read("/tmp/retry.bin", format="bytes") == b"0123456789" * 1000


def test_a_token_near_expiry_is_refreshed_before_the_call(fake: FakeCorral) -> None:
    """A token within the refresh margin is replaced before use, so no 401 is seen."""
    fake.token_ttl_s = 5
    with Sandbox.create() as sb:
        sb.commands.run("true")
        sb.commands.run("true")
        assert len(fake.requests("control", "/token")) == 2
    assert all(s.path.endswith("/exec") for s in fake.requests("data"))


def test_a_token_the_data_plane_keeps_rejecting_raises_authentication_error(
    sandbox: Sandbox, fake: FakeCorral
) -> None:
    """After one refresh and a second 401, the error surfaces with advice to reconnect."""
    fake.reject_all_tokens = True
    with pytest.raises(AuthenticationError, match=r"Sandbox\.connect") as info:
        sandbox.commands.run("true")
    assert info.value.sandbox_id == sandbox.id


def test_connect_fetches_a_token_only_when_the_data_plane_is_first_used(
    fake: FakeCorral,
) -> None:
    """Connecting is one control-plane call; the token comes with the first exec."""
    stored = fake.add_sandbox()
    sb = Sandbox.connect(stored.id)
    assert fake.requests("control", "/token") == []
    assert sb.commands.run("echo hi").stdout == "hi\n"
    assert len(fake.requests("control", "/token")) == 1
    sb.close()


def test_create_without_embedded_access_fetches_a_token(fake: FakeCorral) -> None:
    """A create response without data-plane access still works: the SDK asks for a token."""
    fake.create_includes_access = False
    with Sandbox.create() as sb:
        assert sb.commands.run("echo ok").stdout == "ok\n"
    assert len(fake.requests("control", "/token")) == 1


def test_using_a_killed_sandbox_object_says_how_to_reconnect(sandbox: Sandbox) -> None:
    """After kill the client is closed and further calls explain what to do."""
    sandbox.kill()
    with pytest.raises(CorralError, match=r"Sandbox.connect"):
        sandbox.get_info()
