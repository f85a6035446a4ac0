"""The proxy's OpenCL kernels (fpga_kernels/nn.cl via nessa.accel.nn_ops) against their numpy references, and the
references against torch. Sizes are deliberately odd: N=3, C=5, L=37, H/W=7/9, strides 2-3, padding, batches that
are not multiples of any work-group size."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array
import pytest
import torch
import torch.nn.functional as F

from nessa.accel import nn_ops as ops
from nessa.accel.reference import nn as ref
from nessa.accel.runtime import (
    DEFAULT_PLATFORM,
    ENV_PLATFORM,
    OpenCLRuntime,
    available_platforms,
    get_runtime,
    kernel_source,
    round_up,
)
from nessa.errors import FailedPreconditionError, InvalidArgumentError

RNG = np.random.default_rng(1234)
ROOT_PKG = Path(ops.__file__).resolve().parent
NN_KERNELS = (
    "nn_conv",
    "nn_linear",
    "nn_relu",
    "nn_add",
    "nn_pool",
    "nn_global_avgpool",
    "nn_normalize_u8",
    "nn_normalize_f32",
    "nn_softmax_xent",
)


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def close(got: object, want: np.ndarray, rtol: float = 2e-6) -> None:
    """float32 kernels vs a float64-accumulating reference, relative to the output's scale.

    A float32 sum of K products errs by about sqrt(K) * 2^-24 relative to the sum of magnitudes; for the sizes here
    (K <= 9 * 32) that is well under 2e-6 of max|want| (the references round once, from float64).
    """
    arr = got.get() if isinstance(got, cl_array.Array) else np.asarray(got)
    assert arr.shape == want.shape
    scale = max(1.0, float(np.abs(want).max()))
    assert np.abs(arr - want).max() <= rtol * scale, np.abs(arr - want).max()


CONV2D_CASES = [
    # N, C, Co, H, W, k, stride, padding
    (3, 5, 7, 7, 9, 3, 1, 1),
    (3, 5, 7, 9, 7, 3, 2, 1),
    (2, 3, 16, 32, 32, 3, 1, 1),
    (3, 16, 32, 17, 17, 3, 2, 1),
    (3, 5, 9, 9, 9, 1, 2, 0),
    (2, 4, 5, 11, 13, 5, 3, 2),
    (1, 2, 3, 4, 4, 3, 1, 1),
    (5, 3, 20, 6, 30, (3, 1), (1, 2), (1, 0)),
]


@pytest.mark.parametrize("case", CONV2D_CASES, ids=lambda c: "x".join(map(str, c[:5])))
def test_conv2d_matches_reference(case: tuple) -> None:
    n, c, co, h, w, k, s, p = case
    kh, kw = (k, k) if isinstance(k, int) else k
    x, wt, b = rand(n, c, h, w), rand(co, c, kh, kw), rand(co)
    want = ref.conv2d(x, wt, b, s, p)
    close(ops.conv2d(x, wt, b, s, p), want)
    res = rand(*want.shape)
    close(ops.conv2d(x, wt, b, s, p, relu=True, residual=res), ref.conv2d(x, wt, b, s, p, relu=True, residual=res))
    close(ops.conv2d(x, wt, None, s, p, relu=True), ref.conv2d(x, wt, None, s, p, relu=True))


@pytest.mark.parametrize("tco", [4, 8, 16])
def test_conv_weight_packing_tiles(tco: int) -> None:
    x, wt, b = rand(3, 5, 9, 7), rand(13, 5, 3, 3), rand(13)
    packed = ops.ConvWeights.pack(wt, b, tco=tco)
    close(ops.conv2d(x, packed, None, 1, 1, relu=True), ref.conv2d(x, wt, b, 1, 1, relu=True))


@pytest.mark.parametrize("case", CONV2D_CASES[:3] + CONV2D_CASES[5:6], ids=lambda c: "x".join(map(str, c[:5])))
def test_unspecialized_build_matches_reference(case: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    """The source as an FPGA xclbin is built from it (no -D options: runtime sizes, gather loads) computes the same."""
    monkeypatch.setattr(ops, "_conv_config", lambda *args: (16, ()))
    n, c, co, h, w, k, s, p = case
    x, wt, b = rand(n, c, h, w), rand(co, c, k, k), rand(co)
    res = rand(*ref.conv2d(x, wt, b, s, p).shape)
    packed = ops.ConvWeights.pack(wt, b, tco=8)
    close(
        ops.conv2d(x, packed, None, s, p, relu=True, residual=res), ref.conv2d(x, wt, b, s, p, relu=True, residual=res)
    )


@pytest.mark.parametrize(
    "case", [(3, 5, 7, 37, 3, 1, 1), (3, 1, 32, 40, 5, 1, 2), (3, 32, 32, 40, 3, 2, 1), (2, 3, 4, 9, 4, 3, 0)]
)
def test_conv1d_matches_reference(case: tuple) -> None:
    n, c, co, length, k, s, p = case
    x, wt, b = rand(n, c, length), rand(co, c, k), rand(co)
    close(ops.conv1d(x, wt, b, s, p), ref.conv1d(x, wt, b, s, p))


def test_conv_chain_stays_on_device() -> None:
    x, w1, w2 = rand(3, 5, 9, 9), rand(6, 5, 3, 3), rand(4, 6, 3, 3)
    h = ops.conv2d(x, w1, None, 1, 1, relu=True)
    assert isinstance(h, cl_array.Array)
    close(ops.conv2d(h, w2, None, 2, 1), ref.conv2d(ref.conv2d(x, w1, None, 1, 1, relu=True), w2, None, 2, 1))


def test_unguarded_device_input_is_copied() -> None:
    x, wt = rand(3, 5, 7, 9), rand(4, 5, 3, 3)
    plain = cl_array.to_device(get_runtime().queue, x)  # no guard slack
    close(ops.conv2d(plain, wt, None, 1, 1), ref.conv2d(x, wt, None, 1, 1))


@pytest.mark.parametrize("n,f,m", [(37, 45, 11), (3, 5, 2), (1, 64, 10), (130, 256, 128)])
def test_linear_matches_reference(n: int, f: int, m: int) -> None:
    x, w, b = rand(n, f), rand(m, f), rand(m)
    close(ops.linear(x, w, b), ref.linear(x, w, b))
    close(ops.linear(x, w, relu=True), ref.linear(x, w, relu=True))
    close(ops.linear(x, ops.LinearWeights.pack(w, b), relu=True), ref.linear(x, w, b, relu=True))


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("k,s,p", [(3, 2, 1), (2, None, 0), ((3, 2), (1, 2), (1, 0))])
def test_pool2d_matches_reference(kind: str, k: object, s: object, p: object) -> None:
    x = rand(3, 5, 9, 7)
    op, rf = (ops.maxpool2d, ref.maxpool2d) if kind == "max" else (ops.avgpool2d, ref.avgpool2d)
    close(op(x, k, s, p), rf(x, k, s, p))


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool1d_matches_reference(kind: str) -> None:
    x = rand(3, 5, 37)
    op, rf = (ops.maxpool1d, ref.maxpool1d) if kind == "max" else (ops.avgpool1d, ref.avgpool1d)
    close(op(x, 3, 2, 1), rf(x, 3, 2, 1))
    close(op(x, 2), rf(x, 2))


def test_elementwise_ops_match_reference() -> None:
    x, y = rand(3, 5, 9, 7), rand(3, 5, 9, 7)
    close(ops.relu(x), ref.relu(x))
    close(ops.add(x, y), ref.add(x, y))
    close(ops.add(x, y, relu=True), ref.add(x, y, relu=True))
    close(ops.global_avgpool(x), ref.global_avgpool(x))
    flat = ops.flatten(ops.to_device(x))
    assert flat.shape == (3, 5 * 9 * 7)
    close(flat, ref.flatten(x))


def test_global_avgpool_1d() -> None:
    x = rand(3, 5, 37)
    close(ops.global_avgpool(x), ref.global_avgpool(x))


def test_softmax_xent_matches_reference_and_torch() -> None:
    z, y = rand(37, 10) * 8, RNG.integers(0, 10, 37)
    grad, loss = ops.softmax_xent(z, y)
    want_grad, want_loss = ref.softmax_xent(z, y)
    close(grad, want_grad)
    close(loss, want_loss)
    zt = torch.tensor(z, requires_grad=True)
    tl = F.cross_entropy(zt, torch.tensor(y), reduction="none")
    tl.sum().backward()
    np.testing.assert_allclose(want_loss, tl.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(want_grad, zt.grad.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
@pytest.mark.parametrize("per_channel", [True, False])
def test_normalize_matches_reference(dtype: str, per_channel: bool) -> None:
    x = (RNG.random((3, 3, 5, 7)) * 255).astype(dtype)
    mean, std = (np.array([0.4, 0.5, 0.6]), np.array([0.2, 0.25, 0.3])) if per_channel else ([0.5], [0.25])
    close(ops.normalize(x, mean, std, 1 / 255), ref.normalize(x, mean, std, 1 / 255))
    close(ops.normalize(x, [], [], 2.0), ref.normalize(x, [], [], 2.0))
    if dtype == "float32":  # a device activation (with its guard offset) as input
        close(ops.normalize(ops.to_device(x), mean, std, 0.5), ref.normalize(x, mean, std, 0.5))


# --- the references themselves ------------------------------------------------------------------------------------


def test_references_match_torch() -> None:
    x, w, b = rand(3, 5, 9, 7), rand(7, 5, 3, 3), rand(7)
    t = torch.tensor
    np.testing.assert_allclose(
        ref.conv2d(x, w, b, 2, 1), F.conv2d(t(x), t(w), t(b), stride=2, padding=1).numpy(), rtol=1e-4, atol=1e-5
    )
    x1, w1 = rand(3, 5, 37), rand(4, 5, 3)
    np.testing.assert_allclose(
        ref.conv1d(x1, w1, None, 2, 1), F.conv1d(t(x1), t(w1), stride=2, padding=1).numpy(), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(ref.maxpool2d(x, 3, 2, 1), F.max_pool2d(t(x), 3, 2, 1).numpy())
    np.testing.assert_allclose(ref.avgpool2d(x, 3, 2, 1), F.avg_pool2d(t(x), 3, 2, 1).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ref.avgpool1d(x1, 3, 2, 1), F.avg_pool1d(t(x1), 3, 2, 1).numpy(), rtol=1e-5, atol=1e-6)
    xl, wl = rand(6, 9), rand(4, 9)
    np.testing.assert_allclose(ref.linear(xl, wl), F.linear(t(xl), t(wl)).numpy(), rtol=1e-5, atol=1e-5)


# --- errors before launch -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: ops.conv2d(np.zeros((0, 3, 8, 8), np.float32), rand(4, 3, 3, 3)), "empty"),
        (lambda: ops.conv2d(rand(2, 3, 8, 8), rand(4, 5, 3, 3)), "input channels"),
        (lambda: ops.conv2d(rand(2, 3, 2, 2), rand(4, 3, 3, 3)), "larger than the padded input"),
        (lambda: ops.conv2d(rand(2, 3, 8), rand(4, 3, 3, 3)), r"\(N, C, H, W\)"),
        (lambda: ops.conv2d(rand(2, 3, 8, 8), rand(4, 3, 3, 3), rand(5)), "bias"),
        (lambda: ops.conv2d(rand(2, 3, 8, 8), rand(4, 3, 3, 3), stride=0), "stride"),
        (lambda: ops.conv2d(rand(2, 3, 8, 8), rand(4, 3, 3, 3), padding=1, residual=rand(2, 4, 7, 7)), "residual"),
        (lambda: ops.conv1d(rand(2, 3, 8), rand(4, 2, 3)), "input channels"),
        (lambda: ops.linear(rand(2, 5), rand(4, 6)), "features"),
        (lambda: ops.linear(np.zeros((0, 5), np.float32), rand(4, 5)), "empty"),
        (lambda: ops.add(rand(2, 3), rand(3, 2)), "equal shapes"),
        (lambda: ops.maxpool2d(rand(2, 3, 4, 4), 5), "larger"),
        (lambda: ops.avgpool2d(rand(2, 3, 4, 4), 2, 1, 2), "half the kernel"),
        (lambda: ops.softmax_xent(rand(4, 3), np.array([0, 1, 2, 3])), r"\[0, 3\)"),
        (lambda: ops.softmax_xent(rand(4, 3), np.array([0, 1])), "shape"),
        (lambda: ops.normalize(rand(2, 3, 4), [0.1, 0.2], [1, 1]), "one per channel"),
        (lambda: ops.normalize(rand(2, 3, 4), [0.1], [0.0]), "non-zero std"),
        (lambda: ops.conv2d(rand(2, 3, 8, 8), rand(4, 3, 3, 3), out=ops.empty((2, 4, 5, 5))), "out must be"),
        (lambda: ops.global_avgpool(rand(2, 3)), r"\(N, C, ...\)"),
        (lambda: ops.global_avgpool(np.zeros((2, 0, 4), np.float32)), "non-empty"),
        (lambda: ops.relu(np.zeros((0, 3), np.float32)), "empty"),
        (lambda: ops.add(np.zeros((2, 0), np.float32), np.zeros((2, 0), np.float32)), "empty"),
        (lambda: ops.maxpool1d(np.zeros((2, 3, 0), np.float32), 2), "empty"),
        (lambda: ops.avgpool2d(np.zeros((0, 3, 4, 4), np.float32), 2), "empty"),
        (lambda: ops.conv1d(rand(2, 3, 8), np.zeros((0, 3, 3), np.float32)), "empty"),
        (lambda: ops.softmax_xent(np.zeros((0, 3), np.float32), np.zeros(0, np.int64)), "empty"),
        (lambda: ops.normalize(np.zeros((0, 3, 4), np.float32), [0.1], [1.0]), "non-empty"),
        (lambda: ops.flatten(np.zeros((2, 0), np.float32)), "empty"),
    ],
)
def test_bad_inputs_raise_before_launch(call: object, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        call()  # type: ignore[operator]


# --- the host runtime ---------------------------------------------------------------------------------------------


def test_platform_is_chosen_by_case_insensitive_substring(monkeypatch: pytest.MonkeyPatch) -> None:
    found = available_platforms()
    assert found, "the tests need an OpenCL platform (PoCL)"
    name = get_runtime().platform.name
    assert DEFAULT_PLATFORM.lower() in name.lower()  # the default is PoCL
    rt = OpenCLRuntime(platform="pORTABLE computing")
    assert rt.platform.name == name and not rt.is_xilinx
    monkeypatch.setenv(ENV_PLATFORM, "computing LANG")
    assert OpenCLRuntime().platform.name == name


def test_unknown_platform_lists_the_platforms_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_PLATFORM, "no-such-platform")
    with pytest.raises(InvalidArgumentError) as info:
        OpenCLRuntime()
    msg = str(info.value)
    assert "'no-such-platform'" in msg and ENV_PLATFORM in msg
    for name in available_platforms():
        assert repr(name) in msg


def test_programs_are_built_once_and_kernels_kept_per_thread() -> None:
    rt = OpenCLRuntime()
    here = (rt.program("nn"), rt.kernel("nn", "nn_relu"), rt.queue)
    assert rt.program("nn") is here[0] and rt.kernel("nn", "nn_relu") is here[1] and rt.queue is here[2]
    assert rt.program("nn", ("-DNN_TP=8",)) is not here[0]  # another specialization is another program
    there: list[object] = []

    def other_thread() -> None:
        there.extend([rt.program("nn"), rt.kernel("nn", "nn_relu"), rt.queue])

    t = threading.Thread(target=other_thread)
    t.start()
    t.join()
    assert there[0] is here[0]  # the program is shared by the process
    assert there[1] is not here[1] and there[2] is not here[2]  # kernels (argument state) and queues are not


def test_program_from_binary_path(tmp_path: Path) -> None:
    """The Xilinx path's program-from-binaries load (``load_binary``), exercised with PoCL's own binary of nn.cl
    built as an xclbin is (no -D options); its kernels compute what the source-built ones do."""
    rt = OpenCLRuntime()
    built = cl.Program(rt.context, kernel_source("nn")).build()
    path = tmp_path / "nn.bin"
    path.write_bytes(built.get_info(cl.program_info.BINARIES)[0])
    program = rt.load_binary(str(path))
    assert set(program.get_info(cl.program_info.KERNEL_NAMES).split(";")) == set(NN_KERNELS)
    x = rand(3, 5, 37)
    d = ops.to_device(x, rt)
    out = ops.empty(x.shape, rt)
    cl.Kernel(program, "nn_relu")(
        rt.queue, (round_up(x.size, 64),), (64,), d.base_data, np.int32(d.offset // 4), out.base_data,
        np.int32(out.offset // 4), np.int32(x.size),
    )  # fmt: skip
    np.testing.assert_array_equal(out.get(), ref.relu(x))
    with pytest.raises(FailedPreconditionError, match="cannot read"):
        rt.load_binary(str(tmp_path / "missing.xclbin"))
    (tmp_path / "junk.xclbin").write_bytes(b"not a binary")
    with pytest.raises(FailedPreconditionError, match="rejects the binary"):
        rt.load_binary(str(tmp_path / "junk.xclbin"))


def test_vitis_build_lists_exactly_the_kernels_of_the_sources(tmp_path: Path) -> None:
    """The xclbin carries every __kernel of fpga_kernels/*.cl under its own name (what the host asks for)."""
    root = Path(__file__).resolve().parents[3] / "fpga_kernels"
    makefile = (root / "vitis" / "Makefile").read_text()
    assert "PLATFORM ?= xilinx_u2_gen3x4_xdma_gc_2_202110_1" in makefile
    declared = set(re.findall(r"__kernel\s+void\s+(\w+)\s*\(", (root / "nn.cl").read_text()))
    assert declared == set(NN_KERNELS)
    assert shutil.which("make") is not None, "make is needed (the Makefile runs the tests); install it"
    listed = subprocess.run(["make", "-s", "kernels"], cwd=root / "vitis", capture_output=True, text=True, check=True)
    everything = set()
    for src in root.glob("*.cl"):
        everything |= set(re.findall(r"__kernel\s+void\s+(\w+)\s*\(", src.read_text()))
    assert set(listed.stdout.split()) == everything
    cfg = subprocess.run(
        ["make", "-s", "connectivity", f"BUILD={tmp_path}"],
        cwd=root / "vitis",
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert cfg[0] == "[connectivity]"
    assert set(cfg[1:]) == {f"nk={k}:1" for k in everything} | {f"sp={k}_1.m_axi_gmem:DDR[0]" for k in everything}
    called = set(re.findall(r'"((?:nn|sel)_\w+)"', (ROOT_PKG / "nn_ops.py").read_text()))
    called |= set(re.findall(r'"((?:nn|sel)_\w+)"', (ROOT_PKG / "selection_ops.py").read_text()))
    assert called <= everything, called - everything


@pytest.mark.fpga
def test_xilinx_platform_runs_the_xclbin() -> None:
    """On a SmartSSD (``NESSA_OPENCL_PLATFORM=xilinx``, ``NESSA_XCLBIN`` set): kernels from the xclbin match numpy."""
    rt = get_runtime()
    assert rt.is_xilinx, f"the fpga tests need NESSA_OPENCL_PLATFORM=xilinx; running on {rt.name}"
    x, wt, b = rand(3, 5, 9, 7), rand(13, 5, 3, 3), rand(13)
    close(
        ops.conv2d(x, ops.ConvWeights.pack(wt, b, tco=8), None, 1, 1, relu=True), ref.conv2d(x, wt, b, 1, 1, relu=True)
    )
    z, y = rand(37, 10), RNG.integers(0, 10, 37)
    grad, loss = ops.softmax_xent(z, y)
    want_grad, want_loss = ref.softmax_xent(z, y)
    close(grad, want_grad)
    close(loss, want_loss)
