"""Creating, finding, listing, re-timing and killing sandboxes through the control plane."""

from __future__ import annotations

from datetime import UTC

import pytest

from corral import (
    AuthenticationError,
    ConnectionConfig,
    InvalidArgumentError,
    Sandbox,
    SandboxInfo,
    SandboxNotFoundError,
    SandboxNotRunningError,
    SandboxState,
    SandboxTimeoutError,
)

from .fake_corral import FakeCorral


def test_create_sends_the_requested_shape_and_returns_a_running_sandbox(
    fake: FakeCorral,
) -> None:
    """Create passes template, size, timeout, env and metadata and hands back a live id."""
    sb = Sandbox.create(
        template="python",
        cpu=2,
        memory_mb=1024,
        timeout=120,
        env={"A": "1"},
        metadata={"team": "ml"},
    )
    try:
        stored = fake.sandboxes[sb.id]
        assert (stored.template, stored.cpu, stored.memory_mb, stored.timeout_s) == (
            "python",
            2,
            1024,
            120,
        )
        assert stored.env == {"A": "1"}
        assert sb.info.metadata == {"team": "ml"}
        assert sb.info.state == SandboxState.RUNNING
        assert sb.info.created_at is not None
        assert sb.info.created_at.tzinfo is UTC
    finally:
        sb.kill()


def test_create_waits_while_the_sandbox_is_pending(fake: FakeCorral) -> None:
    """A sandbox reported pending is polled until it runs before create returns."""
    fake.create_pending_polls = 2
    with Sandbox.create() as sb:
        assert sb.info.state == SandboxState.RUNNING
        assert len(fake.requests("control", f"/v1/sandboxes/{sb.id}")) >= 2


def test_create_reports_a_slow_start_and_kills_a_sandbox_that_never_starts(
    fake: FakeCorral,
) -> None:
    """A sandbox still pending after start_timeout is killed (never billed unseen) and
    create raises SandboxTimeoutError naming it; on_pending heard about the wait at once."""
    fake.create_pending_polls = 10**6
    waits: list[tuple[str, float]] = []
    with pytest.raises(SandboxTimeoutError, match="was killed") as raised:
        Sandbox.create(start_timeout=0.5, on_pending=lambda sid, s: waits.append((sid, s)))
    sid = raised.value.sandbox_id
    assert sid is not None
    assert fake.sandboxes[sid].state == "killed"
    assert waits, "on_pending was never called"
    assert waits[0][0] == sid
    assert waits[0][1] < 0.5


def test_context_manager_kills_the_sandbox_on_exit(fake: FakeCorral) -> None:
    """Leaving the with-block kills the sandbox and closes its client."""
    with Sandbox.create() as sb:
        sid = sb.id
    assert fake.sandboxes[sid].state == "killed"
    assert [r.method for r in fake.requests("control", f"/v1/sandboxes/{sid}")] == ["DELETE"]


def test_context_manager_kills_even_when_the_block_raises(fake: FakeCorral) -> None:
    """An exception inside the with-block still kills the sandbox, and propagates."""
    sandbox = Sandbox.create()

    def use_then_fail() -> None:
        with sandbox:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        use_then_fail()
    sid = sandbox.id
    assert fake.sandboxes[sid].state == "killed"


def test_kill_returns_false_for_a_sandbox_that_is_already_gone(fake: FakeCorral) -> None:
    """Killing twice is harmless: the second kill reports that nothing was there."""
    sb = Sandbox.create()
    other = Sandbox.connect(sb.id)
    assert sb.kill() is True
    del fake.sandboxes[sb.id]
    assert other.kill() is False


def test_connect_attaches_to_an_existing_sandbox(fake: FakeCorral) -> None:
    """Connect by id returns a sandbox whose info matches the server's."""
    stored = fake.add_sandbox(metadata={"k": "v"})
    sb = Sandbox.connect(stored.id)
    try:
        assert sb.id == stored.id
        assert sb.get_info().metadata == {"k": "v"}
        assert sb.is_running()
    finally:
        sb.close()


def test_connect_to_an_unknown_sandbox_raises_sandbox_not_found(fake: FakeCorral) -> None:
    """An unknown id raises SandboxNotFoundError that tells the user how to list theirs."""
    with pytest.raises(SandboxNotFoundError, match="corral sandbox ls") as info:
        Sandbox.connect("sb-missing")
    assert info.value.status_code == 404
    assert info.value.sandbox_id == "sb-missing"


def test_connect_to_another_tenants_sandbox_raises_sandbox_not_found(fake: FakeCorral) -> None:
    """Another tenant's sandbox is indistinguishable from a missing one."""
    theirs = fake.add_sandbox(tenant_id=next(t for t in fake.tenants if t != fake.acme_id))
    with pytest.raises(SandboxNotFoundError):
        Sandbox.connect(theirs.id)


def test_connect_to_a_killed_sandbox_raises_not_running(fake: FakeCorral) -> None:
    """A sandbox in a terminal state cannot be connected to."""
    dead = fake.add_sandbox(state="timed_out")
    with pytest.raises(SandboxNotRunningError, match="timed_out"):
        Sandbox.connect(dead.id)


def test_connect_rejects_an_id_that_could_change_the_url_path(fake: FakeCorral) -> None:
    """Ids with slashes or dots never reach the server."""
    with pytest.raises(InvalidArgumentError):
        Sandbox.connect("../tenants")
    assert fake.requests("control") == []


def test_set_timeout_updates_the_sandbox(fake: FakeCorral) -> None:
    """set_timeout posts the new timeout and returns the updated info."""
    with Sandbox.create(timeout=60) as sb:
        info = sb.set_timeout(900)
        assert info.timeout_s == 900
        assert fake.sandboxes[sb.id].timeout_s == 900


def test_list_follows_cursors_across_pages(fake: FakeCorral) -> None:
    """List walks every page and returns SandboxInfo for each sandbox."""
    made = [fake.add_sandbox().id for _ in range(7)]
    found = Sandbox.list(page_size=3)
    assert [s.id for s in found] == made
    assert all(isinstance(s, SandboxInfo) for s in found)
    assert len(fake.requests("control", "/v1/sandboxes")) == 3


def test_list_limit_caps_the_total_returned(fake: FakeCorral) -> None:
    """limit stops paging once enough sandboxes have been collected."""
    for _ in range(7):
        fake.add_sandbox()
    assert len(Sandbox.list(limit=4, page_size=3)) == 4
    assert len(fake.requests("control", "/v1/sandboxes")) == 2


def test_list_filters_by_metadata_and_state(fake: FakeCorral) -> None:
    """Metadata filters must all match and state narrows further."""
    keep = fake.add_sandbox(metadata={"team": "ml", "env": "dev"})
    fake.add_sandbox(metadata={"team": "ml", "env": "prod"})
    fake.add_sandbox(metadata={"team": "ml", "env": "dev"}, state="killed")
    fake.add_sandbox(metadata={"team": "web"})
    found = Sandbox.list(metadata={"team": "ml", "env": "dev"}, state="running")
    assert [s.id for s in found] == [keep.id]


def test_list_shows_only_the_callers_own_sandboxes(fake: FakeCorral) -> None:
    """Another tenant's sandboxes never appear in the list."""
    mine = fake.add_sandbox()
    fake.add_sandbox(tenant_id=next(t for t in fake.tenants if t != fake.acme_id))
    assert [s.id for s in Sandbox.list()] == [mine.id]


def test_explicit_api_key_wins_over_the_environment(
    fake: FakeCorral, monkeypatch: pytest.MonkeyPatch
) -> None:
    """api_key= is used even when CORRAL_API_KEY holds a bad key."""
    monkeypatch.setenv("CORRAL_API_KEY", "ck_wrong")
    fake.add_sandbox()
    assert len(Sandbox.list(api_key=fake.acme_key)) == 1


def test_missing_api_key_says_which_variable_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a key anywhere, the error names CORRAL_API_KEY."""
    monkeypatch.delenv("CORRAL_API_KEY", raising=False)
    with pytest.raises(AuthenticationError, match="CORRAL_API_KEY"):
        Sandbox.create()


def test_config_reads_url_from_the_environment_and_hides_the_key_in_repr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ConnectionConfig falls back to CORRAL_API_URL and never prints the key."""
    monkeypatch.setenv("CORRAL_API_URL", "https://corral.example.com/")
    config = ConnectionConfig.resolve(api_key="ck_secret")
    assert config.api_url == "https://corral.example.com"
    assert "ck_secret" not in repr(config)


def test_config_rejects_a_url_without_a_scheme() -> None:
    """An API URL that is not http(s) is refused with the field named."""
    with pytest.raises(InvalidArgumentError) as info:
        ConnectionConfig.resolve(api_key="k", api_url="corral.example.com")
    assert info.value.field == "api_url"


def test_create_sends_the_egress_list_and_reports_it_back(fake: FakeCorral) -> None:
    """egress goes to the control plane as a list and comes back on the sandbox's info."""
    egress = ["192.0.2.10:443", "192.0.2.11:5432"]
    with Sandbox.create(isolation="microvm", egress=egress) as sb:
        stored = fake.sandboxes[sb.id]
        assert (stored.isolation, stored.egress) == ("microvm", egress)
        assert sb.info.egress == tuple(egress)
    with Sandbox.create() as plain:
        assert fake.sandboxes[plain.id].egress == []
        assert plain.info.egress == ()


def test_create_refuses_one_string_as_the_egress_list(fake: FakeCorral) -> None:
    """A bare "a.b.c.d:port" string is a mistake, not a list of one-character entries."""
    with pytest.raises(InvalidArgumentError, match="list"):
        Sandbox.create(isolation="microvm", egress="192.0.2.10:443")
    assert fake.requests("control", "/v1/sandboxes") == []
