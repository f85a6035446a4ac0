"""Tests of nessa.trainer.selecting."""

from __future__ import annotations

import threading
import time

import pytest

from nessa.errors import FailedPreconditionError, InvalidArgumentError
from nessa.trainer.selecting import SelectionJob, SelectionPipeline


def test_selection_pipeline_runs_jobs_in_order_and_measures_the_wait() -> None:
    order: list[int] = []

    def fetch(job: SelectionJob) -> str:
        time.sleep(0.05)
        order.append(job.epoch)
        return f"selection-{job.epoch}-v{job.proxy_version}"

    with SelectionPipeline(fetch) as pipe:
        pipe.submit(SelectionJob(epoch=0, proxy=b"p", proxy_version=0))
        pipe.submit(SelectionJob(epoch=1, proxy=b"p", proxy_version=0, push=False))
        assert [j.epoch for j in pipe.pending_jobs()] == [0, 1]
        value, waited = pipe.result(1)
        assert value == "selection-1-v0" and waited >= 0.0
        assert order == [0, 1]
        assert pipe.result(0)[0] == "selection-0-v0"
        with pytest.raises(FailedPreconditionError, match="no selection was requested"):
            pipe.result(2)
        with pytest.raises(InvalidArgumentError, match="already requested"):
            pipe.submit(SelectionJob(epoch=3))
            pipe.submit(SelectionJob(epoch=3))


def test_selection_pipeline_hands_errors_to_the_training_thread() -> None:
    def fetch(job: SelectionJob) -> str:
        raise InvalidArgumentError(f"bad method for epoch {job.epoch}")

    with SelectionPipeline(fetch) as pipe:
        pipe.submit(SelectionJob(epoch=0))
        with pytest.raises(InvalidArgumentError, match="epoch 0"):
            pipe.result(0)


def test_pipeline_threads_do_not_leak() -> None:
    before = threading.active_count()
    for _ in range(3):
        with SelectionPipeline(lambda job: job.epoch) as pipe:
            pipe.submit(SelectionJob(epoch=0))
            pipe.result(0)
    deadline = time.monotonic() + 10
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert threading.active_count() <= before  # every worker thread ended after close()
