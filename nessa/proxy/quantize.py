"""Symmetric per-output-channel int8 quantization of weights (and its inverse).

A weight ``w`` of shape ``(C, ...)`` becomes ``q`` (int8, same shape) and ``scales`` (float32, ``(C,)``) with
``scales[c] = max|w[c]| / 127`` and ``q[c] = clip(round(w[c] / scales[c]), -127, 127)``; the zero point is 0 and
-128 is never used, so the range is symmetric. A channel that is all zeros gets scale 1 (its ``q`` is all zeros).
Dequantization is ``q.astype(float32) * scales[c]`` in float32, done identically by every engine so that they all
compute with the very same weights.
"""

from __future__ import annotations

import numpy as np

from nessa.errors import InvalidArgumentError

__all__ = ["QMAX", "dequantize", "quantize_per_channel"]

#: Largest magnitude of a quantized value (symmetric range [-127, 127]).
QMAX = 127


def quantize_per_channel(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantize ``weight`` to int8 per output channel (axis 0).

    Args:
        weight: float array of shape ``(C, ...)``, finite.

    Returns:
        ``(q, scales)``: int8 array of ``weight``'s shape and float32 scales of shape ``(C,)``.

    Raises:
        InvalidArgumentError: empty or non-finite weight.
    """
    w = np.asarray(weight, dtype=np.float64)
    if w.ndim < 1 or w.shape[0] == 0 or w.size == 0:
        raise InvalidArgumentError(f"cannot quantize an empty weight of shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise InvalidArgumentError("cannot quantize a weight with NaN or Inf values; check the model's parameters")
    flat = w.reshape(w.shape[0], -1)
    amax = np.abs(flat).max(axis=1)
    scales = np.where(amax > 0, amax / QMAX, 1.0).astype(np.float32)
    q = np.clip(np.rint(flat / scales.astype(np.float64)[:, None]), -QMAX, QMAX).astype(np.int8)
    return q.reshape(w.shape), scales


def dequantize(q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Float32 weight ``q * scales[c]`` (per channel along axis 0), computed in float32.

    Raises:
        InvalidArgumentError: ``scales`` does not have one value per channel of ``q``.
    """
    q = np.asarray(q)
    s = np.asarray(scales, dtype=np.float32)
    if q.ndim < 1 or s.shape != (q.shape[0],):
        raise InvalidArgumentError(
            f"dequantize needs one scale per output channel: weight shape {q.shape}, scales shape {s.shape}"
        )
    return q.astype(np.float32) * s.reshape((-1,) + (1,) * (q.ndim - 1))
