"""Side-by-side results of training runs: the report dictionary, its table, and its figure.

A :class:`RunResult` is what one ``nessa train`` run returns: the method, its per-epoch records and totals.
:func:`build_report` puts several runs side by side against a target accuracy (full-data final accuracy minus
one point by default), :func:`format_table` renders the table the demo prints, :func:`write_report` writes
``report.json`` and :func:`plot_report` the PNG (accuracy against wall time and against bytes moved).

Accuracies are fractions in ``[0, 1]`` in the JSON and percentages in the table. Wall seconds are training wall
time: waiting for selections and data, proxy export and upload, forward/backward; the per-epoch evaluation on the
test set is excluded (it is the same for every method) and reported separately.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ACCURACY_MARGIN",
    "RunResult",
    "build_report",
    "format_bytes",
    "format_table",
    "plot_report",
    "time_to_accuracy",
    "write_report",
]

#: The target is the full-data accuracy minus this margin (one percentage point).
ACCURACY_MARGIN = 0.01


@dataclass
class RunResult:
    """Outcome of one training run.

    Attributes:
        method: selector name (``full`` for the whole dataset).
        fraction: selected fraction of the dataset per epoch (1.0 for ``full``).
        epochs: per-epoch records (dicts; see :class:`nessa.trainer.loop.Trainer` for the keys). Each holds at least
            ``epoch``, ``test_accuracy``, ``wall_seconds`` (cumulative), ``bytes_to_trainer_total`` and
            ``bytes_to_storage_total`` (cumulative). An epoch's bytes are those that arrived during it: the next
            epoch's stream opens ahead, so part of its bytes count in the epoch before.
        wall_seconds: training wall time of the run (evaluation excluded).
        bytes_to_trainer: bytes received from the storage daemon for training (sample payload and metadata).
        bytes_to_storage: bytes sent to the daemon (proxies and requests).
        data_wait_seconds: time the training loop blocked waiting for a selection or the next batch.
        eval_seconds: time spent evaluating on the test set.
        eval_bytes: bytes received to cache the test set (once per run).
        setup_bytes: bytes of the ``DescribeDataset`` replies the run started with (once per start or resume).
        model: model name.
        device: torch device the run trained on.
        options: the run's configuration (JSON-able).
    """

    method: str
    fraction: float
    epochs: list[dict[str, Any]]
    wall_seconds: float
    bytes_to_trainer: int
    bytes_to_storage: int
    data_wait_seconds: float
    eval_seconds: float = 0.0
    eval_bytes: int = 0
    setup_bytes: int = 0
    model: str = ""
    device: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def final_accuracy(self) -> float:
        """Test accuracy after the last epoch (``nan`` without epochs)."""
        return float(self.epochs[-1]["test_accuracy"]) if self.epochs else float("nan")

    @property
    def best_accuracy(self) -> float:
        """Best test accuracy over the epochs (``nan`` without epochs)."""
        return max((float(e["test_accuracy"]) for e in self.epochs), default=float("nan"))

    def to_dict(self) -> dict[str, Any]:
        """The run as a JSON-able dict, with final and best accuracy filled in."""
        out = asdict(self)
        out["final_accuracy"] = self.final_accuracy
        out["best_accuracy"] = self.best_accuracy
        return out


def time_to_accuracy(epochs: list[dict[str, Any]], target: float) -> float | None:
    """Cumulative wall seconds at the end of the first epoch whose test accuracy reaches ``target``."""
    for rec in epochs:
        if float(rec["test_accuracy"]) >= target:
            return float(rec["wall_seconds"])
    return None


def _bytes_to_target(epochs: list[dict[str, Any]], target: float) -> int | None:
    for rec in epochs:
        if float(rec["test_accuracy"]) >= target:
            return int(rec["bytes_to_trainer_total"]) + int(rec["bytes_to_storage_total"])
    return None


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den <= 0 or not math.isfinite(num) or not math.isfinite(den):
        return None
    return num / den


def build_report(
    results: list[RunResult], target_accuracy: float | None = None, config: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Put runs side by side.

    Args:
        results: one result per method, in the order to show them.
        target_accuracy: accuracy to time against; default: the ``full`` run's final accuracy minus
            :data:`ACCURACY_MARGIN`, or, without a ``full`` run, the best final accuracy minus the margin.
        config: how the runs were made (dataset sizes, epochs, seed ...), copied into the report.

    Returns:
        ``{"target_accuracy", "target_from", "config", "methods": [...], "findings": [...]}``; each method has
        ``method, fraction, final_accuracy, best_accuracy, wall_seconds, bytes_to_trainer, bytes_to_storage,
        data_wait_seconds, time_to_target_seconds`` (None when not reached), ``speedup_vs_full``,
        ``time_to_target_speedup_vs_full``, ``bytes_ratio_vs_full`` and ``epochs``.
    """
    full = next((r for r in results if r.method == "full"), None)
    if target_accuracy is not None:
        target, source = float(target_accuracy), "given"
    elif full is not None:
        target, source = full.final_accuracy - ACCURACY_MARGIN, "full-data final accuracy - 1 pt"
    else:
        best = max((r.final_accuracy for r in results), default=float("nan"))
        target, source = best - ACCURACY_MARGIN, "best final accuracy - 1 pt (no full-data run)"
    full_ttt = time_to_accuracy(full.epochs, target) if full else None
    full_bytes = (full.bytes_to_trainer + full.bytes_to_storage) if full else None
    methods = []
    for r in results:
        entry = r.to_dict()
        ttt = time_to_accuracy(r.epochs, target)
        moved = r.bytes_to_trainer + r.bytes_to_storage
        entry.update(
            time_to_target_seconds=ttt,
            bytes_to_target=_bytes_to_target(r.epochs, target),
            speedup_vs_full=_ratio(full.wall_seconds, r.wall_seconds) if full else None,
            time_to_target_speedup_vs_full=_ratio(full_ttt, ttt),
            bytes_ratio_vs_full=_ratio(float(moved), float(full_bytes) if full_bytes else None),
            data_wait_fraction=_ratio(r.data_wait_seconds, r.wall_seconds),
        )
        methods.append(entry)
    return {
        "target_accuracy": target,
        "target_from": source,
        "config": dict(config or {}),
        "methods": methods,
        "findings": _findings(methods, target),
    }


def _findings(methods: list[dict[str, Any]], target: float) -> list[str]:
    """Plain statements about the numbers, good or bad, for the report and the console."""
    out: list[str] = []
    by_name = {m["method"]: m for m in methods}
    rnd = by_name.get("random")
    for m in methods:
        name = m["method"]
        if name in ("full", "random"):
            continue
        if rnd is not None:
            diff = (m["final_accuracy"] - rnd["final_accuracy"]) * 100
            verdict = "beats" if diff > 0 else ("ties" if diff == 0 else "does NOT beat")
            out.append(
                f"{name} {verdict} random at the same budget: {m['final_accuracy'] * 100:.2f}% vs "
                f"{rnd['final_accuracy'] * 100:.2f}% ({diff:+.2f} pt final accuracy)"
            )
    for m in methods:
        if m["method"] == "full":
            continue
        ttt = m["time_to_target_seconds"]
        if ttt is None:
            out.append(f"{m['method']} did not reach the target accuracy {target * 100:.2f}%")
        elif m["time_to_target_speedup_vs_full"] is not None:
            speedup = float(m["time_to_target_speedup_vs_full"])
            than_full = f"{speedup:.2f}x faster than" if speedup >= 1 else f"{1 / speedup:.2f}x slower than"
            out.append(f"{m['method']} reached {target * 100:.2f}% after {ttt:.1f} s, {than_full} full data")
    return out


def format_bytes(n: float | None) -> str:
    """Human-readable byte count (binary units)."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover - loop always returns


def format_table(report: dict[str, Any]) -> str:
    """The report as a fixed-width text table (accuracies in percent), followed by its findings."""
    header = (
        "method",
        "fraction",
        "final acc",
        "best acc",
        "wall",
        "→trainer",
        "→storage",
        "data wait",
        "speedup",
        "time to target",
    )
    rows = [header]
    for m in report["methods"]:
        ttt = m["time_to_target_seconds"]
        tts = m["time_to_target_speedup_vs_full"]
        ttt_txt = "not reached" if ttt is None else f"{ttt:.1f} s" + (f" ({tts:.2f}x)" if tts is not None else "")
        speed = m["speedup_vs_full"]
        rows.append(
            (
                m["method"],
                f"{m['fraction']:.2f}",
                f"{m['final_accuracy'] * 100:.2f}%",
                f"{m['best_accuracy'] * 100:.2f}%",
                f"{m['wall_seconds']:.1f} s",
                format_bytes(m["bytes_to_trainer"]),
                format_bytes(m["bytes_to_storage"]),
                f"{m['data_wait_seconds']:.2f} s",
                "-" if speed is None else f"{speed:.2f}x",
                ttt_txt,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(f"target accuracy: {report['target_accuracy'] * 100:.2f}% ({report['target_from']})")
    lines.extend(f"- {f}" for f in report.get("findings", []))
    return "\n".join(lines)


def write_report(report: dict[str, Any], out_dir: str | os.PathLike[str], name: str = "report.json") -> Path:
    """Write ``report`` as JSON into ``out_dir`` (created if missing); returns the file's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, allow_nan=False, default=_json_default) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def plot_report(report: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Draw accuracy against wall time and against bytes moved (both directions) for every method; save a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, (ax_time, ax_bytes) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    target = report["target_accuracy"]
    for m in report["methods"]:
        epochs = m["epochs"]
        if not epochs:
            continue
        label = m["method"] if m["method"] == "full" else f"{m['method']} ({m['fraction'] * 100:.0f}%)"
        acc = [e["test_accuracy"] * 100 for e in epochs]
        wall = [e["wall_seconds"] for e in epochs]
        moved = [(e["bytes_to_trainer_total"] + e["bytes_to_storage_total"]) / 2**20 for e in epochs]
        ax_time.plot(wall, acc, marker="o", markersize=3, label=label)
        ax_bytes.plot(moved, acc, marker="o", markersize=3, label=label)
    for ax in (ax_time, ax_bytes):
        if math.isfinite(target):
            ax.axhline(target * 100, color="grey", linestyle="--", linewidth=1, label="target (full − 1 pt)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    ax_time.set_xlabel("training wall time (s)")
    ax_time.set_title("accuracy vs wall time")
    ax_bytes.set_xlabel("bytes moved, storage↔trainer (MiB)")
    ax_bytes.set_xscale("log")
    # plain numbers on the log axis, and no labels on its minor ticks (they overlap)
    ax_bytes.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax_bytes.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax_bytes.xaxis.set_minor_formatter(NullFormatter())
    ax_bytes.set_title("accuracy vs bytes moved")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
