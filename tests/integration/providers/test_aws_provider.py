"""AwsProvider against moto's EC2 server: what a launch asks EC2 for, read back from moto."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from provider_cases import REGION, MotoEc2, ProviderCase, aws_unavailable, use_fake_aws_env

from byoc_agent.protocol.errors import InvalidArgumentError
from byoc_agent.providers.base import MANAGED_BY, TAG_AGENT, TAG_MANAGED_BY, TAG_TENANT, HostSpec
from byoc_agent.providers.errors import (
    HostNotFoundError,
    ProviderAuthError,
    UnknownInstanceTypeError,
)

if TYPE_CHECKING:
    import boto3

pytestmark = pytest.mark.asyncio

if (_why_not := aws_unavailable()) is not None:
    pytest.skip(_why_not, allow_module_level=True)


async def test_offerings_come_from_describe_instance_types(aws_case: ProviderCase) -> None:
    """The four default types, with bare metal, vCPU, memory and GPUs as EC2 reports them."""
    offerings = {o.instance_type: o for o in await aws_case.provider.list_offerings()}
    assert set(offerings) == {"c5.metal", "m7i.metal-24xl", "i4i.metal", "p5.48xlarge"}
    c5 = offerings["c5.metal"]
    assert (c5.vcpu, c5.memory_mib, c5.bare_metal, c5.kvm, c5.gpu_count) == (
        96,
        196608,
        True,
        True,
        0,
    )
    assert offerings["i4i.metal"].bare_metal
    assert offerings["m7i.metal-24xl"].bare_metal
    p5 = offerings["p5.48xlarge"]
    assert (p5.gpu_count, p5.gpu_model, p5.bare_metal, p5.kvm) == (8, "H100", False, False)


async def test_a_launch_requires_imdsv2_encrypts_the_root_volume_and_tags_the_host(
    aws_case: ProviderCase, moto_ec2: MotoEc2
) -> None:
    """Read the instance back from EC2: IMDSv2 only, hop limit 1, encrypted root, our tags."""
    host = await aws_case.provider.provision(aws_case.spec("tok-hardening", tenant="t-sec"))
    inst = moto_ec2.ec2.describe_instances(InstanceIds=[host.host_id])["Reservations"][0][
        "Instances"
    ][0]

    metadata = inst["MetadataOptions"]
    assert metadata["HttpTokens"] == "required"
    assert metadata["HttpPutResponseHopLimit"] == 1
    assert metadata["HttpEndpoint"] == "enabled"

    root = [m for m in inst["BlockDeviceMappings"] if m["DeviceName"] == inst["RootDeviceName"]]
    assert len(root) == 1, inst["BlockDeviceMappings"]
    volume = moto_ec2.ec2.describe_volumes(VolumeIds=[root[0]["Ebs"]["VolumeId"]])["Volumes"][0]
    assert volume["Encrypted"] is True

    tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    assert tags[TAG_TENANT] == "t-sec"
    assert tags[TAG_AGENT] == "a-1"
    assert tags[TAG_MANAGED_BY] == MANAGED_BY
    assert inst["SubnetId"] == moto_ec2.subnet_id
    assert [g["GroupId"] for g in inst["SecurityGroups"]] == [moto_ec2.security_group_id]
    assert inst["ImageId"] == moto_ec2.image_id
    assert inst["InstanceType"] == "c5.metal"


async def test_an_instance_type_ec2_does_not_know_is_an_unknown_instance_type_error(
    aws_case: ProviderCase, moto_ec2: MotoEc2
) -> None:
    """moto answers InvalidInstanceType.NotFound; the caller sees a typed, permanent error."""
    bad = dataclasses.replace(aws_case.spec("tok-bad-type"), instance_type="c5.notreal")
    from botocore.exceptions import ClientError

    with pytest.raises(UnknownInstanceTypeError) as caught:
        await aws_case.provider.provision(bad)
    assert isinstance(caught.value.__cause__, ClientError)
    assert caught.value.fields["instance_type"] == "c5.notreal"
    assert "c5.notreal" in str(caught.value)
    assert not caught.value.retryable
    assert moto_ec2.ec2.describe_instances()["Reservations"] == []


async def test_an_image_that_does_not_exist_is_an_invalid_argument(moto_ec2: MotoEc2) -> None:
    """With AMI validation on, a made-up image id is refused before anything launches."""
    from botocore.exceptions import ClientError

    from byoc_agent.providers.aws import AwsProvider

    provider = AwsProvider(region=REGION, image_id="ami-12345678")
    case = ProviderCase(name="aws", provider=provider, instance_type="c5.metal")
    with pytest.raises(InvalidArgumentError) as caught:
        await provider.provision(case.spec("tok-bad-ami"))
    assert isinstance(caught.value.__cause__, ClientError)
    assert moto_ec2.ec2.describe_instances()["Reservations"] == []


async def test_instances_corral_did_not_launch_are_not_found_and_never_terminated(
    aws_case: ProviderCase, moto_ec2: MotoEc2
) -> None:
    """An untagged instance in the same account is invisible to describe, list and terminate."""
    foreign = moto_ec2.ec2.run_instances(
        ImageId=moto_ec2.image_id, InstanceType="c5.metal", MinCount=1, MaxCount=1
    )["Instances"][0]["InstanceId"]
    with pytest.raises(HostNotFoundError):
        await aws_case.provider.describe(foreign)
    with pytest.raises(HostNotFoundError):
        await aws_case.provider.terminate(foreign)
    assert await aws_case.provider.list_by_tag(TAG_MANAGED_BY, MANAGED_BY) == []
    state = moto_ec2.ec2.describe_instances(InstanceIds=[foreign])["Reservations"][0]["Instances"][
        0
    ]["State"]["Name"]
    assert state == "running"


async def test_missing_credentials_are_a_provider_auth_error(
    moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With no credentials anywhere, botocore refuses to sign; that is a ProviderAuthError."""
    from byoc_agent.providers.aws import AwsProvider

    use_fake_aws_env(monkeypatch, tmp_path, moto_endpoint)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    provider = AwsProvider(region=REGION, image_id="ami-12345678")
    with pytest.raises(ProviderAuthError) as caught:
        await provider.list_offerings()
    assert "credentials" in str(caught.value)


async def test_a_gpu_host_gets_the_configured_network_and_the_client_token(
    moto_ec2: MotoEc2, boto_session: boto3.session.Session
) -> None:
    """p5.48xlarge with no network in the spec: subnet and security group come from the
    provider's configuration, and EC2 receives our ClientToken."""
    from byoc_agent.providers.aws import AwsProvider

    provider = AwsProvider(
        region=REGION,
        image_id=moto_ec2.image_id,
        subnet_id=moto_ec2.subnet_id,
        security_group_ids=(moto_ec2.security_group_id,),
        session=boto_session,
    )
    spec = HostSpec(
        tenant_id="t-gpu", agent_id="a-gpu", instance_type="p5.48xlarge", client_token="tok-p5"
    )
    host = await provider.provision(spec)
    inst = moto_ec2.ec2.describe_instances(InstanceIds=[host.host_id])["Reservations"][0][
        "Instances"
    ][0]
    assert inst["InstanceType"] == "p5.48xlarge"
    assert inst["SubnetId"] == moto_ec2.subnet_id
    assert [g["GroupId"] for g in inst["SecurityGroups"]] == [moto_ec2.security_group_id]
    assert inst["ClientToken"] == "tok-p5"
    assert inst["MetadataOptions"]["HttpTokens"] == "required"


@pytest.mark.parametrize("by", ["arn", "name"])
async def test_hosts_get_the_configured_instance_profile(
    moto_ec2: MotoEc2, boto_session: boto3.session.Session, by: str
) -> None:
    """CORRAL_AGENT_HOST_AWS_INSTANCE_PROFILE (the installer's host role): EC2 attaches it
    to every host, given as an ARN or a name."""
    from byoc_agent.providers.aws import AwsProvider

    iam = boto_session.client("iam", endpoint_url=moto_ec2.ec2.meta.endpoint_url)
    iam.create_role(RoleName="corral-host", AssumeRolePolicyDocument="{}")
    profile = iam.create_instance_profile(InstanceProfileName="corral-host")["InstanceProfile"]
    iam.add_role_to_instance_profile(InstanceProfileName="corral-host", RoleName="corral-host")
    provider = AwsProvider(
        region=REGION,
        image_id=moto_ec2.image_id,
        session=boto_session,
        instance_profile=profile["Arn"] if by == "arn" else "corral-host",
    )
    spec = HostSpec(
        tenant_id="t-ip", agent_id="a-ip", instance_type="c5.metal", client_token=f"tok-{by}"
    )
    host = await provider.provision(spec)
    inst = moto_ec2.ec2.describe_instances(InstanceIds=[host.host_id])["Reservations"][0][
        "Instances"
    ][0]
    assert inst["IamInstanceProfile"]["Arn"] == profile["Arn"]


async def test_without_an_instance_profile_hosts_get_none(
    moto_ec2: MotoEc2, boto_session: boto3.session.Session
) -> None:
    from byoc_agent.providers.aws import AwsProvider

    provider = AwsProvider(region=REGION, image_id=moto_ec2.image_id, session=boto_session)
    spec = HostSpec(tenant_id="t-ip", agent_id="a-ip", instance_type="c5.metal",
                    client_token="tok-none")
    host = await provider.provision(spec)
    inst = moto_ec2.ec2.describe_instances(InstanceIds=[host.host_id])["Reservations"][0][
        "Instances"
    ][0]
    assert "IamInstanceProfile" not in inst
