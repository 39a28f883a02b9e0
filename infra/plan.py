"""Run a stack's program offline and record every resource it would register.

Pulumi's mock monitor (:func:`pulumi.runtime.set_mocks`) stands in for the engine: the
program runs as it would under ``pulumi up``, but each registration lands here instead
of in a cloud. ``corral install --dry-run``, the stack tests and the policy all read
the same :class:`Plan`. Data-source lookups (an AMI, the zones of a region) are answered
with placeholders that say they are resolved at deploy time; a lookup this module does
not know fails loudly, so a new one cannot slip past the dry run.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi.runtime import rpc
from pulumi.runtime.settings import ROOT

from infra.base import HostTarget, Permission
from infra.config import AgentInstall
from infra.errors import InstallError
from infra.stacks import build

_LOCK = threading.Lock()  # the mock monitor is process-global

DEPLOY_TIME_AMI = "ami-resolved-at-deploy"
DEPLOY_TIME_SUBSCRIPTION = "subscription-resolved-at-deploy"


@dataclass(frozen=True, slots=True)
class RecordedResource:
    """One resource as the engine would see it: type token, logical name, inputs
    (wire names, secrets unwrapped) and the input paths that arrived as secrets."""

    type: str
    name: str
    inputs: Mapping[str, Any]
    secret_paths: frozenset[str]

    @property
    def id(self) -> str:
        """The id the dry run gave it; references from other resources carry this value."""
        return f"{self.name}-id"

    @property
    def is_provider(self) -> bool:
        return self.type.startswith("pulumi:providers:")

    def get(self, path: str, default: Any = None) -> Any:
        """The input at a dotted path (``metadataOptions.httpTokens``); lists by index."""
        value: Any = self.inputs
        for part in path.split("."):
            if isinstance(value, Mapping) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                return default
        return value


@dataclass(frozen=True, slots=True)
class Plan:
    cloud: str
    resources: tuple[RecordedResource, ...]
    permissions: tuple[Permission, ...]
    outputs: Mapping[str, Any]
    secret_outputs: frozenset[str]

    def of_type(self, type_token: str) -> list[RecordedResource]:
        return [r for r in self.resources if r.type == type_token]

    def __iter__(self) -> Iterator[RecordedResource]:
        return iter(self.resources)


def _unwrap(value: Any, path: str, secrets: set[str]) -> Any:
    if rpc.is_rpc_secret(value):
        secrets.add(path)
        return _unwrap(rpc.unwrap_rpc_secret(value), path, secrets)
    if isinstance(value, Mapping):
        return {k: _unwrap(v, f"{path}.{k}" if path else k, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwrap(v, f"{path}.{i}", secrets) for i, v in enumerate(value)]
    return value


def _fake_outputs(args: pulumi.runtime.MockResourceArgs, rid: str) -> dict[str, Any]:
    """Outputs a real provider would add, so dependent inputs carry realistic values."""
    t, n = args.typ, args.name
    out: dict[str, Any] = {}
    if t.startswith("aws:"):
        kind = t.split("/")[-1].split(":")[0]
        out["arn"] = f"arn:aws:{t.split(':')[1].split('/')[0]}::000000000000:{kind}/{n}"
        out["name"] = args.inputs.get("name", n)  # auto-naming adds a suffix at deploy
        out["latestVersion"] = 1
        out["privateIp"] = "10.42.16.10"
    elif t.startswith("gcp:"):
        out["selfLink"] = f"https://compute.googleapis.com/{n}"
        if t == "gcp:serviceaccount/account:Account":
            out["email"] = f"{args.inputs.get('accountId', n)}@project.iam.gserviceaccount.com"
            out["member"] = f"serviceAccount:{out['email']}"
            out["name"] = f"projects/project/serviceAccounts/{out['email']}"
        if t == "gcp:projects/iAMCustomRole:IAMCustomRole":
            out["name"] = f"projects/project/roles/{args.inputs.get('roleId', n)}"
        out["instanceId"] = rid
        out["networkInterfaces"] = [{"networkIp": "10.43.0.2"}]
    elif t.startswith("azure-native:"):
        out["principalId"] = "11111111-1111-1111-1111-111111111111"
        out["vmId"] = rid
        out["ipConfigurations"] = [{"privateIPAddress": "10.44.0.4"}]
        names = [k for k in args.inputs if k.endswith("Name") and k != "resourceGroupName"]
        out["name"] = args.inputs.get(names[0] if names else "resourceGroupName", n)
        # Output shapes differ from input shapes here (a list of ids in, a map out).
        if "identity" in args.inputs:
            out["identity"] = {"type": "UserAssigned", "userAssignedIdentities": {}}
    return out


class RecordingMocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: list[RecordedResource] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        secrets: set[str] = set()
        inputs = _unwrap(dict(args.inputs), "", secrets)
        self.resources.append(RecordedResource(args.typ, args.name, inputs, frozenset(secrets)))
        rid = f"{args.name}-id"
        return rid, {**dict(args.inputs), **_fake_outputs(args, rid)}

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:  # type: ignore[override]
        # args.token is the data source's type token, not a credential.
        lookup = args.token
        if lookup == "aws:index/getAvailabilityZones:getAvailabilityZones":
            return {"names": ["zone-a-resolved-at-deploy", "zone-b-resolved-at-deploy"],
                    "zoneIds": ["z1", "z2"]}
        if lookup == "aws:ec2/getAmi:getAmi":
            return {"id": DEPLOY_TIME_AMI, "imageId": DEPLOY_TIME_AMI}
        if lookup == "azure-native:authorization:getClientConfig":
            return {"subscriptionId": DEPLOY_TIME_SUBSCRIPTION, "tenantId": "resolved-at-deploy",
                    "clientId": "resolved-at-deploy", "objectId": "resolved-at-deploy"}
        raise InstallError(f"the dry run has no answer for the lookup {args.token}")


@contextmanager
def _own_event_loop() -> Iterator[None]:
    """Pulumi's runtime drives the thread's current event loop; give it a fresh one, and
    leave none behind (callers such as pytest-asyncio manage their own loops)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def record(agent: AgentInstall, target: HostTarget, *, stack: str = "dry-run") -> Plan:
    """Run the stack's program against the mock monitor and return what it registered."""
    mocks = RecordingMocks()
    outputs: dict[str, Any] = {}
    secret_outputs: set[str] = set()
    with _LOCK, _own_event_loop():
        ROOT.set(None)  # a fresh root stack, bound to this run's loop
        pulumi.runtime.set_mocks(mocks, project="corral", stack=stack, preview=False)

        def body() -> pulumi.Output[None]:
            exported = {k: pulumi.Output.from_input(v) for k, v in build(agent, target).items()}
            names = list(exported)

            async def secrecy() -> bool:
                for k, o in exported.items():
                    if await o.is_secret():
                        secret_outputs.add(k)
                return True

            marks: pulumi.Output[bool] = pulumi.Output.from_input(secrecy())
            return pulumi.Output.all(marks, *exported.values()).apply(
                lambda vs: outputs.update(zip(names, vs[1:], strict=True)))

        pulumi.runtime.test(body)()  # type: ignore[no-untyped-call]
    return Plan(cloud=target.cloud, resources=tuple(mocks.resources),
                permissions=tuple(target.permissions(agent)), outputs=outputs,
                secret_outputs=frozenset(secret_outputs))
