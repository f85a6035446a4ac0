"""The time-to-accuracy protocol: how soon each method reaches (nearly) full-data accuracy, over several seeds.

A *target* is the full-data runs' median final accuracy minus a margin (:data:`TARGET_MARGINS`: 1 and 0.5 points).
Each method trains until it reaches the harder target or has seen as many samples as the full run (a fraction-``f``
run gets ``epochs / f`` epochs and the same schedule in samples seen); :func:`reach` reads off when each target was
first reached (cumulative training wall seconds and bytes, both directions, at the end of that epoch).

:func:`summarize` reduces a method's runs (one per seed) to medians with min–max; :func:`findings` states what the
numbers say, and only says "A beats B" when their ranges do not overlap ("within noise" otherwise). No speedup is
given for a method that did not reach a target in every seed. :func:`format_protocol` renders the tables the demo and
``bench/time_to_accuracy.py`` print and :func:`plot_protocol` the figure (zoomed on the band where methods differ).
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nessa.trainer.report import RunResult, format_bytes

__all__ = [
    "GOAL_SHARE",
    "TARGET_MARGINS",
    "findings",
    "format_protocol",
    "plot_protocol",
    "reach",
    "run_facts",
    "spread",
    "summarize",
    "target_name",
    "targets_from",
]

#: Targets: full-data median final accuracy minus these margins (fractions: 1 and 0.5 points).
TARGET_MARGINS = (0.01, 0.005)
#: The goal NeSSA is after: reach full − 1 pt in under this share of full data's time.
GOAL_SHARE = 1 / 3


def target_name(margin: float) -> str:
    """``"full-1pt"`` for a margin of 0.01."""
    return f"full-{margin * 100:g}pt"


def targets_from(full_final_accuracies: Sequence[float], margins: Sequence[float] = TARGET_MARGINS) -> dict[str, float]:
    """The targets (name → accuracy) from the full-data runs' final accuracies (their median minus each margin)."""
    med = statistics.median(full_final_accuracies)
    return {target_name(m): med - m for m in margins}


def reach(epochs: list[dict[str, Any]], target: float) -> dict[str, float] | None:
    """When ``target`` was first reached: ``{"seconds", "bytes", "epoch", "samples", "joules"}`` at that epoch's end.

    None when it was not. ``joules`` sums the run's metered components (trainer, daemon) up to then.
    """
    samples = 0
    for rec in epochs:
        samples += int(rec.get("samples", 0))
        if float(rec["test_accuracy"]) >= target:
            return {
                "seconds": float(rec["wall_seconds"]),
                "bytes": float(int(rec["bytes_to_trainer_total"]) + int(rec["bytes_to_storage_total"])),
                "epoch": float(rec["epoch"]),
                "samples": float(samples),
                "joules": float(sum(rec.get("energy_joules_total", {}).values())),
            }
    return None


def run_facts(result: RunResult, targets: dict[str, float], seed: int) -> dict[str, Any]:
    """One run as the protocol reports it: the run, when it reached each target, and where its time went.

    ``selection_seconds_per_epoch`` is the daemon's time on the run's selections (their ``total_seconds``) over the
    epochs trained; ``train_seconds_per_epoch`` the median epoch's training seconds (waits excluded).
    """
    out = result.to_dict()
    out["seed"] = seed
    out["reached"] = {name: reach(result.epochs, acc) for name, acc in targets.items()}
    n = max(1, len(result.epochs))
    daemon = sum(float(s.get("timings", {}).get("total_seconds", 0.0)) for s in result.options.get("selections", []))
    out["selection_seconds_per_epoch"] = daemon / n
    train_s = [max(0.0, float(e["epoch_seconds"]) - float(e["data_wait_seconds"])) for e in result.epochs]
    out["train_seconds_per_epoch"] = statistics.median(train_s) if train_s else 0.0
    out["data_wait_fraction"] = result.data_wait_seconds / result.wall_seconds if result.wall_seconds > 0 else 0.0
    out["samples_seen"] = sum(int(e.get("samples", 0)) for e in result.epochs)
    energy = result.options.get("energy", {})
    out["energy_joules"] = float(sum(float(v["joules"]) for v in energy.values()))
    out["energy_by_component"] = {k: float(v["joules"]) for k, v in energy.items()}
    out["energy_source"] = "; ".join(sorted({f"{k}: {v['source']}" for k, v in energy.items()}))
    return out


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Median, min and max of the values that are not None, and how many there were of how many."""
    got = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not got:
        return {"median": None, "min": None, "max": None, "n": 0, "of": len(values)}
    return {"median": statistics.median(got), "min": min(got), "max": max(got), "n": len(got), "of": len(values)}


def summarize(runs: list[dict[str, Any]], targets: dict[str, float]) -> dict[str, Any]:
    """A method's runs (from :func:`run_facts`, one per seed) as medians with min–max."""
    out: dict[str, Any] = {
        "final_accuracy": spread([r["final_accuracy"] for r in runs]),
        "wall_seconds": spread([r["wall_seconds"] for r in runs]),
        "bytes": spread([r["bytes_to_trainer"] + r["bytes_to_storage"] for r in runs]),
        "data_wait_fraction": spread([r["data_wait_fraction"] for r in runs]),
        "selection_seconds_per_epoch": spread([r["selection_seconds_per_epoch"] for r in runs]),
        "train_seconds_per_epoch": spread([r["train_seconds_per_epoch"] for r in runs]),
        "energy_joules": spread([r.get("energy_joules") for r in runs]),
        "targets": {},
    }
    for name in targets:
        hits = [r["reached"].get(name) for r in runs]
        out["targets"][name] = {
            "seconds": spread([h["seconds"] if h else None for h in hits]),
            "bytes": spread([h["bytes"] if h else None for h in hits]),
            "joules": spread([h.get("joules") if h else None for h in hits]),
            "all_reached": all(h is not None for h in hits) and bool(hits),
        }
    return out


def _overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return not (a["max"] < b["min"] or b["max"] < a["min"])


def _label(entry: dict[str, Any]) -> str:
    if entry.get("label"):
        return str(entry["label"])
    return entry["method"] if entry["method"] == "full" else f"{entry['method']} {entry['fraction'] * 100:g}%"


def findings(methods: list[dict[str, Any]], targets: dict[str, float]) -> list[str]:
    """Plain statements about the time-to-target table (see the module docstring for the rules)."""
    out: list[str] = []
    by_name = {m["method"]: m for m in methods}
    full = by_name.get("full")
    rnd = by_name.get("random")
    for name, acc in targets.items():
        full_t = full["summary"]["targets"][name] if full else None
        for m in methods:
            if m["method"] == "full":
                continue
            t = m["summary"]["targets"][name]
            label = _label(m)
            if not t["all_reached"]:
                n, of = t["seconds"]["n"], t["seconds"]["of"]
                out.append(f"{name} ({acc * 100:.2f}%): {label} did not reach it in {of - n} of {of} seeds")
                continue
            med = t["seconds"]["median"]
            for other, other_name in ((full_t, "full data"), (None if rnd is None else rnd, "random")):
                if other is None or (other_name == "random" and m["method"] == "random"):
                    continue
                o = other if other_name == "full data" else other["summary"]["targets"][name]
                if not o["all_reached"]:
                    out.append(f"{name}: {label} reached it in every seed ({med:.1f} s median); {other_name} did not")
                    continue
                if _overlap(t["seconds"], o["seconds"]):
                    out.append(
                        f"{name}: {label} vs {other_name}: within noise ({_range(t['seconds'])} vs "
                        f"{_range(o['seconds'])})"
                    )
                else:
                    ratio = o["seconds"]["median"] / med
                    word = f"{ratio:.2f}x sooner than" if ratio >= 1 else f"{1 / ratio:.2f}x later than"
                    out.append(f"{name}: {label} reached it {word} {other_name} ({_range(t['seconds'])} vs "
                               f"{_range(o['seconds'])})")  # fmt: skip
            if full_t is not None and full_t["all_reached"] and name == target_name(TARGET_MARGINS[0]):
                share = med / full_t["seconds"]["median"]
                verdict = "meets" if share < GOAL_SHARE else "misses"
                out.append(f"{name}: {label} took {share * 100:.0f}% of full data's time; {verdict} the goal of "
                           f"< {GOAL_SHARE * 100:.0f}%")  # fmt: skip
    for m in methods:
        s = m["summary"]
        wait = s["data_wait_fraction"]["median"]
        if wait is not None and wait > 0.05:
            out.append(
                f"{_label(m)} waited for data {wait * 100:.1f}% of its wall time (median): selection is not hidden"
            )
        sel, ep = s["selection_seconds_per_epoch"]["median"], s["train_seconds_per_epoch"]["median"]
        if m["method"] != "full" and sel and ep and sel > ep:
            out.append(f"{_label(m)}: the daemon's selection took {sel:.2f} s per epoch, more than the {ep:.2f} s an "
                       "epoch trains")  # fmt: skip
    return out


def _range(s: dict[str, Any], fmt: str = "{:.1f}", unit: str = " s") -> str:
    if s["median"] is None:
        return "-"
    if s["n"] == 1 or s["min"] == s["max"]:
        return fmt.format(s["median"]) + unit
    return f"{fmt.format(s['median'])}{unit} [{fmt.format(s['min'])}–{fmt.format(s['max'])}]"


def _bytes_range(s: dict[str, Any]) -> str:
    if s["median"] is None:
        return "-"
    text = format_bytes(s["median"])
    return (
        text if s["n"] == 1 or s["min"] == s["max"] else f"{text} [{format_bytes(s['min'])}–{format_bytes(s['max'])}]"
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def _reached_cell(t: dict[str, Any], full_t: dict[str, Any] | None) -> str:
    sec = t["seconds"]
    if sec["n"] == 0:
        return "not reached"
    text = _range(sec)
    if sec["n"] < sec["of"]:
        return f"{text} ({sec['n']}/{sec['of']} seeds)"
    if full_t is not None and full_t["all_reached"]:
        text += f" ({full_t['seconds']['median'] / sec['median']:.2f}x)"
    return text


def format_protocol(report: dict[str, Any]) -> str:
    """The time-to-target table, the equal-epochs table (when there is one) and the findings, as text."""
    targets = report["targets"]
    methods = report["methods"]
    full = next((m for m in methods if m["method"] == "full"), None)
    header = ["method"]
    for name in targets:
        header += [f"time to {name}", f"bytes to {name}"]
    first = next(iter(targets))
    header += [f"energy to {first}", "final acc", "data wait", "selection s/epoch", "train s/epoch"]
    rows = []
    for m in methods:
        s = m["summary"]
        row = [_label(m)]
        for name in targets:
            t = s["targets"][name]
            full_t = full["summary"]["targets"][name] if full is not None and m is not full else None
            row += [_reached_cell(t, full_t), _bytes_range(t["bytes"]) if t["bytes"]["n"] else "-"]
        wait = s["data_wait_fraction"]
        joules = s["targets"][first].get("joules", {"median": None})
        row += [
            _range(joules, "{:.0f}", " J") if s["targets"][first]["all_reached"] else "-",
            _range(s["final_accuracy"], "{:.2%}", ""),
            _range(wait, "{:.1%}", ""),
            "-" if m["method"] == "full" else _range(s["selection_seconds_per_epoch"], "{:.3f}"),
            _range(s["train_seconds_per_epoch"], "{:.3f}"),
        ]
        rows.append(row)
    seeds = report["config"].get("seeds", [])
    names = ", ".join(f"{n} = {a * 100:.2f}%" for n, a in targets.items())
    lines = [f"time to target (medians [min–max] over seeds {seeds}; targets: {names})", *_table(header, rows)]
    sources = sorted({r.get("energy_source", "") for m in methods for r in m["runs"]} - {""})
    if sources:
        lines.append("energy (trainer + daemon): " + " | ".join(sources))
    equal = report.get("equal_epochs")
    if equal:
        lines += ["", f"equal epochs ({report['config'].get('epochs')} epochs each; medians [min–max])"]
        erows = []
        for m in equal["methods"]:
            s = m["summary"]
            erows.append(
                [
                    _label(m),
                    _range(s["final_accuracy"], "{:.2%}", ""),
                    _range(s["wall_seconds"]),
                    _bytes_range(s["bytes"]),
                    _range(s["data_wait_fraction"], "{:.1%}", ""),
                    "-" if m["method"] == "full" else _range(s["selection_seconds_per_epoch"], "{:.3f}"),
                    _range(s.get("energy_joules", {"median": None}), "{:.0f}", " J"),
                ]
            )
        lines += _table(["method", "final acc", "wall", "bytes", "data wait", "selection s/epoch", "energy"], erows)
    lines.append("")
    lines.extend(f"- {f}" for f in report.get("findings", []))
    return "\n".join(lines)


def _x(rec: dict[str, Any], key: str) -> float:
    """An epoch record's x: cumulative wall seconds, or MiB moved in both directions."""
    if key == "wall":
        return float(rec["wall_seconds"])
    return (rec["bytes_to_trainer_total"] + rec["bytes_to_storage_total"]) / 2**20


def _curves(runs: list[dict[str, Any]], key: str) -> tuple[list[float], list[float], list[float], list[float]]:
    """Median and min–max test accuracy (%) of several runs on a common x grid (wall seconds or MiB)."""
    import numpy as np

    series = []
    for r in runs:
        xs = [0.0] + [_x(e, key) for e in r["epochs"]]
        ys = [float("nan")] + [e["test_accuracy"] * 100 for e in r["epochs"]]
        series.append((np.asarray(xs), np.asarray(ys)))
    if not series:
        return [], [], [], []
    end = max(float(x[-1]) for x, _ in series)
    grid = np.linspace(0.0, end, 200)
    stack = np.full((len(series), grid.size), np.nan)
    for i, (x, y) in enumerate(series):
        inside = grid <= x[-1]
        stack[i, inside] = np.interp(grid[inside], x[1:], y[1:], left=np.nan)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            med, lo, hi = np.nanmedian(stack, 0), np.nanmin(stack, 0), np.nanmax(stack, 0)
    return grid.tolist(), med.tolist(), lo.tolist(), hi.tolist()


def plot_protocol(report: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Accuracy against wall time and against bytes, zoomed on the top band, targets as lines, seeds as bands."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    targets = report["targets"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), constrained_layout=True)
    top = 0.0
    for i, m in enumerate(report["methods"]):
        color = f"C{i}"
        for ax, key in zip(axes, ("wall", "bytes"), strict=True):
            grid, med, lo, hi = _curves(m["runs"], key)
            ax.plot(grid, med, color=color, label=_label(m), linewidth=1.5)
            ax.fill_between(grid, lo, hi, color=color, alpha=0.18, linewidth=0)
            for name, t in m["summary"]["targets"].items():
                field = "seconds" if key == "wall" else "bytes"
                at = t[field]["median"]
                if at is not None and t["all_reached"]:
                    x = at if key == "wall" else at / 2**20
                    ax.plot([x], [targets[name] * 100], marker="o", color=color, markersize=6)
        top = max([top] + [e["test_accuracy"] * 100 for r in m["runs"] for e in r["epochs"]])
    low = min(targets.values()) * 100 - 2.0
    for ax in axes:
        for j, (name, acc) in enumerate(targets.items()):
            ax.axhline(acc * 100, color="grey", linestyle="--" if j == 0 else ":", linewidth=1, label=name)
        ax.set_ylim(low, top + 0.5)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    axes[0].set_xlabel("training wall time (s)")
    axes[1].set_xlabel("bytes moved, storage↔trainer (MiB)")
    axes[1].set_xscale("log")  # the first epoch's bytes onward (0 has no place on a log axis)
    firsts = [_x(r["epochs"][0], "bytes") for m in report["methods"] for r in m["runs"] if r["epochs"]]
    if firsts and min(firsts) > 0:
        axes[1].set_xlim(left=min(firsts) * 0.8)
    cfg = report["config"]
    fig.suptitle(
        f"{cfg.get('dataset', '')}, {cfg.get('model', '')}, {cfg.get('train_samples', '?')} train samples, seeds "
        f"{cfg.get('seeds', [])}; {cfg.get('placement', '')}; lines: medians, bands: min–max",
        fontsize=9,
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
