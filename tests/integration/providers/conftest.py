"""Fixtures for the HostProvider suites: moto's EC2 server over HTTP, and a loopback inventory.

moto reads ``MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION`` and ``MOTO_ENABLE_AMI_VALIDATION``
when it is first imported, so it is imported inside the session fixture, after they are set.
One server serves the session; every test starts from ``POST /moto-api/reset``.
"""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from provider_cases import (
    BM_TYPE,
    REGION,
    MotoEc2,
    ProviderCase,
    aws_unavailable,
    loopback_hosts,
    use_fake_aws_env,
    write_inventory,
)

if TYPE_CHECKING:
    from mypy_boto3_ec2.client import EC2Client


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's EC2 server on a free loopback port, with instance-type and AMI validation on."""
    reason = aws_unavailable()
    if reason is not None:
        pytest.skip(reason)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION", "true")
        mp.setenv("MOTO_ENABLE_AMI_VALIDATION", "true")
        from moto import settings
        from moto.server import ThreadedMotoServer
    if not (settings.EC2_ENABLE_INSTANCE_TYPE_VALIDATION and settings.ENABLE_AMI_VALIDATION):
        pytest.fail(
            "moto was imported before its validation settings were set; "
            "run the provider suites in a process that has not imported moto yet"
        )
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def moto_ec2(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> MotoEc2:
    """A freshly reset moto EC2 with an Amazon AMI, the default subnet and a security group."""
    import boto3

    reset = urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST")  # noqa: S310 (loopback http)
    with urllib.request.urlopen(reset, timeout=10) as resp:  # noqa: S310 (loopback http)
        assert resp.status == 200
    use_fake_aws_env(monkeypatch, tmp_path, moto_endpoint)
    ec2: EC2Client = boto3.session.Session(region_name=REGION).client("ec2")
    images = ec2.describe_images(
        Owners=["amazon"], Filters=[{"Name": "architecture", "Values": ["x86_64"]}]
    )["Images"]
    assert images, "moto offers no x86_64 Amazon AMI"
    subnet = ec2.describe_subnets()["Subnets"][0]
    group = ec2.create_security_group(
        GroupName="corral-hosts", Description="corral hosts", VpcId=subnet["VpcId"]
    )
    return MotoEc2(
        endpoint=moto_endpoint,
        ec2=ec2,
        image_id=images[0]["ImageId"],
        subnet_id=subnet["SubnetId"],
        security_group_id=group["GroupId"],
    )


@pytest.fixture
def aws_case(moto_ec2: MotoEc2) -> ProviderCase:
    from byoc_agent.providers.aws import AwsProvider

    return ProviderCase(
        name="aws",
        provider=AwsProvider(region=REGION, image_id=moto_ec2.image_id),
        instance_type="c5.metal",
        subnet_id=moto_ec2.subnet_id,
        security_group_ids=(moto_ec2.security_group_id,),
    )


@pytest.fixture
def loopback_port() -> Iterator[int]:
    """A listening TCP socket on 127.0.0.1 (the kernel completes connects; nothing accepts)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


@pytest.fixture
def baremetal_case(tmp_path: Path, loopback_port: int) -> ProviderCase:
    from byoc_agent.providers.baremetal import BareMetalProvider

    inventory = write_inventory(tmp_path / "inventory.toml", loopback_hosts(loopback_port))
    return ProviderCase(
        name="baremetal", provider=BareMetalProvider(inventory), instance_type=BM_TYPE
    )


CASES: dict[str, Callable[[pytest.FixtureRequest], ProviderCase]] = {
    "baremetal": lambda request: request.getfixturevalue("baremetal_case"),
    "aws": lambda request: request.getfixturevalue("aws_case"),
}


@pytest.fixture(params=sorted(CASES))
def provider_case(request: pytest.FixtureRequest) -> ProviderCase:
    """Each HostProvider in turn; AWS is skipped loudly where boto3/moto are missing."""
    name: str = request.param
    if name == "aws" and (reason := aws_unavailable()) is not None:
        pytest.skip(reason)
    return CASES[name](request)
