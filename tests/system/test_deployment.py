"""The deployment: docker-compose.yml, the Dockerfiles, Prometheus and Grafana provisioning, the dashboard.

No Docker engine here, so the compose stack is checked in two ways:

* structurally: service names, healthchecks, depends-on conditions, ports and names that must agree across
  files (compose commands, prometheus.yml targets, the Grafana datasource uid used by every panel, metric names
  that exist in :mod:`nessa.metrics`), ``promtool check config`` and PromQL that ``promtool`` parses;
* by running the compose services' own commands as local processes on loopback (ingest, the daemon with the
  compose healthcheck as its readiness probe, the trainer, and a real Prometheus server with the repository's
  prometheus.yml adjusted only for host names and ports), then asking Prometheus's HTTP API whether the bytes
  counters agree and every dashboard expression returns data.
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
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from nessa import metrics
from nessa.services.storage import healthcheck

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
MONITORING = ROOT / "services" / "monitoring"
PROMETHEUS_YML = MONITORING / "prometheus.yml"
DATASOURCES = MONITORING / "grafana" / "provisioning" / "datasources"
DASHBOARD_PROVIDERS = MONITORING / "grafana" / "provisioning" / "dashboards"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "nessa.json"
SERVICES = {"ingest", "storage", "trainer", "prometheus", "grafana"}

# Values Grafana substitutes into panel queries, for running them outside Grafana.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "$dataset": "mnist1d"}

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


# ------------------------------------------------------------------------------------------------ helpers
def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable interpolation (``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if name is None:  # $VAR
            return env.get(m.group(4), "")
        if op == ":-":
            return env.get(name) or arg
        if op == "-":
            return env.get(name, arg)
        if op in (":?", "?") and (name not in env or (op == ":?" and not env[name])):
            raise AssertionError(f"compose variable {name} is required: {arg}")
        return env.get(name, "")

    return _VAR.sub(one, value)


def compose_raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    """The compose file as compose sees it with only ``env`` set (defaults everywhere else)."""
    return interpolate(compose_raw(), env or {})


def compose_defaults() -> dict[str, str]:
    """Every ``${VAR:-default}`` in docker-compose.yml: name → default."""
    found: dict[str, str] = {}
    for m in re.finditer(r"\$\{([A-Za-z_][A-Za-z0-9_]*):-([^}]*)\}", COMPOSE.read_text()):
        name, default = m.group(1), m.group(2)
        assert found.setdefault(name, default) == default, f"{name} has two defaults in docker-compose.yml"
    return found


def env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example line {line!r} is not KEY=VALUE"
            values[key.strip()] = value.strip()
    return values


def flag(argv: list[str], name: str) -> str:
    """The value after ``name`` in an argv list."""
    assert name in argv, f"{name} missing from {argv}"
    return argv[argv.index(name) + 1]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_targets() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(panel, target) for panel in dashboard()["panels"] for target in panel.get("targets", [])]


def substitute_grafana_variables(expr: str) -> str:
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    assert "$" not in expr, f"unknown Grafana variable left in {expr!r}"
    return expr


def datasource_uid() -> str:
    (path,) = sorted(DATASOURCES.glob("*.yml"))
    (source,) = yaml.safe_load(path.read_text())["datasources"]
    return str(source["uid"])


def metric_sample_names() -> set[str]:
    """Every sample name the processes expose, from the metric definitions in :mod:`nessa.metrics`."""
    suffixes = {
        "counter": ["_total", "_created"],
        "gauge": [""],
        "histogram": ["_bucket", "_sum", "_count", "_created"],
    }
    names: set[str] = set()
    for attr in metrics.__all__:
        collector = getattr(metrics, attr)
        if not hasattr(collector, "describe"):
            continue
        for family in collector.describe():
            names.update(family.name + s for s in suffixes[family.type])
    return names


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found: install Debian's prometheus package (`apt-get install -y prometheus`; .ci/run does "
            "this in CI)"
        )
    return path


# ------------------------------------------------------------------------------------------------ compose
def test_compose_services_health_and_order() -> None:
    services = compose()["services"]
    assert set(services) == SERVICES

    storage, trainer = services["storage"], services["trainer"]
    port = flag(storage["command"], "--port")
    health_cmd = storage["healthcheck"]["test"]
    assert health_cmd[:4] == ["CMD", "python", "-m", "nessa.services.storage.healthcheck"]
    assert flag(health_cmd, "--target") == f"127.0.0.1:{port}"
    for name in ("storage", "prometheus", "grafana"):
        check = services[name]["healthcheck"]
        assert check["test"][0] == "CMD", f"{name}: healthcheck must exec a command"
        assert {"interval", "timeout", "retries", "start_period"} <= set(check), f"{name}: set the timings explicitly"

    assert storage["depends_on"] == {"ingest": {"condition": "service_completed_successfully"}}
    assert trainer["depends_on"] == {"storage": {"condition": "service_healthy"}}
    assert services["grafana"]["depends_on"] == {"prometheus": {"condition": "service_healthy"}}
    assert services["ingest"]["restart"] == "no"
    assert flag(storage["command"], "--host") == "0.0.0.0"
    assert flag(trainer["command"], "--target") == f"storage:{port}"

    # The knobs users change reach the trainer.
    argv = trainer["command"]
    assert argv[:2] == ["nessa", "train"]
    assert flag(argv, "--dataset") == "mnist1d" and flag(argv, "--test-dataset") == "mnist1d-test"
    changed = compose({"NESSA_METHOD": "random", "NESSA_FRACTION": "0.3", "NESSA_EPOCHS": "7", "NESSA_DATASET": "x"})
    argv = changed["services"]["trainer"]["command"]
    assert (flag(argv, "--method"), flag(argv, "--fraction"), flag(argv, "--epochs")) == ("random", "0.3", "7")
    assert flag(argv, "--dataset") == "x"

    # Same data for ingest and the daemon: a named volume by default, a host directory when NESSA_DATA is a path.
    assert services["ingest"]["volumes"] == storage["volumes"] == ["nessa-data:/data"]
    assert compose({"NESSA_DATA": "/srv/mine"})["services"]["storage"]["volumes"] == ["/srv/mine:/data"]
    assert {"nessa-data", "nessa-checkpoints", "prometheus-data", "grafana-data"} <= set(compose()["volumes"])


def test_compose_gpu_reservation_defaults_to_cpu() -> None:
    (device,) = compose()["services"]["trainer"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert device["count"] == "0", "the default must reserve no GPU so the stack starts on CPU-only hosts"
    assert flag(compose()["services"]["trainer"]["command"], "--device") == "auto"
    gpu = compose({"NESSA_GPUS": "all", "NESSA_DEVICE": "cuda"})["services"]["trainer"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["count"] == "all"
    assert flag(gpu["command"], "--device") == "cuda"


def test_compose_ports_bind_loopback_and_match_commands() -> None:
    services = compose()["services"]
    container_ports = {
        "storage": {
            flag(services["storage"]["command"], "--port"),
            flag(services["storage"]["command"], "--metrics-port"),
        },
        "trainer": {flag(services["trainer"]["command"], "--metrics-port")},
        "prometheus": {"9090"},
        "grafana": {"3000"},
    }
    for name, expected in container_ports.items():
        published = services[name]["ports"]
        assert all(p.startswith("127.0.0.1:") for p in published), f"{name} must publish on loopback by default"
        assert {p.rsplit(":", 1)[1] for p in published} == expected, name
    assert "--web.listen-address=0.0.0.0:9090" in services["prometheus"]["command"]


def test_env_example_lists_every_knob_with_the_compose_default() -> None:
    defaults, example = compose_defaults(), env_example()
    assert set(example) == set(defaults), (
        f"only in .env.example: {sorted(set(example) - set(defaults))}; "
        f"only in docker-compose.yml: {sorted(set(defaults) - set(example))}"
    )
    for name, default in defaults.items():
        assert example[name] == default, f"{name}: .env.example says {example[name]!r}, compose {default!r}"
    for knob in ("NESSA_DATASET", "NESSA_METHOD", "NESSA_FRACTION", "NESSA_EPOCHS", "NESSA_TOKEN", "GRAFANA_PORT"):
        assert knob in example


def test_compose_files_and_builds_exist() -> None:
    services = compose()["services"]
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repository"
        if "build" in service:
            build = service["build"]
            assert build["context"] == "."
            assert (ROOT / build["dockerfile"]).is_file()
            assert set(build["args"]) == {"TORCH_INDEX_URL", "TORCH_SPEC"}
    assert services["ingest"]["build"] == services["storage"]["build"]
    assert services["ingest"]["image"] == services["storage"]["image"]
    assert services["trainer"]["build"]["dockerfile"] == "trainer/Dockerfile"


@pytest.mark.parametrize("dockerfile", ["services/storage/Dockerfile", "trainer/Dockerfile"])
def test_dockerfiles(dockerfile: str) -> None:
    text = (ROOT / dockerfile).read_text()
    froms = re.findall(r"^FROM (\S+)(?: AS (\w+))?", text, flags=re.MULTILINE)
    assert len(froms) == 2 and froms[0][1] == "build", "a builder stage, then the runtime stage"
    assert all("-slim" in image for image, _ in froms)
    assert "pip wheel" in text and "--from=build" in text
    assert re.search(r"ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cpu", text)
    assert re.search(r"ARG TORCH_SPEC=torch==", text)
    pinned = (ROOT / "constraints.txt").read_text()
    spec = re.search(r"ARG TORCH_SPEC=(\S+)", text)
    assert spec is not None and spec.group(1) in pinned, "the default torch must be the one constraints.txt pins"
    assert '--index-url "${TORCH_INDEX_URL}"' in text and "-c /tmp/constraints.txt" in text
    assert "binutils" in text, "PoCL links kernels with the system ld"
    users = re.findall(r"^USER (\S+)", text, flags=re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    if "storage" in dockerfile:
        assert "nessa.services.storage.healthcheck" in text.split("HEALTHCHECK", 1)[1]


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
        "nessa/cli.py",
        "nessa/metrics.py",
        "nessa/services/storage/healthcheck.py",
        "nessa/services/storage/server.py",
        "nessa/fpga_kernels/selection.cl",
        "nessa/v1/storage_pb2.py",
    ):
        assert module in names, f"{module} missing from the wheel the images install"
    assert any(n.startswith("nessa/trainer/") for n in names)


# ------------------------------------------------------------------------------------------------ prometheus + grafana
def test_prometheus_config_is_valid_and_scrapes_both_processes() -> None:
    out = subprocess.run([promtool(), "check", "config", str(PROMETHEUS_YML)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    services = compose()["services"]
    assert targets == {
        "storage": [f"storage:{flag(services['storage']['command'], '--metrics-port')}"],
        "trainer": [f"trainer:{flag(services['trainer']['command'], '--metrics-port')}"],
    }
    mounts = services["prometheus"]["volumes"]
    assert "./services/monitoring/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]


def test_grafana_provisioning() -> None:
    (path,) = sorted(DATASOURCES.glob("*.yml"))
    (source,) = yaml.safe_load(path.read_text())["datasources"]
    assert source["type"] == "prometheus" and source["uid"] == "nessa-prometheus"
    assert source["url"] == "http://prometheus:9090"
    scrape = yaml.safe_load(PROMETHEUS_YML.read_text())["global"]["scrape_interval"]
    assert source["jsonData"]["timeInterval"] == scrape

    (path,) = sorted(DASHBOARD_PROVIDERS.glob("*.yml"))
    (provider,) = yaml.safe_load(path.read_text())["providers"]
    assert provider["type"] == "file"
    grafana = compose()["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    assert mounts["./services/monitoring/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert mounts["./services/monitoring/grafana/dashboards"] == provider["options"]["path"]
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == f"{provider['options']['path']}/{DASHBOARD.name}"


def test_dashboard_structure_and_datasource_uid() -> None:
    board, uid = dashboard(), datasource_uid()
    assert board["id"] is None, "raw dashboard JSON for provisioning has id null"
    assert board["uid"] == "nessa-overview" and board["title"]
    assert "__inputs" not in board and "${DS_" not in DASHBOARD.read_text(), "raw JSON, not export-for-sharing"
    panels = board["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
            assert target["expr"].strip() and target["refId"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
    for variable in board["templating"]["list"]:
        assert variable["datasource"]["uid"] == uid
    first = min(panels, key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))
    assert first["title"] == "Bytes moved per epoch vs full epoch"
    titles = " | ".join(p["title"] for p in panels).lower()
    for wanted in ("bytes saved", "subset size and fraction", "selection duration by method", "proxy forward",
                   "proxy version", "data wait", "epoch time", "loss", "accuracy"):  # fmt: skip
        assert wanted in titles, f"no panel for {wanted}"


def test_dashboard_uses_only_defined_metrics() -> None:
    defined = metric_sample_names()
    used = {name for _, t in dashboard_targets() for name in re.findall(r"\bnessa_[a-z0-9_]+\b", t["expr"])}
    assert used, "the dashboard queries no nessa_ metric"
    assert not used - defined, f"metrics the processes never expose: {sorted(used - defined)}"
    families = {
        n.removesuffix("_total").removesuffix("_sum").removesuffix("_count").removesuffix("_bucket") for n in used
    }
    for name in ("nessa_trainer_bytes_received", "nessa_dataset_size_bytes", "nessa_bytes_sent",
                 "nessa_bytes_received", "nessa_selection_duration_seconds",
                 "nessa_proxy_forward_duration_seconds", "nessa_proxy_version", "nessa_trainer_data_wait_seconds",
                 "nessa_trainer_epoch_duration_seconds", "nessa_trainer_loss", "nessa_trainer_accuracy_ratio",
                 "nessa_selection_size_samples"):  # fmt: skip
        assert name in families, f"the dashboard does not show {name}"


def test_dashboard_promql_parses(tmp_path: Path) -> None:
    rules = [
        {
            "record": f"dashboard:panel{panel['id']}:{target['refId']}",
            "expr": substitute_grafana_variables(target["expr"]),
        }
        for panel, target in dashboard_targets()
    ]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


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


def seconds(duration: str) -> float:
    """A compose duration such as ``5s``, ``2m`` or ``1m30s`` in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a compose duration: {duration!r}"
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


def finite_points(result: list[dict[str, Any]]) -> int:
    """How many finite values a Prometheus range-query result holds."""
    return sum(1 for series in result for _, v in series["values"] if v not in ("NaN", "+Inf", "-Inf"))


# The compose knobs the local run turns down so it fits a CI runner: a small dataset, a few short epochs.
SMALL = {
    "NESSA_INGEST_ARGS": "--num-samples 20000 --quiet",
    "NESSA_EPOCHS": "30",  # long enough to span several 5 s scrapes, so every rate() panel has data
    "NESSA_FRACTION": "0.2",
    "NESSA_TOKEN": "local-stack-token",
    "NESSA_METRICS_LINGER": "6",
}


def test_compose_stack_as_local_processes(tmp_path: Path) -> None:
    """The compose services' own commands on loopback; a real Prometheus scrapes them with the repo's config."""
    prometheus_bin = shutil.which("prometheus")
    if prometheus_bin is None:
        pytest.fail("prometheus not found: install Debian's prometheus package (.ci/run does this in CI)")
    services = compose(SMALL)["services"]
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
        interval = seconds(yaml.safe_load(PROMETHEUS_YML.read_text())["global"]["scrape_interval"])
        trained = sum(float(e["epoch_seconds"]) for e in report["epochs"])
        assert trained >= 2 * interval, (
            f"the trainer's epochs took {trained:.1f} s, under two {interval:g} s scrape intervals: the rate() "
            "panels cannot have data; raise NESSA_EPOCHS in SMALL"
        )
        assert len(report["epochs"]) == epochs

        # Both processes' scrapes pass promtool's linter.
        storage_scrape = http_get(f"http://127.0.0.1:{storage_metrics}/metrics")
        for name, text in (("storage", storage_scrape), ("trainer", trainer_scrape)):
            out = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True)
            assert out.returncode == 0, f"promtool check metrics on the {name} scrape:\n{out.stdout}{out.stderr}"

        # Prometheus scraped both jobs.
        up = {
            r["metric"]["job"]: r for r in prom_query(base, "/api/v1/query", query="max_over_time(up[10m])")["result"]
        }
        assert set(up) == {"storage", "trainer"} and all(r["value"][1] == "1" for r in up.values()), up

        # The daemon's bytes-sent counter (final value, as Prometheus scraped it) equals what the trainer received:
        # the sample payload of every epoch (the trainer's report) plus the test set it cached once.
        def storage_value(query: str) -> float:
            result = prom_query(base, "/api/v1/query", query=query)["result"]
            return float(result[0]["value"][1]) if result else -1.0

        expected_train = sum(int(e["payload_bytes"]) for e in report["epochs"])
        test_size = storage_value(f'max(nessa_dataset_size_bytes{{dataset="{test_dataset}"}})')
        assert test_size > 0
        sent_train_q = f'sum(nessa_bytes_sent_total{{dataset="{dataset}",kind="samples"}})'
        wait_for(
            "Prometheus to scrape the daemon's final bytes-sent counter",
            lambda: storage_value(sent_train_q) == expected_train,
            30,
            procs,
            "storage",
        )
        sent_test = storage_value(f'sum(nessa_bytes_sent_total{{dataset="{test_dataset}",kind="samples"}})')
        assert sent_test == test_size
        # Every kind, every dataset: what the daemon sent equals what the trainer received, as its report counts it
        # (training, the test set, and the DescribeDataset replies of its setup), byte for byte.
        sent_all = storage_value("sum(nessa_bytes_sent_total)")
        report_all = report["bytes_to_trainer"] + report["eval_bytes"] + report["setup_bytes"]
        assert report["setup_bytes"] > 0
        assert sent_all == report_all, (sent_all, report_all)
        # The trainer's own counter, as Prometheus scraped it while the trainer lingered after its last epoch, says
        # the same per dataset and kind: the final epoch reached Prometheus.
        for ds in (dataset, test_dataset):
            for kind in ("samples", "metadata"):
                sent = storage_value(f'sum(nessa_bytes_sent_total{{dataset="{ds}",kind="{kind}"}})')
                received = storage_value(
                    f'sum(max_over_time(nessa_trainer_bytes_received_total{{dataset="{ds}",kind="{kind}"}}[10m]))'
                )
                assert sent > 0 and received == sent, (ds, kind, sent, received)
        # (the trainer has exited, so its series are stale now: read their last values over the run)
        last_epoch = storage_value("max(last_over_time(nessa_trainer_epoch[10m]))")
        assert last_epoch == epochs - 1, last_epoch
        subset = storage_value(f'max(last_over_time(nessa_trainer_subset_size_samples{{dataset="{dataset}"}}[10m]))')
        assert subset == report["epochs"][-1]["subset_size"], (subset, report["epochs"][-1]["subset_size"])

        # Every dashboard expression returns data over the run, as Grafana's range queries ask for it.
        end = time.time()
        empty = []
        for panel, target in dashboard_targets():
            expr = substitute_grafana_variables(target["expr"])
            data = prom_query(base, "/api/v1/query_range", query=expr, start=f"{started - 60:.3f}", end=f"{end:.3f}",
                              step="1")  # fmt: skip
            if finite_points(data["result"]) == 0:
                empty.append(f"{panel['title']} [{target['refId']}]: {expr}")
        assert not empty, "dashboard queries without data:\n" + "\n".join(empty)
    finally:
        procs.stop()


def _ok(url: str) -> bool:
    try:
        http_get(url, timeout=2)
    except OSError:
        return False
    return True
