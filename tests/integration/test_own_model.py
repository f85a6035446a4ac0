"""A user's own models on a user's own images, through a real daemon (port 0) over real LMDB and PoCL kernels.

A small ViT and a SiLU ResNet (``tests/common/user_models.py``) train with CRAIG on generated PNG image folders,
via ``nessa train --model module:factory`` and via the three-line :class:`nessa.Selector` helper; the daemon decodes
the PNGs (resize + center crop as the proxy declares) before the proxy; a model with an op outside the vocabulary
selects through the torch engine and the reply says the OpenCL path was not used.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from image_helpers import make_png_folder
from torch import nn
from trainer_helpers import ROOT
from user_models import silu_resnet, tiny_vit

import nessa
from nessa.client import StorageClient
from nessa.errors import InvalidArgumentError
from nessa.proxy import Normalization, export
from nessa.services.storage.config import DaemonConfig
from nessa.services.storage.server import StorageDaemon
from nessa.store import ingest
from nessa.store.images import ImagePrep
from nessa.trainer.config import TrainConfig
from nessa.trainer.loop import train

PER_CLASS, TEST_PER_CLASS = 16, 6
N = 3 * PER_CLASS
U8 = Normalization(dtype="uint8", scale=1 / 255)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorageDaemon]:
    root = tmp_path_factory.mktemp("images")
    data = root / "data"
    data.mkdir()
    ingest(make_png_folder(root / "train", PER_CLASS, seed=0), data / "imgs")
    ingest(make_png_folder(root / "test", TEST_PER_CLASS, seed=1), data / "imgs-test")
    ingest(make_png_folder(root / "var", 4, seed=2, vary=True), data / "imgs-var")
    d = StorageDaemon(
        DaemonConfig(data_dir=data, host="127.0.0.1", port=0, metrics_port=None, drain_seconds=0.0)
    ).start()
    try:
        yield d
    finally:
        d.stop(grace=0.5, drain=0)


@pytest.fixture()
def client(daemon: StorageDaemon) -> Iterator[StorageClient]:
    c = StorageClient(daemon.address)
    try:
        yield c
    finally:
        c.close()


def test_vit_trains_with_craig_through_the_trainer(daemon: StorageDaemon, client: StorageClient) -> None:
    cfg = TrainConfig(
        target=daemon.address, dataset="imgs", test_dataset="imgs-test", model="user_models:tiny_vit",
        method="craig", fraction=0.5, epochs=2, batch_size=8, lr=0.05, progress=False, torch_threads=1,
        image_size=16, reselect_every=1,
    )  # fmt: skip
    result = train(cfg, echo=lambda _s: None)
    assert len(result.epochs) == 2
    assert result.final_accuracy > 1 / 3  # learnable colour classes: above chance after two epochs
    listed = client.selections("imgs")
    assert listed and all(sum(s.class_counts.values()) == N // 2 and s.proxy_version is not None for s in listed)
    assert all(s.extras["proxy_engine"] == "opencl" and s.extras["opencl_used"] is True for s in listed)


def test_silu_resnet_trains_with_craig_through_nessa_train(daemon: StorageDaemon, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests' / 'common'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [
        sys.executable, "-m", "nessa.cli", "train", "--target", daemon.address, "--dataset", "imgs",
        "--test-dataset", "imgs-test", "--model", "user_models:silu_resnet", "--method", "craig", "--fraction",
        "0.5", "--epochs", "2", "--batch-size", "8", "--image-size", "16", "--torch-threads", "1", "--no-progress",
        "--report", str(tmp_path / "r.json"),
    ]  # fmt: skip
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "craig: final accuracy" in run.stdout
    assert (tmp_path / "r.json").stat().st_size > 0


def test_nessa_train_names_a_missing_factory_in_one_line(daemon: StorageDaemon) -> None:
    cmd = [
        sys.executable, "-m", "nessa.cli", "train", "--target", daemon.address, "--dataset", "imgs",
        "--test-dataset", "imgs-test", "--model", "no_such_module:make", "--image-size", "16",
    ]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "cannot import 'no_such_module'" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("build", [tiny_vit, silu_resnet], ids=["vit", "silu-resnet"])
def test_the_three_line_helper_trains_with_craig(daemon: StorageDaemon, build: object) -> None:
    torch.manual_seed(0)
    model: nn.Module = build()  # type: ignore[operator]
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sel = nessa.Selector(daemon.address, "imgs", method="craig", fraction=0.5, image_size=16, batch_size=8)
    try:
        for epoch in range(2):
            seen: list[np.ndarray] = []
            for batch in sel.epoch(model, epoch):
                assert batch["data"].dtype == torch.float32 and batch["data"].shape[1:] == (3, 16, 16)
                assert batch["weight"].dtype == torch.float32 and batch["label"].dtype == torch.int64
                loss = nessa.weighted_loss(model(batch["data"]), batch["label"], batch["weight"])
                opt.zero_grad()
                loss.backward()
                opt.step()
                seen.append(batch["index"].numpy())
            assert sel.selection is not None and sel.selection.proxy_version == epoch
            assert sorted(np.concatenate(seen).tolist()) == sorted(sel.selection.indices.tolist())
            assert sel.selection.extras["opencl_used"] is True
    finally:
        sel.close()


def test_the_helper_resumes_mid_epoch_with_each_sample_once(daemon: StorageDaemon) -> None:
    model = silu_resnet()
    first = nessa.Selector(daemon.address, "imgs", method="craig", fraction=0.5, image_size=16, batch_size=8)
    got: list[int] = []
    for batch in first.epoch(model, 0):
        got.extend(batch["index"].tolist())
        break
    state = first.state_dict()
    want = sorted(first.selection.indices.tolist())  # type: ignore[union-attr]
    first.close()
    second = nessa.Selector(daemon.address, "imgs", method="craig", fraction=0.5, image_size=16, batch_size=8)
    second.load_state_dict(state)
    for batch in second.epoch(model, 0):
        got.extend(batch["index"].tolist())
    second.close()
    assert sorted(got) == want


class EluNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.ELU()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).mean((2, 3)))


def test_a_program_proxy_selects_on_torch_and_the_reply_says_opencl_was_not_used(client: StorageClient) -> None:
    proxy = export(EluNet().eval(), torch.zeros(1, 3, 16, 16), version=7, normalization=U8,
                   image=ImagePrep(resize=16, height=16, width=16))  # fmt: skip
    assert proxy.program
    client.push_proxy(proxy, "imgs")
    sel = client.select("imgs", "craig", 0.25, proxy_version=7)
    assert len(sel) == N // 4
    assert sel.extras["proxy_engine"] == "torch" and sel.extras["opencl_used"] is False
    assert "ELU at module 'act'" in sel.extras["proxy_program"]
    with pytest.raises(InvalidArgumentError, match=r"torch.export program .* engine 'opencl' cannot run"):
        client.select("imgs", "craig", 0.25, proxy_version=7, engine="opencl")


def test_images_of_different_sizes_are_resized_and_cropped_next_to_the_data(client: StorageClient) -> None:
    model = silu_resnet().eval()
    plain = export(model, torch.zeros(1, 3, 16, 16), version=1, normalization=U8)
    with pytest.raises(InvalidArgumentError, match="different sizes"):
        client.push_proxy(plain, "imgs-var")
    prep = ImagePrep(resize=16, height=16, width=16)
    client.push_proxy(export(model, torch.zeros(1, 3, 16, 16), version=2, normalization=U8, image=prep), "imgs-var")
    sel = client.select("imgs-var", "craig", 0.5, proxy_version=2)
    assert len(sel) == 6
    wrong = ImagePrep(resize=12, height=12, width=12)
    with pytest.raises(InvalidArgumentError, match=r"images cropped to \(12, 12, 3\)"):
        export(model, torch.zeros(1, 3, 16, 16), normalization=U8, image=wrong)
    float_proxy = export(model, torch.zeros(1, 3, 16, 16), version=3)
    with pytest.raises(InvalidArgumentError, match="decode to uint8 pixels"):
        client.push_proxy(float_proxy, "imgs-var")


def test_torch_datasets_decode_image_folder_samples(daemon: StorageDaemon, client: StorageClient) -> None:
    from torch.utils.data import DataLoader

    from nessa.data import DecodeSample, SelectionDataset

    sel = client.select("imgs", "balanced", 0.5)
    info = client.describe("imgs")
    ds = SelectionDataset(daemon.address, sel, batch_size=8, transform=DecodeSample(info, image_size=16))
    seen = []
    for batch in DataLoader(ds, batch_size=8):
        assert batch["data"].dtype == torch.float32 and batch["data"].shape[1:] == (3, 16, 16)
        assert batch["weight"].dtype == torch.float32 and batch["label"].dtype == torch.int64
        assert 0.0 <= float(batch["data"].min()) and float(batch["data"].max()) <= 1.0
        seen.extend(batch["index"].tolist())
    assert sorted(seen) == sorted(sel.indices.tolist())
    with pytest.raises(InvalidArgumentError, match="image_size=N"):
        DecodeSample(info)


def test_the_helper_splits_a_selection_between_ddp_ranks(daemon: StorageDaemon) -> None:
    torch.manual_seed(0)
    model = silu_resnet()
    parts = []
    for rank in (0, 1):
        sel = nessa.Selector(
            daemon.address, "imgs", method="craig", fraction=0.5, image_size=16, batch_size=5, rank=rank, world_size=2
        )
        parts.append([i for b in sel.epoch(model, 3) for i in b["index"].tolist()])
        whole = sorted(sel.selection.indices.tolist())  # type: ignore[union-attr]
        sel.close()
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == whole
    assert abs(len(parts[0]) - len(parts[1])) <= 1


def test_a_head_only_proxy_selects_from_the_features_the_trainer_sent(daemon: StorageDaemon) -> None:
    torch.manual_seed(0)
    model = tiny_vit()
    sel = nessa.Selector(
        daemon.address, "imgs", method="craig", fraction=0.5, image_size=16, batch_size=8, head_only=True
    )
    try:
        got = [i for b in sel.epoch(model, 11) for i in b["index"].tolist()]
        assert sel.selection is not None and sel.selection.proxy_version == 11
        assert sorted(got) == sorted(sel.selection.indices.tolist()) and len(got) == N // 2
        # The push carried one float32 feature vector of 32 values per sample, and the linear head (int8).
        assert sel.proxy_bytes > 4 * 32 * N
        assert sel.selection.extras["opencl_used"] is True
    finally:
        sel.close()


def test_fit_trains_a_model_instance_with_its_own_optimizer_and_loss(daemon: StorageDaemon) -> None:
    from nessa.trainer import fit

    torch.manual_seed(0)
    model = tiny_vit()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    calls = []

    def loss_fn(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        calls.append(len(labels))
        return nessa.weighted_loss(logits, labels, weights)

    result = fit(
        model, daemon.address, "imgs", "imgs-test", optimizer=opt, loss_fn=loss_fn, method="craig", fraction=0.5,
        epochs=2, batch_size=8, image_size=16, progress=False, torch_threads=1, lr=1e-3,
    )  # fmt: skip
    assert len(result.epochs) == 2 and sum(calls) == N  # two epochs of half the dataset
    assert opt.state  # the user's optimizer took the steps


@pytest.mark.parametrize("method", ["crest", "adacore", "random"])
def test_other_selectors_train_the_vit_on_images(daemon: StorageDaemon, method: str) -> None:
    # CREST's loss model takes Hessian-vector products through the ViT's attention (double backward).
    cfg = TrainConfig(
        target=daemon.address, dataset="imgs", test_dataset="imgs-test", model="user_models:tiny_vit",
        method=method, fraction=0.25, epochs=2, batch_size=4, progress=False, torch_threads=1, image_size=16,
    )  # fmt: skip
    result = train(cfg, echo=lambda _s: None)
    assert len(result.epochs) == 2
