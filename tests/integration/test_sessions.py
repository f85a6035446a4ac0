"""Selection sessions through a real daemon: selector state survives between Select calls and daemon restarts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from daemon_helpers import TOY_DIM, make_toy, running

from nessa.client import StorageClient
from nessa.errors import InvalidArgumentError
from nessa.proxy import ProxyEngine, dumps, export, loads
from nessa.selection import SelectionInputs, create
from nessa.store import open_dataset
from nessa.trainer.models import mlp

N = 1200


def _proxy(seed: int = 3, version: int = 1) -> bytes:
    torch.manual_seed(seed)
    model = mlp(in_features=TOY_DIM, num_classes=10, hidden=(32,)).eval()
    return dumps(export(model, torch.zeros(1, TOY_DIM), quantize="int8", version=version))


def _library_inputs(root: Path, proxy: bytes) -> SelectionInputs:
    """What the daemon derives: the same proxy over the same stored samples, with the same engine."""
    with open_dataset(root / "toy") as reader:
        x = reader.read_arrays(np.arange(len(reader)))
        y = np.asarray(reader.labels, dtype=np.int64)
    out = ProxyEngine("opencl").run(loads(proxy), x, y)
    return SelectionInputs(
        labels=y, gradients=np.asarray(out.grad_embedding), losses=np.asarray(out.loss), embeddings=out.embedding
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sessions")
    make_toy(root, n=N, shards=2)
    return root


def test_drop_learned_drops_what_stayed_learned_for_the_window_like_a_persistent_instance(root: Path) -> None:
    proxy = _proxy()
    inputs = _library_inputs(root, proxy)
    threshold = float(np.quantile(inputs.losses, 0.2))  # every class keeps more than its budget
    options = {"drop_learned": True, "learned_window": 2, "learned_threshold": threshold}
    persistent = create("craig", **options)
    with running(root, state_dir=root / "state-drop") as d:
        client = StorageClient(d.address, timeout=60)
        client.push_proxy(proxy, "toy")
        dropped = []
        for round_ in range(1, 4):
            sel = client.select("toy", "craig", 0.1, seed=0, session="run-a", options=options)
            want = persistent.select(inputs, 0.1, seed=0)
            assert sel.session == "run-a" and sel.session_round == round_
            assert np.array_equal(sel.indices, want.indices), f"round {round_}"
            dropped.append(int(sel.extras["dropped_learned"]))
            learned = np.flatnonzero(inputs.losses < threshold)
            if round_ >= 2:  # below the threshold for the whole window: never picked again
                assert not np.isin(sel.indices, learned).any()
        # the same proxy every round: nothing is learned after one look, a fifth of the set after two
        assert dropped[0] == 0 and dropped[1] == dropped[2] > 0
        assert dropped[1] == int((inputs.losses < threshold).sum())
        # without a session nothing is kept: it drops nothing, and the reply says it was stateless
        stateless = [client.select("toy", "craig", 0.1, seed=0, options=options) for _ in range(2)]
        assert all(s.session == "" and s.session_round == 0 for s in stateless)
        assert [int(s.extras["dropped_learned"]) for s in stateless] == [0, 0]
        listed = {(s["session"], s["method"]): s for s in client.sessions()}
        assert listed[("run-a", "craig")]["rounds"] == 3 and listed[("run-a", "craig")]["parts"] == 1


def test_adacore_averages_accumulate_across_a_daemon_restart(root: Path) -> None:
    proxies = [_proxy(seed=3, version=1), _proxy(seed=4, version=2)]  # the model moved between the two rounds
    inputs = [_library_inputs(root, p) for p in proxies]
    persistent = create("adacore")
    first_lib = persistent.select(inputs[0], 0.1, seed=1)
    second_lib = persistent.select(inputs[1], 0.1, seed=1)
    stateless_second = create("adacore").select(inputs[1], 0.1, seed=1)
    # the averages matter here: a fresh instance picks differently in round 2
    assert not np.array_equal(second_lib.indices, stateless_second.indices)
    state = root / "state-ada"
    with running(root, state_dir=state) as d:
        client = StorageClient(d.address, timeout=60)
        client.push_proxy(proxies[0], "toy")
        first = client.select("toy", "adacore", 0.1, seed=1, session="run-b")
    assert np.array_equal(first.indices, first_lib.indices)
    with running(root, state_dir=state) as d:  # a new daemon on the same state directory
        client = StorageClient(d.address, timeout=60)
        client.push_proxy(proxies[1], "toy")
        second = client.select("toy", "adacore", 0.1, seed=1, session="run-b")
    assert second.session_round == 2
    assert np.array_equal(second.indices, second_lib.indices)


def test_per_class_rule_keeps_one_state_per_class(root: Path) -> None:
    proxies = [_proxy(seed=5, version=1), _proxy(seed=6, version=2)]
    inputs = [_library_inputs(root, p) for p in proxies]
    with running(root, state_dir=root / "state-class") as d:
        client = StorageClient(d.address, timeout=60)
        for proxy in proxies:
            client.push_proxy(proxy, "toy")
            sel = client.select("toy", "adacore", 0.1, seed=2, session="run-c", budget_rule="equal")
        (info,) = [s for s in client.sessions() if s["session"] == "run-c"]
        assert info["parts"] == 10 and info["rounds"] == 2
    # each class's second round equals a persistent instance that only ever saw that class
    labels = inputs[0].labels
    assert labels is not None
    differs = 0
    for c in range(10):
        members = np.flatnonzero(labels == c)
        k_c = int(np.sum(labels[sel.indices] == c))
        sub = [SelectionInputs(**{k: getattr(x, k)[members] for k in x.present()}) for x in inputs]
        lib = create("adacore")
        lib.select(sub[0], k_c, seed=2)
        want = members[lib.select(sub[1], k_c, seed=2).indices]
        got = sel.indices[labels[sel.indices] == c]
        assert np.array_equal(np.sort(got), np.sort(want)), c
        fresh = members[create("adacore").select(sub[1], k_c, seed=2).indices]
        differs += not np.array_equal(np.sort(fresh), np.sort(want))
    assert differs > 0  # the per-class states changed the picks


def test_bad_session_names_are_clear_errors(root: Path) -> None:
    with running(root, state_dir=root / "state-bad", warmup=False) as d:
        client = StorageClient(d.address)
        with pytest.raises(InvalidArgumentError, match="session"):
            client.select("toy", "random", 0.1, session="../../etc")
        with pytest.raises(InvalidArgumentError, match="session"):
            client.select("toy", "random", 0.1, session="x" * 500)


def test_methods_needing_inputs_a_daemon_cannot_compute_are_refused_before_any_work(root: Path) -> None:
    """One rule (nessa.proxy.inputs) for daemon and trainer: sas with default options needs groups, clipcov captions."""
    from nessa.trainer.config import method_needs_proxy

    with running(root, state_dir=root / "state-inputs", warmup=False) as d:
        client = StorageClient(d.address)
        for method in ("sas", "clipcov"):
            # no proxy was pushed: the refusal names the missing input, not the missing proxy
            with pytest.raises(InvalidArgumentError, match="cannot compute"):
                client.select("toy", method, 0.1)
            # the trainer refuses the same method before exporting or pushing anything
            with pytest.raises(InvalidArgumentError, match="cannot compute"):
                method_needs_proxy(method)
        assert d.proxies.get("toy") is None
