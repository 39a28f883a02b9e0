"""Framing between the agent and the in-guest daemon over one virtio-serial port.

A frame is ``>II`` (header length, body length), a UTF-8 JSON object header, then raw body
bytes (command output, file contents) so nothing is base64-inflated. Every header carries
``id``, the request it belongs to; many requests share the port at once.

Standard library only: this file is copied into every guest next to ``guestd.py``.
"""

from __future__ import annotations

import json
import struct
from typing import Any

PREFIX = struct.Struct(">II")
MAX_HEADER = 1 << 20
MAX_BODY = 8 << 20
CHUNK = 1 << 20  # file and stdin payloads are split into frames of at most this size


class FrameError(ValueError):
    """The byte stream is not a valid sequence of frames (the peer is broken or hostile)."""


def encode(header: dict[str, Any], body: bytes = b"") -> bytes:
    raw = json.dumps(header, separators=(",", ":")).encode()
    if len(raw) > MAX_HEADER or len(body) > MAX_BODY:
        raise FrameError(f"frame too large: header {len(raw)} B, body {len(body)} B")
    return PREFIX.pack(len(raw), len(body)) + raw + body


class Decoder:
    """Turns a byte stream, fed in arbitrary pieces, into (header, body) frames."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def reset(self) -> None:
        self._buf.clear()

    def feed(self, data: bytes) -> list[tuple[dict[str, Any], bytes]]:
        self._buf += data
        frames: list[tuple[dict[str, Any], bytes]] = []
        while len(self._buf) >= PREFIX.size:
            hlen, blen = PREFIX.unpack_from(self._buf)
            if hlen > MAX_HEADER or blen > MAX_BODY:
                raise FrameError(f"frame too large: header {hlen} B, body {blen} B")
            end = PREFIX.size + hlen + blen
            if len(self._buf) < end:
                break
            try:
                header = json.loads(bytes(self._buf[PREFIX.size : PREFIX.size + hlen]))
            except ValueError as e:
                raise FrameError(f"frame header is not JSON: {e}") from None
            if not isinstance(header, dict) or not isinstance(header.get("id"), int):
                raise FrameError("frame header must be an object with an integer id")
            frames.append((header, bytes(self._buf[PREFIX.size + hlen : end])))
            del self._buf[:end]
        return frames
