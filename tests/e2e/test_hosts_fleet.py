"""Sandboxes on hosts the agent launches, through the whole stack.

The agent is configured with the AWS provider against moto's EC2 server (over HTTP) and
``CORRAL_AGENT_HOST_WORKERS=hostd``. It starts with no host. A sandbox created through the
SDK is sent to it (it offers what it may launch), waits while the fleet scales out, and
runs on the new host. moto does not boot machines, so :class:`HostBooter` plays the part
of the host coming up: for each running instance it reads the instance's user data back
from EC2 and starts ``corral-hostd`` from it, listening on the instance's private address.
The VPC is ``127.77.0.0/16``, so that address is a loopback address of this machine and no
traffic leaves it. Once the sandbox ends, the idle host is terminated in EC2 and its
hostd stopped.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from corral import Sandbox, delete_snapshot
from corral.testing import eventually_sync, free_port
from corral.testing.stack import LocalStack, StackInfo

if TYPE_CHECKING:
    from byoc_agent.hostd.testing import LocalHostd

pytestmark = [pytest.mark.e2e, pytest.mark.providers]

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / ".corral" / "templates"
REGION = "us-east-1"
TAG_MANAGED_BY = "corral:managed-by"


def _unavailable() -> str | None:
    import shutil

    if os.geteuid() != 0:
        return "gVisor sandboxes need root (runsc and cgroups)"
    if shutil.which("runsc") is None:
        return "runsc is not installed (make test installs it)"
    import importlib.util

    for name in ("boto3", "moto"):  # found, not imported: moto reads its settings on import
        if importlib.util.find_spec(name) is None:
            return f"the aws extra is not installed ({name})"
    return None


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    # Same validation as the provider suites, which need it: moto reads these when it is
    # first imported in this process, whichever suite imports it first.
    os.environ.setdefault("MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION", "true")
    os.environ.setdefault("MOTO_ENABLE_AMI_VALIDATION", "true")
    from moto import settings
    from moto.server import ThreadedMotoServer

    if not (settings.EC2_ENABLE_INSTANCE_TYPE_VALIDATION and settings.ENABLE_AMI_VALIDATION):
        pytest.fail("moto was imported before its validation settings were set")

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ec2(moto_url: str) -> Any:
    import boto3

    return boto3.session.Session(
        region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing"
    ).client("ec2", endpoint_url=moto_url)


@pytest.fixture(scope="module")
def network(ec2: Any) -> dict[str, str]:
    """A VPC on loopback addresses, its subnet, a security group, an Amazon AMI."""
    vpc = ec2.create_vpc(CidrBlock="127.77.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="127.77.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(
        GroupName="corral-hosts-e2e", Description="no ingress", VpcId=vpc
    )["GroupId"]
    image = ec2.describe_images(
        Owners=["amazon"], Filters=[{"Name": "architecture", "Values": ["x86_64"]}]
    )["Images"][0]["ImageId"]
    return {"subnet": subnet, "group": group, "image": image}


class HostBooter:
    """Boots what moto launches: each running instance managed by Corral gets hostd started
    from its own user data; a terminated one has it stopped."""

    def __init__(self, ec2: Any, root: Path, subnet_id: str) -> None:
        self.ec2 = ec2
        self.root = root
        self.subnet_id = subnet_id  # only this test's instances (moto's state is per process)
        self.hosts: dict[str, LocalHostd] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="host-booter", daemon=True)

    def __enter__(self) -> HostBooter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for hostd in self.hosts.values():
            hostd.stop()
            hostd.destroy_leftovers()  # a sandbox a failed test left on the "host"

    def _instances(self) -> list[dict[str, Any]]:
        resp = self.ec2.describe_instances(
            Filters=[{"Name": "tag-key", "Values": [TAG_MANAGED_BY]},
                     {"Name": "subnet-id", "Values": [self.subnet_id]}]
        )
        return [i for r in resp["Reservations"] for i in r["Instances"]]

    def _boot(self, instance: dict[str, Any]) -> None:
        from byoc_agent.hostd.testing import LocalHostd
        from byoc_agent.hostd.userdata import parse_user_data

        attr = self.ec2.describe_instance_attribute(
            InstanceId=instance["InstanceId"], Attribute="userData"
        )
        user_data = base64.b64decode(attr["UserData"]["Value"]).decode()
        boot = parse_user_data(user_data)
        hostd = LocalHostd(
            self.root / instance["InstanceId"], templates_dir=TEMPLATES, boot=boot,
            listen_host=instance["PrivateIpAddress"],
        )  # fmt: skip
        self.hosts[instance["InstanceId"]] = hostd
        hostd.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                for instance in self._instances():
                    iid, state = instance["InstanceId"], instance["State"]["Name"]
                    if state == "running" and iid not in self.hosts:
                        self._boot(instance)
                    elif state in ("shutting-down", "terminated") and iid in self.hosts:
                        self.hosts[iid].stop()
            except Exception as e:  # reported by the test, never swallowed silently
                self.errors.append(repr(e))
            self._stop.wait(0.2)


@pytest.fixture(scope="module")
def fleet_stack(
    moto_url: str, ec2: Any, network: dict[str, str]
) -> Iterator[tuple[StackInfo, HostBooter]]:
    with tempfile.TemporaryDirectory(prefix="corral-e2e-hosts-") as home:
        extra = {
            "CORRAL_AGENT_HOST_PROVIDER": "aws",
            "CORRAL_AGENT_HOST_AWS_REGION": REGION,
            "CORRAL_AGENT_HOST_AWS_IMAGE_ID": network["image"],
            "CORRAL_AGENT_HOST_SUBNET_ID": network["subnet"],
            "CORRAL_AGENT_HOST_SECURITY_GROUP_IDS": network["group"],
            "CORRAL_AGENT_HOST_INSTANCE_TYPES": "c5.metal",
            "CORRAL_AGENT_HOST_WORKERS": "hostd",
            "CORRAL_AGENT_HOST_WORKER_WARM_POOL": "base:1:512:gvisor=1",
            "CORRAL_AGENT_HOST_WORKER_PORT": str(free_port()),
            "CORRAL_AGENT_HOSTS_MAX": "1",
            "CORRAL_AGENT_HOSTS_IDLE_S": "2",
            "CORRAL_AGENT_HOSTS_INTERVAL_S": "0.5",
            "CORRAL_AGENT_HOSTS_READY_TIMEOUT_S": "120",
            # boto3 in the agent talks to moto, with fake keys, and never to IMDS
            "AWS_ENDPOINT_URL_EC2": moto_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(Path(home) / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(Path(home) / "no-aws-credentials"),
        }
        stack = LocalStack(
            Path(home) / "stack",
            ports={"nats": free_port(), "api": free_port(), "dataplane": free_port()},
            templates_dir=TEMPLATES,
            extra_env=extra,
        )
        with HostBooter(ec2, Path(home) / "hosts", network["subnet"]) as booter:
            try:
                info = stack.start()
                yield info, booter
            finally:
                stack.stop()


def test_a_sandbox_runs_on_a_host_the_agent_launches_for_it(
    fleet_stack: tuple[StackInfo, HostBooter], ec2: Any
) -> None:
    info, booter = fleet_stack
    assert booter.hosts == {}  # the agent starts with no host
    # it offers the control plane what it may launch: one c5.metal
    eventually_sync(lambda: agent_capacity(info)["cpu_total"] == 96,
                    what="the agent to offer one c5.metal")

    with Sandbox.create(api_url=info.api_url, api_key=info.api_key, timeout=300) as sb:
        result = sb.commands.run("echo from-the-host; hostname")
        assert result.stdout.splitlines() == ["from-the-host", sb.id]
        sb.files.write("/tmp/note.txt", "kept on the host")
        assert sb.files.read("/tmp/note.txt") == "kept on the host"
        # it runs under the hostd the booter started, not under the agent
        (instance_id, hostd) = next(iter(booter.hosts.items()))
        assert (hostd.root / "data" / "runtime").exists()
        assert sb.id in hostd.tail(100_000)
        assert ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0][
            "Instances"][0]["InstanceType"] == "c5.metal"
        # a snapshot is kept by that host's hostd; a restore runs there, as a new machine
        snap = sb.snapshot()
        assert (hostd.root / "data" / "snapshots" / snap.id).is_dir()
        with Sandbox.create(snapshot=snap, api_url=info.api_url, api_key=info.api_key,
                            timeout=300) as copy:  # fmt: skip
            assert copy.files.read("/tmp/note.txt") == "kept on the host"
            assert copy.commands.run("hostname").stdout.strip() == copy.id
            assert copy.id in hostd.tail(100_000)
        # hostd keeps one sandbox pre-started (CORRAL_AGENT_HOST_WORKER_WARM_POOL): with the
        # copy gone there is room for it again, and the next create is served by it
        eventually_sync(lambda: ready_members(hostd), within_s=60,
                        what="a ready member in hostd's warm pool")  # fmt: skip
        with Sandbox.create(api_url=info.api_url, api_key=info.api_key, timeout=300) as warm:
            hits = [line for line in hostd.tail(1_000_000).splitlines()
                    if "warm_pool_hit" in line and warm.id in line]  # fmt: skip
            assert hits, "the create was not served from hostd's warm pool"
            assert warm.commands.run("hostname").stdout.strip() == warm.id

    def state() -> str:
        resp = ec2.describe_instances(InstanceIds=[instance_id])
        return str(resp["Reservations"][0]["Instances"][0]["State"]["Name"])

    # no sandbox left, but the host keeps a snapshot: it is not scaled in (idle is 2 s)
    time.sleep(5)  # deliberate: 2.5 idle timeouts, with a fleet step every 0.5 s
    assert state() == "running"
    delete_snapshot(snap.id, api_url=info.api_url, api_key=info.api_key)
    assert not (hostd.root / "data" / "snapshots" / snap.id).exists()

    # ended: the host idles, is terminated in EC2, and its hostd stops

    eventually_sync(lambda: state() == "terminated", within_s=60,
                    what="the idle host to be terminated")
    eventually_sync(lambda: hostd.pid is None or not _alive(hostd.pid), within_s=60,
                    what="its hostd to stop")
    assert booter.errors == []


def ready_members(hostd: LocalHostd) -> set[str]:
    """The warm-pool members hostd's log says are ready and not yet taken or evicted."""
    ready: set[str] = set()
    gone: set[str] = set()
    for line in hostd.tail(10_000_000).splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a line from before logging was configured
        if event.get("event") == "warm_pool_member_ready":
            ready.add(str(event["pool_id"]))
        elif event.get("event") in ("warm_pool_hit", "warm_pool_evicted"):
            gone.add(str(event["pool_id"]))
    return ready - gone


def agent_capacity(info: StackInfo) -> dict[str, int]:
    import httpx

    resp = httpx.get(f"{info.api_url}/v1/agents",
                     headers={"authorization": f"Bearer {info.admin_token}"}, timeout=10)
    resp.raise_for_status()
    (agent,) = resp.json()["items"]
    return dict(agent["capacity"])


def _alive(pid: int) -> bool:
    with contextlib.suppress(ProcessLookupError, ChildProcessError):
        os.kill(pid, 0)
        return True
    return False
