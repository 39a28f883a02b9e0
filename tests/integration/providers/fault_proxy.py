"""An HTTP proxy in front of moto's EC2 server that can answer chosen actions with EC2 errors.

moto does not model account quotas, regional capacity or refused credentials. Everything
else goes through to moto unchanged; an armed fault answers the named EC2 ``Action`` (or
every action) with the status and XML error body EC2 itself sends, which botocore parses
into the same ``ClientError`` a real account would produce.
"""

from __future__ import annotations

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


@dataclass
class FaultProxy:
    """Forwards to ``upstream`` (moto) unless a fault is armed for the request's action."""

    upstream: str
    faults: dict[str, Ec2Fault] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, action: str, fault: Ec2Fault) -> None:
        with self._lock:
            self.faults[action] = fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def handle(self, req: Request) -> Reply:
        form = parse_qs(req.raw.decode(errors="replace")) if req.raw else {}
        action = (form.get("Action") or [req.query.get("Action", "")])[0]
        with self._lock:
            fault = self.faults.get(action) or self.faults.get(ANY_ACTION)
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
