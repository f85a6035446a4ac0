"""The time-to-accuracy protocol's arithmetic: targets, when they are reached, spreads and what the findings say."""

from __future__ import annotations

from typing import Any

import pytest

from nessa.trainer.protocol import findings, format_protocol, reach, spread, summarize, targets_from

TARGETS = {"full-1pt": 0.90, "full-0.5pt": 0.905}


def epochs(accs: list[float], seconds_per_epoch: float, bytes_per_epoch: int = 1000) -> list[dict[str, Any]]:
    return [
        {
            "epoch": i,
            "test_accuracy": a,
            "wall_seconds": seconds_per_epoch * (i + 1),
            "bytes_to_trainer_total": bytes_per_epoch * (i + 1),
            "bytes_to_storage_total": 10 * (i + 1),
            "samples": 100,
            "energy_joules_total": {"trainer": 5.0 * (i + 1), "daemon": 1.0 * (i + 1)},
        }
        for i, a in enumerate(accs)
    ]


def run(accs: list[float], seconds_per_epoch: float, seed: int = 0, wait: float = 0.0) -> dict[str, Any]:
    eps = epochs(accs, seconds_per_epoch)
    wall = eps[-1]["wall_seconds"]
    return {
        "seed": seed,
        "final_accuracy": accs[-1],
        "wall_seconds": wall,
        "bytes_to_trainer": eps[-1]["bytes_to_trainer_total"],
        "bytes_to_storage": eps[-1]["bytes_to_storage_total"],
        "data_wait_fraction": wait,
        "selection_seconds_per_epoch": 0.1,
        "train_seconds_per_epoch": seconds_per_epoch,
        "reached": {n: reach(eps, a) for n, a in TARGETS.items()},
        "epochs": eps,
    }


def entry(method: str, runs: list[dict[str, Any]], fraction: float = 0.1) -> dict[str, Any]:
    return {"method": method, "fraction": 1.0 if method == "full" else fraction, "runs": runs,
            "summary": summarize(runs, TARGETS)}  # fmt: skip


def test_targets_are_the_full_median_minus_one_and_a_half_points() -> None:
    t = targets_from([0.95, 0.91, 0.93])
    assert t == pytest.approx({"full-1pt": 0.92, "full-0.5pt": 0.925})


def test_reach_reports_the_first_epoch_at_or_above_the_target_with_cumulative_seconds_and_bytes() -> None:
    eps = epochs([0.5, 0.9, 0.95], seconds_per_epoch=2.0)
    hit = reach(eps, 0.9)
    assert hit == {"seconds": 4.0, "bytes": 2000.0 + 20.0, "epoch": 1.0, "samples": 200.0, "joules": 12.0}
    assert reach(eps, 0.96) is None


def test_spread_ignores_runs_that_did_not_get_there_and_counts_them() -> None:
    assert spread([3.0, None, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3, "of": 4}
    assert spread([None])["median"] is None


def test_a_method_beats_another_only_when_the_seed_ranges_do_not_overlap() -> None:
    full = entry("full", [run([0.8, 0.9, 0.91], 10.0, s) for s in range(3)])  # reaches 0.90 at 20 s
    fast = entry("craig", [run([0.9, 0.91], t, s) for s, t in enumerate((2.0, 2.5, 3.0))])  # 2–3 s
    noisy = entry("random", [run([0.9], t, s) for s, t in enumerate((1.0, 2.6, 30.0))])  # overlaps craig
    said = findings([full, noisy, fast], TARGETS)
    assert any("craig 10% reached it" in f and "sooner than full data" in f for f in said)
    assert any("craig 10% vs random: within noise" in f for f in said)
    assert any("craig 10% took" in f and "meets the goal" in f for f in said)


def test_no_speedup_for_a_method_that_missed_the_target_in_some_seed() -> None:
    full = entry("full", [run([0.8, 0.91], 10.0, s) for s in range(2)])
    short = entry("crest", [run([0.9], 1.0, 0), run([0.85], 1.0, 1)])
    said = findings([full, short], TARGETS)
    assert any("crest 10% did not reach it in 1 of 2 seeds" in f for f in said)
    assert not any("crest 10% reached it" in f for f in said)
    table = format_protocol({"targets": TARGETS, "methods": [full, short], "config": {"seeds": [0, 1]}})
    crest_row = next(line for line in table.splitlines() if line.startswith("crest"))
    assert "(1/2 seeds)" in crest_row and "x)" not in crest_row.split("(1/2 seeds)")[0]


def test_data_wait_above_five_percent_is_called_out() -> None:
    full = entry("full", [run([0.91], 10.0, 0)])
    waiting = entry("random", [run([0.91], 1.0, 0, wait=0.2)])
    assert any("random 10% waited for data 20.0%" in f for f in findings([full, waiting], TARGETS))
