"""What the provider suites share: the cases under test and how to set them up."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pytest

from byoc_agent.providers.base import HostProvider, HostSpec

if TYPE_CHECKING:
    from fake_azure import FakeArm
    from fake_gcp import FakeCompute
    from mypy_boto3_ec2.client import EC2Client

    from byoc_agent.providers.azure import AzureProvider
    from byoc_agent.providers.gcp import GcpProvider

REGION = "us-east-1"
BM_TYPE = "bm.8c.16g"


def gcp_unavailable() -> str | None:
    """Why the GCP suites cannot run here, or None."""
    if importlib.util.find_spec("google.cloud.compute_v1") is None:
        return "GCP provider tests need google-cloud-compute (the `gcp` extra or `dev`)"
    return None


def azure_unavailable() -> str | None:
    """Why the Azure suites cannot run here, or None."""
    if importlib.util.find_spec("azure.mgmt.compute") is None:
        return "Azure provider tests need azure-mgmt-compute (the `azure` extra or `dev`)"
    return None


class Faults(Protocol):
    """How a test makes one backend refuse a provision the way the real service would."""

    def exhaust_quota(self) -> None:
        """The account (or inventory) limit leaves no room for one more host."""

    def exhaust_capacity(self) -> None:
        """The zone/region (or inventory) has no free host of the suite's type right now."""

    def revoke_credentials(self) -> bool:
        """Make the backend refuse our credentials; False if the backend has none."""

    def restore(self) -> None:
        """Undo every fault: the same request now succeeds."""


def unavailable(name: str) -> str | None:
    return {"aws": aws_unavailable, "gcp": gcp_unavailable, "azure": azure_unavailable}.get(
        name, lambda: None
    )()


def aws_unavailable() -> str | None:
    """Why the AWS suites cannot run here, or None."""
    missing = [m for m in ("boto3", "moto", "flask") if importlib.util.find_spec(m) is None]
    if missing:
        return f"AWS provider tests need boto3 and moto[server]; missing: {', '.join(missing)}"
    return None


@dataclass(frozen=True, slots=True)
class MotoEc2:
    """A reset moto EC2 endpoint, with boto3 pointed at it through the environment."""

    endpoint: str
    ec2: EC2Client
    image_id: str
    subnet_id: str
    security_group_id: str


@dataclass(frozen=True, slots=True)
class ProviderCase:
    """One provider under the contract suite, and how to ask it for a host."""

    name: str
    provider: HostProvider
    instance_type: str
    faults: Faults | None = None
    subnet_id: str | None = None
    security_group_ids: tuple[str, ...] = field(default_factory=tuple)
    # A new provider object on the same backend and state files: the agent after a restart.
    reopen: Callable[[], HostProvider] | None = None
    # The most user-data bytes the provider delivers; None: it refuses any (bare metal).
    user_data_limit: int | None = None
    # The user data the backend holds for a host, read back the way the cloud reports it.
    held_user_data: Callable[[str], str | None] | None = None

    def spec(
        self,
        client_token: str,
        *,
        tenant: str = "t-1",
        agent: str = "a-1",
        user_data: str | None = None,
    ) -> HostSpec:
        return HostSpec(
            tenant_id=tenant,
            agent_id=agent,
            instance_type=self.instance_type,
            client_token=client_token,
            subnet_id=self.subnet_id,
            security_group_ids=self.security_group_ids,
            tags={"team": "infra"},
            user_data=user_data,
        )


def use_fake_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, endpoint: str) -> None:
    """Point boto3 at moto with fake credentials; no profile, config file or IMDS lookup."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", endpoint)


def write_inventory(path: Path, hosts: list[dict[str, object]]) -> Path:
    """Write ``hosts`` as a JSON or TOML inventory, by ``path``'s suffix."""
    if path.suffix == ".toml":
        lines: list[str] = []
        for h in hosts:
            lines.append("[[hosts]]")
            for key, value in h.items():
                if isinstance(value, dict):
                    inner = ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items())
                    lines.append(f"{key} = {{ {inner} }}")
                else:
                    lines.append(f"{key} = {json.dumps(value)}")
            lines.append("")
        path.write_text("\n".join(lines), encoding="utf-8")
    else:
        path.write_text(json.dumps({"hosts": hosts}), encoding="utf-8")
    return path


def loopback_hosts(port: int | None) -> list[dict[str, object]]:
    """Two identical loopback machines: one checked by TCP connect, one by the local check."""
    first: dict[str, object] = {"id": "rack1-01", "address": "127.0.0.1", "cpu": 8}
    if port is not None:
        first["port"] = port
    second: dict[str, object] = {"id": "rack1-02", "address": "127.0.0.1", "cpu": 8}
    for h in (first, second):
        h.update(memory_mib=16384, gpus=0, labels={"rack": "1"})
    return [first, second]


class InventoryFaults:
    """Bare metal: the quota is ``limits.max_claims``; capacity runs out when hosts are cordoned."""

    def __init__(self, path: Path, hosts: list[dict[str, object]]) -> None:
        self._path = path
        self._hosts = hosts

    def _write(self, hosts: list[dict[str, object]], limits: dict[str, int] | None = None) -> None:
        doc: dict[str, object] = {"hosts": hosts}
        if limits is not None:
            doc["limits"] = limits
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc), encoding="utf-8")
        os.replace(tmp, self._path)  # a new inode: the provider sees the change at once

    def exhaust_quota(self) -> None:
        self._write(self._hosts, {"max_claims": 0})

    def exhaust_capacity(self) -> None:
        self._write([{**h, "cordoned": True} for h in self._hosts])

    def revoke_credentials(self) -> bool:
        return False

    def restore(self) -> None:
        self._write(self._hosts)


class StaticTokenCredential:
    """An Azure ``TokenCredential`` (test code) that hands out a fixed bearer token."""

    def __init__(self, token: str) -> None:
        self.token = token

    def get_token(self, *scopes: str, **kwargs: object) -> object:
        from azure.core.credentials import AccessToken

        return AccessToken(self.token, int(time.time()) + 3600)

    def get_token_info(self, *scopes: str, options: object = None) -> object:
        from azure.core.credentials import AccessTokenInfo

        return AccessTokenInfo(self.token, int(time.time()) + 3600)


def moto_user_data(ec2: EC2Client, host_id: str) -> str | None:
    """What EC2 holds as the instance's user data (``DescribeInstanceAttribute userData``)."""
    value = ec2.describe_instance_attribute(InstanceId=host_id, Attribute="userData")[
        "UserData"
    ].get("Value")
    return base64.b64decode(value).decode() if value else None


def gcp_user_data(fake: FakeCompute, host_id: str) -> str | None:
    """The ``user-data`` metadata item of the instance, as the real client GETs it."""
    from fake_gcp import PROJECT, ZONE
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import compute_v1

    client = compute_v1.InstancesClient(
        transport="rest",
        client_options=ClientOptions(api_endpoint=fake.base_url),
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
    )
    inst = client.get(project=PROJECT, zone=ZONE, instance=host_id)
    return next((i.value for i in inst.metadata.items if i.key == "user-data"), None)


def azure_user_data(fake: FakeArm, host_id: str) -> str | None:
    """The customData the fake ARM received for the VM (ARM never returns it on a GET)."""
    value = fake.custom_data.get(host_id)
    return base64.b64decode(value, validate=True).decode() if value is not None else None


def make_gcp_provider(fake: FakeCompute, ledger: Path | None) -> GcpProvider:
    from fake_gcp import PROJECT, ZONE
    from google.auth.credentials import AnonymousCredentials

    from byoc_agent.providers.gcp import GcpConfig, GcpProvider

    config = GcpConfig(
        project=PROJECT,
        zone=ZONE,
        image="projects/debian-cloud/global/images/family/debian-12",
        machine_types=("n2-standard-32", "a3-highgpu-8g", "c3-highcpu-192-metal"),
        service_account="corral-host@corral-test.iam.gserviceaccount.com",
    )
    return GcpProvider(
        config,
        ledger_path=ledger,
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        api_endpoint=fake.base_url,
        call_timeout_s=20,
    )


def make_azure_provider(
    fake: FakeArm, cert: Path, ledger: Path | None, token: str
) -> AzureProvider:
    from fake_azure import LOCATION, RESOURCE_GROUP, SUBSCRIPTION

    from byoc_agent.providers.azure import AzureConfig, AzureProvider

    config = AzureConfig(
        subscription_id=SUBSCRIPTION,
        resource_group=RESOURCE_GROUP,
        location=LOCATION,
        image="Canonical:ubuntu-24_04-lts:server:latest",
        admin_username="corral",
        ssh_public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBvCorralTestKeyOnly corral@test",
        vm_sizes=("Standard_D32s_v5", "Standard_ND96isr_H100_v5", "Standard_F8s_v2"),
        host_identity_id=f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"
        "/providers/Microsoft.ManagedIdentity/userAssignedIdentities/corral-host",
    )
    return AzureProvider(
        config,
        ledger_path=ledger,
        credential=StaticTokenCredential(token),  # type: ignore[arg-type]
        base_url=fake.base_url,
        connection_verify=str(cert),
        polling_interval=0,
        retry_total=0,
        call_timeout_s=20,
    )
