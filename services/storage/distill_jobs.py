"""Distill jobs: distil a served dataset next to the data, in a background thread, persisted across restarts.

A job reads the real samples locally (they never cross the link), runs :func:`nessa.distill.distill` in torch,
and publishes the group and its stage datasets through the store's staging writer, all together: until the job
is ``done`` no stage exists under a final name. Each job's record (state, progress, learned lrs, byte counts) is a
JSON file under ``<state_dir>/distill/``, rewritten atomically on every change of phase and at most once a
second for progress. A daemon that stops while a job runs finds the record ``running`` at its next start and
marks it ``failed`` (nothing was published: the job must be submitted again) — unless the job's group is already
in the data directory with this job's id in its manifest, in which case the publication completed and the job is
``done``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nessa.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError, ResourceExhaustedError
from nessa.metrics import DISTILL_DURATION, DISTILL_JOBS, DISTILL_REAL_BYTES_READ, DISTILL_SYNTHETIC_BYTES_WRITTEN
from nessa.services.storage.cancel import Cancelled, CancelToken
from nessa.services.storage.catalog import Catalog, check_name

__all__ = ["DistillJobRecord", "DistillParams", "DistillService"]

log = logging.getLogger("nessa.storage")

_STATES = ("running", "done", "failed", "cancelled")
_ID_CHARS = set("abcdef0123456789-dist")


@dataclass(frozen=True)
class DistillParams:
    """What a Distill call asks for (validated by :meth:`DistillService.submit`)."""

    dataset: str
    method: str = "pdd"
    ipc: int = 10
    stages: int = 0
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    output: str = ""
    overwrite: bool = False


@dataclass
class DistillJobRecord:
    """One job as the daemon keeps and reports it."""

    job_id: str
    dataset: str
    method: str
    ipc: int
    stages: int
    seed: int
    options: dict[str, Any]
    output: str
    overwrite: bool
    state: str = "running"
    progress: float = 0.0
    phase: str = "queued"
    error: str = ""
    stage_datasets: list[str] = field(default_factory=list)
    learned_lr: list[float] = field(default_factory=list)
    seconds: float = 0.0
    real_bytes_read: int = 0
    synthetic_bytes_written: int = 0


def check_job_id(job_id: str) -> str:
    """Return ``job_id`` if it can name a job, else raise :class:`InvalidArgumentError`."""
    if not job_id.startswith("dist-") or len(job_id) > 64 or not set(job_id) <= _ID_CHARS:
        raise InvalidArgumentError(f"{job_id!r} is not a distillation job id (ids look like dist-0123abcd...)")
    return job_id


class DistillService:
    """Runs and remembers Distill jobs.

    Args:
        catalog: the datasets served (inputs are read from it, outputs are written into its directory).
        directory: where job records are kept (``<state_dir>/distill``).
        max_running: jobs allowed to run at once (more are refused with RESOURCE_EXHAUSTED).
    """

    def __init__(self, catalog: Catalog, directory: Path, max_running: int = 1) -> None:
        self.catalog = catalog
        self.dir = Path(directory)
        self.max_running = int(max_running)
        self._jobs: dict[str, DistillJobRecord] = {}
        self._tokens: dict[str, CancelToken] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        for method in ("pdd", "mtt", "dm"):  # series exist from the start, so increase() sees the first job
            DISTILL_DURATION.labels(method=method)

    # -- persistence -------------------------------------------------------------------------------------------

    def restore(self) -> list[str]:
        """Load saved job records; a job that was running when the daemon stopped is reported failed (or done).

        Returns:
            The ids of the jobs whose state changed on restore.
        """
        changed: list[str] = []
        if not self.dir.is_dir():
            return changed
        for path in sorted(self.dir.glob("dist-*.json")):
            try:
                rec = DistillJobRecord(**json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError, TypeError) as exc:
                log.error("ignoring unreadable distillation job record %s: %s", path, exc)
                continue
            if rec.state == "running":
                if self._published_by(rec):
                    rec.state, rec.progress, rec.phase = "done", 1.0, "done"
                else:
                    rec.state, rec.phase = "failed", "interrupted"
                    rec.error = (
                        "the daemon stopped while this job ran; nothing of it was published (stages are published "
                        "together when a job ends); submit it again"
                    )
                self._save(rec)
                changed.append(rec.job_id)
            self._jobs[rec.job_id] = rec
        return changed

    def _published_by(self, rec: DistillJobRecord) -> bool:
        manifest = self.catalog.root / rec.output / "manifest.json"
        try:
            source = json.loads(manifest.read_text(encoding="utf-8")).get("source", {})
        except (OSError, ValueError):
            return False
        return bool(source.get("job_id") == rec.job_id)

    def _save(self, rec: DistillJobRecord) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{rec.job_id}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(asdict(rec), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.dir / f"{rec.job_id}.json")

    # -- API ---------------------------------------------------------------------------------------------------

    def get(self, job_id: str) -> DistillJobRecord:
        """The job called ``job_id`` (a copy)."""
        check_job_id(job_id)
        with self._lock:
            rec = self._jobs.get(job_id)
            if rec is None:
                raise NotFoundError(f"no distillation job {job_id!r} on this daemon (Distill returns the id)")
            return DistillJobRecord(**asdict(rec))

    def cancel(self, job_id: str) -> DistillJobRecord:
        """Ask a running job to stop (it ends ``cancelled`` at its next progress step; nothing is published)."""
        rec = self.get(job_id)
        token = self._tokens.get(job_id)
        if rec.state == "running" and token is not None:
            token.cancel()
        return rec

    def submit(self, params: DistillParams) -> DistillJobRecord:
        """Check ``params`` and start the job in a background thread; returns its record.

        Raises:
            NotFoundError: no such dataset.
            InvalidArgumentError: a bad method, ipc, stages, option, output name, or a dataset that is not 1-D raw.
            FailedPreconditionError: the output exists (without ``overwrite``).
            ResourceExhaustedError: ``max_running`` jobs are running already.
        """
        from nessa.distill.pdd import METHODS, parse_options

        entry = self.catalog.get(params.dataset)
        if params.method not in METHODS:
            raise InvalidArgumentError(
                f"unknown distillation method {params.method!r}; choose one of {', '.join(METHODS)}"
            )
        stages = params.stages or (5 if params.method == "pdd" else 1)
        if params.ipc < 1 or params.ipc % stages:
            raise InvalidArgumentError(f"ipc must be a positive multiple of stages ({stages}); got {params.ipc}")
        if params.method != "pdd" and stages != 1:
            raise InvalidArgumentError(f"{params.method} distils one stage; send stages 1 (or method pdd)")
        parse_options(params.options)
        if entry.codec != "raw" or len(entry.sample_shape) != 1:
            raise InvalidArgumentError(
                f"dataset {params.dataset!r} holds {entry.codec} samples of shape {list(entry.sample_shape)}; "
                "distillation needs raw 1-D signals"
            )
        output = check_name(params.output or f"{params.dataset}-{params.method}")
        targets = [output] + [f"{output}-s{i}" for i in range(1, stages + 1)]
        if params.dataset in targets:
            raise InvalidArgumentError(
                f"output {output!r} would replace the dataset being distilled; choose another output name"
            )
        if not params.overwrite and any(os.path.lexists(self.catalog.root / t) for t in targets):
            raise FailedPreconditionError(
                f"{output} (or one of its stages) already exists on the daemon; send overwrite or choose another output"
            )
        with self._lock:
            running = sum(1 for r in self._jobs.values() if r.state == "running")
            if running >= self.max_running:
                raise ResourceExhaustedError(
                    f"{running} distillation job(s) already running (limit {self.max_running}); wait for one to end "
                    "or cancel it"
                )
            rec = DistillJobRecord(
                job_id=f"dist-{secrets.token_hex(8)}",
                dataset=params.dataset,
                method=params.method,
                ipc=int(params.ipc),
                stages=stages,
                seed=int(params.seed),
                options=dict(params.options),
                output=output,
                overwrite=bool(params.overwrite),
            )
            self._jobs[rec.job_id] = rec
            self._tokens[rec.job_id] = CancelToken()
            self._save(rec)
        thread = threading.Thread(target=self._run, args=(rec.job_id,), name=f"nessa-{rec.job_id}", daemon=True)
        self._threads[rec.job_id] = thread
        thread.start()
        return DistillJobRecord(**asdict(rec))

    def wait(self, job_id: str, timeout: float | None = None) -> bool:
        """Wait for a job's thread to end (tests, shutdown); True if it ended."""
        thread = self._threads.get(job_id)
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel every running job and wait up to ``timeout`` seconds for them to stop."""
        for token in list(self._tokens.values()):
            token.cancel()
        deadline = time.monotonic() + timeout
        for thread in list(self._threads.values()):
            thread.join(max(0.0, deadline - time.monotonic()))

    # -- the job -----------------------------------------------------------------------------------------------

    def _update(self, job_id: str, save: bool = True, **changes: Any) -> None:
        with self._lock:
            rec = self._jobs[job_id]
            for key, value in changes.items():
                setattr(rec, key, value)
            snapshot = DistillJobRecord(**asdict(rec))
        if save:
            self._save(snapshot)

    def _run(self, job_id: str) -> None:
        from nessa.distill import distill
        from nessa.distill.store import load_arrays, write_distilled

        rec = self.get(job_id)
        token = self._tokens[job_id]
        t0 = time.monotonic()
        last_save = [0.0]
        last_phase = [""]

        def progress(done: int, total: int, what: str) -> None:
            token.check()
            now = time.monotonic()
            changed = what != last_phase[0]
            save = changed or now - last_save[0] >= 1.0
            if save:
                last_save[0], last_phase[0] = now, what
            self._update(job_id, save=save, progress=min(done / max(total, 1), 1.0) * 0.99, phase=what,
                         seconds=now - t0)  # fmt: skip

        try:
            entry = self.catalog.get(rec.dataset)
            self._update(job_id, phase="reading")
            x, y, manifest = load_arrays(entry.path)
            real_bytes = int(manifest.total_bytes)
            self._update(job_id, real_bytes_read=real_bytes)
            DISTILL_REAL_BYTES_READ.labels(dataset=rec.dataset).inc(real_bytes)
            result = distill(
                x, y, method=rec.method, ipc=rec.ipc, stages=rec.stages, seed=rec.seed, options=rec.options,
                progress=progress,
            )  # fmt: skip
            token.check()
            self._update(job_id, phase="writing")
            seconds = time.monotonic() - t0
            paths = write_distilled(
                result,
                self.catalog.root / rec.output,
                distilled_from=rec.dataset,
                class_names=list(manifest.class_names),
                overwrite=rec.overwrite,
                extra={"job_id": job_id, "seconds": round(seconds, 3), "real_bytes_read": real_bytes},
            )
            written = sum(_sample_bytes(p) for p in paths)
            self.catalog.refresh()
            DISTILL_SYNTHETIC_BYTES_WRITTEN.labels(dataset=rec.dataset).inc(written)
            DISTILL_DURATION.labels(method=rec.method).observe(seconds)
            self._finish(
                job_id, "done", progress=1.0, phase="done", seconds=time.monotonic() - t0,
                stage_datasets=[p.name for p in paths[1:]], learned_lr=[float(s.lr) for s in result.stages],
                synthetic_bytes_written=written,
            )  # fmt: skip
        except Cancelled:
            self._finish(job_id, "cancelled", phase="cancelled", error="cancelled; nothing was published",
                         seconds=time.monotonic() - t0)  # fmt: skip
        except Exception as exc:  # the job's failure is its record's state, not a crashed thread
            log.exception("distillation job %s failed", job_id)
            self._finish(job_id, "failed", phase="failed", error=" ".join(str(exc).split()) or type(exc).__name__,
                         seconds=time.monotonic() - t0)  # fmt: skip

    def _finish(self, job_id: str, state: str, **changes: Any) -> None:
        self._update(job_id, state=state, **changes)
        self._tokens.pop(job_id, None)
        DISTILL_JOBS.labels(method=self._jobs[job_id].method, state=state).inc()
        log.info("distillation job %s %s", job_id, state)


def _sample_bytes(path: Path) -> int:
    manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    return int(sum(int(s["bytes"]) for s in manifest["shards"]))
