"""The limiter's RESP encoder (limits/pipe.py): hiredis packs the usual types in C, anything else
is written as its ``str()``; both give the same bytes as the plain encoder they replace."""

from __future__ import annotations

from typing import Any

import hiredis
from ethereal.limits.pipe import _bulk, encode_args, encode_command
from hypothesis import given
from hypothesis import strategies as st


def reference(args: Any) -> bytes:
    """The plain encoder, one argument at a time (the fallback hiredis stands in for)."""
    return b"".join(_bulk(arg) for arg in args)


values = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.binary(max_size=40),
    st.text(max_size=20),
    st.booleans(),
    st.none(),
)


@given(st.lists(values, max_size=12), st.booleans())
def test_the_encoding_is_the_plain_one_whatever_the_arguments(args: list[Any], as_tuple: bool) -> None:
    given_args = tuple(args) if as_tuple else args
    assert encode_args(given_args) == reference(args)
    assert encode_command(given_args) == b"*%d\r\n%s" % (len(args), reference(args))


def test_a_command_reads_back_as_what_was_sent() -> None:
    # what a Redis server's parser sees: the request is a RESP array of bulk strings
    reader = hiredis.Reader()
    reader.feed(encode_command(["FCALL", "ethereal_admit", 2, b"k\r\n1", "é", -7, True, None]))
    assert reader.gets() == [
        b"FCALL",
        b"ethereal_admit",
        b"2",
        b"k\r\n1",
        "é".encode(),
        b"-7",
        b"True",
        b"None",
    ]
    assert encode_args(()) == b""
