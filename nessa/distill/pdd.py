"""Progressive dataset distillation (PDD, Chen et al., ICLR 2024) over MTT, and the single-stage entry points.

PDD distils P stages of ``ipc / P`` samples per class. Stage i is distilled by trajectory matching with the samples
of stages 1..i−1 frozen in every student batch (conditioning), against expert trajectories that *start* at the
weights reached by training on those earlier stages (transitions). Between stages, as the released
``distill_mtt.py`` does, every expert is restarted from its own starting weights, trained on the union so far with
the stage's learned lr (SGD momentum 0.9, weight decay 5e-4, ×0.1 at half), then trained on real data with
``lr_teacher`` while its parameters are recorded every epoch; those trajectories are the next stage's experts.
Every stage's learned lr is kept: progressive training uses stage i's lr on the union of stages 1..i.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch

from nessa.distill.dm import DMConfig, distribution_match
from nessa.distill.mtt import MTTConfig, match_trajectories
from nessa.distill.net import ConvNetSpec, init_params
from nessa.distill.train import TrainState, train_expert, train_on
from nessa.errors import InvalidArgumentError

__all__ = ["METHODS", "DistillOptions", "DistillResult", "Stage", "distill", "parse_options"]

#: Distillation methods by name.
METHODS = ("pdd", "mtt", "dm")

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class DistillOptions:
    """Everything a distillation run can be told besides method, IPC, stages and seed.

    Attributes:
        num_experts: expert trajectories per stage (MTT / PDD).
        lr_teacher: the experts' SGD lr on real data.
        lr_syn_init: the learned lr's starting value (0: ``lr_teacher``, as MTT; smaller here because a handful of
            synthetic samples give larger gradients than a real batch); also the lr DM's stage records.
        iterations: matching iterations per stage (MTT / PDD).
        syn_steps: unrolled student steps per iteration.
        expert_epochs: expert epochs a student run covers.
        max_start_epoch: start epochs are drawn from [0, max_start_epoch) (0: 3 for PDD, 10 for MTT).
        lr_img: sample step size (0: 100 for MTT / PDD, 1 for DM).
        lr_lr: learned-lr step size.
        batch_syn: synthetic samples per student step (0: all).
        transition_epochs: epochs of training on the union at each PDD transition.
        conditioning: PDD stages see the earlier stages in their student batches (False: the ablation).
        dm_iterations: DM iterations.
        width: ConvNet-1D channels.
        depth: ConvNet-1D blocks.
        device: where to distil: ``cpu`` or ``cuda[:N]`` (a GPU on the storage node).
        torch_threads: torch intra-op threads while the run lasts (0: leave torch's setting). 1 by default: the
            network is tiny, and on cores shared with other work more threads only spin (7x slower measured here
            with 2 threads on a loaded 2-core machine).
    """

    num_experts: int = 8
    lr_teacher: float = 0.2
    lr_syn_init: float = 0.05
    iterations: int = 300
    syn_steps: int = 20
    expert_epochs: int = 2
    max_start_epoch: int = 0
    lr_img: float = 0.0
    lr_lr: float = 1e-4
    batch_syn: int = 0
    transition_epochs: int = 300
    conditioning: bool = True
    dm_iterations: int = 1000
    width: int = 32
    depth: int = 3
    torch_threads: int = 1
    device: str = "cpu"


def parse_options(options: Mapping[str, Any] | None) -> DistillOptions:
    """Build :class:`DistillOptions` from a name → value mapping (strings are converted); unknown names fail."""
    known = {f.name: f for f in fields(DistillOptions)}
    values: dict[str, Any] = {}
    for key, raw in (options or {}).items():
        if key not in known:
            raise InvalidArgumentError(
                f"unknown distillation option {key!r}; known options: {', '.join(sorted(known))}"
            )
        default = getattr(DistillOptions(), key)
        try:
            if isinstance(default, bool):
                text = str(raw).strip().lower()
                if text not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(raw)
                values[key] = text in ("1", "true", "yes")
            else:
                values[key] = type(default)(raw)
        except (TypeError, ValueError):
            raise InvalidArgumentError(
                f"distillation option {key} must be a {type(default).__name__}; got {raw!r}"
            ) from None
    opts = DistillOptions(**values)
    for name in ("num_experts", "iterations", "syn_steps", "expert_epochs", "dm_iterations", "width", "depth"):
        if getattr(opts, name) < 1:
            raise InvalidArgumentError(f"distillation option {name} must be >= 1; got {getattr(opts, name)}")
    _device(opts.device)
    if opts.torch_threads < 0:
        raise InvalidArgumentError(f"torch_threads must be >= 0; got {opts.torch_threads}")
    if opts.transition_epochs < 0 or opts.max_start_epoch < 0 or opts.batch_syn < 0 or opts.lr_syn_init < 0:
        raise InvalidArgumentError("transition_epochs, max_start_epoch and batch_syn must be >= 0")
    if not opts.lr_teacher > 0 or not opts.lr_lr > 0 or opts.lr_img < 0:
        raise InvalidArgumentError("lr_teacher and lr_lr must be > 0 and lr_img >= 0")
    return opts


@dataclass
class Stage:
    """One distilled stage: its new samples (not the earlier stages'), labels and learned lr."""

    x: np.ndarray
    y: np.ndarray
    lr: float
    losses: list[float] = field(default_factory=list)


@dataclass
class DistillResult:
    """A distillation run: its stages in order (one for MTT and DM) and what produced them."""

    method: str
    ipc: int
    stages: list[Stage]
    options: DistillOptions
    seed: int

    @property
    def ipc_per_stage(self) -> int:
        """Samples per class in each stage."""
        return self.ipc // len(self.stages)


def _init_from_real(y: torch.Tensor, classes: list[int], per_class: int, x: torch.Tensor, gen: torch.Generator):
    xs, ys = [], []
    for c in classes:
        pool = torch.nonzero(y == c).flatten()
        pick = pool[torch.randperm(len(pool), generator=gen)[:per_class]]
        xs.append(x[pick])
        ys.append(torch.full((per_class,), c, dtype=torch.long, device=x.device))
    return torch.cat(xs), torch.cat(ys)


def _check(x: np.ndarray, y: np.ndarray, method: str, ipc: int, stages: int) -> list[int]:
    if method not in METHODS:
        raise InvalidArgumentError(f"unknown distillation method {method!r}; choose one of {', '.join(METHODS)}")
    if x.ndim != 2 or len(x) != len(y):
        raise InvalidArgumentError(
            f"distillation needs 1-D signals: x of shape (n, length) with one label each; got {x.shape} and {y.shape}"
        )
    if stages < 1 or ipc < 1:
        raise InvalidArgumentError(f"ipc and stages must be >= 1; got ipc={ipc}, stages={stages}")
    if method != "pdd" and stages != 1:
        raise InvalidArgumentError(f"{method} distils one stage; use --stages 1 (or --method pdd)")
    if ipc % stages:
        raise InvalidArgumentError(
            f"ipc {ipc} is not a multiple of stages {stages}: each stage holds ipc/stages per class"
        )
    classes, counts = np.unique(y, return_counts=True)
    need = ipc // stages
    if counts.min() < max(need, 1):
        raise InvalidArgumentError(
            f"class {int(classes[counts.argmin()])} has {int(counts.min())} samples; a stage needs {need} per class"
        )
    return [int(c) for c in classes]


def distill(
    x: np.ndarray,
    y: np.ndarray,
    *,
    method: str = "pdd",
    ipc: int = 10,
    stages: int = 5,
    seed: int = 0,
    options: DistillOptions | Mapping[str, Any] | None = None,
    progress: Progress | None = None,
) -> DistillResult:
    """Distil real signals ``x`` (n, length) with labels ``y`` into ``stages`` synthetic stages.

    Args:
        x: real samples, float.
        y: integer labels.
        method: ``pdd`` (progressive, over MTT), ``mtt`` or ``dm`` (single stage).
        ipc: synthetic samples per class in total (``ipc / stages`` per stage).
        stages: PDD stages (1 for MTT and DM).
        seed: seeds every random draw.
        options: :class:`DistillOptions` or a mapping for :func:`parse_options`.
        progress: called with (done, total, what) as work proceeds; may raise to stop the run.

    Returns:
        The stages, in order, with their learned lrs (DM: ``lr_teacher``, it learns none).
    """
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y).astype(np.int64)
    classes = _check(x, y, method, ipc, stages)
    opts = options if isinstance(options, DistillOptions) else parse_options(options)
    before = torch.get_num_threads()
    if opts.torch_threads:
        torch.set_num_threads(opts.torch_threads)
    try:
        return _distill(x, y, classes, method, ipc, stages, seed, opts, progress)
    finally:
        if opts.torch_threads:
            torch.set_num_threads(before)


def _distill(
    x: np.ndarray,
    y: np.ndarray,
    classes: list[int],
    method: str,
    ipc: int,
    stages: int,
    seed: int,
    opts: DistillOptions,
    progress: Progress | None,
) -> DistillResult:
    spec = ConvNetSpec(length=x.shape[1], num_classes=int(y.max()) + 1, width=opts.width, depth=opts.depth)
    gen = torch.Generator().manual_seed(int(seed))
    dev = _device(opts.device)
    xt, yt = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)
    per_stage = ipc // stages
    report = progress or (lambda _d, _t, _w: None)

    if method == "dm":
        total = opts.dm_iterations
        x0, y0 = _init_from_real(yt, classes, per_stage, xt, gen)
        cfg = DMConfig(iterations=opts.dm_iterations, lr_img=opts.lr_img or 1.0)
        syn, losses = distribution_match(
            spec, xt, yt, x0, y0, cfg, gen, tick=lambda it, _l: report(it + 1, total, "dm")
        )
        lr = opts.lr_syn_init or opts.lr_teacher  # DM learns no lr: train on it as on the MTT samples at the start
        return DistillResult(method, ipc, [Stage(syn.cpu().numpy(), y0.cpu().numpy(), lr, losses)], opts, seed)

    mtt = MTTConfig(
        iterations=opts.iterations,
        syn_steps=opts.syn_steps,
        expert_epochs=opts.expert_epochs,
        max_start_epoch=opts.max_start_epoch or (3 if method == "pdd" else 10),
        lr_img=opts.lr_img or 100.0,
        lr_lr=opts.lr_lr,
        lr_init=opts.lr_syn_init or opts.lr_teacher,
        batch_syn=opts.batch_syn,
    )
    mtt.check()
    expert_len = mtt.expert_length + 1  # one more epoch recorded, as distill_mtt.py's transitions do
    total = (
        opts.num_experts * expert_len * stages
        + mtt.iterations * stages
        + opts.num_experts * opts.transition_epochs * (stages - 1)
    )
    done = 0

    def step(what: str) -> Callable[[], None]:
        def tick() -> None:
            nonlocal done
            done += 1
            report(done, total, what)

        return tick

    starts = [init_params(spec, gen, dev) for _ in range(opts.num_experts)]
    trajectories = [
        train_expert(spec, xt, yt, start=s, epochs=expert_len, lr=opts.lr_teacher, generator=gen, tick=step("experts"))
        for s in starts
    ]
    out: list[Stage] = []
    fx, fy = xt[:0], yt[:0]
    for i in range(stages):
        x0, y0 = _init_from_real(yt, classes, per_stage, xt, gen)
        tick_it = step(f"stage {i + 1} matching")
        res = match_trajectories(
            spec,
            trajectories,
            x0,
            y0,
            mtt,
            gen,
            frozen_x=fx if opts.conditioning else None,
            frozen_y=fy if opts.conditioning else None,
            tick=_per_iteration(tick_it),
        )
        out.append(Stage(res.x.cpu().numpy(), res.y.cpu().numpy(), res.lr, res.losses))
        fx, fy = torch.cat([fx, res.x]), torch.cat([fy, res.y])
        if i == stages - 1:
            break
        # Transition (as distill_mtt.py): every expert restarts from its own starting weights, trains on the union
        # so far with this stage's learned lr, then records fresh real-data epochs: the next stage's experts.
        tick_tr = step(f"stage {i + 1} transition")
        new_traj = []
        for s in starts:
            state = train_on(
                spec, fx, fy, lr=res.lr, epochs=opts.transition_epochs, generator=gen, state=TrainState(s), tick=tick_tr
            )
            new_traj.append(
                train_expert(
                    spec,
                    xt,
                    yt,
                    start=state.flat,
                    epochs=expert_len,
                    lr=opts.lr_teacher,
                    generator=gen,
                    tick=step("experts"),
                )
            )
        trajectories = new_traj
    return DistillResult(method, ipc, out, replace(opts), seed)


def _per_iteration(tick: Callable[[], None]) -> Callable[[int, float], None]:
    def call(_it: int, _loss: float) -> None:
        tick()

    return call


def _device(name: str) -> torch.device:
    """The torch device called ``name``, or :class:`InvalidArgumentError` if this machine has none such."""
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise InvalidArgumentError(f"device {name!r} is not a torch device; use cpu or cuda[:N]") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise InvalidArgumentError(f"device {name!r}: this machine has no such CUDA device; use device=cpu")
    if dev.type not in ("cpu", "cuda"):
        raise InvalidArgumentError(f"device {name!r}: distillation runs on cpu or cuda[:N]")
    return dev
