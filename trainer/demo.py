"""``nessa demo``: from nothing to a side-by-side comparison of full data, random and NeSSA selection.

:func:`run_demo` generates MNIST-1D with the ``mnist1d`` package, ingests it into a temporary data directory
(train → ``mnist1d``, test → ``mnist1d-test``), starts a storage daemon as a subprocess (``nessa serve`` on a free
loopback port, as it would run on a storage node), trains the 1-D CNN once per method with the same epochs, seed
and schedule, and writes ``report.json`` and ``report.png`` (accuracy against wall time and against bytes moved)
into the output directory. The table it prints is :func:`nessa.trainer.report.format_table`.

Placement: with two or more CPUs the daemon and the trainer get disjoint halves of them (``place``), as a storage
node and a GPU node would; with one, selection and training compete for it, and the report says so.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nessa.energy import EnergyMeter
from nessa.errors import FailedPreconditionError, InvalidArgumentError
from nessa.placement import format_cpus, split_cpus
from nessa.trainer.config import TrainConfig
from nessa.trainer.loop import train
from nessa.trainer.protocol import (
    TARGET_MARGINS,
    findings,
    format_protocol,
    plot_protocol,
    run_facts,
    summarize,
    target_name,
    targets_from,
)
from nessa.trainer.report import RunResult, write_report

__all__ = [
    "DEFAULT_METHODS",
    "DEFAULT_METHOD_OPTIONS",
    "QUICK",
    "DemoConfig",
    "print_report",
    "run_demo",
    "start_daemon",
]

#: Full data for the steps a ``fraction`` run takes (the schedule compressed): "just train less".
FULL_SHORT = "full-short"
#: Methods the demo compares by default: full data, the baselines a user would pick instead, NeSSA's selectors.
DEFAULT_METHODS = ("full", FULL_SHORT, "random", "rs2", "infobatch", "craig", "crest")
#: InfoBatch's keep ratio of well-learned samples in the demo (the code's default prune ratio r = 0.5).
INFOBATCH_KEEP = 0.5
#: Methods whose runs keep the full run's epochs and schedule in a time-to-accuracy run (their epochs shrink by
#: themselves, or their budget is the schedule); every other method gets ``epochs / fraction`` epochs.
_FULL_SCHEDULE = ("full", "infobatch")
#: CRAIG with stochastic greedy (ε = 0.1): 0.9988 of lazy greedy's objective on the demo's gradients at 0.6 of
#: its selection time (measured: lazy 323.8, stochastic 323.4; 1.45 s -> 0.85 s), CRAIG's code's ``--st_grd``.
DEFAULT_METHOD_OPTIONS: dict[str, dict[str, Any]] = {"craig": {"optimizer": "stochastic", "epsilon": 0.1}}
DATASET = "mnist1d"
TEST_DATASET = "mnist1d-test"
_LISTEN_RE = re.compile(r"listening on (\S+):(\d+)")


@dataclass
class DemoConfig:
    """What ``nessa demo`` runs.

    Attributes:
        out: output directory for ``report.json`` and ``report.png``.
        num_samples: MNIST-1D samples generated, train and test together (a fifth goes to the test set).
        methods: methods to compare (``full`` plus selectors of the library).
        fraction: budget of the selection methods.
        epochs: epochs of every run.
        batch_size: samples per step.
        lr: peak learning rate.
        warmup_epochs: linear warm-up.
        seed: seed of data generation and of the first run (initialisation, selection and order).
        seeds: runs per method, with seeds ``seed .. seed + seeds - 1`` (the tables show medians with min–max).
        equal_epochs: also run every method for ``epochs`` epochs and show that table beside the time-to-target one.
        device: torch device (``auto``, ``cpu``, ``cuda``).
        engine: the daemon's proxy engine (``opencl``: the near-storage path on PoCL; ``torch``).
        pipeline: pipeline selections behind training.
        reselect_every: selection methods other than CREST select every this many epochs (1: every epoch; 0: as
            often as the selection can be hidden behind training, CRAIG's ``--lag`` from measurements).
        warm_start: train random subsets while a run's first proxy selection is made (see ``TrainConfig``).
        data_dir: use (and keep) this data directory instead of a temporary one; datasets already there are reused.
        progress: show progress bars.
        method_options: per-method selector options (default :data:`DEFAULT_METHOD_OPTIONS`).
        torch_threads: torch intra-op threads of the trainer (0: torch's default). Default 1: the daemon runs on
            the same cores, and OpenMP oversubscription slows the small CNN by an order of magnitude. With
            ``place`` the trainer's threads match its CPUs instead.
        place: pin the daemon and the trainer to disjoint halves of the CPUs (when there are two or more).
    """

    out: Path = Path("nessa-demo-out")
    num_samples: int = 50_000
    methods: tuple[str, ...] = DEFAULT_METHODS
    fraction: float = 0.1
    epochs: int = 15
    batch_size: int = 128
    lr: float = 0.1
    warmup_epochs: float = 1.0
    seed: int = 0
    seeds: int = 3
    equal_epochs: bool = True
    device: str = "auto"
    engine: str = "opencl"
    pipeline: bool = True
    reselect_every: int = 0
    warm_start: bool = True
    data_dir: Path | None = None
    progress: bool = True
    method_options: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(DEFAULT_METHOD_OPTIONS))
    torch_threads: int = 1
    place: bool = True

    def train_config(
        self, method: str, target: str, cpus: str = "", seed: int | None = None, stop_at: float | None = None
    ) -> TrainConfig:
        """The ``nessa train`` settings of ``method``'s run (against the daemon at ``target``, pinned to ``cpus``).

        With ``stop_at`` it is the time-to-accuracy run: ``epochs / fraction`` epochs (as many samples as the full
        run, with the same warm-up and schedule in samples seen) that stops once ``stop_at`` is reached; ``infobatch``
        keeps the full run's epochs (its epochs shrink by themselves) and ``full-short`` its own shorter schedule.
        """
        selector = self.selector_of(method)
        share = 1.0 if selector in _FULL_SCHEDULE else self.fraction
        tta = stop_at is not None and method != "full"
        return TrainConfig(
            target=target,
            dataset=DATASET,
            test_dataset=TEST_DATASET,
            model="cnn1d",
            method=selector,
            fraction=INFOBATCH_KEEP if selector == "infobatch" else self.fraction,
            epochs_budget=self.fraction if method == FULL_SHORT else 0.0,
            epochs=math.ceil(self.epochs / share) if tta else self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            warmup_epochs=self.warmup_epochs / share if tta else self.warmup_epochs,
            seed=self.seed if seed is None else seed,
            stop_at_accuracy=stop_at if tta else None,
            device=self.device,
            pipeline=self.pipeline,
            warm_start=self.warm_start,
            reselect_every=self.reselect_every,
            options=dict(self.method_options.get(method, {})),
            progress=self.progress,
            torch_threads=0 if cpus else self.torch_threads,
            cpus=cpus,
            progress_desc=self.label(method),
        )

    def label(self, method: str) -> str:
        """How tables name ``method``'s runs (with its budget)."""
        if method == "full":
            return method
        if method == FULL_SHORT:
            short = math.ceil(self.epochs * self.fraction)
            return f"{method} ({short} epoch{'s' if short != 1 else ''})"
        if method == "infobatch":
            return f"infobatch r={1 - INFOBATCH_KEEP:g}"
        return f"{method} {self.fraction * 100:g}%"

    @staticmethod
    def selector_of(method: str) -> str:
        """The library method a demo method runs (``full-short`` is ``full`` with fewer epochs)."""
        return "full" if method == FULL_SHORT else method

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.num_samples < 100:
            raise InvalidArgumentError(f"--num-samples must be >= 100; got {self.num_samples}")
        if not self.methods:
            raise InvalidArgumentError("--methods is empty; give e.g. full,random,craig,crest")
        if len(set(self.methods)) != len(self.methods):
            raise InvalidArgumentError(f"--methods repeats a method: {','.join(self.methods)}")
        if "full" not in self.methods:
            raise InvalidArgumentError("--methods needs full: the targets are full data's accuracy minus 1 and 0.5 pt")
        if not (isinstance(self.fraction, float | int) and 0 < self.fraction <= 1):
            raise InvalidArgumentError(f"--fraction must be in (0, 1]; got {self.fraction!r}")
        if self.seeds < 1:
            raise InvalidArgumentError(f"--seeds must be >= 1; got {self.seeds}")


#: ``--quick``: a smaller set and fewer epochs (under 3 minutes on 2 CPU cores).
QUICK = {"num_samples": 10_000, "epochs": 4, "seeds": 2}


@contextmanager
def start_daemon(
    data_dir: Path,
    engine: str = "opencl",
    timeout: float = 180.0,
    log_path: Path | None = None,
    cpus: str = "",
    pids: list[int] | None = None,
) -> Iterator[str]:
    """Run ``nessa serve`` over ``data_dir`` on a free loopback port; yields ``host:port`` once it is SERVING.

    ``pids`` (when given) gets the daemon's process id (to meter its energy).

    The daemon is stopped with SIGTERM (then killed after a grace period) when the context exits.
    """
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    cmd = [
        sys.executable,
        "-m",
        "nessa.cli",
        "serve",
        "--data-dir",
        str(data_dir),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--metrics-port",
        "-1",
        "--engine",
        engine,
        "--grace",
        "1",
        "--log-level",
        "warning",
    ]
    if cpus:
        cmd += ["--cpus", cpus]
    log_file = open(log_path, "wb") if log_path is not None else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log_file)
    if pids is not None:
        pids.append(proc.pid)
    try:
        address = _read_address(proc, timeout)
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if proc.poll() is not None:
                    raise FailedPreconditionError(f"the storage daemon exited with status {proc.returncode}")
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5.0).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise FailedPreconditionError(f"the storage daemon at {address} was not SERVING after {timeout} s")
                time.sleep(0.1)
        yield address
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        if log_path is not None and hasattr(log_file, "close"):
            log_file.close()


def _read_address(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """The ``host:port`` from the daemon's first stdout line ("nessa serve: listening on HOST:PORT ...")."""
    found: list[str] = []

    def reader() -> None:
        if proc.stdout is None:
            return
        for raw in proc.stdout:
            m = _LISTEN_RE.search(raw.decode("utf-8", "replace"))
            if m:
                found.append(f"{m.group(1)}:{m.group(2)}")
                break
        # keep draining so the daemon never blocks on a full pipe
        for _ in proc.stdout:
            pass

    thread = threading.Thread(target=reader, name="nessa-demo-daemon-stdout", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not found:
        if proc.poll() is not None:
            raise FailedPreconditionError(
                f"the storage daemon exited with status {proc.returncode} before listening; run `nessa serve` by hand "
                "to see why"
            )
        if time.monotonic() > deadline:
            raise FailedPreconditionError(f"the storage daemon did not report its port within {timeout} s")
        time.sleep(0.05)
    return found[0]


def _prepare_data(cfg: DemoConfig, data_dir: Path, say: Callable[[str], None]) -> None:
    from nessa.store import ingest

    if (data_dir / DATASET / "manifest.json").is_file() and (data_dir / TEST_DATASET / "manifest.json").is_file():
        say(f"using the datasets already in {data_dir}")
        return
    t0 = time.perf_counter()
    ingest("mnist1d", data_dir / DATASET, num_samples=cfg.num_samples, seed=cfg.seed, test_fraction=0.2)
    seconds = time.perf_counter() - t0
    say(f"generated and ingested MNIST-1D ({cfg.num_samples} samples) into {data_dir} in {seconds:.1f} s")


def run_demo(cfg: DemoConfig, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the demo end to end; returns the report (also written to ``cfg.out``).

    Full data first (one run per seed; its median final accuracy sets the targets), then each method's
    time-to-accuracy runs, then (with ``equal_epochs``) each method for the full run's epochs.
    """
    echo = say or (lambda s: print(s, file=sys.stderr, flush=True))
    cfg.out.mkdir(parents=True, exist_ok=True)
    tmp: str | None = None
    if cfg.data_dir is None:
        tmp = tempfile.mkdtemp(prefix="nessa-demo-")
        data_dir = Path(tmp)
    else:
        data_dir = Path(cfg.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    seeds = list(range(cfg.seed, cfg.seed + cfg.seeds))
    halves = split_cpus() if cfg.place else None
    daemon_cpus, trainer_cpus = (format_cpus(halves[0]), format_cpus(halves[1])) if halves else ("", "")
    placement = (
        f"storage daemon on CPUs {daemon_cpus}, trainer on CPUs {trainer_cpus} (disjoint, as two machines)"
        if halves
        else "daemon and trainer share the CPUs: selection and training compete for them"
    )
    echo(placement)
    others = [m for m in cfg.methods if m != "full"]
    full_runs: list[RunResult] = []
    tta: dict[str, list[tuple[int, RunResult]]] = {m: [] for m in others}
    equal: dict[str, list[tuple[int, RunResult]]] = {m: [] for m in others}
    quiet = echo if not cfg.progress else (lambda _s: None)
    try:
        _prepare_data(cfg, data_dir, echo)
        pids: list[int] = []
        with start_daemon(
            data_dir, engine=cfg.engine, log_path=cfg.out / "daemon.log", cpus=daemon_cpus, pids=pids
        ) as address:
            metered = {"daemon": EnergyMeter(pids[0])}
            echo(f"storage daemon serving {data_dir} on {address} (proxy engine: {cfg.engine}); seeds {seeds}")
            full_runs.extend(
                train(cfg.train_config("full", address, trainer_cpus, seed=s), echo=quiet, energy=metered)
                for s in seeds
            )
            targets = targets_from([r.final_accuracy for r in full_runs])
            hardest = max(targets.values())
            echo("targets: " + ", ".join(f"{n} = {a * 100:.2f}%" for n, a in targets.items()))
            for method in others:
                for seed in seeds:
                    run_cfg = cfg.train_config(method, address, trainer_cpus, seed=seed, stop_at=hardest)
                    tta[method].append((seed, train(run_cfg, echo=quiet, energy=metered)))
            if cfg.equal_epochs:
                for method in others:
                    for seed in seeds:
                        run_cfg = cfg.train_config(method, address, trainer_cpus, seed=seed)
                        equal[method].append((seed, train(run_cfg, echo=quiet, energy=metered)))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    config = {
        "dataset": "MNIST-1D (mnist1d package)",
        "num_samples": cfg.num_samples,
        "train_samples": cfg.num_samples - round(cfg.num_samples * 0.2),
        "test_samples": round(cfg.num_samples * 0.2),
        "model": "cnn1d",
        **{k: v for k, v in asdict(cfg).items() if k not in ("out", "data_dir", "progress", "num_samples", "seeds")},
        "seeds": seeds,
        "methods": list(cfg.methods),
        "device": full_runs[0].device if full_runs else cfg.device,
        "cpu_count": os.cpu_count(),
        "total_seconds": time.perf_counter() - started,
        "placement": placement,
        "timing_note": "wall seconds exclude test-set evaluation",
        "protocol": "each method trains until it reaches the harder target or has seen as many samples as the "
        "full run (epochs / fraction epochs, the same schedule in samples seen)",
    }
    full_facts = [run_facts(r, targets, s) for s, r in zip(seeds, full_runs, strict=True)]

    def entry(method: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
        fraction = 1.0 if method == "full" else cfg.fraction
        return {"method": method, "fraction": fraction, "label": cfg.label(method), "runs": runs,
                "summary": summarize(runs, targets)}  # fmt: skip

    methods = [entry("full", full_facts)] + [entry(m, [run_facts(r, targets, s) for s, r in tta[m]]) for m in others]
    report: dict[str, Any] = {
        "targets": targets,
        "target_accuracy": targets[target_name(TARGET_MARGINS[0])],
        "target_from": "full-data median final accuracy - 1 pt (and - 0.5 pt)",
        "config": config,
        "methods": methods,
        "findings": findings(methods, targets),
    }
    if cfg.equal_epochs:
        report["equal_epochs"] = {
            "methods": [entry("full", full_facts)]
            + [entry(m, [run_facts(r, targets, s) for s, r in equal[m]]) for m in others]
        }
    write_report(report, cfg.out)
    plot_protocol(report, cfg.out / "report.png")
    return report


def print_report(report: dict[str, Any], out: Path) -> None:
    """Print the demo's table and where its files are."""
    print(format_protocol(report))
    print(f"\nreport: {out / 'report.json'}\nfigure: {out / 'report.png'}")
