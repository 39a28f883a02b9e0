"""Customer co-signing rules and the cosignature's binding to one job."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from byoc_agent.protocol import cosign, messages, signing, verify
from byoc_agent.protocol.errors import EnvelopeRejectedError, RejectReason

from .wire_examples import (
    CONTROL_PLANE_KEY,
    CREATE_JOB,
    CUSTOMER_KEY,
    NOW,
    STRANGER_KEY,
    keyring_for,
)

pytestmark = pytest.mark.security

POLICY = cosign.CosignPolicy(keys=keyring_for(CUSTOMER_KEY),
                             rules=cosign.parse_rules(["create_sandbox:cpu>1"]))


@pytest.mark.parametrize(
    ("text", "rule"),
    [("kill_sandbox", cosign.CosignRule("kill_sandbox")),
     ("create_sandbox:memory_mb>8192", cosign.CosignRule("create_sandbox", "memory_mb", 8192)),
     (" upgrade_agent ", cosign.CosignRule("upgrade_agent"))],
)
def test_rules_parse_from_their_text_and_print_back(text: str, rule: cosign.CosignRule) -> None:
    """``kind`` and ``kind:field>N`` are the two forms."""
    assert cosign.CosignRule.parse(text) == rule
    assert cosign.CosignRule.parse(str(rule)) == rule


@pytest.mark.parametrize("text", ["", "Create", "create:cpu", "create:cpu>", "create:cpu<3",
                                  "create:cpu>-1", "a:b>1:c", "kind;rm -rf"])
def test_malformed_rules_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="cosign rule"):
        cosign.CosignRule.parse(text)


def test_a_rule_matches_its_kind_above_its_limit_and_fails_closed_on_a_missing_field() -> None:
    """cpu 2 > 1 matches; a kill has no cpu field, so a cpu rule about kills matches it."""
    assert cosign.CosignRule("create_sandbox", "cpu", 1).matches(CREATE_JOB.body)
    assert not cosign.CosignRule("create_sandbox", "cpu", 2).matches(CREATE_JOB.body)
    kill = messages.KillSandboxBody(sandbox_id="sbx-1")
    assert not cosign.CosignRule("create_sandbox").matches(kill)
    assert cosign.CosignRule("kill_sandbox", "cpu", 100).matches(kill)


def test_a_rule_on_a_list_field_counts_its_entries() -> None:
    """``create_sandbox:egress>0`` holds every create that asks for any network."""
    rule = cosign.CosignRule.parse("create_sandbox:egress>0")
    assert not rule.matches(CREATE_JOB.body)  # no egress: the key is not even on the wire
    with_egress = CREATE_JOB.body.model_copy(update={"egress": ["192.0.2.10:443"]})
    assert rule.matches(with_egress)
    assert not cosign.CosignRule("create_sandbox", "egress", 1).matches(with_egress)


def test_rules_without_a_customer_key_are_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="no customer public key"):
        cosign.CosignPolicy.from_config([], ["create_sandbox"])


def test_a_valid_cosignature_names_its_customer_kid() -> None:
    data = cosign.cosign(CUSTOMER_KEY, job_id=CREATE_JOB.job_id, tenant_id=CREATE_JOB.tenant_id,
                         agent_id=CREATE_JOB.agent_id, body=CREATE_JOB.body, now=NOW)
    assert cosign.check(CREATE_JOB, [data], POLICY, now=NOW) == CUSTOMER_KEY.kid
    job_bytes, cosigs = cosign.split(cosign.attach(b"a.b.c", [data]))
    assert (job_bytes, cosigs) == (b"a.b.c", [data])


def test_the_first_valid_of_several_cosignatures_counts() -> None:
    good = cosign.cosign(CUSTOMER_KEY, job_id=CREATE_JOB.job_id, tenant_id=CREATE_JOB.tenant_id,
                         agent_id=CREATE_JOB.agent_id, body=CREATE_JOB.body, now=NOW)
    junk = cosign.cosign(STRANGER_KEY, job_id=CREATE_JOB.job_id,
                         tenant_id=CREATE_JOB.tenant_id, agent_id=CREATE_JOB.agent_id,
                         body=CREATE_JOB.body, now=NOW)
    assert cosign.check(CREATE_JOB, [junk, good], POLICY, now=NOW) == CUSTOMER_KEY.kid


@settings(max_examples=60, deadline=None, database=None)
@given(cpu=st.integers(2, 64), memory=st.integers(128, 262144), timeout=st.integers(1, 86400),
       template=st.from_regex(r"^[a-z0-9][a-z0-9._-]{0,20}$", fullmatch=True))
def test_an_approval_of_any_other_body_never_unlocks_the_job(
    cpu: int, memory: int, timeout: int, template: str
) -> None:
    """The customer approves a body's digest: any other body, however close, is refused."""
    body = CREATE_JOB.body
    assert isinstance(body, messages.CreateSandboxBody)
    other = body.model_copy(update={"cpu": cpu, "memory_mb": memory, "timeout_s": timeout,
                                    "template": template})
    if other == body:
        return
    data = cosign.cosign(CUSTOMER_KEY, job_id=CREATE_JOB.job_id, tenant_id=CREATE_JOB.tenant_id,
                         agent_id=CREATE_JOB.agent_id, body=other, now=NOW)
    with pytest.raises(EnvelopeRejectedError) as e:
        cosign.check(CREATE_JOB, [data], POLICY, now=NOW)
    assert e.value.reason is RejectReason.MISSING_COSIGNATURE


def test_too_many_or_too_long_cosignature_lines_are_not_split_off() -> None:
    """The job verifier then sees the whole thing and refuses it as malformed."""
    many = cosign.attach(b"a.b.c", [b"x.y.z"] * (cosign.MAX_COSIGNATURES + 1))
    assert cosign.split(many) == (many, [])
    long = cosign.attach(b"a.b.c", [b"x" * (cosign.MAX_COSIGNATURE_BYTES + 1)])
    assert cosign.split(long) == (long, [])


@pytest.mark.parametrize(
    "suffix", [b"\n", b"\n\n", b"\nnot-compact", b"\na.b", b"\na.b.c\n", b"\na.b.c d"]
)
def test_a_job_followed_by_anything_but_cosignatures_is_malformed(suffix: bytes) -> None:
    """A stray newline or junk after a job is not split off and ignored: the verifier
    sees it and refuses the job."""
    job = cosign.attach(_signed_job(), [])
    data, extra = cosign.split(job + suffix)
    assert extra == []
    with pytest.raises(EnvelopeRejectedError) as e:
        verify.verify_signed_job(data, keyring=keyring_for(CONTROL_PLANE_KEY))
    assert e.value.reason is RejectReason.MALFORMED


def _signed_job() -> bytes:
    return signing.sign(CONTROL_PLANE_KEY, messages.JOB_TYP, messages.to_json_bytes(CREATE_JOB))
