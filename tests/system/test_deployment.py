"""The deployment, run: the compose services' commands as local processes, the Docker build context, the probe.

No Docker engine is needed here (scripts/test-docker.sh, ``make test-docker``, runs the images on a real one;
tests/unit/test_deployment_files.py checks the files statically):

* the wheel the images install, built from exactly what .dockerignore lets into the build context;
* the compose healthcheck probe against a real gRPC health server;
* the compose services' own commands as local processes on loopback (ingest, the daemon with the compose
  healthcheck as its readiness probe, the trainer, and a real Prometheus server with the repository's
  prometheus.yml adjusted only for host names and ports), then Prometheus's HTTP API: both targets up, the bytes
  counters agree, each process serves only its own series, and every dashboard expression returns data.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from deployment_helpers import (
    PROMETHEUS_YML,
    ROOT,
    compose,
    dashboard_targets,
    flag,
    promtool,
    seconds,
    substitute_grafana_variables,
)
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from nessa.services.storage import healthcheck


# ------------------------------------------------------------------------------------------------ docker context
def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex over slash-separated relative paths (``**``, ``*``, ``?``)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _dockerignored(rel: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether Docker leaves ``rel`` out of the build context: the last pattern matching it or a parent wins."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negate, regex in patterns:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def test_docker_context_builds_a_complete_wheel(tmp_path: Path) -> None:
    """Build the wheel from exactly what .dockerignore lets into the image's context, as the builder stage does."""
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            patterns.append((line.startswith("!"), _dockerignore_regex(line.lstrip("!").rstrip("/"))))
    negated = [regex for negate, regex in patterns if negate]
    kept: list[str] = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel_dir = Path(dirpath).relative_to(ROOT).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        # Like Docker, skip an excluded directory unless an exception pattern may re-include something inside it.
        dirnames[:] = [
            d
            for d in dirnames
            if not _dockerignored(rel_dir + d, patterns)
            or any(regex.pattern.startswith(re.escape(rel_dir + d)) for regex in negated)
        ]
        kept += [rel_dir + f for f in filenames if not _dockerignored(rel_dir + f, patterns)]
    leaked = [rel for rel in kept if rel.split("/")[0] in (".venv", ".git", "tests", "bench", "data", "nessa-demo-out")]
    assert not leaked, f"the Docker build context would carry {leaked[:5]}"
    context = tmp_path / "context"
    for rel in kept:
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, context / rel)
    size = sum((context / rel).stat().st_size for rel in kept)
    assert size < 20 * 2**20, f"the Docker build context is {size / 2**20:.1f} MiB; keep it to the package sources"
    for needed in ("pyproject.toml", "constraints.txt", "README.md"):
        assert (context / needed).is_file(), f"{needed} is not in the Docker build context"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=context,
        check=True,
    )
    (wheel,) = tmp_path.glob("nessa-*.whl")
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    for module in (
        "nessa/cli/__init__.py",
        "nessa/metrics.py",
        "nessa/services/storage/healthcheck.py",
        "nessa/services/storage/server.py",
        "nessa/fpga_kernels/selection.cl",
        "nessa/v1/storage_pb2.py",
    ):
        assert module in names, f"{module} missing from the wheel the images install"
    assert any(n.startswith("nessa/trainer/") for n in names)


# ------------------------------------------------------------------------------------------------ healthcheck probe
@pytest.fixture()
def health_server() -> Iterator[tuple[str, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(None)


def test_healthcheck_probe_exit_status(health_server: tuple[str, health.HealthServicer], capsys: Any) -> None:
    target, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert healthcheck.main(["--target", target]) == 1
    assert "NOT_SERVING" in capsys.readouterr().out
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert healthcheck.main(["--target", target]) == 0
    assert "SERVING" in capsys.readouterr().out
    assert healthcheck.main(["--target", target, "--service", "nessa.v1.Storage"]) == 1  # unknown service
    assert "NOT_FOUND" in capsys.readouterr().out


def test_healthcheck_probe_unreachable(capsys: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert healthcheck.main(["--target", f"127.0.0.1:{port}", "--timeout", "0.5"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().out or "DEADLINE_EXCEEDED" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        healthcheck.main(["--timeout", "0"])
    assert exc.value.code == 2


# ------------------------------------------------------------------------------------------------ the stack, locally
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def prom_query(base: str, path: str, **params: str) -> Any:
    body = json.loads(http_get(f"{base}{path}?{urllib.parse.urlencode(params)}"))
    assert body["status"] == "success", body
    return body["data"]


class Localizer:
    """Turns a compose service's command into the same command on this machine: loopback, free ports, temp dirs."""

    def __init__(self, paths: dict[str, Path], words: dict[str, str], executables: dict[str, str]) -> None:
        self.paths = sorted(paths.items(), key=lambda kv: len(kv[0]), reverse=True)
        self.words = words
        self.executables = executables

    def path(self, value: str) -> str:
        for container, host in self.paths:
            if value == container or value.startswith(container + "/"):
                return str(host) + value[len(container) :]
        return value

    def token(self, token: str) -> str:
        if token in self.words:
            return self.words[token]
        for word, replacement in self.words.items():
            if ":" in word and word in token:  # host:port pairs inside a token
                token = token.replace(word, replacement)
        if token.startswith("--") and "=" in token:
            name, value = token.split("=", 1)
            return f"{name}={self.path(value)}"
        return self.path(token)

    def script(self, text: str) -> str:
        for container, host in self.paths:
            text = re.sub(rf"(?<![\w/.-]){re.escape(container)}(?=/|\b)", str(host), text)
        return text

    def argv(self, argv: list[str]) -> list[str]:
        if argv[:2] == ["sh", "-euc"]:
            out = ["sh", "-euc", self.script(argv[2])]
        else:
            out = [self.executables.get(argv[0], argv[0])] + [self.token(t) for t in argv[1:]]
        leftovers = [
            t for t in out[1:] if re.search(r"(?<![\w.-])(/data|/checkpoints|/prometheus|/etc/prometheus)\b", t)
        ]
        assert not leftovers, f"container paths left in {out}"
        assert not [t for t in out if "0.0.0.0" in t or "storage:" in t], f"container addresses left in {out}"
        return out


class Processes:
    """The processes this test starts; stopped (SIGTERM, then SIGKILL) by their own handles at the end."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.logs)
        self.running[name] = proc
        return proc

    def log(self, name: str, tail: int = 4000) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    def stop(self) -> None:
        for proc in self.running.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.running.values():
            _wait_or_kill(proc, timeout=20)


def _wait_or_kill(proc: subprocess.Popen, timeout: float) -> None:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for(what: str, check: Any, timeout: float, procs: Processes, name: str, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = procs.running.get(name)
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{name} exited with {proc.returncode} while waiting for {what}:\n{procs.log(name)}")
        result = check()
        if result:
            return result
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}:\n{procs.log(name)}")


def scraped_families(body: str) -> set[str]:
    """The ``nessa_`` sample names of a /metrics scrape (``_created`` left out)."""
    names = {re.split(r"[{ ]", line, maxsplit=1)[0] for line in body.splitlines() if line.startswith("nessa_")}
    return {n for n in names if not n.endswith("_created")}


def finite_points(result: list[dict[str, Any]]) -> int:
    """How many finite values a Prometheus range-query result holds."""
    return sum(1 for series in result for _, v in series["values"] if v not in ("NaN", "+Inf", "-Inf"))


# The compose knobs the local run turns down so it fits a CI runner: a small dataset, a few short epochs.
SMALL = {
    "NESSA_INGEST_ARGS": "--num-samples 20000 --quiet",
    "NESSA_EPOCHS": "12",
    "NESSA_FRACTION": "0.2",
    "NESSA_TOKEN": "local-stack-token",
}


def test_compose_stack_as_local_processes(tmp_path: Path) -> None:
    """The compose services' own commands on loopback; a real Prometheus scrapes them with the repo's config."""
    prometheus_bin = shutil.which("prometheus")
    if prometheus_bin is None:
        pytest.fail("prometheus not found: install Debian's prometheus package (.ci/run does this in CI)")
    # The trainer serves its final values for two scrape intervals and a second after its last epoch, so Prometheus
    # scrapes them at least twice however fast the epochs run (rate() needs two samples).
    interval = seconds(yaml.safe_load(PROMETHEUS_YML.read_text())["global"]["scrape_interval"])
    services = compose({**SMALL, "NESSA_METRICS_LINGER": f"{2 * interval + 1:g}"})["services"]
    storage, trainer, prom = services["storage"], services["trainer"], services["prometheus"]
    grpc_port, storage_metrics, trainer_metrics, prom_port = (free_port() for _ in range(4))
    c_grpc, c_storage_metrics = flag(storage["command"], "--port"), flag(storage["command"], "--metrics-port")
    c_trainer_metrics = flag(trainer["command"], "--metrics-port")

    # The repository's prometheus.yml with the compose host names (and container ports) swapped for loopback.
    config_text = PROMETHEUS_YML.read_text()
    for compose_target, local in (
        (f"storage:{c_storage_metrics}", f"127.0.0.1:{storage_metrics}"),
        (f"trainer:{c_trainer_metrics}", f"127.0.0.1:{trainer_metrics}"),
    ):
        assert compose_target in config_text, f"prometheus.yml does not scrape {compose_target}"
        config_text = config_text.replace(compose_target, local)
    etc = tmp_path / "etc-prometheus"
    etc.mkdir()
    (etc / "prometheus.yml").write_text(config_text)
    out = subprocess.run([promtool(), "check", "config", str(etc / "prometheus.yml")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr

    dirs = {name: tmp_path / name for name in ("data", "checkpoints", "prometheus", "logs")}
    for d in dirs.values():
        d.mkdir()
    bindir = str(Path(sys.executable).parent)
    nessa_bin = shutil.which("nessa", path=bindir) or shutil.which("nessa")
    assert nessa_bin is not None, "the nessa console script is not installed next to this Python"
    local = Localizer(
        paths={
            "/data": dirs["data"],
            "/checkpoints": dirs["checkpoints"],
            "/prometheus": dirs["prometheus"],
            "/etc/prometheus": etc,
        },
        words={
            "0.0.0.0": "127.0.0.1",
            c_grpc: str(grpc_port),
            c_storage_metrics: str(storage_metrics),
            c_trainer_metrics: str(trainer_metrics),
            f"storage:{c_grpc}": f"127.0.0.1:{grpc_port}",
            f"127.0.0.1:{c_grpc}": f"127.0.0.1:{grpc_port}",
            "0.0.0.0:9090": f"127.0.0.1:{prom_port}",
        },
        executables={"nessa": nessa_bin, "python": sys.executable, "prometheus": prometheus_bin},
    )

    def env_of(service: dict[str, Any]) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("NESSA_TOKEN", None)
        env.update({k: str(v) for k, v in (service.get("environment") or {}).items()})
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
        return env

    procs = Processes(dirs["logs"])
    try:
        # ingest: prepares the dataset; run again, it finds it and does nothing (the compose service is idempotent).
        ingest = services["ingest"]
        for attempt in ("first", "second"):
            proc = procs.start(f"ingest-{attempt}", local.argv(ingest["command"]), env_of(ingest))
            _wait_or_kill(proc, timeout=300)
            assert proc.returncode == 0, procs.log(f"ingest-{attempt}")
        assert "nothing to do" in procs.log("ingest-second")
        dataset, test_dataset = flag(trainer["command"], "--dataset"), flag(trainer["command"], "--test-dataset")
        for name in (dataset, test_dataset):
            assert (dirs["data"] / name / "manifest.json").is_file(), f"ingest did not write the dataset {name}"

        # storage, with the compose healthcheck as its readiness probe (exit 1 before SERVING, 0 after).
        check = storage["healthcheck"]
        assert check["test"][0] == "CMD"
        probe = local.argv(check["test"][1:])
        assert subprocess.run(probe, capture_output=True, env=env_of(storage)).returncode == 1, "probe passes early"
        procs.start("storage", local.argv(storage["command"]), env_of(storage))
        budget = seconds(check["start_period"]) + check["retries"] * seconds(check["interval"])
        wait_for(
            "the storage healthcheck",
            lambda: subprocess.run(probe, capture_output=True, env=env_of(storage)).returncode == 0,
            budget,
            procs,
            "storage",
            interval=seconds(check["interval"]) / 5,
        )

        procs.start("prometheus", local.argv(["prometheus", *prom["command"]]), env_of(prom))
        base = f"http://127.0.0.1:{prom_port}"
        wait_for("Prometheus ready", lambda: _ok(f"{base}/-/ready"), 60, procs, "prometheus")

        # Prometheus has scraped the daemon once before the trainer starts: every counter's change during the run is
        # then between two samples (on a loaded machine the run could otherwise end before the first scrape).
        def storage_scraped() -> bool:
            result = prom_query(base, "/api/v1/query", query='up{job="storage"}')["result"]
            return bool(result) and result[0]["value"][1] == "1"

        wait_for("Prometheus to scrape the daemon once", storage_scraped, 60, procs, "prometheus")

        # trainer (after storage is healthy, as depends_on says), sending the same token the daemon requires.
        assert env_of(trainer)["NESSA_TOKEN"] == env_of(storage)["NESSA_TOKEN"] == SMALL["NESSA_TOKEN"]
        started = time.time()
        train = procs.start("trainer", local.argv(trainer["command"]), env_of(trainer))
        trainer_url = f"http://127.0.0.1:{trainer_metrics}/metrics"
        trainer_scrape = ""
        deadline = time.monotonic() + 480
        while train.poll() is None and time.monotonic() < deadline:
            try:
                body = http_get(trainer_url, timeout=2)
            except OSError:
                body = ""
            if "nessa_trainer_epoch_duration_seconds_count" in body:
                trainer_scrape = body
            time.sleep(0.2)
        if train.poll() is None:
            pytest.fail(f"the trainer did not finish in time:\n{procs.log('trainer')}")
        assert train.returncode == 0, procs.log("trainer")
        assert trainer_scrape, f"the trainer never served its metrics on {trainer_url}:\n{procs.log('trainer')}"
        report_path = Path(local.token(flag(trainer["command"], "--report")))
        report = json.loads(report_path.read_text())
        epochs = int(flag(trainer["command"], "--epochs"))
        assert len(report["epochs"]) == epochs

        # Both processes' scrapes pass promtool's linter, and each serves only its own series.
        storage_scrape = http_get(f"http://127.0.0.1:{storage_metrics}/metrics")
        for name, text in (("storage", storage_scrape), ("trainer", trainer_scrape)):
            out = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True)
            assert out.returncode == 0, f"promtool check metrics on the {name} scrape:\n{out.stdout}{out.stderr}"
        storage_families, trainer_families = scraped_families(storage_scrape), scraped_families(trainer_scrape)
        assert not [f for f in storage_families if f.startswith("nessa_trainer_")], "trainer series on the daemon"
        assert {"nessa_sent_bytes_total", "nessa_grpc_server_handled_total", "nessa_build_info"} <= storage_families
        assert trainer_families - {"nessa_build_info"}, "no trainer series"
        assert all(f.startswith("nessa_trainer_") for f in trainer_families - {"nessa_build_info"}), (
            f"daemon series on the trainer: {sorted(trainer_families - {'nessa_build_info'})}"
        )
        method = flag(trainer["command"], "--method")
        run = Path(local.token(flag(trainer["command"], "--checkpoint-dir"))).name
        assert f'nessa_trainer_epoch{{method="{method}",run="{run}"}}' in trainer_scrape

        # Prometheus scraped both jobs.
        def ups() -> dict[str, str]:
            result = prom_query(base, "/api/v1/query", query="max_over_time(up[10m])")["result"]
            return {r["metric"]["job"]: r["value"][1] for r in result}

        wait_for("Prometheus to scrape both jobs", lambda: ups() == {"storage": "1", "trainer": "1"}, 60, procs,
                 "prometheus")  # fmt: skip

        # The daemon's bytes-sent counter (final value, as Prometheus scraped it) equals what the trainer received:
        # the sample payload of every epoch (the trainer's report) plus the test set it cached once.
        def storage_value(query: str) -> float:
            result = prom_query(base, "/api/v1/query", query=query)["result"]
            return float(result[0]["value"][1]) if result else -1.0

        expected_train = sum(int(e["payload_bytes"]) for e in report["epochs"])
        test_size = storage_value(f'max(nessa_dataset_size_bytes{{dataset="{test_dataset}"}})')
        assert test_size > 0
        sent_train_q = f'sum(nessa_sent_bytes_total{{dataset="{dataset}",kind="samples"}})'
        wait_for(
            "Prometheus to scrape the daemon's final bytes-sent counter",
            lambda: storage_value(sent_train_q) == expected_train,
            30,
            procs,
            "storage",
        )
        sent_test = storage_value(f'sum(nessa_sent_bytes_total{{dataset="{test_dataset}",kind="samples"}})')
        assert sent_test == test_size
        # Every kind, every dataset: what the daemon sent equals what the trainer received, as its report counts it
        # (training, the test set, and the DescribeDataset replies of its setup), byte for byte.
        sent_all = storage_value("sum(nessa_sent_bytes_total)")
        report_all = report["bytes_to_trainer"] + report["eval_bytes"] + report["setup_bytes"]
        assert report["setup_bytes"] > 0
        assert sent_all == report_all, (sent_all, report_all)

        # The trainer's own counter, as Prometheus scraped it while the trainer lingered after its last epoch, says
        # the same per dataset and kind: the final epoch reached Prometheus. (The trainer has exited, so its series
        # are stale now: read their last values over the run.)
        def counters_agree() -> bool:
            for ds in (dataset, test_dataset):
                for kind in ("samples", "metadata"):
                    sent = storage_value(f'sum(nessa_sent_bytes_total{{dataset="{ds}",kind="{kind}"}})')
                    received = storage_value(
                        f'sum(max_over_time(nessa_trainer_received_bytes_total{{dataset="{ds}",kind="{kind}"}}[10m]))'
                    )
                    if not (sent > 0 and received == sent):
                        return False
            return storage_value("max(last_over_time(nessa_trainer_epoch[10m]))") == epochs - 1

        wait_for("Prometheus to hold the trainer's final values (bytes equal to the daemon's, the last epoch)",
                 counters_agree, 30, procs, "prometheus")  # fmt: skip
        subset = storage_value(f'max(last_over_time(nessa_trainer_subset_size_samples{{dataset="{dataset}"}}[10m]))')
        assert subset == report["epochs"][-1]["subset_size"], (subset, report["epochs"][-1]["subset_size"])

        # Every dashboard expression returns data over the run, as Grafana's range queries ask for it (the RPC row and
        # the runs-by-method panels included); waits for Prometheus's last scrapes and evaluations, with a deadline.
        def empty_queries() -> list[str]:
            end = time.time()
            empty = []
            for panel, target in dashboard_targets():
                expr = substitute_grafana_variables(target["expr"])
                data = prom_query(base, "/api/v1/query_range", query=expr, start=f"{started - 60:.3f}",
                                  end=f"{end:.3f}", step="1")  # fmt: skip
                if finite_points(data["result"]) == 0:
                    empty.append(f"{panel['title']} [{target['refId']}]: {expr}")
            return empty

        deadline = time.monotonic() + 60
        while (empty := empty_queries()) and time.monotonic() < deadline:
            time.sleep(1)
        assert not empty, "dashboard queries without data:\n" + "\n".join(empty)
        titles = {panel["title"] for panel, _ in dashboard_targets()}
        assert {"RPC requests by method and code", "RPC errors by method", "RPC latency by method",
                "Runs by method"} <= titles  # fmt: skip
    finally:
        procs.stop()


def _ok(url: str) -> bool:
    try:
        http_get(url, timeout=2)
    except OSError:
        return False
    return True
