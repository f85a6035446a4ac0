"""The OpenCL and numpy backends pick the same subsets where distances are hardest: an untrained model's gradients.

An untrained classifier's softmax is close to uniform, so its last-layer gradients p − onehot(y) cluster tightly
around (1/C, …, 1/C − 1, …): within a class the distances are ~4e-3 while the rows' norms are ~0.95. There the
float32 form ‖a‖² + ‖b‖² − 2a·b loses most digits unless the rows are centered first (issue 11 item 2: before the
kernels centered, the backends shared 76–86 % of CRAIG's, 46–50 % of AdaCore's and 86–88 % of CREST's picks on
these inputs, with objectives up to 1.5e-3 apart). Every method that takes distances is held to ≥ 99 % shared picks
and objectives within 1e-6 relative.
"""

from __future__ import annotations

import numpy as np
import pytest

from nessa.selection import SelectionInputs, create

CLASSES = 10


def untrained_gradients(n: int = 2000, seed: int = 0, scale: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """(labels, p − onehot(y)) of a near-untrained linear classifier over class-dependent 16-d features.

    The logits are ``scale · h W`` with h = class mean + unit noise, so p ≈ uniform (small logits), as from a freshly
    initialized network.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    h = rng.standard_normal((CLASSES, 16))[y] + rng.standard_normal((n, 16))
    z = scale * (h @ (rng.standard_normal((16, CLASSES)) / 4.0))
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return y.astype(np.int64), (p - np.eye(CLASSES)[y]).astype(np.float32)


def _within_class_distances(labels: np.ndarray, grads: np.ndarray) -> np.ndarray:
    out = []
    for c in range(CLASSES):
        g = grads[labels == c].astype(np.float64)
        d = np.sqrt(((g[:, None, :] - g[None, :, :]) ** 2).sum(axis=-1))
        out.append(d[np.triu_indices(len(g), 1)])
    return np.concatenate(out)


def test_the_inputs_are_the_hard_regime() -> None:
    """Small within-class distances next to norms near 1: the regime where uncentered float32 fails."""
    labels, grads = untrained_gradients()
    dist = _within_class_distances(labels, grads)
    assert 1e-3 < float(np.median(dist)) < 1e-2
    assert float(np.linalg.norm(grads, axis=1).min()) > 0.9
    assert np.abs(grads + np.eye(CLASSES)[labels] - 1.0 / CLASSES).max() < 0.02  # softmax ≈ uniform


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("method", ["craig", "adacore", "crest"])
def test_backends_agree_on_an_untrained_proxys_gradients(method: str, seed: int) -> None:
    labels, grads = untrained_gradients(seed=seed)
    inputs = SelectionInputs(labels=labels, gradients=grads)
    got = create(method, backend="opencl").select(inputs, 0.1, seed=0)
    want = create(method, backend="numpy").select(inputs, 0.1, seed=0)
    assert len(got) == len(want)
    shared = np.intersect1d(got.indices, want.indices).size / len(want)
    assert shared >= 0.99, f"{method}: OpenCL and numpy share only {shared:.1%} of the picks"
    assert abs(got.objective - want.objective) <= 1e-6 * abs(want.objective)


@pytest.mark.parametrize("variant", ["blocked", "tiled"])
def test_distance_error_is_float32_rounding_on_clustered_rows(variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both pairwise kernels' distances on those gradients stay within a few float32 ulps of float64."""
    from nessa.accel import selection_ops as cl_ops

    monkeypatch.setenv(cl_ops.ENV_PAIRWISE, variant)
    labels, grads = untrained_gradients()
    g = grads[labels == 0]
    got = np.sqrt(cl_ops.pairwise_sq_dists(g, g).astype(np.float64))
    g64 = g.astype(np.float64)
    want = np.sqrt(((g64[:, None, :] - g64[None, :, :]) ** 2).sum(axis=-1))
    off = ~np.eye(len(g), dtype=bool)
    rel = np.abs(got[off] - want[off]) / want[off]
    assert float(np.median(rel)) < 1e-6  # uncentered float32: 3e-3
    assert float(rel.max()) < 1e-4
