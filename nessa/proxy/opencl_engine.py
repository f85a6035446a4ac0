"""The OpenCL engine: a proxy compiled once per (proxy, batch size) into a :class:`Plan` of kernel launches.

Contract: the same outputs as the other engines (same dequantized float32 weights, float32 accumulation), raw
samples uploaded once per batch, activations kept on the device; a failure is raised, never a fallback.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array

from nessa.accel import nn_ops
from nessa.accel.runtime import OpenCLRuntime, get_runtime
from nessa.proxy.format import INPUT, Proxy
from nessa.proxy.graph import Engine, ProxyOutputs, live_order

__all__ = ["OpenCLEngine", "Plan"]

_PLAN_CACHE = 2


@dataclass
class _Step:
    kind: str  # conv | linear | relu | add | maxpool | avgpool | global_avgpool
    node: str
    inputs: list[str]
    out: str
    relu: bool = False
    residual: str | None = None
    weights: nn_ops.ConvWeights | nn_ops.LinearWeights | None = None
    dims: int = 2
    stride: list[int] = field(default_factory=list)
    padding: list[int] = field(default_factory=list)
    kernel: list[int] = field(default_factory=list)


class Plan:
    """A proxy compiled for the OpenCL device at a fixed maximum batch size.

    Args:
        proxy: a validated proxy.
        batch_size: the largest batch :meth:`run` accepts.
        runtime: the OpenCL runtime (default: the process-wide one).
    """

    def __init__(self, proxy: Proxy, batch_size: int, runtime: OpenCLRuntime | None = None) -> None:
        self.proxy = proxy
        self.batch_size = batch_size
        self.rt = runtime or get_runtime()
        self.shapes = proxy.shapes()
        self.steps: list[_Step] = []
        self.value_of: dict[str, str] = {INPUT: INPUT}
        self._build_steps()
        self.logits = self.value_of[proxy.output]
        self.embedding = self.value_of[proxy.embedding]
        self._assign_buffers()
        spec = proxy.message.input
        self.mean = np.asarray(spec.mean, np.float32)
        self.std = np.asarray(spec.std, np.float32)
        self.scale = float(spec.scale)

    # --- planning -----------------------------------------------------------------------------------------------

    def _build_steps(self) -> None:
        proxy = self.proxy
        order = live_order(proxy)
        for node in order:  # aliases first: flatten is a view
            if proxy.op(node) == "flatten":
                self.value_of[node.name] = self.value_of[node.inputs[0]]
            else:
                self.value_of[node.name] = node.name
        users: dict[str, int] = {}
        for node in order:
            if proxy.op(node) != "flatten":
                for src in node.inputs:
                    v = self.value_of[src]
                    users[v] = users.get(v, 0) + 1
        pinned = {self.value_of[proxy.output], self.value_of[proxy.embedding], INPUT}
        producer: dict[str, _Step] = {}

        def fusable(v: str) -> bool:
            return v not in pinned and users.get(v, 0) == 1

        def redirect(node_name: str, v: str) -> None:
            # node_name's value is now v: v inherits its users and pinning.
            own = self.value_of[node_name]
            self.value_of[node_name] = v
            for name, val in self.value_of.items():
                if val == own:
                    self.value_of[name] = v
            users[v] = users.get(own, 0)
            if own in pinned:
                pinned.add(v)

        for node in order:
            op = proxy.op(node)
            if op == "flatten":
                continue
            ins = [self.value_of[s] for s in node.inputs]
            if op == "relu":
                step = producer.get(ins[0])
                if step is not None and step.kind in ("conv", "linear", "add") and not step.relu and fusable(ins[0]):
                    step.relu = True
                    redirect(node.name, ins[0])
                    continue
                self._add(producer, _Step("relu", node.name, ins, node.name))
                continue
            if op == "add":
                fused = False
                for i in (0, 1):
                    step = producer.get(ins[i])
                    if (
                        step is not None
                        and step.kind == "conv"
                        and not step.relu
                        and step.residual is None
                        and fusable(ins[i])
                    ):
                        step.residual = ins[1 - i]
                        self.steps.remove(step)  # run it here, after the residual exists
                        self.steps.append(step)
                        redirect(node.name, ins[i])
                        fused = True
                        break
                if not fused:
                    self._add(producer, _Step("add", node.name, ins, node.name))
                continue
            if op in ("conv1d", "conv2d"):
                stride, padding = proxy.conv_params(node)
                dims = 1 if op == "conv1d" else 2
                bias = proxy.tensor(node.bias) if node.bias else None
                weights = nn_ops.ConvWeights.pack(proxy.tensor(node.weight), bias, dims=dims)
                self._add(
                    producer,
                    _Step(
                        "conv", node.name, ins, node.name, weights=weights, dims=dims, stride=stride, padding=padding
                    ),
                )
            elif op == "linear":
                bias = proxy.tensor(node.bias) if node.bias else None
                dense = nn_ops.LinearWeights.pack(proxy.tensor(node.weight), bias)
                self._add(producer, _Step("linear", node.name, ins, node.name, weights=dense))
            elif op in ("maxpool", "avgpool"):
                dims = len(self.shapes[node.inputs[0]]) - 1
                kernel, stride, padding = proxy.pool_params(node, dims)
                self._add(
                    producer,
                    _Step(op, node.name, ins, node.name, dims=dims, kernel=kernel, stride=stride, padding=padding),
                )
            else:
                self._add(producer, _Step(op, node.name, ins, node.name))

    def _add(self, producer: dict[str, _Step], step: _Step) -> None:
        self.steps.append(step)
        producer[step.out] = step

    def _assign_buffers(self) -> None:
        last_use: dict[str, int] = {}
        for i, step in enumerate(self.steps):
            for v in [*step.inputs, *([step.residual] if step.residual else [])]:
                last_use[v] = i
        keep = {self.logits, self.embedding}
        free: list[tuple[int, cl.Buffer]] = []
        self.buffers: dict[str, cl.Buffer] = {}

        def take(v: str) -> None:
            need = 4 * (self.batch_size * math.prod(self.shapes[v]) + 2 * nn_ops.GUARD)
            fits = [(size, buf) for size, buf in free if size >= need]
            if fits:
                best = min(fits, key=lambda t: t[0])
                free.remove(best)
                self.buffers[v] = best[1]
            else:
                self.buffers[v] = cl.Buffer(self.rt.context, cl.mem_flags.READ_WRITE, size=need)

        take(INPUT)
        for i, step in enumerate(self.steps):
            take(step.out)
            done = {*step.inputs, *([step.residual] if step.residual else [])}
            free.extend(
                (self.buffers[v].size, self.buffers[v]) for v in sorted(done) if last_use[v] == i and v not in keep
            )
        c = self.proxy.num_classes
        self.grad = cl.Buffer(
            self.rt.context, cl.mem_flags.READ_WRITE, size=4 * (self.batch_size * c + 2 * nn_ops.GUARD)
        )
        self.loss = cl.Buffer(self.rt.context, cl.mem_flags.READ_WRITE, size=4 * (self.batch_size + 2 * nn_ops.GUARD))

    # --- running ------------------------------------------------------------------------------------------------

    def _array(self, buf: cl.Buffer, shape: tuple[int, ...]) -> cl_array.Array:
        return cl_array.Array(self.rt.queue, shape, np.float32, data=buf, offset=4 * nn_ops.GUARD)

    def run(self, x: np.ndarray, labels: np.ndarray) -> ProxyOutputs:
        """Forward one batch of raw samples ``(n, *input_shape)``, ``n <= batch_size``."""
        n = int(x.shape[0])
        arrays = {v: self._array(buf, (n, *self.shapes[v])) for v, buf in self.buffers.items()}
        nn_ops.normalize(x, self.mean, self.std, self.scale, out=arrays[INPUT])
        for step in self.steps:
            self._run_step(step, arrays)
        logits = arrays[self.logits]
        grad = self._array(self.grad, (n, self.proxy.num_classes))
        loss = self._array(self.loss, (n,))
        nn_ops.softmax_xent(logits, labels, grad=grad, loss=loss)
        return ProxyOutputs(
            logits=logits.get(),
            grad_embedding=grad.get(),
            loss=loss.get(),
            embedding=arrays[self.embedding].get().reshape(n, -1),
        )

    @staticmethod
    def _run_step(step: _Step, arrays: dict[str, cl_array.Array]) -> None:
        out = arrays[step.out]
        x = arrays[step.inputs[0]]
        if step.kind == "conv":
            assert isinstance(step.weights, nn_ops.ConvWeights)
            fn = nn_ops.conv1d if step.dims == 1 else nn_ops.conv2d
            res = arrays[step.residual] if step.residual else None
            fn(x, step.weights, None, step.stride, step.padding, relu=step.relu, residual=res, out=out)
        elif step.kind == "linear":
            assert isinstance(step.weights, nn_ops.LinearWeights)
            nn_ops.linear(x, step.weights, relu=step.relu, out=out)
        elif step.kind == "relu":
            nn_ops.relu(x, out=out)
        elif step.kind == "add":
            nn_ops.add(x, arrays[step.inputs[1]], relu=step.relu, out=out)
        elif step.kind in ("maxpool", "avgpool"):
            pool = {
                ("maxpool", 1): nn_ops.maxpool1d,
                ("maxpool", 2): nn_ops.maxpool2d,
                ("avgpool", 1): nn_ops.avgpool1d,
                ("avgpool", 2): nn_ops.avgpool2d,
            }[(step.kind, step.dims)]
            pool(x, step.kernel, step.stride, step.padding, out=out)
        else:
            nn_ops.global_avgpool(x, out=out)

    def describe(self) -> list[str]:
        """One line per kernel launch (for logs and tests)."""
        lines = []
        for s in self.steps:
            extra = (" +residual" if s.residual else "") + (" +relu" if s.relu else "")
            lines.append(f"{s.kind} {s.node}{extra}")
        return lines


class OpenCLEngine(Engine):
    """Runs proxies with the OpenCL kernels; plans are cached per proxy (by checksum) and batch size."""

    name = "opencl"

    def __init__(self) -> None:
        self.runtime = get_runtime()
        self._plans: OrderedDict[tuple[str, int], Plan] = OrderedDict()

    def plan(self, proxy: Proxy, batch_size: int) -> Plan:
        """The cached plan for ``proxy`` at ``batch_size`` (built on first use)."""
        key = (proxy.checksum or proxy.compute_checksum(), batch_size)
        plan = self._plans.get(key)
        if plan is None:
            plan = Plan(proxy, batch_size, self.runtime)
            self._plans[key] = plan
            while len(self._plans) > _PLAN_CACHE:
                self._plans.popitem(last=False)
        else:
            self._plans.move_to_end(key)
        return plan

    def forward(self, proxy: Proxy, x: np.ndarray, labels: np.ndarray, batch_size: int) -> ProxyOutputs:
        """One batch; see :meth:`nessa.proxy.graph.Engine.forward`."""
        return self.plan(proxy, batch_size).run(x, labels)
