"""The test set, streamed once by explicit indices and cached on the device, and the model's score on it."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nessa.client import DatasetInfo, StorageClient
from nessa.pipeline import Decode, Rebatch, SelectionSource
from nessa.store.images import ImagePrep
from nessa.trainer.batches import SampleDecoder

__all__ = ["TestSet", "evaluate"]


class TestSet:
    """Every sample of a test dataset, decoded, on ``device``."""

    __test__ = False  # not a pytest test class

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x = x
        self.y = y

    def __len__(self) -> int:
        return len(self.y)

    @classmethod
    def load(
        cls, client: StorageClient, info: DatasetInfo, model: str, device: torch.device, image: ImagePrep | None = None
    ) -> TestSet:
        """Stream ``info``'s dataset once through the data path (source → rebatch → decode)."""
        decoder = SampleDecoder(info, model, image)
        source = SelectionSource(
            client, np.arange(info.num_samples, dtype=np.int64), dataset=info.name, message_size=1024
        )
        xs, ys = [], []
        with Decode(Rebatch(source, 1024), decoder.batch) as batches:
            for tb in batches:
                xs.append(tb.x)
                ys.append(tb.y)
        return cls(torch.cat(xs).to(device), torch.cat(ys).to(device))


def evaluate(model: nn.Module, test: TestSet, batch_size: int) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``test`` (the model's train/eval mode is restored)."""
    was = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(test), batch_size):
            x, y = test.x[i : i + batch_size], test.y[i : i + batch_size]
            logits = model(x)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum").item())
            correct += int((logits.argmax(1) == y).sum().item())
    model.train(was)
    n = max(len(test), 1)
    return loss_sum / n, correct / n
