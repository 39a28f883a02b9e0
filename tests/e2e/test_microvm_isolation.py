"""Isolation per workload through the whole stack: a microVM sandbox has a kernel of its own."""

from __future__ import annotations

import os
import shutil

import pytest

from corral import AdminClient, Sandbox
from corral.errors import CorralError
from corral.testing.stack import StackInfo

pytestmark = [pytest.mark.e2e, pytest.mark.microvm]


@pytest.fixture(scope="module")
def microvm_ready(info: StackInfo) -> StackInfo:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed (make test installs qemu-system-x86)")
    return info


@pytest.fixture
def sdk_env(microvm_ready: StackInfo, monkeypatch: pytest.MonkeyPatch) -> StackInfo:
    monkeypatch.setenv("CORRAL_API_URL", microvm_ready.api_url)
    monkeypatch.setenv("CORRAL_API_KEY", microvm_ready.api_key)
    return microvm_ready


def test_a_microvm_sandbox_runs_its_own_kernel(sdk_env: StackInfo) -> None:
    """isolation="microvm" boots a guest kernel (not the host's) and runs commands in it."""
    with Sandbox.create(isolation="microvm", timeout=300, metadata={"t": "microvm"}) as sb:
        assert sb.info.isolation == "microvm"
        result = sb.commands.run("uname -r; hostname; cat /proc/1/cmdline | tr '\\0' ' '")
        kernel, hostname, init = result.stdout.splitlines()
        assert kernel != os.uname().release  # a kernel of its own
        assert kernel.endswith("-cloud-amd64")
        assert hostname == sb.id
        assert "guestd.py" in init  # our daemon is PID 1 in the guest
        sb.files.write("/work/note.txt", "in a VM")
        assert sb.files.read("/work/note.txt") == "in a VM"
        listed = {s.id: s for s in Sandbox.list(metadata={"t": "microvm"})}
        assert listed[sb.id].isolation == "microvm"


def test_a_tenant_that_requires_microvm_gets_microvm_by_default(
    sdk_env: StackInfo, admin: AdminClient
) -> None:
    """Tenant policy: with microvm required, a plain create is a microVM; gvisor is refused."""
    admin.set_tenant_policy(sdk_env.tenant_id, required_isolation="microvm")
    try:
        assert admin.get_tenant(sdk_env.tenant_id).required_isolation == "microvm"
        with pytest.raises(CorralError, match="requires microvm"):
            Sandbox.create(isolation="gvisor")
        with Sandbox.create() as sb:
            assert sb.info.isolation == "microvm"
            assert sb.commands.run("uname -r").stdout.strip() != os.uname().release
    finally:
        admin.set_tenant_policy(sdk_env.tenant_id, required_isolation=None)
    with Sandbox.create() as sb:
        assert sb.info.isolation == "gvisor"
