"""Fixtures for the HostProvider suites: one real backend per provider.

* bare metal: a loopback inventory (readiness is a real TCP connect);
* AWS: moto's EC2 server over HTTP, behind :mod:`fault_proxy` for the errors moto does not
  model. moto reads ``MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION`` and
  ``MOTO_ENABLE_AMI_VALIDATION`` when it is first imported, so it is imported inside the
  session fixture, after they are set. Every test starts from ``POST /moto-api/reset``;
* GCP: :mod:`fake_gcp` over HTTP, driven by the real google-cloud-compute REST client;
* Azure: :mod:`fake_azure` over HTTPS (self-signed certificate), driven by the real
  azure-mgmt-compute client.

Every test in this directory is marked ``providers`` (``pytest -m providers``).
"""

from __future__ import annotations

import socket
import ssl
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from fake_http import Recorder, serve
from provider_cases import (
    BM_TYPE,
    REGION,
    InventoryFaults,
    MotoEc2,
    ProviderCase,
    aws_unavailable,
    azure_unavailable,
    azure_user_data,
    gcp_unavailable,
    gcp_user_data,
    loopback_hosts,
    make_azure_provider,
    make_gcp_provider,
    moto_user_data,
    unavailable,
    use_fake_aws_env,
    write_inventory,
)

if TYPE_CHECKING:
    import boto3
    from fake_azure import FakeArm
    from fake_gcp import FakeCompute
    from fault_proxy import FaultProxy
    from mypy_boto3_ec2.client import EC2Client

GCP_TYPE = "n2-standard-32"
AZURE_SIZE = "Standard_D32s_v5"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under this directory ``providers``."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.providers)


# -- AWS ----------------------------------------------------------------------------------


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


@pytest.fixture(scope="session")
def ec2_proxy(moto_endpoint: str) -> Iterator[tuple[FaultProxy, str]]:
    """The fault proxy in front of moto, and its URL (what the provider talks to)."""
    from fault_proxy import FaultProxy

    proxy = FaultProxy(upstream=moto_endpoint)
    with serve(proxy.handle, Recorder()) as url:
        yield proxy, url


@pytest.fixture(scope="session")
def boto_session(moto_endpoint: str) -> boto3.session.Session:
    """One boto3 session for the suite: a client costs ~1 s to build until its session has
    loaded the EC2 model once. Credentials and endpoints still come from each test's env."""
    import boto3

    return boto3.session.Session(region_name=REGION)


@pytest.fixture(scope="session")
def moto_ami(moto_endpoint: str) -> str:
    """An x86_64 Amazon AMI of moto's catalogue (listing it costs ~2 s; ids survive a reset)."""
    import boto3

    ec2 = boto3.session.Session(
        region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing"
    ).client("ec2", endpoint_url=moto_endpoint)
    images = ec2.describe_images(
        Owners=["amazon"], Filters=[{"Name": "architecture", "Values": ["x86_64"]}]
    )["Images"]
    assert images, "moto offers no x86_64 Amazon AMI"
    return images[0]["ImageId"]


@pytest.fixture
def moto_ec2(
    moto_endpoint: str,
    moto_ami: str,
    boto_session: boto3.session.Session,
    ec2_proxy: tuple[FaultProxy, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Iterator[MotoEc2]:
    """A freshly reset moto EC2 with an Amazon AMI, the default subnet and a security group.

    boto3 in the provider goes through the fault proxy (``AWS_ENDPOINT_URL_EC2``); the
    client the test reads back with goes to moto directly.
    """
    proxy, proxy_url = ec2_proxy
    proxy.clear()
    reset = urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST")  # noqa: S310 (loopback http)
    with urllib.request.urlopen(reset, timeout=10) as resp:  # noqa: S310 (loopback http)
        assert resp.status == 200
    use_fake_aws_env(monkeypatch, tmp_path, proxy_url)
    ec2: EC2Client = boto_session.client(
        "ec2",
        endpoint_url=moto_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    images = ec2.describe_images(ImageIds=[moto_ami])["Images"]
    assert [i["ImageId"] for i in images] == [moto_ami]
    subnet = ec2.describe_subnets()["Subnets"][0]
    group = ec2.create_security_group(
        GroupName="corral-hosts", Description="corral hosts", VpcId=subnet["VpcId"]
    )
    yield MotoEc2(
        endpoint=moto_endpoint,
        ec2=ec2,
        image_id=moto_ami,
        subnet_id=subnet["SubnetId"],
        security_group_id=group["GroupId"],
    )
    proxy.clear()


@pytest.fixture
def aws_case(
    moto_ec2: MotoEc2, ec2_proxy: tuple[FaultProxy, str], boto_session: boto3.session.Session
) -> ProviderCase:
    from fault_proxy import Ec2Faults

    from byoc_agent.providers.aws import USER_DATA_MAX_BYTES, AwsProvider

    return ProviderCase(
        name="aws",
        # One attempt: EC2 answers InsufficientInstanceCapacity with a 500, which botocore
        # would otherwise retry with backoff.
        provider=AwsProvider(
            region=REGION, image_id=moto_ec2.image_id, max_attempts=1, session=boto_session
        ),
        reopen=lambda: AwsProvider(
            region=REGION, image_id=moto_ec2.image_id, max_attempts=1, session=boto_session
        ),
        instance_type="c5.metal",
        faults=Ec2Faults(ec2_proxy[0]),
        subnet_id=moto_ec2.subnet_id,
        security_group_ids=(moto_ec2.security_group_id,),
        user_data_limit=USER_DATA_MAX_BYTES,
        held_user_data=lambda host_id: moto_user_data(moto_ec2.ec2, host_id),
    )


# -- GCP ----------------------------------------------------------------------------------


@pytest.fixture
def gcp_fake() -> Iterator[tuple[FakeCompute, Recorder]]:
    """A fresh fake Compute Engine on a free loopback port, and the requests it received."""
    reason = gcp_unavailable()
    if reason is not None:
        pytest.skip(reason)
    from fake_gcp import FakeCompute

    fake, recorder = FakeCompute(), Recorder()
    with serve(fake.handle, recorder) as url:
        fake.base_url = url
        yield fake, recorder


@pytest.fixture
def gcp_case(gcp_fake: tuple[FakeCompute, Recorder], tmp_path: Path) -> ProviderCase:
    from fake_gcp import GcpFaults

    from byoc_agent.providers.gcp import USER_DATA_MAX_BYTES

    fake, _ = gcp_fake
    ledger = tmp_path / "gcp-ledger.json"
    return ProviderCase(
        name="gcp",
        provider=make_gcp_provider(fake, ledger),
        reopen=lambda: make_gcp_provider(fake, ledger),
        instance_type=GCP_TYPE,
        faults=GcpFaults(fake, GCP_TYPE),
        subnet_id="regions/us-central1/subnetworks/corral-hosts",
        security_group_ids=("corral-hosts",),
        user_data_limit=USER_DATA_MAX_BYTES,
        held_user_data=lambda host_id: gcp_user_data(fake, host_id),
    )


# -- Azure --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def arm_tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    """A server TLS context with a self-signed 127.0.0.1 certificate, and the cert's path."""
    reason = azure_unavailable()
    if reason is not None:
        pytest.skip(reason)
    from fake_azure import self_signed_cert

    cert, key = self_signed_cert(tmp_path_factory.mktemp("arm-tls"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context, cert


@pytest.fixture
def azure_fake(arm_tls: tuple[ssl.SSLContext, Path]) -> Iterator[tuple[FakeArm, Recorder]]:
    """A fresh fake ARM over HTTPS on a free loopback port, and the requests it received."""
    from fake_azure import FakeArm

    fake, recorder = FakeArm(), Recorder()
    with serve(fake.handle, recorder, tls=arm_tls[0]) as url:
        fake.base_url = url
        yield fake, recorder


@pytest.fixture
def azure_case(
    azure_fake: tuple[FakeArm, Recorder], arm_tls: tuple[ssl.SSLContext, Path], tmp_path: Path
) -> ProviderCase:
    from fake_azure import LOCATION, SUBSCRIPTION, TOKEN, ArmFaults

    from byoc_agent.providers.azure import USER_DATA_MAX_BYTES

    fake, _ = azure_fake
    ledger = tmp_path / "azure-ledger.json"
    network = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/corral-net/providers/Microsoft.Network"
    return ProviderCase(
        name="azure",
        provider=make_azure_provider(fake, arm_tls[1], ledger, TOKEN),
        reopen=lambda: make_azure_provider(fake, arm_tls[1], ledger, TOKEN),
        instance_type=AZURE_SIZE,
        faults=ArmFaults(fake, AZURE_SIZE),
        subnet_id=f"{network}/virtualNetworks/corral-{LOCATION}/subnets/hosts",
        security_group_ids=(f"{network}/networkSecurityGroups/corral-hosts",),
        user_data_limit=USER_DATA_MAX_BYTES,
        held_user_data=lambda host_id: azure_user_data(fake, host_id),
    )


# -- bare metal ---------------------------------------------------------------------------


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

    hosts = loopback_hosts(loopback_port)
    inventory = write_inventory(tmp_path / "inventory.json", hosts)
    return ProviderCase(
        name="baremetal",
        provider=BareMetalProvider(inventory),
        reopen=lambda: BareMetalProvider(inventory),
        instance_type=BM_TYPE,
        faults=InventoryFaults(inventory, hosts),
    )


CASES: dict[str, Callable[[pytest.FixtureRequest], ProviderCase]] = {
    "baremetal": lambda request: request.getfixturevalue("baremetal_case"),
    "aws": lambda request: request.getfixturevalue("aws_case"),
    "gcp": lambda request: request.getfixturevalue("gcp_case"),
    "azure": lambda request: request.getfixturevalue("azure_case"),
}


@pytest.fixture(params=sorted(CASES))
def provider_case(request: pytest.FixtureRequest) -> ProviderCase:
    """Each HostProvider in turn; a cloud whose SDK is missing is skipped loudly."""
    name: str = request.param
    if (reason := unavailable(name)) is not None:
        pytest.skip(reason)
    return CASES[name](request)
