"""Schemathesis against the control plane's ``/openapi.json``: no 5xx, nothing off-schema.

The app runs in process (real database, signing and inbox; a scripted agent answers jobs,
see ``api_world``). Every operation gets generated requests, valid and invalid, as the
operator, as a tenant's owner key (with path parameters that name its real sandbox,
agent, job, key and tenant) and as a platform billing key. Each response must not be a
5xx and must match the document: a declared status, content type, headers and body schema.
Bounded: ``MAX_EXAMPLES`` per operation, caller and mode, and no shrinking.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import schemathesis
from api_world import OPERATOR, World, bearer, world
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup

# Deeper runs: CORRAL_FUZZ_EXAMPLES=50 pytest tests/integration/security/test_api_fuzz.py
MAX_EXAMPLES = int(os.environ.get("CORRAL_FUZZ_EXAMPLES", "5"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def real_path_parameters(w: World) -> dict[str, str]:
    return {
        "tenant_id": w.a.id,
        "agent_id": w.a.agent_id,
        "sandbox_id": w.a.sandbox_id,
        "job_id": w.a.job_id,
        "key_id": w.a.key_ids["viewer"],
        "period": "2026-11",
    }


@dataclass
class Fuzzer:
    world: World
    failures: list[str] = field(default_factory=list)
    calls: int = 0
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)

    def fuzz(
        self,
        operation: schemathesis.APIOperation,
        caller: str,
        headers: dict[str, str],
        mode: GenerationMode,
        path_parameters: dict[str, str] | None,
    ) -> None:
        strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)

        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def exercise(case: schemathesis.Case) -> None:
            kwargs = case.as_transport_kwargs(base_url="http://testserver")
            generated = kwargs.get("headers") or {}
            kept = {k: v for k, v in generated.items() if k.lower() != "authorization"}
            kwargs["headers"] = {**kept, **headers}
            kwargs.pop("cookies", None)
            if isinstance(kwargs.get("data"), bytes | str):  # raw bodies are content for httpx
                kwargs["content"] = kwargs.pop("data")
            response = self.world.client.request(**kwargs)
            self.calls += 1
            self.statuses[caller, response.status_code] += 1
            try:
                case.validate_response(response, checks=CHECKS)
            except (AssertionError, FailureGroup) as e:
                self.failures.append(
                    f"{operation.label} as {caller} ({mode.value}): "
                    f"{response.status_code} {str(e)[:600]}"
                )

        try:
            exercise()
        except Unsatisfiable:
            # Nothing to make invalid (no parameters, no body): negative mode has no cases.
            assert mode is GenerationMode.NEGATIVE, operation.label


def test_schemathesis_finds_no_server_error_and_no_off_schema_response(
    tmp_path: Path, database_url: str
) -> None:
    """Every operation, three callers, valid and invalid input: no failures at all."""
    with world(tmp_path, database_url) as w:
        schema = schemathesis.openapi.from_dict(w.client.get("/openapi.json").json())
        # caller: (headers, path parameters naming real things, modes)
        both = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        callers = {
            "operator": (OPERATOR, False, both),
            "owner": (bearer(w.a.keys["owner"]), True, both),
            "finance": (bearer(w.finance_key), False, (GenerationMode.POSITIVE,)),
        }
        fuzzer = Fuzzer(w)
        operations = 0
        for result in schema.get_all_operations():
            operation = result.ok()
            operations += 1
            wanted = {p.name for p in operation.path_parameters}
            pinned = {k: v for k, v in real_path_parameters(w).items() if k in wanted}
            for caller, (headers, real, modes) in callers.items():
                for mode in modes:
                    chosen = pinned if real and pinned else None
                    fuzzer.fuzz(operation, caller, headers, mode, chosen)
        assert operations >= 30
        assert fuzzer.calls >= operations * 15
        assert fuzzer.failures == []
        # Every caller got real answers, not only refusals (finance may only read billing).
        for caller, least in (("operator", 20), ("owner", 10), ("finance", 2)):
            ok = sum(
                n for (c, status), n in fuzzer.statuses.items() if c == caller and status < 300
            )
            assert ok >= least, (caller, fuzzer.statuses)
