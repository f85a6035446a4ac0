"""Which method and fraction pays: the demo's time-to-accuracy protocol over fractions and methods.

The demo's data (MNIST-1D), model (1-D CNN), placement (daemon and trainer on disjoint CPUs) and protocol
(:mod:`nessa.trainer.protocol`): full data once per seed sets the targets (its median final accuracy − 1 and − 0.5
pt); every method × fraction then trains until it reaches the harder target or has seen as many samples as the full
run, with the same schedule in samples seen. Methods: ``full-short`` (full data for the steps of a fraction run,
the schedule compressed), ``random``, ``rs2`` (random without replacement across epochs), ``craig``, ``crest``
(with ``drop_learned``), ``adacore`` and ``partitions`` (NeSSA's partition plan with CRAIG's selector, one coreset
per step). InfoBatch, whose cost does not follow the fraction, is in ``nessa demo``.

Prints one time-to-target table per fraction, then the summary (time to full − 1 pt as a share of full data's,
median [min–max] over seeds) and what it says: the fastest method and fraction, and whether random is as good (their
seed ranges overlap). Writes ``report.json`` into ``--out``.

Usage: ``python bench/time_to_accuracy.py [--quick] [--num-samples 50000] [--seeds 3] [--fractions 0.05,0.1,0.2,0.3]
[--methods random,craig,crest,adacore,partitions]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from nessa.placement import format_cpus, split_cpus
from nessa.trainer.config import TrainConfig
from nessa.trainer.demo import DemoConfig, _prepare_data, start_daemon
from nessa.trainer.loop import train
from nessa.trainer.protocol import (
    TARGET_MARGINS,
    findings,
    format_protocol,
    run_facts,
    summarize,
    target_name,
    targets_from,
)

#: The methods of the bench: name → (selector, plan, options).
METHODS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "full-short": ("full-short", "", {}),
    "random": ("random", "", {}),
    "rs2": ("rs2", "", {}),
    "craig": ("craig", "", {}),
    "crest": ("crest", "", {"drop_learned": True}),
    "adacore": ("adacore", "", {}),
    "partitions": ("craig", "partitions", {}),
}


def run_config(demo: DemoConfig, name: str, address: str, cpus: str, seed: int, stop_at: float) -> TrainConfig:
    """The time-to-accuracy run of bench method ``name`` at ``demo.fraction``."""
    method, plan, options = METHODS[name]
    base = demo.train_config(method, address, cpus, seed=seed, stop_at=stop_at)
    return replace(base, plan=plan, options={**base.options, **options}, progress_desc=demo.label(name))


def _share(entry: dict[str, Any], full_median: float | None) -> str:
    t = entry["summary"]["targets"][target_name(TARGET_MARGINS[0])]
    sec = t["seconds"]
    if not t["all_reached"] or full_median is None:
        return f"not reached ({sec['n']}/{sec['of']} seeds)"
    lo, med, hi = (sec[k] / full_median * 100 for k in ("min", "median", "max"))
    return f"{med:.0f}% [{lo:.0f}–{hi:.0f}]"


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The fraction × method table of time to full − 1 pt as a share of full data's, and what it says."""
    name = target_name(TARGET_MARGINS[0])
    full = report["full"]["summary"]["targets"][name]["seconds"]["median"]
    methods = report["config"]["methods"]
    lines = [f"time to {name} as a share of full data's ({full:.1f} s median): median [min–max] over seeds"]
    header = ["fraction", *methods]
    rows = []
    best: tuple[float, str, float, dict[str, Any]] | None = None
    for frac, entries in report["fractions"].items():
        by = {e["method"]: e for e in entries}
        rows.append([frac, *(_share(by[m], full) for m in methods)])
        for m in methods:
            t = by[m]["summary"]["targets"][name]
            if t["all_reached"] and (best is None or t["seconds"]["median"] < best[0]):
                best = (t["seconds"]["median"], m, float(frac), t["seconds"])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    table = [header, ["-" * w for w in widths], *rows]
    lines.extend("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table)
    if best is None:
        lines.append(f"- no method and fraction reached {name} in every seed")
        return lines
    secs, method, frac, spread = best
    lines.append(f"- fastest to {name}: {method} at {frac:g} ({secs:.1f} s median, {secs / full * 100:.0f}% of full)")
    rnd = {e["method"]: e for e in report["fractions"][f"{frac:g}"]}.get("random")
    if method != "random" and rnd is not None:
        r = rnd["summary"]["targets"][name]
        if not r["all_reached"]:
            lines.append(f"- random at {frac:g} did not reach {name} in every seed")
        elif r["seconds"]["min"] <= spread["max"] and spread["min"] <= r["seconds"]["max"]:
            lines.append(f"- random at {frac:g} is within noise of it ({r['seconds']['median']:.1f} s median)")
        else:
            lines.append(f"- it beats random at {frac:g} ({r['seconds']['median']:.1f} s median), ranges apart")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-samples", type=int, default=50_000)
    p.add_argument("--epochs", type=int, default=15, help="the full run's epochs (the budget in samples seen)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--fractions", default="0.05,0.1,0.2,0.3")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--quick", action="store_true", help="10,000 samples, 4 epochs, 2 seeds, fractions 0.1,0.3")
    p.add_argument("--out", type=Path, default=Path("bench/out/time_to_accuracy"))
    p.add_argument("--data-dir", type=Path, default=None, help="keep the generated data here (reused if present)")
    args = p.parse_args(argv)
    if args.quick:
        args.num_samples, args.epochs, args.seeds, args.fractions = 10_000, 4, 2, "0.1,0.3"
    fractions = [float(f) for f in args.fractions.split(",") if f]
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        print(f"error: unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}", file=sys.stderr)
        return 2
    if not fractions or not all(0 < f < 1 for f in fractions):
        print(f"error: --fractions must be in (0, 1); got {args.fractions}", file=sys.stderr)
        return 2
    demo = DemoConfig(num_samples=args.num_samples, epochs=args.epochs, seeds=args.seeds, progress=False)
    seeds = list(range(demo.seed, demo.seed + demo.seeds))
    halves = split_cpus()
    daemon_cpus, trainer_cpus = (format_cpus(halves[0]), format_cpus(halves[1])) if halves else ("", "")
    tmp = None
    data_dir = args.data_dir
    if data_dir is None:
        tmp = tempfile.mkdtemp(prefix="nessa-tta-")
        data_dir = Path(tmp)
    data_dir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    say = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    started = time.perf_counter()
    report: dict[str, Any] = {}
    try:
        _prepare_data(demo, data_dir, say)
        with start_daemon(data_dir, log_path=args.out / "daemon.log", cpus=daemon_cpus) as address:
            full_runs = [train(demo.train_config("full", address, trainer_cpus, seed=s), echo=lambda _s: None)
                         for s in seeds]  # fmt: skip
            targets = targets_from([r.final_accuracy for r in full_runs])
            hardest = max(targets.values())
            say("targets: " + ", ".join(f"{n} = {a * 100:.2f}%" for n, a in targets.items()))
            full_facts = [run_facts(r, targets, s) for s, r in zip(seeds, full_runs, strict=True)]
            full = {"method": "full", "fraction": 1.0, "runs": full_facts, "summary": summarize(full_facts, targets)}
            report = {"targets": targets, "full": full, "fractions": {}}
            for frac in fractions:
                at = replace(demo, fraction=frac)
                entries = [full]
                for name in methods:
                    runs = []
                    for s in seeds:
                        say(f"{name} at {frac:g}, seed {s}")
                        result = train(run_config(at, name, address, trainer_cpus, s, hardest), echo=lambda _s: None)
                        runs.append(run_facts(result, targets, s))
                    entries.append({"method": name, "fraction": frac, "label": at.label(name), "runs": runs,
                                    "summary": summarize(runs, targets)})  # fmt: skip
                report["fractions"][f"{frac:g}"] = entries[1:]
                table = {"targets": targets, "methods": entries, "config": {"seeds": seeds}}
                table["findings"] = findings(entries, targets)
                print(f"\n== fraction {frac:g}\n" + format_protocol(table), flush=True)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    report["config"] = {
        "num_samples": args.num_samples,
        "epochs": args.epochs,
        "seeds": seeds,
        "fractions": fractions,
        "methods": methods,
        "placement": f"daemon on CPUs {daemon_cpus}, trainer on CPUs {trainer_cpus}" if halves else "shared CPUs",
        "total_seconds": time.perf_counter() - started,
    }
    print("\n" + "\n".join(summary_lines(report)))
    (args.out / "report.json").write_text(json.dumps(report, indent=1, default=float))
    print(f"\nreport: {args.out / 'report.json'} ({report['config']['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
