"""Verifiers under test and ways to spell, sign and damage an envelope, for the fuzz tests."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from hypothesis import strategies as st
from pydantic import BaseModel

from byoc_agent.protocol import cosign, messages, signing, verify
from byoc_agent.protocol.errors import EnvelopeRejectedError

from .wire_examples import (
    AUDIENCE,
    CONTROL_PLANE_KEY,
    COSIGNATURE,
    CREATE_JOB,
    CUSTOMER_KEY,
    NOW,
    SANDBOX_TOKEN,
    MemoryReplayGuard,
    keyring_for,
)

Json = None | bool | int | float | str | list["Json"] | dict[str, "Json"]
Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Target:
    """A valid signed message and the verifier that must accept it and nothing else."""

    name: str
    payload: dict[str, Json]
    typ: str
    verify: Callable[[bytes], object]
    # Paths of JSON objects that are pydantic models (extra keys forbidden), not free maps.
    model_objects: tuple[Path, ...]
    model: type[BaseModel] = messages.Job
    signer: signing.SigningKey = CONTROL_PLANE_KEY
    max_bytes: int = signing.MAX_MESSAGE_BYTES

    def sign(self, payload: bytes, *, key: signing.SigningKey | None = None) -> bytes:
        return signing.sign(key or self.signer, self.typ, payload)

    def sign_json(self, payload: Json, *, key: signing.SigningKey | None = None) -> bytes:
        return self.sign(signing.canonical_json(payload), key=key)

    @property
    def message(self) -> bytes:
        return self.sign_json(self.payload)


def _verify_job(message: bytes) -> object:
    return verify.verify_job(
        message, keyring=keyring_for(CONTROL_PLANE_KEY), audience=AUDIENCE,
        replay=MemoryReplayGuard(), now=NOW,
    )


def _verify_token(message: bytes) -> object:
    # The data plane verifies bearer tokens with an 8 KiB limit.
    _, token = verify.verify_model(
        message, typ=messages.SANDBOX_TOKEN_TYP, model=messages.SandboxToken,
        keyring=keyring_for(CONTROL_PLANE_KEY), max_bytes=8192,
    )
    return token


def _verify_cosignature(message: bytes) -> object:
    # The agent's path for a high-risk job: the customer's key, bound to this very job.
    policy = cosign.CosignPolicy(keys=keyring_for(CUSTOMER_KEY),
                                 rules=(cosign.CosignRule("create_sandbox"),))
    _, approval = cosign.verify_cosignature(message, CREATE_JOB, policy, now=NOW)
    return approval


def _as_json(model: object) -> dict[str, Json]:
    assert isinstance(model, messages.Job | messages.SandboxToken | cosign.Cosignature)
    loaded = json.loads(messages.to_json_bytes(model))
    assert isinstance(loaded, dict)
    return loaded


JOB = Target("job", _as_json(CREATE_JOB), messages.JOB_TYP, _verify_job, ((), ("body",)))
TOKEN = Target(
    "sandbox_token", _as_json(SANDBOX_TOKEN), messages.SANDBOX_TOKEN_TYP, _verify_token, ((),),
    model=messages.SandboxToken, max_bytes=8192,
)
COSIGNATURE_TARGET = Target(
    "cosignature", _as_json(COSIGNATURE), cosign.COSIGNATURE_TYP, _verify_cosignature, ((),),
    model=cosign.Cosignature, signer=CUSTOMER_KEY, max_bytes=cosign.MAX_COSIGNATURE_BYTES,
)
TARGETS = (JOB, TOKEN, COSIGNATURE_TARGET)
TARGET_IDS = [t.name for t in TARGETS]


def assert_rejected(target: Target, message: bytes) -> EnvelopeRejectedError:
    """The verifier raises EnvelopeRejectedError: not another exception, and never returns."""
    with pytest.raises(EnvelopeRejectedError) as info:
        target.verify(message)
    return info.value


# -- JSON paths ----------------------------------------------------------------------------


def walk(value: Json, path: Path = ()) -> Iterator[tuple[Path, Json]]:
    """Every (path, value) below the root, depth first."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield (*path, k), v
            yield from walk(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield (*path, i), v
            yield from walk(v, (*path, i))


def get_at(root: Json, path: Path) -> Json:
    node = root
    for step in path:
        node = node[step]  # type: ignore[index]
    return node


def set_at(root: dict[str, Json], path: Path, value: Json) -> dict[str, Json]:
    """A deep copy of ``root`` with ``value`` at ``path``."""
    out = copy.deepcopy(root)
    parent = get_at(out, path[:-1])
    parent[path[-1]] = value  # type: ignore[index]
    return out


def json_kind(value: Json) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    return type(value).__name__


# -- strategies ----------------------------------------------------------------------------

json_values: st.SearchStrategy[Json] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=3),
    max_leaves=6,
)

# One exemplar of each JSON kind, for exhaustive wrong-type tables.
KIND_EXEMPLARS: tuple[Json, ...] = (None, True, False, 0, 7, -1, 1.0, 2.5, "", "7", [], [7], {},
                                    {"a": 1})

_WS = st.sampled_from(["", " ", "\n", "\t", "  ", "\r\n"])


def respell(value: Json, data: st.DataObject) -> str:
    """Write ``value`` as JSON with drawn key order, whitespace and string escapes."""
    if isinstance(value, dict):
        keys = data.draw(st.permutations(list(value)))
        items = [
            f"{data.draw(_WS)}{respell_str(k, data)}{data.draw(_WS)}:{data.draw(_WS)}"
            f"{respell(value[k], data)}{data.draw(_WS)}"
            for k in keys
        ]
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(f"{data.draw(_WS)}{respell(v, data)}" for v in value) + "]"
    if isinstance(value, str):
        return respell_str(value, data)
    return json.dumps(value)


def respell_str(text: str, data: st.DataObject) -> str:
    """A JSON string literal for ``text``, each character raw or \\u-escaped as drawn."""
    out = []
    for ch in text:
        if ch in '"\\' or ord(ch) < 0x20:
            out.append(json.dumps(ch)[1:-1])
        elif data.draw(st.booleans()):
            encoded = ch.encode("utf-16-be")
            out.append("".join(f"\\u{int.from_bytes(encoded[i:i + 2]):04x}"
                               for i in range(0, len(encoded), 2)))
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def with_duplicate(value: dict[str, Json], path: Path, key: str, dup: Json) -> bytes:
    """Canonical JSON of ``value`` with a second ``key`` member appended to the object at path."""
    if not path:
        body = signing.canonical_json(value)[:-1]
        return body + b"," + json.dumps(key).encode() + b":" + signing.canonical_json(dup) + b"}"
    head, rest = path[0], path[1:]
    assert isinstance(head, str)
    inner = value[head]
    assert isinstance(inner, dict)
    pairs = [
        json.dumps(k).encode() + b":" + (
            with_duplicate(inner, rest, key, dup) if k == head else signing.canonical_json(v)
        )
        for k, v in sorted(value.items())
    ]
    return b"{" + b",".join(pairs) + b"}"


def parts(message: bytes) -> list[bytes]:
    return message.split(b".")
