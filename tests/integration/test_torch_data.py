"""The torch side: exactly-once delivery across ranks x workers, resume from state_dict, the map-style sampler."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from daemon_helpers import make_toy, running
from torch.utils.data import DataLoader

from nessa.client import StorageClient
from nessa.data import SelectionDataset, SelectionLoader, SelectionSampler
from nessa.errors import InvalidArgumentError

BATCH = 16


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("torch-data")
    x, _ = make_toy(root)
    with running(root, warmup=False) as d:
        sel = StorageClient(d.address).select("toy", "random", 0.1, seed=4)
        yield d, sel, x


def loader(ds: SelectionDataset, workers: int) -> SelectionLoader:
    # spawn: the test process runs a gRPC server, which must not cross fork(); the dataset pickles as settings.
    extra = {"multiprocessing_context": "spawn"} if workers else {}
    return SelectionLoader(ds, num_workers=workers, **extra)


def test_two_ranks_two_workers_deliver_each_sample_once_in_sampler_order(served) -> None:  # type: ignore[no-untyped-def]
    d, sel, x = served
    seen: list[int] = []
    for rank in range(2):
        ds = SelectionDataset(d.address, sel, batch_size=BATCH, seed=3, rank=rank, world_size=2)
        ds.set_epoch(1)
        got = []
        for batch in loader(ds, workers=2):
            assert len(batch["index"]) <= BATCH
            for i, data in zip(batch["index"].tolist(), batch["data"], strict=True):
                assert data == x[i].tobytes()
            got.extend(batch["index"].tolist())
        assert len(got) == len(ds)
        # The rank's order with two workers is the order a map-style sampler gives for that rank.
        sampler = SelectionSampler(sel, seed=3, rank=rank, world_size=2)
        sampler.set_epoch(1)
        assert got == list(sampler)
        seen.extend(got)
    assert sorted(seen) == sorted(sel.indices.tolist())


def test_resume_mid_epoch_with_workers_matches_an_uninterrupted_run(served) -> None:  # type: ignore[no-untyped-def]
    d, sel, _ = served
    full_ds = SelectionDataset(d.address, sel, batch_size=BATCH, seed=5)
    full = [i for b in loader(full_ds, workers=0) for i in b["index"].tolist()]
    assert sorted(full) == sorted(sel.indices.tolist())

    ds = SelectionDataset(d.address, sel, batch_size=BATCH, seed=5)
    first = loader(ds, workers=2)
    consumed: list[int] = []
    it = iter(first)
    for _ in range(7):
        consumed.extend(next(it)["index"].tolist())
    state = first.state_dict()
    del it
    assert state["samples_consumed"] == 7 * BATCH == len(consumed)
    state = pickle.loads(pickle.dumps(state))  # what a checkpoint holds

    resumed_ds = SelectionDataset(d.address, sel, batch_size=BATCH, seed=5)
    resumed = loader(resumed_ds, workers=2)
    resumed.load_state_dict(state)
    rest = [i for b in resumed for i in b["index"].tolist()]
    assert consumed + rest == full
    # The next epoch starts from the beginning again (the consumed count belonged to epoch 0).
    resumed_ds.set_epoch(1)
    assert sorted(i for b in loader(resumed_ds, workers=0) for i in b["index"].tolist()) == sorted(full)


@pytest.mark.parametrize("workers", [0, 2])
def test_stateful_dataloader_with_workers_resumes_each_sample_once(served, workers: int) -> None:  # type: ignore[no-untyped-def]
    """torchdata's StatefulDataLoader saves and restores each worker's own position: no duplicates, no gaps."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    d, sel, _ = served
    extra = {"multiprocessing_context": "spawn"} if workers else {}

    def make() -> StatefulDataLoader:
        ds = SelectionDataset(d.address, sel, batch_size=BATCH, seed=6)
        return StatefulDataLoader(ds, batch_size=BATCH, num_workers=workers, **extra)

    full = [i for b in make() for i in b["index"].tolist()]
    assert sorted(full) == sorted(sel.indices.tolist())
    first = make()
    it = iter(first)
    consumed = [i for _ in range(5) for i in next(it)["index"].tolist()]
    state = pickle.loads(pickle.dumps(first.state_dict()))
    del it
    resumed = make()
    resumed.load_state_dict(state)
    rest = [i for b in resumed for i in b["index"].tolist()]
    assert len(consumed) + len(rest) == len(sel)
    assert sorted(consumed + rest) == sorted(sel.indices.tolist())  # each sample exactly once
    assert consumed + rest == full  # and in the uninterrupted order


def test_dataset_state_without_workers_counts_what_it_yielded(served) -> None:  # type: ignore[no-untyped-def]
    d, sel, _ = served
    ds = SelectionDataset(d.address, sel, batch_size=BATCH, seed=1, shuffle=False)
    it = iter(DataLoader(ds, batch_size=BATCH))
    head = next(it)["index"].tolist() + next(it)["index"].tolist()
    state = ds.state_dict()
    assert state["samples_consumed"] == 2 * BATCH and head == sel.indices[: 2 * BATCH].tolist()
    other = SelectionDataset(d.address, sel, batch_size=BATCH, seed=1, shuffle=False)
    other.load_state_dict(state)
    assert [s["index"] for s in other] == sel.indices[2 * BATCH :].tolist()
    with pytest.raises(InvalidArgumentError, match="seed"):
        SelectionDataset(d.address, sel, seed=2, shuffle=False).load_state_dict(state)


def test_dataset_pickles_without_a_channel(served) -> None:  # type: ignore[no-untyped-def]
    d, sel, _ = served
    ds = SelectionDataset(d.address, sel.id, dataset="toy", transform=None, batch_size=4)
    next(iter(ds))  # opens a channel in this process
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._client is None
    assert len(clone) == len(sel)  # from an id: the daemon says how large the selection is (GetSelection)
    assert sum(1 for _ in clone) == len(sel)


def test_sampler_weights_and_ranks(served) -> None:  # type: ignore[no-untyped-def]
    _, sel, _ = served
    parts = [list(SelectionSampler(sel, rank=r, world_size=3)) for r in range(3)]
    assert sorted(i for p in parts for i in p) == sorted(sel.indices.tolist())
    assert [len(p) for p in parts] == [len(SelectionSampler(sel, rank=r, world_size=3)) for r in range(3)]
    s = SelectionSampler(sel, rank=0, world_size=1)
    i = int(sel.indices[3])
    assert s.weight(i) == sel.weights[3]
    assert np.allclose(s.weight_tensor(sel.indices[:5]).numpy(), sel.weights[:5])


def test_fork_workers_open_their_own_channels(served) -> None:  # type: ignore[no-untyped-def]
    # A fresh process that never used gRPC builds the dataset and a DataLoader with *fork* workers (Linux's default):
    # nothing was opened before the fork, each worker opens its own channel, every sample arrives once.
    d, sel, _ = served
    script = textwrap.dedent(f"""
        from torch.utils.data import DataLoader
        from nessa.data import SelectionDataset
        ds = SelectionDataset({d.address!r}, {sel.id!r}, dataset="toy", batch_size={BATCH}, seed=2)
        loader = DataLoader(ds, batch_size={BATCH}, num_workers=2, multiprocessing_context="fork")
        got = [i for b in loader for i in b["index"].tolist()]
        assert ds._client is None, "the parent process opened a channel"
        print(",".join(map(str, sorted(got))))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == ",".join(map(str, sorted(sel.indices.tolist())))
