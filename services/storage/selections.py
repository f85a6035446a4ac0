"""The daemon's Select: run the proxy over the candidates, then a selector; hand the result to the store.

A selection is a pure function of its request (dataset contents, method, budget, rule, seed, options, candidates,
engine) and, for methods that need model outputs, of the proxy's bytes. Its id is a hash of exactly that, so the
same request on the same proxy returns the same selection (``cached``) without recomputing, and a restarted daemon
recognises ids it handed out before (:mod:`.selection_store`). Which inputs come from the proxy is decided by
:func:`nessa.proxy.inputs.plan_inputs`, before any work. Cancellation is checked between proxy-forward batches and
around the selector.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nessa.errors import (
    BusyError,
    FailedPreconditionError,
    InvalidArgumentError,
    OutOfRangeError,
)
from nessa.metrics import (
    ACTIVE_SELECTIONS,
    BYTES_FULL_EPOCH,
    PROXY_FORWARD_DURATION,
    PROXY_FORWARD_SAMPLES,
    SELECTION_DURATION,
    SELECTION_OBJECTIVE,
    SELECTION_SIZE,
    SELECTIONS,
)
from nessa.proxy.inputs import FROM_PROXY, plan_inputs, selector_input
from nessa.records import Selection, Timings
from nessa.selection.base import SelectionInputs, Selector
from nessa.selection.budget import GLOBAL, check_budget_rule, count_from_budget, select_with_budget_rule
from nessa.selection.registry import create
from nessa.services.storage.cancel import CancelToken
from nessa.services.storage.catalog import Catalog, DatasetEntry
from nessa.services.storage.engines import EnginePool
from nessa.services.storage.proxies import ProxyRecord, ProxyStore, read_inputs
from nessa.services.storage.selection_store import SelectionStore
from nessa.services.storage.sessions import WHOLE, SessionState, SessionStore

__all__ = ["GLOBAL_RULE", "SelectionParams", "SelectionService"]

log = logging.getLogger("nessa.storage")

#: Budget rule for one selector run over every candidate (the selector's own class handling applies).
GLOBAL_RULE = GLOBAL


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
        session: the selection session (its selector state is loaded and saved), or "" for a stateless selection.
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
    session: str = ""


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
        sessions: where selection sessions' selector states are kept (``None``: sessions are refused).
    """

    def __init__(
        self,
        catalog: Catalog,
        proxies: ProxyStore,
        engines: EnginePool,
        store: SelectionStore,
        max_concurrent: int = 4,
        proxy_batch_size: int = 1024,
        sessions: SessionStore | None = None,
    ) -> None:
        self.catalog = catalog
        self.proxies = proxies
        self.engines = engines
        self.store = store
        self.proxy_batch_size = int(proxy_batch_size)
        self.sessions = sessions
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self.max_concurrent = int(max_concurrent)

    def get(self, selection_id: str) -> Selection:
        """A selection made earlier (see :meth:`SelectionStore.get`)."""
        return self.store.get(selection_id)

    def select(self, params: SelectionParams, cancel: CancelToken | None = None) -> tuple[Selection, bool]:
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
        rule = check_budget_rule(params.budget_rule)
        if params.engine:
            EnginePool._check(params.engine)
        candidates = self._candidates(entry, params.candidates)
        budget = self._budget(params, len(candidates))
        needs_proxy = list(plan_inputs(params.method, selector.required_inputs()).from_proxy)
        record = self._proxy(entry, params, needs_proxy) if needs_proxy else None
        engine_name = (params.engine or self.engines.default) if needs_proxy else ""
        if record is not None and record.proxy.program:
            # A torch.export program (an op outside the vocabulary): only the torch engine runs it.
            if params.engine and params.engine != "torch":
                raise InvalidArgumentError(
                    f"the proxy of dataset {entry.name!r} is a torch.export program ({record.proxy.program_reason} is "
                    f"outside the proxy vocabulary), which engine {params.engine!r} cannot run; ask for engine "
                    "'torch' or none, or export a model within the vocabulary (docs/models-and-images.md)"
                )
            engine_name = "torch"
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
        job = _Job(entry, params, rule, candidates, budget, record, engine_name, cancel, start)
        if not params.session:
            return self._select(job, key, None)
        if self.sessions is None:
            raise FailedPreconditionError("this daemon keeps no selection sessions; send the request without one")
        with self.sessions.open(params.session, entry.name, params.method) as state:
            # The id covers the state the selector starts from: the same request on the same state is the same
            # selection; a new round (the state moved on) is a new one.
            key["session"] = [params.session, hashlib.sha256(_canonical(state.parts).encode()).hexdigest()]
            return self._select(job, key, state)

    def _select(self, job: _Job, key: dict[str, Any], state: SessionState | None) -> tuple[Selection, bool]:
        entry, params = job.entry, job.params
        selection_id = "sel-" + hashlib.sha256(_canonical(key).encode()).hexdigest()[:24]
        candidate_bytes = entry.nbytes(job.candidates)
        found = self.store.find(selection_id)
        if found is not None:
            SELECTIONS.labels(dataset=entry.name, method=params.method, cached="true").inc()
            BYTES_FULL_EPOCH.labels(dataset=entry.name).inc(candidate_bytes)
            return found.with_reply_facts(cached=True), True
        if not self._slots.acquire(blocking=False):
            raise BusyError(
                f"{self.max_concurrent} selections are already running on this daemon; retry when one finishes "
                "(or start the daemon with a larger --max-concurrent-selections)"
            )
        ACTIVE_SELECTIONS.inc()
        try:
            sel = self._run(job, state.parts if state is not None else None)
        finally:
            ACTIVE_SELECTIONS.dec()
            self._slots.release()
        sel.id = selection_id
        sel.candidate_bytes = candidate_bytes
        sel.timings = dataclasses.replace(sel.timings, total_seconds=time.perf_counter() - job.start)
        if state is not None:
            state.rounds += 1
            sel.session, sel.session_round = state.session, state.rounds
        job.cancel.check()
        self.store.put(sel)
        SELECTION_DURATION.labels(method=params.method).observe(sel.timings.total_seconds)
        SELECTION_SIZE.labels(dataset=entry.name, method=params.method).set(len(sel.indices))
        SELECTION_OBJECTIVE.labels(dataset=entry.name, method=params.method).set(sel.objective)
        SELECTIONS.labels(dataset=entry.name, method=params.method, cached="false").inc()
        BYTES_FULL_EPOCH.labels(dataset=entry.name).inc(candidate_bytes)
        log.info("dataset %s: %s selected %d of %d in %.3f s (%s)", entry.name, params.method, len(sel.indices),
                 len(job.candidates), sel.timings.total_seconds, sel.id)  # fmt: skip
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

    def _run(self, job: _Job, states: dict[str, Any] | None) -> Selection:
        """Forward the proxy and run the selector; ``states`` (a session's, by part) are loaded and updated."""
        entry, params, rule, candidates, budget = job.entry, job.params, job.rule, job.candidates, job.budget
        record, engine_name, cancel = job.record, job.engine_name, job.cancel
        selector = _fresh(params, states, WHOLE)
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
        used: dict[str, Selector] = {WHOLE: selector}

        def selector_for(label: int | None) -> Selector:
            part = WHOLE if label is None else str(label)
            if part not in used:
                used[part] = _fresh(params, states, part)
            return used[part]

        subset = select_with_budget_rule(
            params.method,
            inputs,
            budget,
            rule,
            int(params.seed),
            params.options,
            selector_for=selector_for,
            check=cancel.check,
        )
        if states is not None:
            for part, instance in used.items():
                if part != WHOLE or rule == GLOBAL_RULE:
                    states[part] = _jsonable(instance.state_dict())
        select_s = time.perf_counter() - t0
        local = np.asarray(subset.indices, dtype=np.int64)
        indices = candidates[local]
        class_counts = {int(k): int(v) for k, v in subset.class_counts.items()}
        if not class_counts:
            lab, cnt = np.unique(entry.labels[indices], return_counts=True)
            class_counts = {int(k): int(v) for k, v in zip(lab, cnt, strict=True)}
        return Selection(
            id="",
            dataset=entry.name,
            method=params.method,
            indices=indices,
            weights=np.asarray(subset.weights, dtype=np.float32),
            objective=float(subset.objective),
            proxy_version=record.version if record is not None else None,
            timings=Timings(read_seconds=read_s, proxy_forward_seconds=forward_s, selection_seconds=select_s),
            class_counts=class_counts,
            num_candidates=len(candidates),
            selected_bytes=entry.nbytes(indices),
            candidate_bytes=0,
            budget_rule=rule,
            options=_jsonable(subset.options or selector.config),
            extras=_jsonable({**subset.extras, **_engine_extras(record, engine_name)}),
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
        wanted = [name for name in selector.required_inputs() if name in FROM_PROXY]
        parts: dict[str, list[np.ndarray]] = {name: [] for name in wanted}
        positions = np.arange(len(candidates), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        read_s = forward_s = 0.0
        for lo in range(0, len(positions), self.proxy_batch_size):
            cancel.check()
            batch = positions[lo : lo + self.proxy_batch_size]
            t0 = time.perf_counter()
            x = read_inputs(entry, record.proxy, candidates[batch])
            t1 = time.perf_counter()
            out = engine.run(record.proxy, x, labels[batch])
            t2 = time.perf_counter()
            read_s += t1 - t0
            forward_s += t2 - t1
            for name in wanted:
                parts[name].append(selector_input(out, name))
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


@dataclass(frozen=True)
class _Job:
    """One validated Select request and what it resolved to."""

    entry: DatasetEntry
    params: SelectionParams
    rule: str
    candidates: np.ndarray
    budget: float | int
    record: ProxyRecord | None
    engine_name: str
    cancel: CancelToken
    start: float


def _fresh(params: SelectionParams, states: dict[str, Any] | None, part: str) -> Selector:
    """A new selector for ``params``, with the session's saved state of ``part`` loaded when there is one."""
    selector = create(params.method, **params.options)
    saved = None if states is None else states.get(part)
    if saved is not None:
        selector.load_state_dict(saved)
    return selector


def _engine_extras(record: ProxyRecord | None, engine_name: str) -> dict[str, Any]:
    """What the reply says about the proxy path: the engine, and whether the OpenCL (near-storage) path ran."""
    if record is None:
        return {}
    extras: dict[str, Any] = {"proxy_engine": engine_name, "opencl_used": engine_name == "opencl"}
    if record.proxy.program:
        extras["proxy_program"] = f"torch.export program: {record.proxy.program_reason} is outside the vocabulary"
    return extras
