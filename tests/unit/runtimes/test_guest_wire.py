"""The agent <-> guest framing: any split of the byte stream gives back the same frames."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from byoc_agent.runtimes.guest import wire

frames_st = st.lists(
    st.tuples(
        st.fixed_dictionaries(
            {"id": st.integers(0, 2**31), "ev": st.sampled_from(["stdout", "exit", "ok"])}
        ),
        st.binary(max_size=300),
    ),
    max_size=8,
)


@given(frames=frames_st, cuts=st.lists(st.integers(0, 4000), max_size=10))
def test_frames_survive_any_split_of_the_stream(
    frames: list[tuple[dict[str, object], bytes]], cuts: list[int]
) -> None:
    stream = b"".join(wire.encode(h, b) for h, b in frames)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    decoder = wire.Decoder()
    got = []
    for a, b in itertools.pairwise(points):
        got += decoder.feed(stream[a:b])
    assert got == frames


def test_an_oversized_frame_is_refused_before_it_is_buffered() -> None:
    decoder = wire.Decoder()
    with pytest.raises(wire.FrameError, match="too large"):
        decoder.feed(wire.PREFIX.pack(10, wire.MAX_BODY + 1))
    with pytest.raises(wire.FrameError, match="too large"):
        wire.encode({"id": 1}, b"x" * (wire.MAX_BODY + 1))


@pytest.mark.parametrize("header", [b"not json", b"[1, 2]", b'{"id": "x"}'])
def test_a_header_that_is_not_an_object_with_an_id_is_refused(header: bytes) -> None:
    with pytest.raises(wire.FrameError):
        wire.Decoder().feed(wire.PREFIX.pack(len(header), 0) + header)
