"""Status messages the daemon sends: long client values cut to a prefix, the length capped, server paths hidden."""

from __future__ import annotations

import json

import pytest

from nessa.errors import InvalidArgumentError
from nessa.services.storage.interceptors import MAX_MESSAGE_CHARS, Undecodable, bounded, lenient, quote
from nessa.services.storage.servicer import MAX_OPTION_DEPTH, _depth, _parse_option, _parse_options
from nessa.v1 import storage_pb2 as pb


def test_long_quoted_values_keep_a_prefix_and_say_how_long_they_were() -> None:
    message = "no dataset named '" + "a" * 100_000 + "' under /srv/data; ingest it"
    out = bounded(message, redact=("/srv/data",))
    assert len(out) < 200
    assert "'aaaa" in out and "(100000 characters)" in out
    assert "/srv/data" not in out and "<data-dir>" in out
    assert out.endswith("ingest it")


def test_apostrophes_and_short_values_are_left_alone() -> None:
    message = "over this daemon's limit of 4 MiB; " + "x" * 100 + " or send 'bar' instead of the daemon's default"
    assert bounded(message) == message


def test_the_total_length_is_capped_keeping_start_and_end() -> None:
    out = bounded("start " + "word " * 10_000 + "end")
    assert len(out) < MAX_MESSAGE_CHARS + 100
    assert out.startswith("start") and out.endswith("end") and "characters left out" in out


def test_quote_cuts_reprs() -> None:
    assert quote("abc") == "'abc'"
    assert quote("z" * 1000).endswith("(1000 characters in all)")


def test_undecodable_bytes_become_invalid_argument() -> None:
    parse = lenient(pb.SelectRequest.FromString)
    assert parse is not None
    assert parse(pb.SelectRequest(method="random").SerializeToString()).method == "random"
    bad = parse(b"\xff\xff\xff")
    assert isinstance(bad, Undecodable)
    error = bad.to_error("Select")
    assert isinstance(error, InvalidArgumentError) and "3 bytes" in str(error)


def test_option_json_depth_size_and_count_limits() -> None:
    assert _depth('[[1, {"a": "[[[[[["}]]') == 3
    assert _parse_option("x", json.dumps([[1, 2], [3, 4]])) == [[1, 2], [3, 4]]
    with pytest.raises(InvalidArgumentError, match=f"limit of {MAX_OPTION_DEPTH}"):
        _parse_option("x", "[" * 100_000)
    with pytest.raises(InvalidArgumentError, match="characters, over the limit"):
        _parse_option("x", '"' + "s" * (2 << 20) + '"')
    with pytest.raises(InvalidArgumentError, match="not a JSON value"):
        _parse_option("x", "9" * 5000)  # more digits than Python converts: a ValueError, not a crash
    with pytest.raises(InvalidArgumentError, match="over the limit of 64"):
        _parse_options({f"k{i}": "1" for i in range(65)})
