"""Secure-by-default rules, checked over every resource a stack would create.

The rules read the recorded inputs of a :class:`~infra.plan.Plan` (the same registrations
``pulumi up`` would send), so they hold for what is deployed, not for what the code
meant. ``corral install`` refuses to deploy a plan with a violation; the tests run every
stack through :func:`check` and show that a deliberately broken stack is caught.

Rules:

``open-ingress``   no security group, firewall or NSG rule lets 0.0.0.0/0, ::/0 (or
                   Azure's ``*``/``Internet``) connect in
``imdsv2``         EC2 launch templates and instances require IMDSv2 tokens, hop limit 1
``disk-encryption`` EBS volumes are encrypted; GCE and Azure disks are managed disks
                   (encrypted at rest by the platform) with no raw key in state
``public-ip``      no public address on the agent or hosts; a public IP may exist only on a
                   NAT gateway (AWS Elastic IP, Azure Public IP)
``login``          no SSH key pair on EC2, OS Login on GCE, no password login on Azure
``secret``         every input and stack output that holds the enrollment token is a secret
``tags``           every resource that can carry tags/labels has the Corral ones; types
                   that cannot say "Corral" in their description, or are listed as exempt
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from infra.errors import PolicyViolationError
from infra.plan import Plan, RecordedResource

REQUIRED_TAGS = ("corral-managed-by", "corral-install")
OPEN_V4 = "0.0.0.0/0"
OPEN_V6 = "::/0"
AZURE_ANY = {"*", OPEN_V4, OPEN_V6, "internet", "any"}

# How each resource type shows it belongs to Corral.
TAGGED = "tags"
LABELED = "labels"
DESCRIBED = "description"
EXEMPT = "exempt"
TAG_RULES: dict[str, str] = {
    "corral:index:CorralAgent": EXEMPT,  # the component itself; not a cloud object
    # AWS
    "aws:ec2/vpc:Vpc": TAGGED,
    "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup": TAGGED,
    "aws:ec2/internetGateway:InternetGateway": TAGGED,
    "aws:ec2/subnet:Subnet": TAGGED,
    "aws:ec2/eip:Eip": TAGGED,
    "aws:ec2/natGateway:NatGateway": TAGGED,
    "aws:ec2/routeTable:RouteTable": TAGGED,
    "aws:ec2/routeTableAssociation:RouteTableAssociation": EXEMPT,  # no tags in the EC2 API
    "aws:ec2/securityGroup:SecurityGroup": TAGGED,
    "aws:ec2/launchTemplate:LaunchTemplate": TAGGED,
    "aws:ec2/instance:Instance": TAGGED,
    "aws:ebs/volume:Volume": TAGGED,
    "aws:iam/role:Role": TAGGED,
    "aws:iam/instanceProfile:InstanceProfile": TAGGED,
    "aws:iam/rolePolicy:RolePolicy": EXEMPT,  # inline policy: part of its (tagged) role
    "aws:iam/rolePolicyAttachment:RolePolicyAttachment": EXEMPT,  # a link, not an object
    # GCP: only some Compute objects take labels; the rest say so in their description
    "gcp:compute/network:Network": DESCRIBED,
    "gcp:compute/subnetwork:Subnetwork": DESCRIBED,
    "gcp:compute/router:Router": DESCRIBED,
    "gcp:compute/routerNat:RouterNat": EXEMPT,  # lives inside its (described) router
    "gcp:compute/firewall:Firewall": DESCRIBED,
    "gcp:compute/instance:Instance": LABELED,
    "gcp:serviceaccount/account:Account": DESCRIBED,
    "gcp:projects/iAMCustomRole:IAMCustomRole": DESCRIBED,
    "gcp:projects/iAMMember:IAMMember": EXEMPT,  # a binding, no metadata fields
    "gcp:serviceaccount/iAMMember:IAMMember": EXEMPT,  # a binding, no metadata fields
    # Azure
    "azure-native:resources:ResourceGroup": TAGGED,
    "azure-native:network:PublicIPAddress": TAGGED,
    "azure-native:network:NatGateway": TAGGED,
    "azure-native:network:NetworkSecurityGroup": TAGGED,
    "azure-native:network:ApplicationSecurityGroup": TAGGED,
    "azure-native:network:VirtualNetwork": TAGGED,
    "azure-native:network:Subnet": EXEMPT,  # ARM subnets take no tags; the VNet has them
    "azure-native:network:NetworkInterface": TAGGED,
    "azure-native:managedidentity:UserAssignedIdentity": TAGGED,
    "azure-native:authorization:RoleDefinition": DESCRIBED,
    "azure-native:authorization:RoleAssignment": DESCRIBED,
    "azure-native:compute:VirtualMachine": TAGGED,
    "azure-native:compute:VirtualMachineExtension": TAGGED,
}


@dataclass(frozen=True, slots=True)
class Violation:
    rule: str
    resource: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.resource}: {self.detail}"


def _label(r: RecordedResource) -> str:
    return f"{r.type} {r.name}"


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _open(prefixes: list[Any]) -> bool:
    return any(str(p).strip().lower() in {OPEN_V4, OPEN_V6} for p in prefixes)


def _open_ingress(plan: Plan) -> Iterator[Violation]:
    for r in plan:
        if r.type in ("aws:ec2/securityGroup:SecurityGroup",
                      "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup"):
            for rule in _list(r.get("ingress")):
                if _open(_list(rule.get("cidrBlocks")) + _list(rule.get("ipv6CidrBlocks"))):
                    yield Violation("open-ingress", _label(r),
                                    f"ingress from the internet on {rule.get('fromPort')}")
        elif r.type == "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule" or (
            r.type == "aws:ec2/securityGroupRule:SecurityGroupRule" and r.get("type") == "ingress"
        ):
            cidrs = [r.get("cidrIpv4", ""), r.get("cidrIpv6", ""),
                     *_list(r.get("cidrBlocks")), *_list(r.get("ipv6CidrBlocks"))]
            if _open(cidrs):
                yield Violation("open-ingress", _label(r), "ingress rule from the internet")
        elif r.type == "gcp:compute/firewall:Firewall":
            inbound = str(r.get("direction", "INGRESS")).upper() == "INGRESS"
            if inbound and _list(r.get("allows")) and _open(_list(r.get("sourceRanges"))):
                yield Violation("open-ingress", _label(r), "firewall allows the internet in")
        elif r.type in ("azure-native:network:NetworkSecurityGroup",
                        "azure-native:network:SecurityRule"):
            rules = (_list(r.get("securityRules"))
                     if r.type.endswith("NetworkSecurityGroup") else [r.inputs])
            for rule in rules:
                sources = [rule.get("sourceAddressPrefix", ""),
                           *_list(rule.get("sourceAddressPrefixes"))]
                if (str(rule.get("direction", "")).lower() == "inbound"
                        and str(rule.get("access", "")).lower() == "allow"
                        and any(str(s).strip().lower() in AZURE_ANY for s in sources)):
                    yield Violation("open-ingress", _label(r),
                                    f"NSG rule {rule.get('name')} allows the internet in")


def _imds_ok(md: Any) -> bool:
    return (isinstance(md, dict) and md.get("httpTokens") == "required"
            and md.get("httpPutResponseHopLimit") == 1
            and md.get("httpEndpoint", "enabled") in ("enabled", "disabled"))


def _launch_templates(plan: Plan) -> dict[str, RecordedResource]:
    """Recorded launch templates by the id the dry run gave them."""
    return {r.id: r for r in plan.of_type("aws:ec2/launchTemplate:LaunchTemplate")}


def _imdsv2(plan: Plan) -> Iterator[Violation]:
    templates = _launch_templates(plan)
    for r in plan.of_type("aws:ec2/launchTemplate:LaunchTemplate"):
        if not _imds_ok(r.get("metadataOptions")):
            yield Violation("imdsv2", _label(r), "metadataOptions must require tokens, hop limit 1")
    for r in plan.of_type("aws:ec2/instance:Instance"):
        if r.get("metadataOptions") is not None:
            ok = _imds_ok(r.get("metadataOptions"))
        else:
            lt = templates.get(str(r.get("launchTemplate.id")))
            ok = lt is not None and _imds_ok(lt.get("metadataOptions"))
        if not ok:
            yield Violation("imdsv2", _label(r),
                            "instance does not require IMDSv2 with hop limit 1")


def _true(v: Any) -> bool:
    return v is True or str(v).lower() == "true"


def _disks(plan: Plan) -> Iterator[Violation]:
    templates = _launch_templates(plan)
    for r in plan.of_type("aws:ec2/launchTemplate:LaunchTemplate"):
        mappings = _list(r.get("blockDeviceMappings"))
        if not mappings:
            yield Violation("disk-encryption", _label(r), "root volume not declared encrypted")
        for m in mappings:
            if isinstance(m.get("ebs"), dict) and not _true(m["ebs"].get("encrypted")):
                yield Violation("disk-encryption", _label(r),
                                f"EBS volume {m.get('deviceName')} is not encrypted")
    for r in plan.of_type("aws:ec2/instance:Instance"):
        root = r.get("rootBlockDevice")
        from_template = str(r.get("launchTemplate.id")) in templates
        if (root is None and not from_template) or (root is not None
                                                     and not _true(root.get("encrypted"))):
            yield Violation("disk-encryption", _label(r), "root volume is not encrypted")
        for d in _list(r.get("ebsBlockDevices")):
            if not _true(d.get("encrypted")):
                yield Violation("disk-encryption", _label(r), "EBS block device not encrypted")
    for r in plan.of_type("aws:ebs/volume:Volume"):
        if not _true(r.get("encrypted")):
            yield Violation("disk-encryption", _label(r), "EBS volume is not encrypted")
    for r in plan.of_type("gcp:compute/instance:Instance"):
        if r.get("bootDisk.diskEncryptionKeyRaw") is not None:
            yield Violation("disk-encryption", _label(r), "raw disk key would sit in state")
    for r in plan.of_type("azure-native:compute:VirtualMachine"):
        disk = r.get("storageProfile.osDisk")
        if not isinstance(disk, dict) or disk.get("vhd") or not disk.get("managedDisk"):
            yield Violation("disk-encryption", _label(r), "OS disk is not a managed disk")


def _public_ip(plan: Plan) -> Iterator[Violation]:
    nat_allocations = {str(r.get("allocationId"))
                       for r in plan.of_type("aws:ec2/natGateway:NatGateway")}
    for r in plan.of_type("aws:ec2/eip:Eip"):
        if r.id not in nat_allocations or r.get("instance") or r.get(
                "networkInterface"):
            yield Violation("public-ip", _label(r), "Elastic IP not used only by a NAT gateway")
    for r in plan.of_type("aws:ec2/subnet:Subnet"):
        if _true(r.get("mapPublicIpOnLaunch")):
            yield Violation("public-ip", _label(r), "subnet gives instances public IPs")
    for r in plan.of_type("aws:ec2/launchTemplate:LaunchTemplate"):
        for ni in _list(r.get("networkInterfaces")):
            if _true(ni.get("associatePublicIpAddress")):
                yield Violation("public-ip", _label(r), "network interface gets a public IP")
    for r in plan.of_type("aws:ec2/instance:Instance"):
        if _true(r.get("associatePublicIpAddress")):
            yield Violation("public-ip", _label(r), "instance gets a public IP")
    for r in plan.of_type("gcp:compute/instance:Instance"):
        for ni in _list(r.get("networkInterfaces")):
            if _list(ni.get("accessConfigs")) or _list(ni.get("ipv6AccessConfigs")):
                yield Violation("public-ip", _label(r), "instance has an external IP")
    nat_ips = {str(ip.get("id")) for r in plan.of_type("azure-native:network:NatGateway")
               for ip in _list(r.get("publicIpAddresses"))}
    for r in plan.of_type("azure-native:network:PublicIPAddress"):
        if r.id not in nat_ips:
            yield Violation("public-ip", _label(r), "public IP not used only by a NAT gateway")
    for r in plan.of_type("azure-native:network:NetworkInterface"):
        for cfg in _list(r.get("ipConfigurations")):
            if cfg.get("publicIPAddress"):
                yield Violation("public-ip", _label(r), "network interface has a public IP")


def _login(plan: Plan) -> Iterator[Violation]:
    for r in (plan.of_type("aws:ec2/launchTemplate:LaunchTemplate")
              + plan.of_type("aws:ec2/instance:Instance")):
        if r.get("keyName"):
            yield Violation("login", _label(r), "SSH key pair set; use SSM Session Manager")
    for r in plan.of_type("gcp:compute/instance:Instance"):
        md = r.get("metadata") or {}
        if str(md.get("enable-oslogin", "")).upper() != "TRUE" or md.get("ssh-keys"):
            yield Violation("login", _label(r), "OS Login must be on and no ssh-keys metadata")
        if not _true(r.get("shieldedInstanceConfig.enableSecureBoot")):
            yield Violation("login", _label(r), "Shielded VM secure boot is off")
    for r in plan.of_type("azure-native:compute:VirtualMachine"):
        if not _true(r.get("osProfile.linuxConfiguration.disablePasswordAuthentication")) or (
                r.get("osProfile.adminPassword")):
            yield Violation("login", _label(r), "password login is not disabled")


def _leaves(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, f"{path}.{i}")
    elif isinstance(value, str):
        yield path, value


def _holds(text: str, secret: str, depth: int = 3) -> bool:
    """Whether ``text`` holds ``secret``, also inside base64 (user data, cloud-init)."""
    if secret in text:
        return True
    if depth == 0:
        return False
    for chunk in {text.strip(), *text.split()}:
        if len(chunk) < 16:
            continue
        try:
            decoded = base64.b64decode(chunk, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            continue
        if _holds(decoded, secret, depth - 1):
            return True
    return False


def _under(path: str, secret_paths: frozenset[str]) -> bool:
    return any(path == s or path.startswith(s + ".") for s in secret_paths)


def _secrets(plan: Plan, secret: str) -> Iterator[Violation]:
    for r in plan:
        for path, text in _leaves(dict(r.inputs)):
            if _holds(text, secret) and not _under(path, r.secret_paths):
                yield Violation("secret", _label(r), f"input {path} holds the token in plain text")
    for name, value in plan.outputs.items():
        if isinstance(value, str) and _holds(value, secret) and name not in plan.secret_outputs:
            yield Violation("secret", "stack output", f"{name} holds the token in plain text")


def _tags(plan: Plan) -> Iterator[Violation]:
    for r in plan:
        if r.is_provider:
            continue
        rule = TAG_RULES.get(r.type)
        if rule is None:
            yield Violation("tags", _label(r), "no tagging rule for this type; add one")
        elif rule in (TAGGED, LABELED):
            have = r.get(rule) or {}
            missing = [t for t in REQUIRED_TAGS if not (isinstance(have, dict) and have.get(t))]
            if missing:
                yield Violation("tags", _label(r), f"missing {rule}: {', '.join(missing)}")
        elif rule == DESCRIBED and "corral" not in str(r.get("description", "")).lower():
            yield Violation("tags", _label(r), "description does not name Corral")


def check(plan: Plan, *, secret: str) -> list[Violation]:
    """Every violation in ``plan``; ``secret`` is the enrollment token it was built with."""
    return [
        *_open_ingress(plan), *_imdsv2(plan), *_disks(plan), *_public_ip(plan),
        *_login(plan), *_secrets(plan, secret), *_tags(plan),
    ]


def enforce(plan: Plan, *, secret: str) -> None:
    violations = check(plan, secret=secret)
    if violations:
        raise PolicyViolationError(
            f"the {plan.cloud} stack breaks {len(violations)} security rule(s): "
            + "; ".join(str(v) for v in violations))
