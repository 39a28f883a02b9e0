"""An HTTP proxy in front of moto's EC2 server that can answer chosen actions with EC2 errors.

moto does not model account quotas, regional capacity or refused credentials. Everything
else goes through to moto unchanged; an armed fault answers the named EC2 ``Action`` (or
every action) with the status and XML error body EC2 itself sends, which botocore parses
into the same ``ClientError`` a real account would produce.

moto does not check user data either: the proxy answers a ``RunInstances`` whose
``UserData`` is not base64 or decodes to more than 16 KiB the way EC2 does (400
``InvalidParameterValue``), and counts the ``RunInstances`` calls it forwards.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import threading
import uuid
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from fake_http import Reply, Request

ANY_ACTION = "*"


@dataclass(frozen=True, slots=True)
class Ec2Fault:
    status: int
    code: str
    message: str


QUOTA = Ec2Fault(
    400,
    "VcpuLimitExceeded",
    "You have requested more vCPU capacity than your current vCPU limit of 0 allows for the "
    "instance bucket that the specified instance type belongs to. Please visit "
    "http://aws.amazon.com/contact-us/ec2-request to request an adjustment to this limit.",
)
CAPACITY = Ec2Fault(
    500,
    "InsufficientInstanceCapacity",
    "We currently do not have sufficient c5.metal capacity in the Availability Zone you "
    "requested (us-east-1a). Our system will be working on provisioning additional capacity. "
    "You can currently get c5.metal capacity by not specifying an Availability Zone in your "
    "request or choosing us-east-1b, us-east-1c.",
)
AUTH = Ec2Fault(401, "AuthFailure", "AWS was not able to validate the provided access credentials")
USER_DATA_MAX_BYTES = 16 * 1024  # EC2's limit, before base64


def user_data_fault(form: dict[str, list[str]]) -> Ec2Fault | None:
    """EC2's refusal of a RunInstances ``UserData`` that is not base64 or too large."""
    values = form.get("UserData")
    if not values:
        return None
    try:
        raw = base64.b64decode(values[0], validate=True)
    except binascii.Error:
        return Ec2Fault(400, "InvalidParameterValue", "Invalid BASE64 encoding of user data.")
    if len(raw) > USER_DATA_MAX_BYTES:
        return Ec2Fault(
            400, "InvalidParameterValue", f"User data is limited to {USER_DATA_MAX_BYTES} bytes"
        )
    return None


@dataclass
class FaultProxy:
    """Forwards to ``upstream`` (moto) unless a fault is armed for the request's action."""

    upstream: str
    faults: dict[str, Ec2Fault] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    # RunInstances calls that reached moto
    launches: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, action: str, fault: Ec2Fault) -> None:
        with self._lock:
            self.faults[action] = fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.launches = 0

    def handle(self, req: Request) -> Reply:
        form = parse_qs(req.raw.decode(errors="replace")) if req.raw else {}
        action = (form.get("Action") or [req.query.get("Action", "")])[0]
        with self._lock:
            fault = self.faults.get(action) or self.faults.get(ANY_ACTION)
            if fault is None and action == "RunInstances":
                fault = user_data_fault(form)
                if fault is None:
                    self.launches += 1
            if fault is not None:
                self.hits[action] = self.hits.get(action, 0) + 1
        if fault is not None:
            body = (
                '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
                f"<Code>{fault.code}</Code><Message>{fault.message}</Message>"
                f"</Error></Errors><RequestID>{uuid.uuid4()}</RequestID></Response>"
            ).encode()
            return Reply(fault.status, raw=body, headers={"Content-Type": "text/xml"})
        return self._forward(req)

    def _forward(self, req: Request) -> Reply:
        url = urlsplit(self.upstream)
        conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
        try:
            headers = {k: v for k, v in req.headers.items() if k not in {"host", "connection"}}
            conn.request(req.method, req.target, body=req.raw or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            keep = {"content-type", "x-amzn-requestid", "x-amz-request-id"}
            out = {k: v for k, v in resp.getheaders() if k.lower() in keep}
            return Reply(resp.status, raw=data, headers=out)
        finally:
            conn.close()


class Ec2Faults:
    """Quota, capacity and credential faults in front of moto, for the contract suite."""

    def __init__(self, proxy: FaultProxy) -> None:
        self._proxy = proxy

    def exhaust_quota(self) -> None:
        self._proxy.fail("RunInstances", QUOTA)

    def exhaust_capacity(self) -> None:
        self._proxy.fail("RunInstances", CAPACITY)

    def revoke_credentials(self) -> bool:
        self._proxy.fail(ANY_ACTION, AUTH)
        return True

    def restore(self) -> None:
        self._proxy.clear()
