"""The data-path stages on their own: rebatching, decoding, prefetching, and resuming from a state."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from nessa.client import Batch, DatasetInfo
from nessa.errors import InvalidArgumentError
from nessa.packed import PackedSamples
from nessa.pipeline import Decode, Prefetch, Rebatch, Stage, prefetch_iter
from nessa.pipeline.base import StageState
from nessa.trainer.batches import SampleDecoder


class Messages(Stage[Batch]):
    """An upstream of fixed messages standing in for the daemon's stream (position counts samples)."""

    def __init__(self, sizes: list[int]) -> None:
        rng = np.random.default_rng(1)
        self.messages, seen = [], 0
        for size in sizes:
            idx = np.arange(seen, seen + size, dtype=np.int64)
            seen += size
            self.messages.append(
                Batch(
                    indices=idx,
                    labels=idx % 3,
                    weights=rng.random(size).astype(np.float32),
                    samples=PackedSamples.from_samples([np.array([i, -i], dtype=np.float32).tobytes() for i in idx]),
                    cursor="",
                    position=seen,
                    total=sum(sizes),
                )
            )
        self.position = 0
        self.closed = False

    def __next__(self) -> Batch:
        for msg in self.messages:
            if msg.position > self.position:
                # Resuming inside a message: the daemon sends only what follows the position.
                skip = len(msg) - (msg.position - self.position)
                part = Batch(
                    indices=msg.indices[skip:],
                    labels=msg.labels[skip:],
                    weights=msg.weights[skip:],
                    samples=msg.samples[skip:],
                    cursor="",
                    position=msg.position,
                    total=msg.total,
                )
                self.position = msg.position
                return part
        raise StopIteration

    def state_dict(self) -> StageState:
        return {"position": self.position}

    def load_state_dict(self, state: StageState) -> None:
        self.position = int(state["position"])

    def close(self) -> None:
        self.closed = True


def _decoder() -> SampleDecoder:
    info = DatasetInfo("d", 18, 3, ("a", "b", "c"), (6, 6, 6), "raw", (2,), "float32", 18 * 8, 1, None)
    return SampleDecoder(info, "mlp")


SIZES = [3, 1, 7, 2, 5]  # 18 samples in messages of uneven size


def test_rebatch_regroups_byte_bounded_messages_into_exact_batches() -> None:
    up = Messages(SIZES)
    batches = list(Decode(Rebatch(up, 4), _decoder().batch))
    assert [len(b) for b in batches] == [4, 4, 4, 4, 2]
    assert np.array_equal(np.concatenate([b.indices for b in batches]), np.arange(18))
    want_w = np.concatenate([m.weights for m in up.messages])
    assert torch.equal(torch.cat([b.w for b in batches]), torch.from_numpy(want_w))
    assert torch.equal(batches[1].x[:, 0], torch.tensor([4.0, 5.0, 6.0, 7.0]))
    assert sum(b.payload_bytes for b in batches) == 18 * 8


@pytest.mark.parametrize("prefetch", [False, True])
@pytest.mark.parametrize("taken", [0, 1, 3, 5])
def test_a_saved_state_resumes_right_after_the_last_batch_taken(prefetch: bool, taken: int) -> None:
    def chain() -> Stage:
        stage: Stage = Decode(Rebatch(Messages(SIZES), 4), _decoder().batch)
        return Prefetch(stage, depth=3) if prefetch else stage

    first = chain()
    head = [next(first).indices for _ in range(taken)]
    if prefetch:  # let the thread run ahead: the state must still be the consumer's
        deadline = time.monotonic() + 5
        while first.upstream.state_dict()["position"] < 18 and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.01)
    state = first.state_dict()
    first.close()
    assert state["position"] == min(18, 4 * taken)
    second = chain()
    second.load_state_dict(state)
    rest = [b.indices for b in second]
    got = np.concatenate(head + rest) if head + rest else np.zeros(0)
    assert np.array_equal(got, np.arange(18))  # each sample exactly once, in order


def test_prefetch_keeps_order_propagates_errors_and_stops_its_thread() -> None:
    assert [v for v, _ in prefetch_iter(range(10), 2)] == list(range(10))

    def failing():
        yield 1
        raise InvalidArgumentError("stream broke")

    it = prefetch_iter(failing(), 1)
    assert next(it)[0] == 1
    with pytest.raises(InvalidArgumentError, match="stream broke"):
        next(it)

    before = threading.active_count()
    endless = prefetch_iter(iter(int, 1), 1)
    next(endless)
    endless.close()
    deadline = time.monotonic() + 5
    while threading.active_count() >= before + 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() <= before
    with pytest.raises(InvalidArgumentError, match="depth"):
        next(prefetch_iter(range(3), 0))


def test_prefetch_stage_closes_its_upstream() -> None:
    up = Messages(SIZES)
    stage = Prefetch(Rebatch(up, 4), depth=1)
    next(stage)
    stage.close()
    deadline = time.monotonic() + 5
    while not up.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert up.closed
