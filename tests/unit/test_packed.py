"""The packed SampleBatch wire form: the daemon's hand-built messages are the protobuf message, and the client's
parser reads the generated class's messages, both without per-sample fields."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from nessa.errors import DataCorruptionError
from nessa.packed import PackedSamples, decode_sample_batch, encode_head
from nessa.v1 import storage_pb2 as pb

CASES = [[], [b""], [b"x" * 127, b"y" * 128, b"z" * 300], [bytes(np.random.default_rng(0).bytes(70_000)), b"abc"]]


@pytest.mark.parametrize("samples", CASES, ids=["none", "one-empty", "three", "large"])
def test_head_and_blob_parse_as_the_protobuf_message(samples: list[bytes]) -> None:
    n = len(samples)
    idx, lab, w = np.arange(n) * 7, np.arange(n) % 3, np.linspace(0.5, 2.0, n, dtype=np.float32)
    sizes = np.array([len(s) for s in samples], dtype=np.int64)
    data = encode_head(idx, lab, w, sizes, cursor="0123456789abcdef.7", position=7, total=9) + b"".join(samples)
    msg = pb.SampleBatch.FromString(data)
    assert len(data) == msg.ByteSize()
    assert np.frombuffer(msg.indices, "<i8").tolist() == idx.tolist()
    assert np.frombuffer(msg.offsets, "<u8").tolist() == [0, *np.cumsum(sizes).tolist()]
    assert msg.data == b"".join(samples) and msg.cursor == "0123456789abcdef.7" and msg.total == 9
    got = decode_sample_batch(data)
    assert [bytes(s) for s in got.samples] == samples
    assert got.indices.tolist() == idx.tolist() and got.labels.tolist() == lab.tolist()
    assert got.weights.tolist() == w.tolist()
    assert (got.cursor, got.position, got.total, got.wire_bytes) == ("0123456789abcdef.7", 7, 9, len(data))


def test_the_parser_reads_generated_messages_in_any_field_order_and_skips_unknown_fields() -> None:
    blob = b"abcdefgh"
    msg = pb.SampleBatch(
        indices=np.array([5, 6], "<i8").tobytes(), labels=np.array([1, 0], "<i8").tobytes(),
        weights=np.array([1, 2], "<f4").tobytes(), offsets=np.array([0, 3, 8], "<u8").tobytes(), data=blob,
        piece_offset=0, sample_size=0, cursor="c", position=2, total=4,
    )  # fmt: skip
    unknown = bytes([(3 << 3) | 0, 1, (4 << 3) | 2, 2]) + b"zz" + bytes([0xEA, 0x01, 1]) + b"q"  # fields 3, 4, 29
    data = msg.SerializeToString() + unknown
    got = decode_sample_batch(data)
    assert [bytes(s) for s in got.samples] == [b"abc", b"defgh"]
    assert got.indices.tolist() == [5, 6] and got.position == 2 and got.total == 4
    # The views share the message's buffer: nothing was copied.
    assert got.samples.data.obj is data


def test_metadata_only_and_malformed_messages() -> None:
    head = encode_head(np.array([1, 2]), np.array([0, 0]), np.ones(2), None, cursor="k.2", position=2, total=2)
    got = decode_sample_batch(head)
    assert got.indices.tolist() == [1, 2] and len(got.samples) == 0
    good = encode_head(np.array([1]), np.array([0]), np.ones(1), np.array([3]), cursor="", position=1, total=1)
    with pytest.raises(DataCorruptionError, match="runs past the end"):
        decode_sample_batch(good + b"ab")  # truncated blob: the length prefix says 3
    short = pb.SampleBatch.FromString(good + b"abc")
    short.data = b"ab"
    with pytest.raises(DataCorruptionError, match="offsets do not describe 1 samples in 2 bytes"):
        decode_sample_batch(short.SerializeToString())
    bad_counts = pb.SampleBatch(indices=np.zeros(2, "<i8").tobytes(), labels=np.zeros(1, "<i8").tobytes())
    with pytest.raises(DataCorruptionError, match="2 indices, 1 labels"):
        decode_sample_batch(bad_counts.SerializeToString())


def test_packed_samples_slice_concat_array_and_pickle() -> None:
    x = np.arange(24, dtype=np.uint8).reshape(6, 4)
    packed = PackedSamples.from_samples([r.tobytes() for r in x])
    assert len(packed) == 6 and packed.nbytes == 24 and packed[-1] == x[5].tobytes()
    part = packed[2:5]
    assert part.data.obj is packed.data.obj  # a view
    np.testing.assert_array_equal(part.as_array(np.uint8, (4,)), x[2:5])
    joined = PackedSamples.concat([packed[:1], packed[4:]])
    np.testing.assert_array_equal(joined.as_array(np.uint8, (2, 2)), x[[0, 4, 5]].reshape(3, 2, 2))
    assert PackedSamples.concat([part]) is part
    back = pickle.loads(pickle.dumps(part))
    assert back.tobytes_list() == part.tobytes_list()
    with pytest.raises(DataCorruptionError, match="not 8"):
        packed.as_array(np.uint8, (8,))
