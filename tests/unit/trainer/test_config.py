"""Tests of nessa.trainer.config."""

from __future__ import annotations

import pytest
import torch

from nessa.errors import FailedPreconditionError, InvalidArgumentError


def test_device_choice_is_explicit_and_fails_clearly() -> None:
    from nessa.trainer.config import resolve_device

    has_cuda = torch.cuda.is_available()
    assert resolve_device("auto").type == ("cuda" if has_cuda else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    if has_cuda:
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(FailedPreconditionError, match="no CUDA device"):
            resolve_device("cuda")
    with pytest.raises(InvalidArgumentError, match="unknown device"):
        resolve_device("tpu")
