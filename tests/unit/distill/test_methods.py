"""MTT, DM and PDD on tiny MNIST-1D: the objectives go down, earlier stages stay frozen, each stage has its lr."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nessa.distill import (
    ConvNetSpec,
    MTTConfig,
    distill,
    distribution_match,
    init_params,
    match_trajectories,
    parse_options,
    train_expert,
    train_stages,
)
from nessa.errors import InvalidArgumentError

SPEC = ConvNetSpec(length=40, num_classes=10)
TINY = {"num_experts": 2, "iterations": 25, "syn_steps": 8, "transition_epochs": 20, "dm_iterations": 40}


def _experts(x: np.ndarray, y: np.ndarray, n: int, seed: int) -> list[list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    return [train_expert(SPEC, xt, yt, start=init_params(SPEC, gen), epochs=6, lr=0.2, generator=gen) for _ in range(n)]


def _per_class(x: np.ndarray, y: np.ndarray, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(np.nonzero(y == c)[0], k, replace=False) for c in range(10)])
    return torch.from_numpy(x[idx]), torch.from_numpy(y[idx])


@pytest.mark.parametrize("seed", [0, 1])
def test_trajectory_matching_loss_decreases_and_lr_is_learned(mnist1d_small, seed: int) -> None:
    x, y, _, _ = mnist1d_small
    trajectories = _experts(x, y, 2, seed)
    x0, y0 = _per_class(x, y, 2, seed)
    cfg = MTTConfig(iterations=60, syn_steps=10, max_start_epoch=3, lr_img=100.0, lr_lr=1e-3, lr_init=0.05)
    res = match_trajectories(SPEC, trajectories, x0, y0, cfg, torch.Generator().manual_seed(seed))
    assert len(res.losses) == 60
    assert np.mean(res.losses[-10:]) < 0.9 * np.mean(res.losses[:10])
    assert res.lr != pytest.approx(0.05, rel=1e-4)
    assert not torch.equal(res.x, x0) and torch.equal(res.y, y0)


def test_frozen_samples_join_the_batches_but_are_not_updated(mnist1d_small) -> None:
    x, y, _, _ = mnist1d_small
    trajectories = _experts(x, y, 1, 0)
    fx, fy = _per_class(x, y, 1, 1)
    fx_before = fx.clone()
    x0, y0 = _per_class(x, y, 1, 2)
    cfg = MTTConfig(iterations=5, syn_steps=4, max_start_epoch=2, lr_img=100.0, lr_lr=1e-3, lr_init=0.05)
    with_frozen = match_trajectories(
        SPEC, trajectories, x0, y0, cfg, torch.Generator().manual_seed(0), frozen_x=fx, frozen_y=fy
    )
    alone = match_trajectories(SPEC, trajectories, x0, y0, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(fx, fx_before)
    assert with_frozen.x.shape == x0.shape  # only the new samples come back
    assert not torch.allclose(with_frozen.x, alone.x)  # the frozen samples shaped the update


def test_dm_loss_decreases(mnist1d_small) -> None:
    x, y, _, _ = mnist1d_small
    from nessa.distill import DMConfig

    x0, y0 = _per_class(x, y, 2, 0)
    syn, losses = distribution_match(
        SPEC,
        torch.from_numpy(x),
        torch.from_numpy(y),
        x0,
        y0,
        DMConfig(iterations=60, batch_real=64),
        torch.Generator().manual_seed(0),
    )
    assert syn.shape == x0.shape
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])


def test_pdd_stages_lrs_and_progress(mnist1d_small) -> None:
    x, y, x_test, y_test = mnist1d_small
    seen: list[tuple[int, int, str]] = []
    res = distill(
        x, y, method="pdd", ipc=4, stages=2, seed=0, options=TINY, progress=lambda d, t, w: seen.append((d, t, w))
    )
    assert [len(s.y) for s in res.stages] == [20, 20]
    for s in res.stages:
        assert s.x.shape == (20, 40) and sorted(np.bincount(s.y)) == [2] * 10
        assert s.lr > 0 and len(s.losses) == TINY["iterations"]
    assert res.stages[0].lr != res.stages[1].lr
    done = [d for d, _, _ in seen]
    assert done == sorted(done) and done[-1] == seen[-1][1]  # progress reaches its total
    assert any("transition" in w for _, _, w in seen)
    accs = train_stages(SPEC, [(s.x, s.y, s.lr) for s in res.stages], x_test, y_test, epochs=20, seed=0)
    assert len(accs) == 2 and all(0.0 <= a <= 1.0 for a in accs)


def test_progress_callback_can_stop_a_run(mnist1d_small) -> None:
    x, y, _, _ = mnist1d_small

    class Stop(Exception):
        pass

    def stop(done: int, total: int, what: str) -> None:
        if "matching" in what:
            raise Stop

    with pytest.raises(Stop):
        distill(x, y, method="mtt", ipc=1, stages=1, options=TINY, progress=stop)


def test_single_stage_methods_and_bad_input(mnist1d_small) -> None:
    x, y, _, _ = mnist1d_small
    dm = distill(x, y, method="dm", ipc=1, stages=1, options=TINY)
    assert len(dm.stages) == 1 and dm.stages[0].x.shape == (10, 40)
    with pytest.raises(InvalidArgumentError, match="multiple of stages"):
        distill(x, y, method="pdd", ipc=5, stages=2)
    with pytest.raises(InvalidArgumentError, match="one stage"):
        distill(x, y, method="mtt", ipc=4, stages=2)
    with pytest.raises(InvalidArgumentError, match="unknown distillation method"):
        distill(x, y, method="dc", ipc=1, stages=1)
    with pytest.raises(InvalidArgumentError, match="unknown distillation option 'iters'"):
        parse_options({"iters": 3})
    with pytest.raises(InvalidArgumentError, match="must be a int"):
        parse_options({"iterations": "many"})
    assert parse_options({"conditioning": "false", "iterations": "7"}).iterations == 7


@pytest.mark.parametrize("seed", [0, 1])
def test_dm_set_beats_a_random_real_subset_of_the_same_size(mnist1d_small, seed: int) -> None:
    x, y, x_test, y_test = mnist1d_small
    res = distill(x, y, method="dm", ipc=10, stages=1, seed=seed, options={"dm_iterations": 150})
    st = res.stages[0]
    dm = train_stages(SPEC, [(st.x, st.y, 0.05)], x_test, y_test, epochs=200, seed=seed)[-1]
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(np.nonzero(y == c)[0], 10, replace=False) for c in range(10)])
    rand = train_stages(SPEC, [(x[idx], y[idx], 0.05)], x_test, y_test, epochs=200, seed=seed)[-1]
    assert dm > rand + 0.02, (dm, rand)


def test_device_option(mnist1d_small) -> None:
    x, y, _, _ = mnist1d_small
    res = distill(x, y, method="dm", ipc=1, stages=1, options={"device": "cpu", "dm_iterations": 3})
    assert res.stages[0].x.shape == (10, 40)
    with pytest.raises(InvalidArgumentError, match="not a torch device"):
        parse_options({"device": "gpu0"})
    if not torch.cuda.is_available():
        with pytest.raises(InvalidArgumentError, match="no such CUDA device"):
            parse_options({"device": "cuda"})
