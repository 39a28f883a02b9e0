"""Opaque cursors: base64url of a versioned keyset position. Clients must not parse them."""

from __future__ import annotations

from byoc_agent.protocol.errors import InvalidArgumentError
from byoc_agent.protocol.messages import is_id
from byoc_agent.protocol.signing import b64url_decode, b64url_encode

_PREFIX = "v1:"


def encode_cursor(last_id: str | None) -> str | None:
    return None if last_id is None else b64url_encode((_PREFIX + last_id).encode())


def decode_cursor(cursor: str | None) -> str | None:
    if cursor is None or cursor == "":
        return None
    try:
        text = b64url_decode(cursor).decode("ascii")
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgumentError("cursor is not valid", field="cursor") from None
    if not text.startswith(_PREFIX) or not is_id(text[len(_PREFIX) :]):
        raise InvalidArgumentError("cursor is not valid", field="cursor")
    return text[len(_PREFIX) :]
