"""``AwsProvider``: metal EC2 instances in the customer's AWS account (boto3).

The only module that imports the AWS SDK. Every launch gets IMDSv2 only (``HttpTokens=
required``, hop limit 1, so a sandbox behind the host's NAT cannot reach the metadata
service), an encrypted EBS root volume, and the ``corral:*`` tags; the subnet and security
groups come from the :class:`HostSpec`, else from the provider's configuration.
``HostSpec.user_data`` becomes ``RunInstances`` ``UserData`` (boto3 base64-encodes it; EC2
takes at most 16 KiB before encoding, checked here before any call).
``provision`` passes the client token to EC2 as ``ClientToken`` and also looks the token
up by tag first, so a retry after the EC2 idempotency window (or against an endpoint that
ignores ``ClientToken``) does not launch a second host. Hosts without
``corral:managed-by=corral`` are never described or terminated.

Endpoint, credentials and retries follow boto3's own configuration (e.g.
``AWS_ENDPOINT_URL_EC2``), read by boto3 when the client is created.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar, cast

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from byoc_agent.protocol.errors import (
    CorralError,
    InvalidArgumentError,
    PermanentError,
    RetryableError,
)
from byoc_agent.providers.base import (
    MANAGED_BY,
    TAG_CLIENT_TOKEN,
    TAG_MANAGED_BY,
    Host,
    HostSpec,
    HostState,
    Offering,
    user_data_too_large,
)
from byoc_agent.providers.errors import (
    CapacityUnavailableError,
    HostNotFoundError,
    ProviderAuthError,
    QuotaExceededError,
    UnknownInstanceTypeError,
)

if TYPE_CHECKING:
    from mypy_boto3_ec2.client import EC2Client
    from mypy_boto3_ec2.literals import InstanceTypeType
    from mypy_boto3_ec2.type_defs import (
        FilterTypeDef,
        InstanceTypeDef,
        InstanceTypeInfoTypeDef,
        RunInstancesRequestTypeDef,
        TagTypeDef,
    )

T = TypeVar("T")

DEFAULT_INSTANCE_TYPES: tuple[str, ...] = ("c5.metal", "m7i.metal-24xl", "i4i.metal", "p5.48xlarge")

_STATES: dict[str, HostState] = {
    "pending": HostState.PROVISIONING,
    "running": HostState.READY,
    "shutting-down": HostState.DRAINING,
    "stopping": HostState.DRAINING,
    "stopped": HostState.DRAINING,
    "terminated": HostState.TERMINATED,
}
_LIVE_STATES = ["pending", "running", "shutting-down", "stopping", "stopped"]

_QUOTA = {"InstanceLimitExceeded", "VcpuLimitExceeded", "MaxSpotInstanceCountExceeded"}
_CAPACITY = {"InsufficientInstanceCapacity", "InsufficientHostCapacity", "Unsupported"}
_AUTH = {
    "AuthFailure",
    "UnauthorizedOperation",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "RequestExpired",
    "OptInRequired",
}
_NOT_FOUND = {"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"}
_UNKNOWN_TYPE = {"InvalidInstanceType", "InvalidInstanceType.NotFound"}
_THROTTLED = {"RequestLimitExceeded", "Throttling", "ThrottlingException"}
# EC2 caps ClientToken at 64 ASCII characters.
_MAX_CLIENT_TOKEN = 64
# EC2 takes at most 16 KiB of user data, counted before base64 encoding.
USER_DATA_MAX_BYTES = 16 * 1024


class AwsProvider:
    """Launches and terminates metal EC2 instances in one region."""

    name = "aws"

    def __init__(
        self,
        *,
        region: str,
        image_id: str,
        instance_types: Sequence[str] = DEFAULT_INSTANCE_TYPES,
        root_volume_gib: int = 100,
        call_timeout_s: float = 60.0,
        max_attempts: int = 3,
        session: boto3.session.Session | None = None,
        subnet_id: str | None = None,
        security_group_ids: Sequence[str] = (),
        instance_profile: str | None = None,
    ) -> None:
        """``subnet_id`` / ``security_group_ids``: the agent's configured network, used when
        a ``HostSpec`` names none. ``session``: a boto3 session to create the EC2 client
        from (its loaded service models are reused); a new one for ``region`` by default.
        ``instance_profile``: the IAM instance profile (ARN or name) every host gets; the
        agent's role must be allowed to pass its role (``iam:PassRole``)."""
        self._instance_profile = instance_profile
        self._subnet_id = subnet_id
        self._security_group_ids = tuple(security_group_ids)
        self._region = region
        self._image_id = image_id
        self._instance_types = tuple(instance_types)
        self._root_volume_gib = root_volume_gib
        self._call_timeout_s = call_timeout_s
        self._root_device: str | None = None
        config = Config(
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=10,
            read_timeout=30,
        )
        session = session or boto3.session.Session(region_name=region)
        self._ec2: EC2Client = session.client("ec2", region_name=region, config=config)

    async def list_offerings(self) -> list[Offering]:
        resp = await self._call(
            lambda: self._ec2.describe_instance_types(
                InstanceTypes=[cast("InstanceTypeType", t) for t in self._instance_types]
            )
        )
        offerings = [_offering(info) for info in resp["InstanceTypes"]]
        return sorted(offerings, key=lambda o: o.instance_type)

    async def provision(self, spec: HostSpec) -> Host:
        token = spec.client_token
        if not token or len(token) > _MAX_CLIENT_TOKEN or not token.isascii():
            raise InvalidArgumentError(
                f"client token must be 1-{_MAX_CLIENT_TOKEN} ASCII characters "
                f"(got {len(token)}); derive a shorter one, e.g. a hash of the request",
                tenant_id=spec.tenant_id,
            )
        user_data = spec.user_data.encode() if spec.user_data else b""
        if len(user_data) > USER_DATA_MAX_BYTES:
            raise user_data_too_large(
                spec, size=len(user_data), limit=USER_DATA_MAX_BYTES, what="EC2 (UserData)"
            )
        existing = await self._find(
            [{"Name": f"tag:{TAG_CLIENT_TOKEN}", "Values": [token]}], include_terminated=True
        )
        if existing:
            return existing[0]
        root_device = await self._root_device_name()
        tags: list[TagTypeDef] = [{"Key": k, "Value": v} for k, v in spec.all_tags().items()]
        request: RunInstancesRequestTypeDef = {
            "ImageId": self._image_id,
            # Any type EC2 knows; an unknown one comes back as UnknownInstanceTypeError.
            "InstanceType": cast("InstanceTypeType", spec.instance_type),
            "MinCount": 1,
            "MaxCount": 1,
            "ClientToken": token,
            "SecurityGroupIds": list(spec.security_group_ids or self._security_group_ids),
            "MetadataOptions": {
                "HttpTokens": "required",
                "HttpPutResponseHopLimit": 1,
                "HttpEndpoint": "enabled",
            },
            "BlockDeviceMappings": [
                {
                    "DeviceName": root_device,
                    "Ebs": {
                        "Encrypted": True,
                        "VolumeSize": self._root_volume_gib,
                        "VolumeType": "gp3",
                        "DeleteOnTermination": True,
                    },
                }
            ],
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": tags},
                {"ResourceType": "volume", "Tags": tags},
            ],
        }
        if spec.subnet_id or self._subnet_id:
            request["SubnetId"] = spec.subnet_id or self._subnet_id or ""
        if spec.user_data:
            request["UserData"] = spec.user_data  # boto3 base64-encodes it
        if self._instance_profile:
            request["IamInstanceProfile"] = (
                {"Arn": self._instance_profile}
                if self._instance_profile.startswith("arn:")
                else {"Name": self._instance_profile}
            )
        resp = await self._call(
            lambda: self._ec2.run_instances(**request),
            tenant_id=spec.tenant_id,
            instance_type=spec.instance_type,
        )
        return _host(resp["Instances"][0])

    async def describe(self, host_id: str) -> Host:
        resp = await self._call(
            lambda: self._ec2.describe_instances(InstanceIds=[host_id]), host_id=host_id
        )
        for reservation in resp.get("Reservations", []):
            for inst in reservation.get("Instances", []):
                if _tag_map(inst).get(TAG_MANAGED_BY) == MANAGED_BY:
                    return _host(inst)
        raise _not_found(host_id, self._region)

    async def list_by_tag(self, key: str, value: str) -> list[Host]:
        return await self._find([{"Name": f"tag:{key}", "Values": [value]}])

    async def terminate(self, host_id: str) -> None:
        host = await self.describe(host_id)  # refuses hosts Corral did not launch
        if host.state is HostState.TERMINATED:
            return
        await self._call(
            lambda: self._ec2.terminate_instances(InstanceIds=[host_id]), host_id=host_id
        )

    async def _find(
        self, filters: list[FilterTypeDef], *, include_terminated: bool = False
    ) -> list[Host]:
        all_filters: list[FilterTypeDef] = [
            *filters,
            {"Name": f"tag:{TAG_MANAGED_BY}", "Values": [MANAGED_BY]},
        ]
        if not include_terminated:
            all_filters.append({"Name": "instance-state-name", "Values": _LIVE_STATES})

        def scan() -> list[Host]:
            hosts: list[Host] = []
            for page in self._ec2.get_paginator("describe_instances").paginate(Filters=all_filters):
                for reservation in page.get("Reservations", []):
                    hosts.extend(_host(i) for i in reservation.get("Instances", []))
            return sorted(hosts, key=lambda h: h.launched_at)

        return await self._call(scan)

    async def _root_device_name(self) -> str:
        if self._root_device is None:
            resp = await self._call(lambda: self._ec2.describe_images(ImageIds=[self._image_id]))
            images = resp.get("Images", [])
            if not images or "RootDeviceName" not in images[0]:
                raise InvalidArgumentError(
                    f"AMI {self._image_id} is not visible in {self._region}; "
                    "configure an image id that exists in this region and account"
                )
            self._root_device = images[0]["RootDeviceName"]
        return self._root_device

    async def _call(self, fn: Callable[[], T], **fields: str) -> T:
        """Run one blocking SDK call in a thread, with a deadline, converting its errors."""
        try:
            async with asyncio.timeout(self._call_timeout_s):
                return await asyncio.to_thread(fn)
        except ClientError as e:
            raise _convert(e, self._region, **fields) from e
        except NoCredentialsError as e:
            raise ProviderAuthError(
                "no AWS credentials found; give the agent an instance profile or role "
                "with ec2:RunInstances, DescribeInstances, DescribeInstanceTypes, "
                "DescribeImages, TerminateInstances and CreateTags",
                **fields,
            ) from e
        except BotoCoreError as e:
            raise RetryableError(
                f"could not reach EC2 in {self._region} ({type(e).__name__}); "
                "check the network path to the EC2 endpoint, then retry",
                **fields,
            ) from e
        except TimeoutError as e:
            raise RetryableError(
                f"EC2 in {self._region} did not answer within {self._call_timeout_s:.0f}s; retry",
                **fields,
            ) from e


def _convert(e: ClientError, region: str, **fields: str) -> CorralError:
    err = e.response.get("Error", {})
    code = err.get("Code", "")
    detail = err.get("Message", "")
    itype = fields.get("instance_type", "the requested type")
    if code in _QUOTA:
        return QuotaExceededError(
            f"EC2 refused the launch: {code} ({detail}); request a higher EC2 "
            f"instance/vCPU quota for {itype} in {region} (Service Quotas console) "
            "or terminate unused hosts",
            **fields,
        )
    if code in _CAPACITY:
        return CapacityUnavailableError(
            f"AWS has no {itype} capacity right now in this subnet's zone ({code}); "
            "retry later, or use a subnet in another availability zone",
            **fields,
        )
    if code in _AUTH:
        return ProviderAuthError(
            f"AWS refused our credentials or a permission is missing ({code}: {detail}); "
            "check the agent's IAM role allows the EC2 action in the message",
            **fields,
        )
    if code in _NOT_FOUND:
        return _not_found(fields.get("host_id", "?"), region)
    if code in _UNKNOWN_TYPE:
        return UnknownInstanceTypeError(
            f"EC2 does not offer instance type {itype} in {region} ({detail}); "
            "pick one from list_offerings()",
            **fields,
        )
    if code in _THROTTLED:
        return RetryableError(f"EC2 throttled the request ({code}); retry later", **fields)
    status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    if status >= 500:
        return RetryableError(f"EC2 failed with {code} ({detail}); retry later", **fields)
    if code.startswith("Invalid") or code in {"MissingParameter", "IdempotentParameterMismatch"}:
        return InvalidArgumentError(f"EC2 rejected the request: {code} ({detail})", **fields)
    return PermanentError(f"EC2 refused the request: {code} ({detail})", **fields)


def _not_found(host_id: str, region: str) -> HostNotFoundError:
    return HostNotFoundError(
        f"no Corral-managed EC2 instance {host_id} in {region}; check the id and region "
        "(instances launched outside Corral are not visible here)",
        host_id=host_id,
    )


def _offering(info: InstanceTypeInfoTypeDef) -> Offering:
    gpus = info.get("GpuInfo", {}).get("Gpus", [])
    bare_metal = bool(info.get("BareMetal", False))
    return Offering(
        instance_type=info["InstanceType"],
        vcpu=info.get("VCpuInfo", {}).get("DefaultVCpus", 0),
        memory_mib=info.get("MemoryInfo", {}).get("SizeInMiB", 0),
        gpu_count=sum(g.get("Count", 0) for g in gpus),
        gpu_model=gpus[0].get("Name") if gpus else None,
        bare_metal=bare_metal,
        # /dev/kvm is available on EC2 metal instances; we do not rely on nested virt.
        kvm=bare_metal,
    )


def _tag_map(inst: InstanceTypeDef) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in inst.get("Tags", []) if "Key" in t and "Value" in t}


def _host(inst: InstanceTypeDef) -> Host:
    state = inst.get("State", {}).get("Name", "pending")
    launched = inst.get("LaunchTime")
    return Host(
        host_id=inst["InstanceId"],
        instance_type=inst["InstanceType"],
        state=_STATES.get(state, HostState.PROVISIONING),
        private_ip=inst.get("PrivateIpAddress") or None,
        tags=_tag_map(inst),
        launched_at=launched.astimezone(UTC) if launched else datetime.now(UTC),
    )
