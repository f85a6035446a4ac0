"""Selection in your own training loop: :class:`Selector` and :func:`weighted_loss`.

Three lines around an existing loop::

    sel = nessa.Selector("127.0.0.1:50051", "mydata", method="craig", fraction=0.1, image_size=32)
    for epoch in range(epochs):
        for batch in sel.epoch(model, epoch):  # proxy push + select + stream (decoded in a background thread)
            loss = nessa.weighted_loss(model(batch["data"]), batch["label"], batch["weight"])
            ...

Each :meth:`Selector.epoch` exports the model as a proxy (only for methods that need model outputs) and pushes it,
asks the daemon for the epoch's weighted subset, and streams it while a background thread decodes the next batches:
``data`` float32 tensors in the model's layout (raw arrays as stored, channel-last images made channel-first, PNG/JPEG
decoded with the same :class:`~nessa.store.images.ImagePrep` the daemon applies before the proxy, then scaled and
normalized exactly as the proxy's input), ``label`` int64, ``weight`` float32, ``index`` int64. Under DDP each rank
streams its own part of the selection (``torch.distributed`` rank and world size, or given). :meth:`state_dict` /
:meth:`load_state_dict` resume mid-epoch at a batch boundary.
"""

from __future__ import annotations

import copy
import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from nessa.client import DatasetInfo, Selection, StorageClient
from nessa.decode import InputDecoder
from nessa.errors import InvalidArgumentError
from nessa.order import Partition, epoch_seed
from nessa.packed import PackedSamples

__all__ = ["Selector", "weighted_loss"]

_END = object()


def weighted_loss(logits: Any, labels: Any, weights: Any) -> Any:
    """Mean of ``weight_i * cross_entropy(logits_i, label_i)``: the loss CRAIG's and CREST's weights are for."""
    import torch.nn.functional as F

    return (weights.to(logits.dtype) * F.cross_entropy(logits, labels, reduction="none")).mean()


class Selector:
    """Per-epoch selection from a NeSSA daemon for a user's own model and loop.

    Args:
        target: the daemon's ``host:port``.
        dataset: the dataset name.
        method: selection method (``random``, ``craig``, ``crest``, ...; ``nessa methods`` lists them).
        fraction: samples per epoch as a fraction of the dataset, in (0, 1].
        batch_size: samples per yielded batch (the last may be smaller).
        seed: seeds the selections (``seed + epoch``) and the per-epoch shuffle.
        image_size: for png/jpeg datasets: resize the shorter side and center-crop square to this (required there).
        image_mode: ``RGB`` or ``L``.
        mean: normalization mean (one value or one per channel), applied after scaling uint8 by 1/255.
        std: normalization std (same length as ``mean``).
        quantize: proxy weights (``int8`` or ``None``).
        options: selector options.
        shuffle: shuffle each epoch's subset (by ``(seed, epoch)``).
        rank: this rank under DDP (default: ``torch.distributed``'s, else 0).
        world_size: ranks under DDP (default: ``torch.distributed``'s, else 1).
        prefetch: decoded batches kept ready by the background thread.
        token: the daemon's bearer token.
        head_only: push only the model's last linear layer plus every sample's penultimate features, computed here
            (the cheap proxy: each selection then streams every sample to this process once, and sends
            ``4 * d`` bytes per sample back; see docs/models-and-images.md).

    Attributes:
        proxy_bytes: serialized bytes of the proxies pushed so far (features included).
    """

    def __init__(
        self,
        target: str,
        dataset: str,
        method: str = "craig",
        fraction: float = 0.1,
        *,
        batch_size: int = 64,
        seed: int = 0,
        image_size: int = 0,
        image_mode: str = "RGB",
        mean: Sequence[float] = (),
        std: Sequence[float] = (),
        quantize: str | None = "int8",
        options: dict[str, Any] | None = None,
        shuffle: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        prefetch: int = 4,
        token: str | None = None,
        head_only: bool = False,
    ) -> None:
        from nessa.proxy.inputs import plan_inputs
        from nessa.selection.registry import create

        if not 0 < float(fraction) <= 1:
            raise InvalidArgumentError(f"fraction must be in (0, 1]; got {fraction!r}")
        if batch_size < 1 or prefetch < 1:
            raise InvalidArgumentError(f"batch_size and prefetch must be >= 1; got {batch_size}, {prefetch}")
        self.target, self.dataset, self.method, self.fraction = target, dataset, method, float(fraction)
        self.batch_size, self.seed, self.quantize, self.shuffle = int(batch_size), int(seed), quantize, shuffle
        self.options = dict(options or {})
        selector = create(method, **self.options)  # validates the method and its options
        self.needs_proxy = bool(plan_inputs(method, selector.required_inputs()).from_proxy)
        from nessa.data import rank_and_world

        self.rank, self.world_size = rank_and_world(rank, world_size)
        self.prefetch = int(prefetch)
        self.head_only = bool(head_only)
        self.proxy_bytes = 0
        self.client = StorageClient(target, token=token)
        self.info: DatasetInfo = self.client.describe(dataset)
        self.decoder = InputDecoder(self.info, image_size, image_mode, mean, std)
        self.input_shape = self.decoder.input_shape
        self.selection: Selection | None = None
        self._epoch = -1
        self._cursor: str | None = None
        self._resume: tuple[int, str, str | None] | None = None

    def decode(self, samples: Sequence[bytes] | PackedSamples) -> Any:
        """Stored bytes → float32 model inputs ``(N, *input_shape)`` (what the proxy sees next to the data)."""
        return self.decoder.decode(samples)

    # --- one epoch ------------------------------------------------------------------------------------------------

    def _push(self, model: Any, epoch: int) -> None:
        import torch

        from nessa.proxy import dumps, export

        snapshot = copy.deepcopy(model).cpu().eval()
        example = torch.zeros((1, *self.input_shape), dtype=torch.float32)
        if self.head_only:
            data = dumps(self._head_proxy(snapshot, example, epoch))
            self.client.push_proxy(data, self.dataset)
            self.proxy_bytes += len(data)
            return
        proxy = export(
            snapshot,
            example,
            quantize=self.quantize,
            version=epoch,
            normalization=self.decoder.normalization,
            image=self.decoder.image,
        )
        data = dumps(proxy)
        self.client.push_proxy(data, self.dataset)
        self.proxy_bytes += len(data)

    def _head_proxy(self, model: Any, example: Any, epoch: int) -> Any:
        """The last linear layer with every sample's penultimate features (streamed and computed here)."""
        import torch

        from nessa.proxy import export, head_features, with_features

        head = export(model, example, quantize=self.quantize, version=epoch, head_only=True)
        indices, feats = [], []
        everything = np.arange(self.info.num_samples, dtype=np.int64)
        with torch.no_grad():
            for b in self.client.stream(everything, self.dataset, batch_size=256):
                feats.append(head_features(model, self.decode(b.samples)))
                indices.append(np.asarray(b.indices, dtype=np.int64))
        return with_features(head, np.concatenate(feats), np.concatenate(indices))

    def select(self, model: Any, epoch: int) -> Selection:
        """Push the model's proxy (if the method needs one) and select epoch ``epoch``'s subset."""
        if self.needs_proxy:
            self._push(model, epoch)
        self.selection = self.client.select(
            self.dataset,
            self.method,
            self.fraction,
            seed=self.seed + epoch,
            proxy_version=epoch if self.needs_proxy else None,
            options=self.options,
        )
        return self.selection

    def epoch(self, model: Any, epoch: int) -> Iterator[dict[str, Any]]:
        """The batches of epoch ``epoch``: select (with a fresh proxy of ``model``), then stream, decoded.

        Yields:
            dicts with ``data`` (float32 tensor), ``label`` (int64), ``weight`` (float32), ``index`` (int64).
        """
        import torch

        resume = self._resume if self._resume is not None and self._resume[0] == epoch else None
        self._resume = None
        if resume is not None:
            sel: Selection | str = resume[1]
            cursor = resume[2]
        else:
            sel, cursor = self.select(model, epoch), None
        self._epoch = epoch
        self._cursor = cursor
        part = Partition(world_size=self.world_size, rank=self.rank) if self.world_size > 1 else None
        stream = self.client.stream(
            sel,
            self.dataset,
            batch_size=self.batch_size,
            shuffle_seed=epoch_seed(self.seed, epoch) if self.shuffle else None,
            cursor=cursor,
            partition=part,
        )
        ready: queue.Queue[Any] = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def produce() -> None:
            try:
                for b in stream:
                    item = {
                        "data": self.decode(b.samples),
                        "label": torch.from_numpy(np.asarray(b.labels, dtype=np.int64)),
                        "weight": torch.from_numpy(np.asarray(b.weights, dtype=np.float32)),
                        "index": torch.from_numpy(np.asarray(b.indices, dtype=np.int64)),
                        "_cursor": b.cursor,
                    }
                    while not stop.is_set():
                        try:
                            ready.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                ready.put(_END)
            except BaseException as exc:  # handed to the consumer, raised there
                ready.put(exc)

        thread = threading.Thread(target=produce, name="nessa-selector-decode", daemon=True)
        thread.start()
        try:
            while True:
                item = ready.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                self._cursor = item.pop("_cursor")
                yield item
        finally:
            stop.set()
            thread.join(timeout=5)

    # --- resuming -------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Where the current epoch stands (after the last batch yielded)."""
        return {
            "epoch": self._epoch,
            "selection_id": self.selection.id if self.selection is not None else "",
            "cursor": self._cursor,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next :meth:`epoch` call for the saved epoch streams the rest of its saved selection."""
        if state.get("selection_id"):
            self._resume = (int(state["epoch"]), str(state["selection_id"]), state.get("cursor"))

    def close(self) -> None:
        """Close the connection."""
        self.client.close()
