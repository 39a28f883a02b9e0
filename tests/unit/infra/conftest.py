"""Fixtures for the installer tests: one offline plan per stack, recorded once.

Each plan is the stack's real Pulumi program run under ``pulumi.runtime.set_mocks``
(infra/plan.py); recording all four takes a few seconds, so they are session-scoped.
"""

from __future__ import annotations

import pytest

from infra.config import AgentInstall, AzureOptions
from infra.plan import Plan, record
from infra.stacks import CLOUDS, default_target
from infra.stacks.azure import AzureHost
from tests.unit.infra.infra_cases import SSH_KEY, TOKEN


@pytest.fixture(scope="session")
def agent() -> AgentInstall:
    return AgentInstall(control_plane_url="https://corral.example.com",
                        enrollment_token=TOKEN, name="acme-agent",
                        labels={"team": "platform"})


@pytest.fixture(scope="session")
def plans(agent: AgentInstall) -> dict[str, Plan]:
    out = {}
    for cloud in CLOUDS:
        target = AzureHost(AzureOptions(ssh_public_key=SSH_KEY)) if cloud == "azure" else (
            default_target(cloud))
        out[cloud] = record(agent, target)
    return out


def pytest_configure(config: pytest.Config) -> None:
    # The provider SDKs warn about their own deprecated resource classes at import.
    for module in ("pulumi_aws", "pulumi_gcp", "pulumi_azure_native"):
        config.addinivalue_line("filterwarnings", f"ignore::DeprecationWarning:{module}.*")
