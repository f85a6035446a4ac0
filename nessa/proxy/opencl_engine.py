"""The OpenCL engine: a proxy compiled once per (proxy, batch size) into a :class:`Plan` of kernel launches.

Contract: the same outputs as the other engines (same dequantized float32 weights, float32 accumulation), raw
samples uploaded once per batch, activations kept on the device; a failure is raised, never a fallback.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array

from nessa.accel import nn_ext_ops, nn_ops
from nessa.accel.runtime import OpenCLRuntime, get_runtime
from nessa.errors import InvalidArgumentError
from nessa.proxy.format import INPUT, Proxy
from nessa.proxy.graph import Engine, ProxyOutputs, live_order

__all__ = ["OpenCLEngine", "Plan"]

_PLAN_CACHE = 2
#: Ops that are views of their input's buffer (no kernel).
_VIEWS = {"flatten", "reshape"}
#: Ops of the extended vocabulary (nn_ext.cl), run without fusion.
_EXTENDED = {
    "gelu", "silu", "sigmoid", "tanh", "scale", "softmax", "layernorm", "groupnorm", "matmul", "attention", "mul",
    "embedding", "permute", "concat", "slice", "mean",
}  # fmt: skip
_EXTENDED_KINDS = (_EXTENDED - {"mul"}) | {"binary"}


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
    # Per-sample shapes of the node's inputs (values may be aliases of another shape) and output.
    in_shapes: list[tuple[int, ...]] = field(default_factory=list)
    out_shape: tuple[int, ...] = ()
    # Extended ops: attributes and uploaded tensors (norm weight/bias, embedding table).
    attrs: dict[str, Any] = field(default_factory=dict)


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
        self.constants: dict[str, cl_array.Array] = {}
        for node in order:  # aliases first: flatten and reshape are views
            if proxy.op(node) in _VIEWS:
                self.value_of[node.name] = self.value_of[node.inputs[0]]
            else:
                self.value_of[node.name] = node.name
            if proxy.op(node) == "constant":
                self.constants[node.name] = nn_ext_ops.upload_constant(proxy.tensor(node.weight))
        users: dict[str, int] = {}
        for node in order:
            if proxy.op(node) not in _VIEWS:
                for src in node.inputs:
                    v = self.value_of[src]
                    users[v] = users.get(v, 0) + 1
        pinned = {self.value_of[proxy.output], self.value_of[proxy.embedding], INPUT, *self.constants}
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
            if op in _VIEWS or op == "constant":
                continue
            ins = [self.value_of[s] for s in node.inputs]
            in_shapes = [self.shapes[s] for s in node.inputs]
            if op in _EXTENDED or (op == "add" and (in_shapes[0] != in_shapes[1] or set(ins) & set(self.constants))):
                self._add(producer, self._extended_step(node, op, ins, in_shapes))
                continue
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
        if not step.in_shapes:
            node = next(n for n in self.proxy.nodes if n.name == step.node)
            step.in_shapes = [self.shapes[s] for s in node.inputs]
        step.out_shape = self.shapes[step.node]
        self.steps.append(step)
        producer[step.out] = step

    def _extended_step(self, node: Any, op: str, ins: list[str], in_shapes: list[tuple[int, ...]]) -> _Step:
        """A step of the extended vocabulary (no fusion); tensors are uploaded once here."""
        proxy = self.proxy
        attrs: dict[str, Any] = {
            "dims": [int(v) for v in node.dims],
            "alpha": float(node.alpha),
            "beta": float(node.beta),
            "eps": float(node.eps),
            "groups": int(node.groups),
        }
        ro = cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR
        if op in ("layernorm", "groupnorm", "embedding"):
            w = np.ascontiguousarray(proxy.tensor(node.weight), np.float32)
            attrs["weight"] = cl.Buffer(self.rt.context, ro, hostbuf=w)
            attrs["wshape"] = tuple(int(v) for v in w.shape)
            attrs["bias"] = (
                cl.Buffer(self.rt.context, ro, hostbuf=np.ascontiguousarray(proxy.tensor(node.bias), np.float32))
                if node.bias
                else None
            )
        kind = "binary" if op in ("add", "mul") else op
        attrs["binary"] = op
        return _Step(kind, node.name, ins, node.name, in_shapes=in_shapes, attrs=attrs)

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
        keep |= set(self.constants)
        self.scratch: dict[str, cl.Buffer] = {}
        for i, step in enumerate(self.steps):
            take(step.out)
            if step.kind == "attention":
                q, k = step.in_shapes[0], step.in_shapes[1]
                need = 4 * (self.batch_size * math.prod(q[:-1]) * k[-2] + 2 * nn_ops.GUARD)
                self.scratch[step.node] = cl.Buffer(self.rt.context, cl.mem_flags.READ_WRITE, size=need)
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
        arrays.update(self.constants)
        nn_ops.normalize(x, self.mean, self.std, self.scale, out=arrays[INPUT])
        for step in self.steps:
            if step.kind in _EXTENDED_KINDS or step.kind == "linear":
                self._run_extended(step, arrays, n)
            else:
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

    def _run_extended(self, step: _Step, arrays: dict[str, cl_array.Array], n: int) -> None:
        """Linear (any leading axes) and the extended ops; inputs are viewed in the node's own input shapes."""
        ins = [
            arrays[v].reshape(1 if v in self.constants else n, *shape)
            for v, shape in zip(step.inputs, step.in_shapes, strict=True)
        ]
        out = arrays[step.out].reshape(n, *step.out_shape)
        a = step.attrs
        kind = step.kind
        if kind == "linear":
            assert isinstance(step.weights, nn_ops.LinearWeights)
            f = step.in_shapes[0][-1]
            rows = n * math.prod(step.in_shapes[0][:-1])
            nn_ops.linear(
                ins[0].reshape(rows, f), step.weights, relu=step.relu, out=out.reshape(rows, step.weights.shape[0])
            )
        elif kind in nn_ext_ops.UNARY_MODES:
            nn_ext_ops.unary(ins[0], kind, a["alpha"], a["beta"], out=out)
        elif kind == "softmax":
            nn_ext_ops.softmax(ins[0], out=out)
        elif kind == "layernorm":
            nn_ext_ops.layernorm(ins[0], a["weight"], a["bias"], a["eps"], out=out)
        elif kind == "groupnorm":
            nn_ext_ops.groupnorm(ins[0], a["weight"], a["bias"], a["groups"], a["eps"], out=out)
        elif kind == "matmul":
            nn_ext_ops.matmul(ins[0], ins[1], out=out)
        elif kind == "attention":
            q, k = step.in_shapes[0], step.in_shapes[1]
            scores = self._array(self.scratch[step.node], (n, *q[:-1], k[-2]))
            nn_ext_ops.attention(ins[0], ins[1], ins[2], a["alpha"], out=out, scores=scores)
        elif kind == "binary":
            rank = 1 + max(len(s) for s in step.in_shapes)
            pair = [t.reshape(t.shape[0], *(1,) * (rank - len(t.shape)), *t.shape[1:]) for t in ins]
            nn_ext_ops.binary(pair[0], pair[1], a["binary"], out=out)
        elif kind == "embedding":
            vocab, dim = a["wshape"]
            nn_ext_ops.embedding(ins[0], a["weight"], vocab, dim, out=out)
        elif kind == "permute":
            nn_ext_ops.permute(ins[0], [0, *(d + 1 for d in a["dims"])], out=out)
        elif kind == "concat":
            nn_ext_ops.concat(ins, a["dims"][0] + 1, n, out=out)
        elif kind == "slice":
            axis, start, stop = a["dims"]
            nn_ext_ops.slice_axis(ins[0], axis + 1, start, stop, out=out)
        elif kind == "mean":
            nn_ext_ops.mean(ins[0], [d + 1 for d in a["dims"]], out=out)
        else:
            raise InvalidArgumentError(f"the OpenCL engine has no kernel for op {kind!r} (node {step.node!r})")

    @staticmethod
    def _run_step(step: _Step, arrays: dict[str, cl_array.Array]) -> None:
        out = arrays[step.out]

        def view(v: str, shape: tuple[int, ...]) -> cl_array.Array:
            a = arrays[v]
            return a if tuple(a.shape[1:]) == shape else a.reshape(a.shape[0], *shape)

        x = view(step.inputs[0], step.in_shapes[0])
        if step.kind == "conv":
            assert isinstance(step.weights, nn_ops.ConvWeights)
            fn = nn_ops.conv1d if step.dims == 1 else nn_ops.conv2d
            res = view(step.residual, step.out_shape) if step.residual else None
            fn(x, step.weights, None, step.stride, step.padding, relu=step.relu, residual=res, out=out)
        elif step.kind == "linear":
            assert isinstance(step.weights, nn_ops.LinearWeights)
            nn_ops.linear(x, step.weights, relu=step.relu, out=out)
        elif step.kind == "relu":
            nn_ops.relu(x, out=out)
        elif step.kind == "add":
            nn_ops.add(x, view(step.inputs[1], step.in_shapes[1]), relu=step.relu, out=out)
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
        if proxy.program:
            raise InvalidArgumentError(
                f"this proxy is a torch.export program ({proxy.program_reason} is outside the proxy vocabulary); "
                "the OpenCL engine runs only graph proxies: use the torch engine"
            )
        return self.plan(proxy, batch_size).run(x, labels)
