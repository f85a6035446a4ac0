"""Selection jobs: run the proxy over the candidates and a selector; keep the results for streaming.

A selection is a pure function of its request (dataset contents, method, budget, rule, seed, options, candidates,
engine) and, for methods that need model outputs, of the proxy's bytes. Its id is a hash of exactly that, so the
same request on the same proxy returns the same selection (``cached``) without recomputing, and a restarted daemon
recognises ids it handed out before. Results live in a memory cache bounded in bytes (least recently used evicted
first) and in ``<state_dir>/selections`` (the newest ``max_saved`` kept), from which evicted or pre-restart
selections are reloaded.

Cancellation is checked between proxy-forward batches and around the selector; a selector's own run is not
interrupted.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nessa.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    ResourceExhaustedError,
)
from nessa.metrics import (
    ACTIVE_SELECTIONS,
    BYTES_FULL_EPOCH,
    PROXY_FORWARD_DURATION,
    PROXY_FORWARD_SAMPLES,
    SELECTION_CACHE_BYTES,
    SELECTION_DURATION,
    SELECTION_OBJECTIVE,
    SELECTION_SIZE,
    SELECTIONS,
)
from nessa.proxy import ProxyEngine
from nessa.selection.base import SelectionInputs, Selector, Subset
from nessa.selection.budget import BUDGET_RULES, class_budgets, count_from_budget
from nessa.selection.registry import create
from nessa.services.storage.cancel import CancelToken
from nessa.services.storage.catalog import Catalog, DatasetEntry
from nessa.services.storage.proxies import ProxyRecord, ProxyStore

__all__ = [
    "GLOBAL_RULE",
    "EnginePool",
    "SelectionParams",
    "SelectionService",
    "SelectionStore",
    "StoredSelection",
]

log = logging.getLogger("nessa.storage")

#: Budget rule for one selector run over every candidate (the selector's own class handling applies).
GLOBAL_RULE = "global"
_PROXY_INPUTS = ("gradients", "losses", "embeddings")
_ID_RE = re.compile(r"^sel-[0-9a-f]{24}$")
ENGINES = ("opencl", "torch", "numpy")


@dataclass(frozen=True)
class SelectionParams:
    """A selection request in domain terms.

    Attributes:
        dataset: dataset name.
        method: selector name.
        fraction: budget as a fraction of the candidates, or ``None``.
        count: budget as a number of samples, or ``None`` (exactly one of fraction and count is set).
        budget_rule: ``global``, or a per-class rule of :func:`nessa.selection.budget.class_budgets`.
        seed: the selector's seed.
        options: method options.
        proxy_version: the proxy version the caller expects, or ``None`` for whatever is held.
        candidates: dataset indices to select from, or ``None`` for all.
        engine: proxy engine name, or "" for the daemon's default.
    """

    dataset: str
    method: str
    fraction: float | None = None
    count: int | None = None
    budget_rule: str = GLOBAL_RULE
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    proxy_version: int | None = None
    candidates: np.ndarray | None = None
    engine: str = ""


@dataclass
class StoredSelection:
    """A computed selection, as kept in memory and on disk.

    Attributes:
        id: content-derived id.
        dataset: dataset name.
        method: selector name.
        indices: int64 dataset indices, in the method's order.
        weights: float32 weight per index.
        objective: the method's objective (NaN if none).
        proxy_version: version of the proxy used, or ``None``.
        timings: ``read_seconds``, ``proxy_forward_seconds``, ``selection_seconds``, ``total_seconds``.
        class_counts: label → samples selected.
        num_candidates: candidates considered.
        selected_bytes: stored bytes of the selected samples.
        candidate_bytes: stored bytes of all candidates.
        budget_rule: how the budget was spread.
        options: options used (defaults filled in).
        extras: method-specific outputs.
    """

    id: str
    dataset: str
    method: str
    indices: np.ndarray
    weights: np.ndarray
    objective: float
    proxy_version: int | None
    timings: dict[str, float]
    class_counts: dict[int, int]
    num_candidates: int
    selected_bytes: int
    candidate_bytes: int
    budget_rule: str = GLOBAL_RULE
    options: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Memory held (indices, weights, and a flat allowance for the rest)."""
        return int(self.indices.nbytes + self.weights.nbytes + 1024)

    def meta(self) -> dict[str, Any]:
        """Every field but the arrays, JSON-able."""
        return {
            "id": self.id,
            "dataset": self.dataset,
            "method": self.method,
            "objective": self.objective,
            "proxy_version": self.proxy_version,
            "timings": self.timings,
            "class_counts": {str(k): v for k, v in self.class_counts.items()},
            "num_candidates": self.num_candidates,
            "selected_bytes": self.selected_bytes,
            "candidate_bytes": self.candidate_bytes,
            "budget_rule": self.budget_rule,
            "options": self.options,
            "extras": self.extras,
        }

    @classmethod
    def from_parts(cls, meta: dict[str, Any], indices: np.ndarray, weights: np.ndarray) -> StoredSelection:
        """Rebuild a selection from :meth:`meta` and its arrays."""
        return cls(
            id=meta["id"],
            dataset=meta["dataset"],
            method=meta["method"],
            indices=np.asarray(indices, dtype=np.int64),
            weights=np.asarray(weights, dtype=np.float32),
            objective=float(meta["objective"]),
            proxy_version=meta["proxy_version"],
            timings={k: float(v) for k, v in meta["timings"].items()},
            class_counts={int(k): int(v) for k, v in meta["class_counts"].items()},
            num_candidates=int(meta["num_candidates"]),
            selected_bytes=int(meta["selected_bytes"]),
            candidate_bytes=int(meta["candidate_bytes"]),
            budget_rule=meta.get("budget_rule", GLOBAL_RULE),
            options=dict(meta.get("options", {})),
            extras=dict(meta.get("extras", {})),
        )


def check_selection_id(selection_id: str) -> str:
    """Return ``selection_id`` if well formed, else raise :class:`InvalidArgumentError`."""
    if not _ID_RE.match(selection_id or ""):
        raise InvalidArgumentError(
            f"{selection_id!r} is not a selection id (ids look like 'sel-' and 24 hex digits); "
            "pass the id that Select returned"
        )
    return selection_id


class SelectionStore:
    """Selections by id: an LRU memory cache bounded in bytes over a bounded directory of saved selections.

    Args:
        directory: where selections are saved (``<state_dir>/selections``).
        cache_bytes: memory bound of the in-memory cache.
        max_saved: selections kept on disk.
    """

    def __init__(self, directory: Path, cache_bytes: int, max_saved: int) -> None:
        self.dir = Path(directory)
        self.cache_bytes = int(cache_bytes)
        self.max_saved = int(max_saved)
        self._cache: OrderedDict[str, StoredSelection] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held_bytes(self) -> int:
        """Bytes held by the memory cache."""
        return self._held

    def __contains__(self, selection_id: str) -> bool:
        return selection_id in self._cache or self._path(selection_id).is_file()

    def _path(self, selection_id: str) -> Path:
        return self.dir / f"{selection_id}.npz"

    def put(self, sel: StoredSelection) -> None:
        """Keep ``sel`` in memory and on disk."""
        self._save(sel)
        self._remember(sel)

    def get(self, selection_id: str) -> StoredSelection:
        """The selection with this id (from memory, else from disk).

        Raises:
            InvalidArgumentError: a malformed id.
            NotFoundError: no such selection (never made here, or removed from disk).
        """
        check_selection_id(selection_id)
        with self._lock:
            sel = self._cache.get(selection_id)
            if sel is not None:
                self._cache.move_to_end(selection_id)
                return sel
        sel = self._load(selection_id)
        if sel is None:
            raise NotFoundError(
                f"no selection {selection_id!r} on this daemon (never made here, or older than the "
                f"{self.max_saved} kept); call Select again"
            )
        self._remember(sel)
        return sel

    def find(self, selection_id: str) -> StoredSelection | None:
        """Like :meth:`get` but ``None`` when missing."""
        try:
            return self.get(selection_id)
        except NotFoundError:
            return None

    def _remember(self, sel: StoredSelection) -> None:
        with self._lock:
            old = self._cache.pop(sel.id, None)
            if old is not None:
                self._held -= old.nbytes
            self._cache[sel.id] = sel
            self._held += sel.nbytes
            while self._held > self.cache_bytes and len(self._cache) > 1:
                _, evicted = self._cache.popitem(last=False)
                self._held -= evicted.nbytes
            SELECTION_CACHE_BYTES.set(self._held)

    def _save(self, sel: StoredSelection) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, indices=sel.indices, weights=sel.weights, meta=np.array(json.dumps(sel.meta())))
        tmp = self.dir / f".{sel.id}.{os.getpid()}.{threading.get_ident()}.tmp"
        tmp.write_bytes(buf.getvalue())
        with self._lock:
            saved = sorted(self.dir.glob("sel-*.npz"), key=_mtime_ns)
            # File times come from a coarse clock (several saves may share one): stamp each save strictly after the
            # newest one, so "oldest first" is the order of saving, also across restarts.
            newest = _mtime_ns(saved[-1]) if saved else 0
            stamp = max(time.time_ns(), newest + 1)
            os.utime(tmp, ns=(stamp, stamp))
            path = self._path(sel.id)
            os.replace(tmp, path)
            saved = [p for p in saved if p != path] + [path]
            for stale in saved[: max(0, len(saved) - self.max_saved)]:
                stale.unlink(missing_ok=True)

    def _load(self, selection_id: str) -> StoredSelection | None:
        path = self._path(selection_id)
        try:
            with np.load(path, allow_pickle=False) as npz:
                meta = json.loads(str(npz["meta"]))
                return StoredSelection.from_parts(meta, npz["indices"], npz["weights"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError) as exc:
            log.warning("saved selection %s is unreadable (%s); ignoring it", path, exc)
            return None


class EnginePool:
    """One proxy engine per backend, built on first use (the default one at startup, so kernels are ready).

    Args:
        default: the backend used when a request names none.
    """

    def __init__(self, default: str = "opencl") -> None:
        self.default = self._check(default)
        self._engines: dict[str, ProxyEngine] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _check(name: str) -> str:
        if name not in ENGINES:
            raise InvalidArgumentError(f"unknown proxy engine {name!r}; use one of {list(ENGINES)}")
        return name

    def get(self, name: str = "") -> ProxyEngine:
        """The engine ``name`` (the default if empty)."""
        name = self._check(name or self.default)
        with self._lock:
            engine = self._engines.get(name)
            if engine is None:
                engine = ProxyEngine(backend=name)
                self._engines[name] = engine
        return engine

    def warmup(self) -> None:
        """Build the default engine before the daemon reports SERVING; on OpenCL also compile the programs.

        The proxy ops (``fpga_kernels/nn.cl``) and the selection kernels (``fpga_kernels/selection.cl``) are built
        with their default options; conv kernels specialised by tile size are built on first use of a shape.
        """
        self.get()
        if self.default == "opencl":
            from nessa.accel import selection_ops
            from nessa.accel.runtime import get_runtime

            runtime = get_runtime()
            runtime.program("nn")  # fpga_kernels/nn.cl: the proxy ops
            runtime.program(selection_ops.SOURCE)


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:  # removed meanwhile
        return 0


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _jsonable(value: Any) -> Any:
    """``value`` with numpy scalars and arrays turned into plain JSON values."""
    return json.loads(json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


class SelectionService:
    """Runs selections and hands them out by id.

    Args:
        catalog: datasets served.
        proxies: proxies held.
        engines: proxy engines.
        store: where selections are kept.
        max_concurrent: Select calls that may run at once.
        proxy_batch_size: samples per proxy-forward batch.
    """

    def __init__(
        self,
        catalog: Catalog,
        proxies: ProxyStore,
        engines: EnginePool,
        store: SelectionStore,
        max_concurrent: int = 4,
        proxy_batch_size: int = 1024,
    ) -> None:
        self.catalog = catalog
        self.proxies = proxies
        self.engines = engines
        self.store = store
        self.proxy_batch_size = int(proxy_batch_size)
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self.max_concurrent = int(max_concurrent)

    def get(self, selection_id: str) -> StoredSelection:
        """A selection made earlier (see :meth:`SelectionStore.get`)."""
        return self.store.get(selection_id)

    def select(self, params: SelectionParams, cancel: CancelToken | None = None) -> tuple[StoredSelection, bool]:
        """Run (or find) the selection asked for.

        Returns:
            The selection and whether it was already there (``cached``).

        Raises:
            NotFoundError: unknown dataset.
            InvalidArgumentError: bad method, option, budget, rule, engine or candidates.
            OutOfRangeError: a candidate index past the end of the dataset.
            FailedPreconditionError: the method needs a proxy and none (or not the version asked for) is held.
            ResourceExhaustedError: too many selections running.
        """
        cancel = cancel or CancelToken()
        start = time.perf_counter()
        entry = self.catalog.get(params.dataset)
        selector = create(params.method, **params.options)
        rule = params.budget_rule or GLOBAL_RULE
        if rule != GLOBAL_RULE and rule not in BUDGET_RULES:
            raise InvalidArgumentError(
                f"unknown budget rule {rule!r}; use {GLOBAL_RULE!r} or a per-class rule: {list(BUDGET_RULES)}"
            )
        if params.engine:
            EnginePool._check(params.engine)
        candidates = self._candidates(entry, params.candidates)
        budget = self._budget(params, len(candidates))
        needs_proxy = [name for name in selector.required_inputs() if name in _PROXY_INPUTS]
        unsupported = [name for name in selector.required_inputs() if name not in _PROXY_INPUTS and name != "labels"]
        if unsupported:
            raise FailedPreconditionError(
                f"method {params.method!r} needs inputs {unsupported}, which this daemon cannot compute for dataset "
                f"{entry.name!r} (it derives labels, gradients, losses and embeddings only); use another method"
            )
        record = self._proxy(entry, params, needs_proxy) if needs_proxy else None
        engine_name = (params.engine or self.engines.default) if needs_proxy else ""
        if needs_proxy:
            EnginePool._check(engine_name)
        key = {
            "dataset": entry.name,
            "fingerprint": entry.fingerprint,
            "method": params.method,
            "budget": ["fraction", float(params.fraction)] if params.fraction is not None else ["count", params.count],
            "rule": rule,
            "seed": int(params.seed),
            "options": _jsonable(selector.config),
            "candidates": hashlib.sha256(candidates.tobytes()).hexdigest() if params.candidates is not None else None,
            "proxy": record.sha256 if record is not None else None,
            "engine": engine_name or None,
        }
        selection_id = "sel-" + hashlib.sha256(_canonical(key).encode()).hexdigest()[:24]
        candidate_bytes = entry.nbytes(candidates)
        found = self.store.find(selection_id)
        if found is not None:
            SELECTIONS.labels(dataset=entry.name, method=params.method, cached="true").inc()
            BYTES_FULL_EPOCH.labels(dataset=entry.name).inc(candidate_bytes)
            return found, True
        if not self._slots.acquire(blocking=False):
            raise ResourceExhaustedError(
                f"{self.max_concurrent} selections are already running on this daemon; retry when one finishes "
                "(or start the daemon with a larger --max-concurrent-selections)"
            )
        ACTIVE_SELECTIONS.inc()
        try:
            sel = self._run(entry, params, selector, rule, candidates, budget, record, engine_name, cancel)
        finally:
            ACTIVE_SELECTIONS.dec()
            self._slots.release()
        sel.id = selection_id
        sel.candidate_bytes = candidate_bytes
        sel.timings["total_seconds"] = time.perf_counter() - start
        cancel.check()
        self.store.put(sel)
        SELECTION_DURATION.labels(method=params.method).observe(sel.timings["total_seconds"])
        SELECTION_SIZE.labels(dataset=entry.name, method=params.method).set(len(sel.indices))
        SELECTION_OBJECTIVE.labels(dataset=entry.name, method=params.method).set(sel.objective)
        SELECTIONS.labels(dataset=entry.name, method=params.method, cached="false").inc()
        BYTES_FULL_EPOCH.labels(dataset=entry.name).inc(candidate_bytes)
        log.info("dataset %s: %s selected %d of %d in %.3f s (%s)", entry.name, params.method, len(sel.indices),
                 len(candidates), sel.timings["total_seconds"], sel.id)  # fmt: skip
        return sel, False

    @staticmethod
    def _candidates(entry: DatasetEntry, given: np.ndarray | None) -> np.ndarray:
        n = len(entry)
        if given is None:
            if n == 0:
                raise FailedPreconditionError(f"dataset {entry.name!r} is empty; ingest samples first")
            return np.arange(n, dtype=np.int64)
        cand = np.asarray(given, dtype=np.int64)
        if cand.ndim != 1 or cand.size == 0:
            raise InvalidArgumentError("candidates must be a non-empty list of dataset indices (or empty for all)")
        bad = cand[(cand < 0) | (cand >= n)]
        if bad.size:
            raise OutOfRangeError(
                f"candidate index {int(bad[0])} is outside dataset {entry.name!r} of {n} samples; "
                f"give indices in [0, {n})"
            )
        if np.unique(cand).size != cand.size:
            raise InvalidArgumentError("candidates contain duplicates; give each dataset index once")
        return cand

    @staticmethod
    def _budget(params: SelectionParams, n: int) -> float | int:
        if (params.fraction is None) == (params.count is None):
            raise InvalidArgumentError("give exactly one budget: a fraction in (0, 1] or a count of samples")
        budget: float | int = float(params.fraction) if params.fraction is not None else int(params.count or 0)
        count_from_budget(n, budget)  # validates (InvalidArgumentError with the valid range)
        return budget

    def _proxy(self, entry: DatasetEntry, params: SelectionParams, needs: list[str]) -> ProxyRecord:
        record = self.proxies.get(entry.name)
        if record is None:
            raise FailedPreconditionError(
                f"method {params.method!r} needs the model proxy's outputs ({', '.join(needs)}) but no proxy was "
                f"pushed for dataset {entry.name!r}; push one first (PushProxy / StorageClient.push_proxy)"
            )
        if params.proxy_version is not None and params.proxy_version != record.version:
            raise FailedPreconditionError(
                f"the daemon holds proxy version {record.version} for dataset {entry.name!r}, not "
                f"{params.proxy_version}; push version {params.proxy_version} first or ask for {record.version}"
            )
        return record

    def _run(
        self,
        entry: DatasetEntry,
        params: SelectionParams,
        selector: Selector,
        rule: str,
        candidates: np.ndarray,
        budget: float | int,
        record: ProxyRecord | None,
        engine_name: str,
        cancel: CancelToken,
    ) -> StoredSelection:
        labels = entry.labels[candidates]
        features: dict[str, np.ndarray] = {"labels": labels}
        read_s = forward_s = 0.0
        forwarded = 0
        if record is not None:
            # Only the rows the selector will read (CREST: its pools) go through the proxy; with a per-class rule
            # the selector runs once per class on other inputs, so every row is forwarded.
            rows = selector.feature_rows(labels, budget, int(params.seed)) if rule == GLOBAL_RULE else None
            if rows is not None and len(rows) == 0:
                rows = None
            features, read_s, forward_s = self._forward(
                entry, record, engine_name, candidates, labels, selector, cancel, rows
            )
            forwarded = len(candidates) if rows is None else len(rows)
            PROXY_FORWARD_DURATION.labels(engine=engine_name).observe(forward_s)
            PROXY_FORWARD_SAMPLES.labels(engine=engine_name).inc(forwarded)
        cancel.check()
        t0 = time.perf_counter()
        inputs = SelectionInputs(**features)
        if rule == GLOBAL_RULE:
            subset = selector.select(inputs, budget, int(params.seed))
        else:
            subset = self._per_class(selector, inputs, budget, rule, int(params.seed), cancel)
        select_s = time.perf_counter() - t0
        local = np.asarray(subset.indices, dtype=np.int64)
        indices = candidates[local]
        class_counts = {int(k): int(v) for k, v in subset.class_counts.items()}
        if not class_counts:
            lab, cnt = np.unique(entry.labels[indices], return_counts=True)
            class_counts = {int(k): int(v) for k, v in zip(lab, cnt, strict=True)}
        return StoredSelection(
            id="",
            dataset=entry.name,
            method=params.method,
            indices=indices,
            weights=np.asarray(subset.weights, dtype=np.float32),
            objective=float(subset.objective),
            proxy_version=record.version if record is not None else None,
            timings={"read_seconds": read_s, "proxy_forward_seconds": forward_s, "selection_seconds": select_s},
            class_counts=class_counts,
            num_candidates=len(candidates),
            selected_bytes=entry.nbytes(indices),
            candidate_bytes=0,
            budget_rule=rule,
            options=_jsonable(subset.options or selector.config),
            extras=_jsonable(subset.extras),
        )

    def _forward(
        self,
        entry: DatasetEntry,
        record: ProxyRecord,
        engine_name: str,
        candidates: np.ndarray,
        labels: np.ndarray,
        selector: Selector,
        cancel: CancelToken,
        rows: np.ndarray | None = None,
    ) -> tuple[dict[str, np.ndarray], float, float]:
        """Run the proxy over the candidates in batches; return the selector's inputs and read/forward seconds.

        With ``rows`` (positions into ``candidates``, from :meth:`Selector.feature_rows`) only those candidates
        are read and forwarded; the other rows of each feature array are zeros, which the selector does not read.
        """
        engine = self.engines.get(engine_name)
        wanted = [name for name in selector.required_inputs() if name in _PROXY_INPUTS]
        parts: dict[str, list[np.ndarray]] = {name: [] for name in wanted}
        positions = np.arange(len(candidates), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        read_s = forward_s = 0.0
        for lo in range(0, len(positions), self.proxy_batch_size):
            cancel.check()
            batch = positions[lo : lo + self.proxy_batch_size]
            t0 = time.perf_counter()
            x = entry.reader.read_arrays(candidates[batch])
            t1 = time.perf_counter()
            out = engine.run(record.proxy, x, labels[batch])
            t2 = time.perf_counter()
            read_s += t1 - t0
            forward_s += t2 - t1
            for name in wanted:
                parts[name].append(np.asarray(_output(out, name)))
        features = {"labels": labels}
        for name in wanted:
            computed = np.concatenate(parts[name], axis=0)
            if rows is None:
                features[name] = computed
            else:
                full = np.zeros((len(candidates), *computed.shape[1:]), dtype=computed.dtype)
                full[positions] = computed
                features[name] = full
        return features, read_s, forward_s

    @staticmethod
    def _per_class(
        selector: Selector, inputs: SelectionInputs, budget: float | int, rule: str, seed: int, cancel: CancelToken
    ) -> Subset:
        """Run the selector once per class with the budget split by ``rule``; concatenate the subsets."""
        labels = inputs.labels
        if labels is None:  # labels are always given by the daemon
            raise InvalidArgumentError("per-class budget rules need labels")
        k = count_from_budget(len(labels), budget)
        shares = class_budgets(labels, k, rule=rule)
        idx_parts: list[np.ndarray] = []
        w_parts: list[np.ndarray] = []
        objective = 0.0
        has_objective = False
        for c in sorted(shares):
            k_c = int(shares[c])
            if k_c == 0:
                continue
            cancel.check()
            members = np.flatnonzero(labels == c)
            sub_inputs = SelectionInputs(
                **{name: getattr(inputs, name)[members] for name in inputs.present()}  # type: ignore[index]
            )
            sub = selector.select(sub_inputs, int(min(k_c, len(members))), seed)
            idx_parts.append(members[np.asarray(sub.indices, dtype=np.int64)])
            w_parts.append(np.asarray(sub.weights, dtype=np.float32))
            if np.isfinite(sub.objective):
                objective += float(sub.objective)
                has_objective = True
        return Subset(
            indices=np.concatenate(idx_parts),
            weights=np.concatenate(w_parts),
            objective=objective if has_objective else float("nan"),
            options=dict(selector.config),
        )


def _output(out: Any, name: str) -> Any:
    """The selector input ``name`` from a proxy engine's outputs."""
    if name == "gradients":
        return out.grad_embedding
    if name == "losses":
        return out.loss
    return out.embedding
