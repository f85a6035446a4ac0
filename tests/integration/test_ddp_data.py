"""SelectionDataset under real DDP: two gloo processes over an uneven selection run the same number of steps.

The issue this guards: 769 samples at batch 64 over 2 ranks gave rank 0 seven batches and rank 1 six, and rank 0
waited forever in the all-reduce. The ranks here are real processes (``torch.distributed`` with gloo on
loopback), training a DDP model on what they stream from a real daemon.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from daemon_helpers import make_toy, running

from nessa.client import StorageClient
from nessa.data import SelectionDataset, SelectionSampler
from nessa.errors import InvalidArgumentError
from nessa.order import epoch_seed, rank_positions, rank_share, shuffled_order

N_SELECTED = 769
BATCH = 64
RESUME_AFTER = 3  # batches rank 0 consumes before its state is saved

RANK_SCRIPT = textwrap.dedent("""
    import datetime, json, sys
    import torch
    import torch.distributed as dist
    from nessa.data import SelectionDataset, SelectionLoader

    address, sel_id, out_dir, batch, resume_after = sys.argv[1:6]
    batch, resume_after = int(batch), int(resume_after)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))  # RANK/WORLD_SIZE/MASTER_* from env
    rank = dist.get_rank()

    def dataset():
        return SelectionDataset(address, sel_id, dataset="toy", batch_size=batch, seed=7)  # rank from the env

    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(40, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    ds = dataset()
    ds.set_epoch(1)
    full, steps = [], 0
    for b in SelectionLoader(ds):
        import numpy as np
        x = torch.from_numpy(np.stack([np.frombuffer(d, dtype=np.float32) for d in b["data"]]))
        loss = torch.nn.functional.cross_entropy(model(x), b["label"], reduction="none")
        opt.zero_grad()
        (loss * b["weight"]).mean().backward()  # DDP all-reduces the gradients: a missing rank would hang here
        opt.step()
        full.extend(b["index"].tolist())
        steps += 1
    counted = torch.tensor([steps])
    dist.all_reduce(counted)

    # One loader state (rank 0's, as a checkpoint written by rank 0) restores every rank.
    first = SelectionLoader(dataset())
    first.selection.set_epoch(1)
    it = iter(first)
    for _ in range(resume_after):
        next(it)
    del it
    state = [first.state_dict() if rank == 0 else None]
    dist.broadcast_object_list(state, src=0)
    resumed = SelectionLoader(dataset())
    resumed.load_state_dict(state[0])
    rest = [i for b in resumed for i in b["index"].tolist()]

    weights = [p.detach().sum().item() for p in model.parameters()]
    with open(f"{out_dir}/rank{rank}.json", "w") as f:
        json.dump({"full": full, "steps": steps, "total_steps": int(counted.item()), "rest": rest,
                   "state_rank": state[0]["rank"], "weights": weights, "len": len(ds)}, f)
    dist.destroy_process_group()
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("ddp-data")
    make_toy(root, n=1000)
    with running(root, warmup=False) as d:
        sel = StorageClient(d.address).select("toy", "random", count=N_SELECTED, seed=1)
        assert len(sel) == N_SELECTED
        yield d, sel


def test_two_gloo_ranks_get_equal_batches_and_one_state_restores_both(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    d, sel = served
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    env["OMP_NUM_THREADS"] = "1"
    args = [d.address, sel.id, str(tmp_path), str(BATCH), str(RESUME_AFTER)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RANK_SCRIPT, *args],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    try:
        outs = [p.communicate(timeout=150) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    per_rank = -(-N_SELECTED // 2)  # 385: the 769th is matched by rank 1 repeating the epoch's first sample
    assert [g["len"] for g in got] == [per_rank, per_rank]
    assert [len(g["full"]) for g in got] == [per_rank, per_rank]
    assert [g["steps"] for g in got] == [7, 7]  # ceil(385 / 64); keep would give 7 and 6 and hang
    assert [g["total_steps"] for g in got] == [14, 14]
    assert got[0]["weights"] == got[1]["weights"]  # DDP kept the replicas in sync through every step
    union = got[0]["full"] + got[1]["full"]
    assert set(union) == set(sel.indices.tolist())  # the union covers the selection
    assert len(union) == N_SELECTED + 1 and len(set(union)) == N_SELECTED  # one sample padded, nothing else twice
    order = sel.indices[shuffled_order(N_SELECTED, epoch_seed(7, 1))]
    assert got[1]["full"][-1] == int(order[0])  # the pad repeats the first sample of the epoch's order
    for g in got:  # rank 0's state, loaded into each rank, resumes that rank's own stream after 3 batches
        assert g["state_rank"] == 0
        assert g["rest"] == g["full"][RESUME_AFTER * BATCH :]


def test_drop_and_keep_and_the_sampler_agree_with_the_stream(served) -> None:  # type: ignore[no-untyped-def]
    d, sel = served
    for remainder, share in (("drop", [384, 384]), ("keep", [385, 384]), ("pad", [385, 385])):
        parts = []
        for rank in range(2):
            ds = SelectionDataset(
                d.address, sel, batch_size=BATCH, seed=7, rank=rank, world_size=2, remainder=remainder
            )
            ds.set_epoch(2)
            streamed = [s["index"] for s in ds]
            sampler = SelectionSampler(sel, seed=7, rank=rank, world_size=2, remainder=remainder)
            sampler.set_epoch(2)
            assert streamed == list(sampler)  # the daemon and the map-style sampler agree
            assert len(streamed) == len(ds) == len(sampler) == rank_share(N_SELECTED, 2, rank, remainder)
            parts.append(streamed)
        assert [len(p) for p in parts] == share
        seen = parts[0] + parts[1]
        if remainder == "drop":
            assert len(set(seen)) == len(seen) == N_SELECTED - 1
        else:
            assert set(seen) == set(sel.indices.tolist())


def test_pad_repeats_cyclically_when_the_selection_is_smaller_than_the_world() -> None:
    parts = [rank_positions(2, None, world_size=5, rank=r, remainder="pad") for r in range(5)]
    assert [p.tolist() for p in parts] == [[0], [1], [0], [1], [0]]
    assert [rank_share(2, 5, r, "drop") for r in range(5)] == [0] * 5
    assert np.array_equal(rank_positions(0, 3, world_size=2, rank=1, remainder="pad"), np.empty(0, np.int64))


def test_a_state_of_another_layout_is_refused(served) -> None:  # type: ignore[no-untyped-def]
    d, sel = served
    saved = SelectionDataset(d.address, sel, world_size=2, rank=1, remainder="drop").state_dict()
    with pytest.raises(InvalidArgumentError, match="remainder"):
        SelectionDataset(d.address, sel, world_size=2, rank=0).load_state_dict(saved)
    with pytest.raises(InvalidArgumentError, match="world_size"):
        SelectionDataset(d.address, sel, world_size=3, rank=0, remainder="drop").load_state_dict(saved)
    with pytest.raises(InvalidArgumentError, match="remainder 'even'"):
        SelectionDataset(d.address, sel, remainder="even")
