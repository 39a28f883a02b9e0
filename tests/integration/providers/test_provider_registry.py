"""The registry of providers by name: every entry loads and names itself as registered."""

from __future__ import annotations

import importlib

import pytest

from byoc_agent.providers import PROVIDERS, unavailable


@pytest.mark.parametrize("name", sorted(PROVIDERS))
def test_every_registered_provider_loads_and_carries_its_name(name: str) -> None:
    """With its SDK installed (dev has all), the class imports and its ``name`` matches."""
    reason = unavailable(name)
    if reason is not None:
        pytest.skip(reason)
    module, cls, _, _ = PROVIDERS[name]
    provider_class = getattr(importlib.import_module(module), cls)
    assert provider_class.name == name
    for method in ("list_offerings", "provision", "describe", "list_by_tag", "terminate"):
        assert callable(getattr(provider_class, method)), (name, method)


def test_an_unknown_provider_name_lists_the_known_ones() -> None:
    """A typo in the configuration gets an answer naming the valid choices."""
    reason = unavailable("amazon")
    assert reason is not None
    assert "aws, azure, baremetal, gcp" in reason
