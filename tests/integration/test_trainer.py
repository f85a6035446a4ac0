"""The trainer end to end against a real daemon (in-process, port 0) over real LMDB datasets and PoCL kernels."""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from trainer_helpers import config_for, mnist_daemon

from nessa.client import Selection, StorageClient
from nessa.errors import FailedPreconditionError, InvalidArgumentError
from nessa.metrics import TRAINER_REGISTRY
from nessa.services.storage.server import StorageDaemon
from nessa.trainer.batches import TrainBatch
from nessa.trainer.config import TrainConfig, method_needs_proxy
from nessa.trainer.loop import Trainer, train
from nessa.trainer.meter import EpochState


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorageDaemon]:
    yield from mnist_daemon(tmp_path_factory)


class RecordingTrainer(Trainer):
    """The real trainer, also keeping what it trained on and the selections it got (for the assertions)."""

    def __init__(self, config: TrainConfig) -> None:
        super().__init__(config, echo=lambda _s: None)
        self.batches: dict[int, list[TrainBatch]] = {}
        self.results: dict[int, Selection] = {}

    def log_selection(self, epoch: int, sel: Selection, step: int | None = None) -> None:
        self.results[epoch] = sel
        super().log_selection(epoch, sel, step)

    def train_step(self, batch: TrainBatch, state: EpochState, steps_in_epoch: int) -> torch.Tensor:
        self.batches.setdefault(state.epoch, []).append(batch)
        return super().train_step(batch, state, steps_in_epoch)


def _metric(name: str, **labels: str) -> float:
    """The sum of the trainer's samples called ``name`` whose labels include ``labels`` (every method and run)."""
    return sum(
        s.value
        for family in TRAINER_REGISTRY.collect()
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


def test_pipelined_craig_streams_exactly_the_selection_and_trains_on_its_weights(daemon: StorageDaemon) -> None:
    trainer = RecordingTrainer(config_for(daemon, method="craig", fraction=0.2, epochs=3))
    kinds = ("samples", "metadata")
    before = {
        "bytes": sum(
            _metric("nessa_trainer_received_bytes_total", dataset=d, kind=k) for k in kinds for d in ("m", "m-test")
        ),
        "samples": _metric("nessa_trainer_trained_samples_total", dataset="m"),
        "epochs": _metric("nessa_trainer_epoch_duration_seconds_count"),
        "waits": _metric("nessa_trainer_data_wait_seconds_count"),
    }
    result = trainer.run()
    assert [e["epoch"] for e in result.epochs] == [0, 1, 2]
    n_train = trainer.info.num_samples
    for rec in result.epochs:
        e = rec["epoch"]
        sel = trainer.results[e]
        # every selected sample, once, with its selection weight; bytes received equal the selection's bytes
        trained = np.concatenate([b.indices for b in trainer.batches[e]])
        assert sorted(trained.tolist()) == sorted(sel.indices.tolist())
        weight_of = dict(zip(sel.indices.tolist(), sel.weights.tolist(), strict=True))
        used = torch.cat([b.w for b in trainer.batches[e]]).numpy()
        assert np.allclose(used, [weight_of[i] for i in trained.tolist()])
        assert rec["payload_bytes"] == rec["selected_bytes"] == sel.selected_bytes
        assert rec["subset_size"] == len(sel) == rec["samples"]
        assert abs(len(sel) - 0.2 * n_train) <= 10
        # data wait is measured and includes the wait for the selection
        assert rec["data_wait_seconds"] >= rec["selection_wait_seconds"] >= 0.0
        assert 0.0 < rec["epoch_seconds"] and rec["data_wait_seconds"] <= rec["epoch_seconds"]
        # CRAIG's weights are cluster sizes, not all ones, and the loss that trained used them
        assert not np.allclose(sel.weights, 1.0)
        assert rec["train_weighted_loss"] != pytest.approx(rec["train_loss"], rel=1e-3)
    # bytes received are the selections' bytes plus framing (an epoch's record counts what arrived during it: the
    # next epoch's stream opens ahead, so per epoch they shift; the run's total does not)
    payload = sum(r["payload_bytes"] for r in result.epochs)
    assert payload <= sum(r["bytes_to_trainer"] for r in result.epochs) <= payload * 1.25 + 3 * 10_000
    # pipelined: epoch e's selection used the proxy of the end of epoch e-1 (epochs 0 and 1 the initial one)
    assert [trainer.results[e].proxy_version for e in range(3)] == [0, 0, 1]
    assert result.options["pushed_proxy_versions"] == [0, 1]
    assert StorageClient(daemon.address).describe("m").proxy_version == 1
    assert result.bytes_to_storage > 0 and result.final_accuracy > 0.15
    # the test set was streamed once for the three evaluations (then cached), and is not counted as training bytes
    test_bytes = StorageClient(daemon.address).describe("m-test").total_bytes
    assert test_bytes <= result.eval_bytes <= test_bytes * 1.25 + 10_000
    # the trainer's Prometheus metrics saw the same run
    moved = (
        sum(_metric("nessa_trainer_received_bytes_total", dataset=d, kind=k) for k in kinds for d in ("m", "m-test"))
        - before["bytes"]
    )
    assert result.setup_bytes > 0
    assert moved == result.bytes_to_trainer + result.eval_bytes + result.setup_bytes
    assert _metric("nessa_trainer_trained_samples_total", dataset="m") - before["samples"] == sum(
        r["samples"] for r in result.epochs
    )
    assert _metric("nessa_trainer_epoch_duration_seconds_count") - before["epochs"] == 3
    assert _metric("nessa_trainer_data_wait_seconds_count") - before["waits"] >= sum(r["steps"] for r in result.epochs)
    run = {"method": "craig", "run": trainer.meter.metrics.run}
    assert _metric("nessa_trainer_accuracy_ratio", split="test", **run) == pytest.approx(result.final_accuracy)
    assert _metric("nessa_trainer_loss", split="train", **run) == pytest.approx(result.epochs[-1]["train_loss"])


def test_auto_reselect_interval_trains_each_selection_until_the_next_is_ready(daemon: StorageDaemon) -> None:
    trainer = RecordingTrainer(config_for(daemon, method="craig", fraction=0.2, epochs=6, reselect_every=0))
    result = trainer.run()
    chosen = sorted(trainer.results)  # the epochs that took a new selection
    assert chosen[0] == 0 and len(chosen) >= 2
    held = None
    for rec in result.epochs:
        e = rec["epoch"]
        held = trainer.results.get(e, held)
        assert held is not None and rec["selection_id"] == held.id
        trained = np.concatenate([b.indices for b in trainer.batches[e]])
        assert sorted(trained.tolist()) == sorted(held.indices.tolist())
    # each selection's proxy is of an epoch before the one that first trained on it (pipelined, requested ahead)
    for e in chosen[1:]:
        assert trainer.results[e].proxy_version < e
    assert result.options["pushed_proxy_versions"] == sorted(set(result.options["pushed_proxy_versions"]))


def test_warm_start_trains_random_subsets_until_the_first_selection_is_ready(daemon: StorageDaemon) -> None:
    trainer = RecordingTrainer(config_for(daemon, method="craig", fraction=0.2, epochs=4, warm_start=True))
    result = trainer.run()
    first = result.options["selections"][0]
    assert first["epoch"] == 0 and first["proxy_version"] is None  # epoch 0 did not wait: a random subset
    craig = [s for s in result.options["selections"] if s["proxy_version"] is not None]
    assert craig and craig[0]["proxy_version"] == 0 and craig[0]["epoch"] >= 1  # the initial model's selection
    assert result.epochs[0]["selection_wait_seconds"] == 0.0
    for rec in result.epochs:  # every epoch trains on exactly what it was given, warm or selected
        held = trainer.results[max(e for e in trainer.results if e <= rec["epoch"])]
        trained = np.concatenate([b.indices for b in trainer.batches[rec["epoch"]]])
        assert sorted(trained.tolist()) == sorted(held.indices.tolist())
        assert len(held) == round(0.2 * len(trainer.labels()))


def test_next_epoch_stream_is_opened_while_this_epoch_trains(daemon: StorageDaemon) -> None:
    opened: list[tuple[int, int]] = []  # (epoch streamed, epoch being trained when it was opened)

    class Watching(RecordingTrainer):
        training = -1

        def stream(self, sel: Selection, epoch: int, position: int = 0, batch_size: int | None = None) -> Any:
            opened.append((epoch, self.training))
            return super().stream(sel, epoch, position, batch_size)

        def train_step(self, batch: TrainBatch, state: EpochState, steps_in_epoch: int) -> torch.Tensor:
            self.training = state.epoch
            return super().train_step(batch, state, steps_in_epoch)

    trainer = Watching(config_for(daemon, method="random", fraction=0.2, epochs=3))
    result = trainer.run()
    assert opened == [(0, -1), (1, 0), (2, 1)]  # each later epoch's stream opened during the one before
    for rec in result.epochs:
        held = trainer.results[rec["epoch"]]
        trained = np.concatenate([b.indices for b in trainer.batches[rec["epoch"]]])
        assert sorted(trained.tolist()) == sorted(held.indices.tolist())


def test_strict_order_uses_the_proxy_pushed_right_before(daemon: StorageDaemon) -> None:
    trainer = RecordingTrainer(config_for(daemon, method="craig", fraction=0.1, epochs=2, pipeline=False, seed=7))
    result = trainer.run()
    assert [trainer.results[e].proxy_version for e in range(2)] == [0, 1]
    assert result.options["pushed_proxy_versions"] == [0, 1]
    assert [r["selection_proxy_version"] for r in result.epochs] == [0, 1]
    # without pipelining the trainer waits for each selection (push + Select), and counts it as data wait
    assert not any(s["cached"] for s in result.options["selections"])
    for rec in result.epochs:
        assert rec["selection_seconds"] > 0
        assert rec["data_wait_seconds"] >= rec["selection_wait_seconds"] >= 0.9 * rec["selection_seconds"]


def test_full_streams_every_sample_and_random_a_tenth_of_the_bytes(daemon: StorageDaemon) -> None:
    full = train(config_for(daemon, method="full", epochs=1))
    rnd = train(config_for(daemon, method="random", fraction=0.1, epochs=1))
    info = StorageClient(daemon.address).describe("m")
    assert full.epochs[0]["payload_bytes"] == info.total_bytes
    assert full.epochs[0]["subset_size"] == info.num_samples
    assert full.bytes_to_storage == 0 and rnd.bytes_to_storage == 0  # no proxy for methods that need none
    ratio = rnd.bytes_to_trainer / full.bytes_to_trainer
    assert 0.09 <= ratio <= 0.11, ratio
    bal = RecordingTrainer(config_for(daemon, method="balanced", fraction=0.1, epochs=1))
    bal.run()
    labels = torch.cat([b.y for b in bal.batches[0]]).numpy()
    counts = np.bincount(labels, minlength=info.num_classes)
    assert counts.sum() == len(bal.results[0]) and counts.max() - counts.min() <= 1  # class-balanced, as selected


def test_metrics_port_serves_the_trainer_metrics_while_it_trains(daemon: StorageDaemon) -> None:
    scraped: list[str] = []

    def at_epoch_end(_line: str) -> None:  # called after each epoch, while the run (and its server) is live
        port = trainer._metrics_server.server_port
        scraped.append(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode())

    trainer = Trainer(config_for(daemon, method="random", epochs=1, metrics_port=0), echo=at_epoch_end)
    result = trainer.run()
    assert len(scraped) == 1
    body = scraped[0]
    from prometheus_client.parser import text_string_to_metric_families

    run = {"method": "random", "run": trainer.meter.metrics.run}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }

    def scraped(name: str, **labels: str) -> float | None:
        return samples.get((name, tuple(sorted({**run, **labels}.items()))))

    assert scraped("nessa_trainer_epoch_duration_seconds_count") is not None
    assert scraped("nessa_trainer_data_wait_seconds_count") is not None
    assert scraped("nessa_trainer_received_bytes_total", dataset="m", kind="samples") is not None
    assert scraped("nessa_trainer_trained_samples_total", dataset="m") is not None
    assert scraped("nessa_trainer_loss", split="test") is not None
    assert scraped("nessa_trainer_accuracy_ratio", split="test") == result.final_accuracy


def test_weights_scale_the_gradient(daemon: StorageDaemon) -> None:
    """Loss = mean(w * CE): zero weights leave the model alone, doubled weights double the step."""
    trainer = Trainer(config_for(daemon, method="random", momentum=0.0, weight_decay=0.0), echo=lambda _s: None)
    trainer._setup()
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    x = torch.randn(16, 40)
    y = torch.randint(0, 10, (16,))

    def step(w: torch.Tensor) -> torch.Tensor:
        trainer.model.load_state_dict(start)
        batch = TrainBatch(x=x, y=y, w=w, indices=np.arange(16), payload_bytes=0)
        trainer.train_step(batch, EpochState(epoch=1), steps_in_epoch=10)
        return trainer.model.fc.weight.detach().clone() - start["fc.weight"]

    assert torch.count_nonzero(step(torch.zeros(16))) == 0
    one, two = step(torch.ones(16)), step(torch.full((16,), 2.0))
    assert torch.count_nonzero(one) > 0
    assert torch.allclose(two, 2 * one, rtol=1e-4, atol=1e-7)


def test_crest_reselects_on_its_drift_trigger(daemon: StorageDaemon) -> None:
    # τ so large the quadratic model is never "wrong": the first selection is trained on (cycled) to the end
    never = train(config_for(daemon, method="crest", fraction=0.2, epochs=2, crest_tau=1e9, crest_warmup=0))
    assert len(never.options["selections"]) == 1
    assert [r["reselections"] for r in never.epochs] == [1, 0] and all(r["drift_checks"] >= 1 for r in never.epochs)
    result = train(
        config_for(daemon, method="crest", fraction=0.2, epochs=2, crest_tau=0.01, crest_warmup=0, pipeline=False)
    )
    steps = math.ceil(0.2 * 2400 / 64)
    assert [r["steps"] for r in result.epochs] == [steps, steps]
    sels = result.options["selections"]
    # a small τ: the loss drifts away from the quadratic model and the trigger asks for new coresets
    assert sum(r["reselections"] for r in result.epochs) == len(sels) >= 2
    assert all(r["mean_rho"] is not None and r["mean_rho"] >= 0 for r in result.epochs)
    assert all(r["drift_checks"] >= 1 for r in result.epochs)
    # each selection used the proxy pushed just before it (versioned by the global step)
    assert [s["proxy_version"] for s in sels] == result.options["pushed_proxy_versions"]
    assert sels[0]["proxy_version"] == 0 and all(s["size"] % 64 == 0 for s in sels)
    assert result.final_accuracy > 0.15


def test_pipelined_crest_keeps_training_while_the_next_coresets_are_selected(daemon: StorageDaemon) -> None:
    steps = math.ceil(0.2 * 2400 / 64)
    result = train(config_for(daemon, method="crest", fraction=0.2, epochs=6, crest_tau=0.01, crest_warmup=0))
    assert [r["steps"] for r in result.epochs] == [steps] * 6
    sels = result.options["selections"]
    pushed = result.options["pushed_proxy_versions"]
    # every selection trained on was requested (and its proxy pushed) at or before the step it was first used at;
    # at most the last request was still in flight when the run ended
    assert [s["proxy_version"] for s in sels] == pushed[: len(sels)] and len(pushed) - len(sels) <= 1
    for s in sels:
        used_at = s["epoch"] * steps + s["step"]
        assert s["requested_step"] == s["proxy_version"] <= used_at
    assert sels[0]["requested_step"] == 0 and sels[0]["step"] == 0
    assert sum(r["reselections"] for r in result.epochs) == len(sels)
    assert result.final_accuracy > 0.15


def test_crest_first_selects_after_a_random_warm_up_as_its_code_does(daemon: StorageDaemon) -> None:
    steps = math.ceil(0.2 * 2400 / 64)
    result = train(config_for(daemon, method="crest", fraction=0.2, epochs=2, crest_tau=1e9, crest_warmup=0.5))
    warm, first, *rest = result.options["selections"]
    # the warm-up: random mini-batches of the whole set, no proxy
    assert warm["step"] == 0 and warm["proxy_version"] is None and warm["size"] == round(0.5 * steps) * 64
    # CREST's first selection comes right after it, with the proxy of the model as trained so far
    assert first["step"] == round(0.5 * steps) and first["proxy_version"] == round(0.5 * steps)
    assert result.options["pushed_proxy_versions"] == [round(0.5 * steps)] and rest == []
    assert [r["steps"] for r in result.epochs] == [steps, steps]


def test_partition_plan_takes_one_step_on_each_partitions_coreset(daemon: StorageDaemon) -> None:
    trainer = RecordingTrainer(
        config_for(daemon, method="craig", plan="partitions", fraction=0.1, epochs=2, batch_size=32, weighted=False)
    )
    result = trainer.run()
    steps = math.ceil(0.1 * 2400 / 32)
    assert [r["steps"] for r in result.epochs] == [steps, steps]
    sels = result.options["selections"]
    # CRAIG's per-class "equal" rule rounds up (ceil(32 / 10) per class), as NeSSA's code does
    assert len(sels) == 2 * steps and all(32 <= s["size"] <= 40 for s in sels)
    # one proxy per step (re-exported before every partition), each selection made with the one just pushed
    assert result.options["pushed_proxy_versions"] == list(range(2 * steps))
    assert [s["proxy_version"] for s in sels] == list(range(2 * steps))
    # each step trained on exactly its partition's coreset, unweighted
    for epoch, batches in trainer.batches.items():
        assert len(batches) == steps
        for batch, s in zip(batches, [s for s in sels if s["epoch"] == epoch], strict=True):
            assert len(batch) == s["size"]
    # the default options are the code's kernel and weight rule
    assert trainer.results[0].options["similarity"] == "exp"


def test_stop_at_accuracy_ends_the_run_after_the_first_epoch_that_reaches_it(daemon: StorageDaemon) -> None:
    reference = train(config_for(daemon, method="random", fraction=0.2, epochs=4))
    target = reference.epochs[1]["test_accuracy"]  # reached at epoch 2 at the latest
    stopped = train(config_for(daemon, method="random", fraction=0.2, epochs=4, stop_at_accuracy=target))
    first = next(i for i, r in enumerate(reference.epochs) if r["test_accuracy"] >= target)
    assert len(stopped.epochs) == first + 1 < 4
    assert [r["test_accuracy"] for r in stopped.epochs] == [r["test_accuracy"] for r in reference.epochs[: first + 1]]


def test_a_finished_run_is_extended_with_more_epochs(daemon: StorageDaemon, tmp_path: Path) -> None:
    ckpt = str(tmp_path / "ckpt")
    first = train(config_for(daemon, method="random", fraction=0.2, epochs=2, checkpoint_dir=ckpt))
    again = train(config_for(daemon, method="random", fraction=0.2, epochs=2, checkpoint_dir=ckpt))
    assert [r["epoch"] for r in again.epochs] == [0, 1] == [r["epoch"] for r in first.epochs]  # nothing to do
    longer = train(config_for(daemon, method="random", fraction=0.2, epochs=4, checkpoint_dir=ckpt))
    assert [r["epoch"] for r in longer.epochs] == [0, 1, 2, 3]
    assert longer.epochs[:2] == first.epochs  # the first two epochs are the ones trained before


def test_bad_settings_are_clear_errors(daemon: StorageDaemon, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="unknown method"):
        method_needs_proxy("magic")
    assert not method_needs_proxy("random") and method_needs_proxy("craig")
    with pytest.raises(InvalidArgumentError, match="fraction"):
        config_for(daemon, method="random", fraction=1.5)
    with pytest.raises(InvalidArgumentError, match="unknown model"):
        config_for(daemon, model="vgg")
    with pytest.raises(InvalidArgumentError, match="unknown option"):
        train(config_for(daemon, method="craig", epochs=1, options={"nonsense": 1}))
    ckpt = tmp_path / "ckpt"
    train(config_for(daemon, method="random", epochs=1, checkpoint_dir=str(ckpt)))
    with pytest.raises(FailedPreconditionError, match="another run"):
        train(config_for(daemon, method="random", epochs=1, fraction=0.3, checkpoint_dir=str(ckpt)))


def test_infobatch_prunes_learned_samples_by_training_loss_then_anneals(daemon: StorageDaemon) -> None:
    trainer = RecordingTrainer(config_for(daemon, method="infobatch", fraction=0.5, epochs=4, infobatch_delta=0.5))
    result = trainer.run()
    n = trainer.info.num_samples
    assert result.bytes_to_storage == 0 or result.options["pushed_proxy_versions"] == []  # no proxy
    sizes = [r["subset_size"] for r in result.epochs]
    assert sizes[0] == n  # every score starts at 3: nothing is below the mean
    assert sizes[1] < n and sizes[2] < n and sizes[3] == n  # epochs <= δ·E = 2 prune (the code's rule), then anneal
    sel = trainer.results[1]
    trained = np.concatenate([b.indices for b in trainer.batches[1]])
    assert sorted(trained.tolist()) == sorted(sel.indices.tolist())
    weights = torch.cat([b.w for b in trainer.batches[1]]).numpy()
    assert set(np.round(np.unique(weights), 4).tolist()) == {1.0, 2.0}  # kept learned samples weigh 1/keep
    assert n - sizes[1] == result.epochs[1]["pruned"] > 0
    assert np.all(torch.cat([b.w for b in trainer.batches[3]]).numpy() == 1.0)
    plan_scores = trainer.plan.state_dict()["scores"]
    assert np.all(plan_scores != 3.0)  # every sample was trained on, and its loss replaced the initial 3


def test_rs2_through_the_daemon_covers_the_set_before_repeating(daemon: StorageDaemon) -> None:
    trainer = RecordingTrainer(config_for(daemon, method="rs2", fraction=0.3, epochs=4))
    result = trainer.run()
    assert result.bytes_to_storage == 0 or not result.options["pushed_proxy_versions"]
    n = trainer.info.num_samples
    firsts = [trainer.results[e].indices for e in range(3)]  # 3 × 30 %: 90 % of the set, no sample twice
    union = np.concatenate(firsts)
    assert len(set(union.tolist())) == union.size
    fourth = trainer.results[3].indices  # the last 10 % of the first order, then the next order
    assert len(set(np.concatenate([union, fourth]).tolist())) == n


def test_each_run_reports_its_energy_per_epoch_and_as_a_metric(daemon: StorageDaemon) -> None:
    before = _metric("nessa_trainer_energy_joules_total", component="trainer")
    result = train(config_for(daemon, method="random", fraction=0.2, epochs=2))
    energy = result.options["energy"]["trainer"]
    assert (
        energy["joules"] > 0 and energy["cpu_seconds"] > 0 and energy["source"].split()[0] in ("measured", "estimated")
    )
    per_epoch = [r["energy_joules_total"]["trainer"] for r in result.epochs]
    assert 0 < per_epoch[0] <= per_epoch[1] <= energy["joules"]  # cumulative, up to the run's total
    assert _metric("nessa_trainer_energy_joules_total", component="trainer") - before == pytest.approx(per_epoch[-1])
