"""A training run's settings (:class:`TrainConfig`), validated once, and the device it runs on."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from nessa.errors import FailedPreconditionError, InvalidArgumentError
from nessa.store.images import ImagePrep
from nessa.trainer.models import MODELS
from nessa.trainer.schedule import LRSchedule

__all__ = ["RESUME_KEYS", "TrainConfig", "method_needs_proxy", "resolve_device"]

#: Config fields that must match to resume from a checkpoint.
RESUME_KEYS = (
    "dataset",
    "test_dataset",
    "model",
    "method",
    "fraction",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "warmup_epochs",
    "seed",
    "reselect_every",
    "pipeline",
    "options",
    "quantize",
    "crest_tau",
    "crest_interval_mul",
    "crest_batch_num_mul",
    "crest_check_size",
    "crest_warmup",
    "plan",
    "stop_at_accuracy",
    "weighted",
    "partition_refresh",
)


def method_needs_proxy(method: str, options: dict[str, Any] | None = None) -> bool:
    """Whether ``method`` with ``options`` needs model outputs (the trainer must push a proxy before selecting).

    ``full`` needs none. Decided by :func:`nessa.proxy.inputs.plan_inputs`, the rule the daemon applies.

    Raises:
        InvalidArgumentError: a method the selection library does not have, bad options, or a method that needs
            inputs a storage daemon cannot compute (before anything is exported or pushed).
    """
    if method in ("full", "infobatch"):  # infobatch: the trainer's plan scores samples by its own losses
        return False
    from nessa.proxy.inputs import plan_inputs
    from nessa.selection import available, required_inputs

    methods = available()
    if method not in methods:
        raise InvalidArgumentError(f"unknown method {method!r}; choose full or one of: {', '.join(sorted(methods))}")
    return plan_inputs(method, required_inputs(method, options)).needs_proxy


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` fails clearly when there is no GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FailedPreconditionError(
            f"--device {name}: torch sees no CUDA device (torch {torch.__version__}); use --device cpu or auto"
        )
    if name != "cpu" and not name.startswith("cuda"):
        raise InvalidArgumentError(f"unknown device {name!r}; use auto, cpu or cuda[:N]")
    return torch.device(name)


@dataclass
class TrainConfig:
    """One training run.

    Attributes:
        target: the storage daemon's ``host:port``.
        dataset: training dataset name.
        test_dataset: test dataset name (evaluated after every epoch).
        model: ``mlp``, ``cnn1d``, ``resnet20``, or a user's model factory by import path (``mymodels:small_vit``;
            called with those of ``num_classes``, ``channels``, ``input_shape`` it takes).
        method: ``full`` or a selector of the library (``random``, ``balanced``, ``craig``, ``crest`` ...).
        fraction: budget per epoch as a fraction of the training set (ignored by ``full``).
        epochs: epochs to train.
        batch_size: samples per optimizer step.
        lr: peak learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        warmup_epochs: linear warm-up length in epochs.
        seed: seeds the model's initialisation, the selections and the per-epoch order.
        reselect_every: select every this many epochs and train on the same selection in between (1: every
            epoch, as CRAIG's code does by default; its ``--lag``). 0 (auto): as often as the selection can be
            hidden behind training (the measured selection seconds over an epoch's training seconds). Not used by
            ``crest``, which has its own trigger.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        pipeline: request epoch ``e + 1``'s selection while epoch ``e`` trains.
        warm_start: with ``pipeline``, epochs that would wait for the run's first proxy selection (the initial
            model's, being made on the daemon) train on a seeded random subset of the same budget instead, as
            CREST's random warm-up does; the selection is trained on from the first epoch it is ready. Off: the
            first epoch waits for it, as CRAIG's code does. With ``crest``, its random warm-up (``crest_warmup``)
            goes on until the first selection arrives.
        checkpoint_dir: where to checkpoint (and resume from); ``None``: no checkpoints.
        checkpoint_every_steps: also checkpoint every this many steps inside an epoch (0: epoch ends only).
        metrics_port: serve Prometheus ``/metrics`` on this port (``None``: do not serve).
        metrics_linger: after the last epoch, keep serving ``/metrics`` this many seconds (so a Prometheus that
            scrapes every few seconds records the final epoch) before returning.
        options: selector options (name → value).
        engine: the daemon's proxy engine (``opencl``, ``torch``; "" for the daemon's default).
        quantize: proxy weights: ``int8`` or ``None`` (float32).
        token: bearer token for the daemon.
        tls: TLS setting for the client (see :class:`nessa.client.StorageClient`).
        crest_tau: CREST's τ (relative error of the quadratic model that triggers a reselection; the CREST code's
            default 0.1).
        crest_interval_mul: CREST's h (check interval multiplier).
        crest_batch_num_mul: CREST's b (mini-batch coresets per check interval).
        crest_check_size: samples in CREST's check set V_r, drawn at random from the training set once per run.
        crest_warmup: before CREST's first selection, train this fraction of an epoch's steps on random mini-batches
            of the whole set (CREST's code trains one such fractional epoch: 1.0); 0 selects at step 0.
        infobatch_delta: InfoBatch's δ: epochs after ``δ · epochs`` train on every sample (annealing; the code's
            0.875). With ``infobatch`` the ``fraction`` is the keep ratio of well-learned samples (``1 − r``).
        epochs_budget: with ``full``, train for the steps a fraction-``epochs_budget`` run takes in ``epochs`` epochs
            (``ceil(epochs · epochs_budget)`` epochs, the schedule over them): the "just train less" baseline. 0: off.
        eval_batch_size: batch size of evaluation.
        prefetch_batches: decoded batches kept ready by the prefetch thread.
        stream_batch_size: samples per streamed message (0: ``batch_size``).
        torch_threads: torch intra-op threads for this process (0: leave torch's setting). On a machine whose
            cores are shared (a daemon on the same host), 1 avoids OpenMP oversubscription, which can slow small
            models by an order of magnitude.
        progress: show a progress bar.
        progress_desc: the bar's label (default: the method).
        session: the selection session the daemon keeps selector state under (``drop_learned``, AdaCore's
            averages); "" uses the run's id (saved in the checkpoint, so a resumed run continues its session).
        weighted: weight each sample's loss by its selection weight (CRAIG's and CREST's code); False trains
            unweighted (NeSSA's code).
        partition_refresh: with the ``partitions`` plan, push a new proxy every this many steps.
        cpus: pin the trainer to these CPUs (e.g. ``"1"``; "" leaves it alone), torch's threads matched.
        stop_at_accuracy: stop after the first epoch whose test accuracy reaches this (a time-to-accuracy run;
            ``epochs`` is then the most it may train).
        plan: the training plan (:mod:`nessa.trainer.plans`); "" picks the method's own (``full``, ``crest``) or
            ``epoch``.
        image_size: for png/jpeg datasets: resize the shorter side to this and center-crop it square (the daemon
            decodes the same way before the proxy); 0 for array datasets.
        image_mode: for png/jpeg datasets: ``RGB`` or ``L`` (grayscale).
    """

    target: str
    dataset: str
    test_dataset: str
    model: str = "cnn1d"
    method: str = "full"
    fraction: float = 0.1
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    seed: int = 0
    reselect_every: int = 1
    device: str = "auto"
    pipeline: bool = True
    warm_start: bool = False
    checkpoint_dir: str | None = None
    checkpoint_every_steps: int = 0
    metrics_port: int | None = None
    metrics_linger: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)
    engine: str = ""
    quantize: str | None = "int8"
    token: str | None = None
    tls: Any = None
    crest_tau: float = 0.1
    crest_interval_mul: float = 1.0
    crest_batch_num_mul: int = 5
    crest_check_size: int = 512
    crest_warmup: float = 1.0
    infobatch_delta: float = 0.875
    epochs_budget: float = 0.0
    eval_batch_size: int = 1024
    prefetch_batches: int = 4
    stream_batch_size: int = 0
    torch_threads: int = 0
    progress: bool = True
    progress_desc: str | None = None
    plan: str = ""
    stop_at_accuracy: float | None = None
    cpus: str = ""
    weighted: bool = True
    partition_refresh: int = 1
    session: str = ""
    image_size: int = 0
    image_mode: str = "RGB"

    def image_prep(self) -> ImagePrep | None:
        """The decode of png/jpeg samples (``None`` without ``image_size``)."""
        if not self.image_size:
            return None
        n = int(self.image_size)
        return ImagePrep(mode=self.image_mode, resize=n, height=n, width=n)

    def __post_init__(self) -> None:
        if self.model not in MODELS and ":" not in self.model:
            raise InvalidArgumentError(
                f"unknown model {self.model!r}; choose one of: {', '.join(sorted(MODELS))}, or a module:factory "
                "import path"
            )
        if self.image_size < 0 or self.image_mode not in ("RGB", "L"):
            raise InvalidArgumentError(
                f"image_size must be >= 0 and image_mode RGB or L; got {self.image_size}, {self.image_mode!r}"
            )
        if not self.dataset or not self.test_dataset:
            raise InvalidArgumentError("give both --dataset and --test-dataset (names the daemon serves)")
        if not (math.isfinite(self.epochs_budget) and 0 <= self.epochs_budget <= 1):
            raise InvalidArgumentError(f"epochs_budget must be in [0, 1]; got {self.epochs_budget!r}")
        if self.epochs_budget and self.method != "full":
            raise InvalidArgumentError("epochs_budget is for method full (the fewer-epochs baseline)")
        if self.epochs_budget and self.epochs >= 1:
            self.epochs = max(1, math.ceil(self.epochs * self.epochs_budget))
            self.epochs_budget = 0.0  # applied (a copy of this config does not shrink the epochs again)
        if self.method == "full":
            self.fraction = 1.0
        elif not (isinstance(self.fraction, float | int) and 0 < self.fraction <= 1):
            raise InvalidArgumentError(f"fraction must be in (0, 1]; got {self.fraction!r}")
        for name in (
            "epochs",
            "batch_size",
            "eval_batch_size",
            "prefetch_batches",
            "crest_batch_num_mul",
            "crest_check_size",
        ):
            if int(getattr(self, name)) < 1:
                raise InvalidArgumentError(f"{name} must be >= 1; got {getattr(self, name)!r}")
        for name in ("checkpoint_every_steps", "stream_batch_size", "torch_threads", "reselect_every"):
            if int(getattr(self, name)) < 0:
                raise InvalidArgumentError(f"{name} must be >= 0; got {getattr(self, name)!r}")
        if self.seed < 0:
            raise InvalidArgumentError(f"seed must be >= 0; got {self.seed}")
        if not 0 <= self.momentum < 1 or self.weight_decay < 0:
            raise InvalidArgumentError(
                f"momentum must be in [0, 1) and weight decay >= 0; got {self.momentum}, {self.weight_decay}"
            )
        if self.quantize not in ("int8", None):
            raise InvalidArgumentError(f"quantize must be 'int8' or None; got {self.quantize!r}")
        if not math.isfinite(self.crest_tau) or self.crest_tau <= 0 or self.crest_interval_mul <= 0:
            raise InvalidArgumentError("crest_tau and crest_interval_mul must be > 0")
        if self.stop_at_accuracy is not None and not 0 < self.stop_at_accuracy <= 1:
            raise InvalidArgumentError(f"stop_at_accuracy must be in (0, 1]; got {self.stop_at_accuracy!r}")
        if not (math.isfinite(self.infobatch_delta) and 0 <= self.infobatch_delta <= 1):
            raise InvalidArgumentError(f"infobatch_delta must be in [0, 1]; got {self.infobatch_delta!r}")
        if not (math.isfinite(self.crest_warmup) and self.crest_warmup >= 0):
            raise InvalidArgumentError(f"crest_warmup must be a fraction of an epoch >= 0; got {self.crest_warmup!r}")
        if self.method == "crest" and self.options.get("minibatch_size", self.batch_size) != self.batch_size:
            raise InvalidArgumentError(
                "crest's minibatch_size option must equal --batch-size (each mini-batch coreset is one training batch)"
            )
        LRSchedule(self.lr, self.epochs, self.warmup_epochs)  # validates

    def resume_key(self) -> dict[str, Any]:
        """The fields a checkpoint must agree with to be resumed."""
        d = asdict(self)
        return {k: d[k] for k in RESUME_KEYS}
