"""The deployment files, statically: docker-compose.yml and docker-compose.gpu.yml, the Dockerfiles, .env.example,
prometheus.yml, the Grafana provisioning and the dashboard.

Structure and names that must agree across files (compose commands, prometheus.yml targets, the datasource uid
of every panel, metric names the processes export), ``promtool check config`` and PromQL that ``promtool``
parses. The stack itself runs in tests/system/test_deployment.py (its commands as local processes) and in
scripts/test-docker.sh (``make test-docker``, against a real Docker engine).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from deployment_helpers import (
    COMPOSE,
    DASHBOARD,
    DASHBOARD_PROVIDERS,
    DATASOURCES,
    PROMETHEUS_YML,
    ROOT,
    SERVICES,
    compose,
    compose_defaults,
    dashboard,
    dashboard_panels,
    dashboard_targets,
    datasource_uid,
    env_example,
    flag,
    metric_sample_names,
    promtool,
    seconds,
    substitute_grafana_variables,
)

from nessa import metrics


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
    # The one-shot ingest step runs the storage image but not the daemon: no inherited daemon healthcheck.
    assert services["ingest"]["healthcheck"] == {"disable": True}
    # `docker compose stop` interrupts the trainer (SIGINT: it abandons the epoch, exits 130) rather than SIGTERM
    # (which killed it with 143), within a grace period.
    assert trainer["stop_signal"] == "SIGINT" and seconds(trainer["stop_grace_period"]) >= 10
    assert trainer["init"] is True, "an init process forwards the stop signal to nessa"
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


def test_compose_reserves_no_gpu_unless_the_gpu_file_is_added() -> None:
    """The default file runs on any engine; docker-compose.gpu.yml is the opt-in NVIDIA reservation."""
    text = COMPOSE.read_text()
    trainer = compose()["services"]["trainer"]
    # An engine without the NVIDIA Container Toolkit rejects any device request ('could not select device driver
    # "nvidia"'), even with count 0: the default file must hold none.
    assert "deploy" not in trainer and "nvidia" not in text.split("services:", 1)[1]
    assert "docker-compose.gpu.yml" in text, "the compose file says how to add the GPU file"
    assert flag(trainer["command"], "--device") == "auto"

    gpu = compose(gpu=True)["services"]
    assert set(gpu) == SERVICES and gpu["storage"] == compose()["services"]["storage"]
    (device,) = gpu["trainer"]["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
    assert gpu["trainer"]["command"] == trainer["command"], "the GPU file only adds the reservation"
    two = compose({"NESSA_GPUS": "2", "NESSA_DEVICE": "cuda"}, gpu=True)["services"]["trainer"]
    assert two["deploy"]["resources"]["reservations"]["devices"][0]["count"] == "2"
    assert flag(two["command"], "--device") == "cuda"


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
    # No `# syntax=` directive: it makes BuildKit pull a frontend image from a registry; the built-in one builds these.
    assert not re.search(r"^#\s*syntax\s*=", text, flags=re.MULTILINE | re.IGNORECASE)
    froms = re.findall(r"^FROM (\S+)(?: AS (\w+))?", text, flags=re.MULTILINE)
    assert len(froms) == 2 and froms[0][1] == "build", "a builder stage, then the runtime stage"
    assert all("-slim" in image for image, _ in froms)
    assert "pip wheel" in text and "--from=build" in text
    assert re.search(r"ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cpu", text)
    assert re.search(r"ARG TORCH_SPEC=torch==", text)
    pinned = (ROOT / "constraints.txt").read_text()
    spec = re.search(r"ARG TORCH_SPEC=(\S+)", text)
    assert spec is not None and spec.group(1) in pinned, "the default torch must be the one constraints.txt pins"
    assert "binutils" in text, "PoCL links kernels with the system ld"
    users = re.findall(r"^USER (\S+)", text, flags=re.MULTILINE)
    assert users and users[-1] not in ("root", "0")

    # Layers: torch alone, then the other dependencies from pyproject.toml + constraints.txt only, then the wheel;
    # a source change rebuilds the last layer only (the wheel goes in with --no-deps).
    runtime = text.split("--- runtime stage", 1)[1]
    instructions = [i.strip() for i in re.split(r"\n(?=[A-Z]+ )", re.sub(r"\\\n\s*", " ", runtime)) if i.strip()]
    torch_at = next(i for i, s in enumerate(instructions) if '--index-url "${TORCH_INDEX_URL}"' in s)
    assert instructions[torch_at].startswith("RUN pip install") and "whl" not in instructions[torch_at]
    deps_copy = next(i for i, s in enumerate(instructions) if s.startswith("COPY pyproject.toml constraints.txt"))
    deps_at = next(i for i, s in enumerate(instructions) if "-r /tmp/deps/requirements.txt" in s)
    assert "-c /tmp/deps/constraints.txt" in instructions[deps_at]
    wheel_copy = next(i for i, s in enumerate(instructions) if s.startswith("COPY --from=build"))
    wheel_at = next(i for i, s in enumerate(instructions) if "/tmp/dist/nessa-*.whl" in s and s.startswith("RUN"))
    assert torch_at < deps_copy < deps_at < wheel_copy < wheel_at
    assert "--no-deps" in instructions[wheel_at] and "pip check" in instructions[wheel_at]
    assert not any(s.startswith("COPY . ") for s in instructions), "the sources reach the runtime only as the wheel"

    if "storage" in dockerfile:
        assert "nessa.services.storage.healthcheck" in text.split("HEALTHCHECK", 1)[1]
        # The PyPI PoCL cannot compile kernels on recent CPUs; Debian's can (as scripts/system-deps.sh installs).
        apt = next(s for s in instructions if "apt-get install" in s)
        assert "pocl-opencl-icd" in apt
        assert 'optional-dependencies"]["datasets"]' in instructions[deps_at], "ingest needs the datasets extra"


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
    ids = [p["id"] for p in board["panels"]]
    panels = dashboard_panels()
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
    rows = [p for p in board["panels"] if p["type"] == "row"]
    assert all(r["gridPos"]["w"] == 24 and not r.get("targets") for r in rows)
    first = min(panels, key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))
    assert first["title"] == "Bytes moved per epoch vs full epoch"
    titles = " | ".join(p["title"] for p in panels).lower()
    for wanted in ("bytes saved", "subset size and fraction", "selection duration by method", "proxy forward",
                   "proxy version", "data wait", "epoch time", "loss", "accuracy", "rpc requests",
                   "rpc errors", "rpc latency", "runs by method", "accuracy by run"):  # fmt: skip
        assert wanted in titles, f"no panel for {wanted}"


def test_dashboard_uses_only_defined_metrics() -> None:
    defined = metric_sample_names()
    used = {name for _, t in dashboard_targets() for name in re.findall(r"\bnessa_[a-z0-9_]+\b", t["expr"])}
    assert used, "the dashboard queries no nessa_ metric"
    assert not used - defined, f"metrics the processes never expose: {sorted(used - defined)}"
    families = {
        n.removesuffix("_total").removesuffix("_sum").removesuffix("_count").removesuffix("_bucket") for n in used
    }
    for name in ("nessa_trainer_received_bytes", "nessa_dataset_size_bytes", "nessa_sent_bytes",
                 "nessa_received_bytes", "nessa_selection_duration_seconds",
                 "nessa_proxy_forward_duration_seconds", "nessa_proxy_version", "nessa_trainer_data_wait_seconds",
                 "nessa_trainer_epoch_duration_seconds", "nessa_trainer_loss", "nessa_trainer_accuracy_ratio",
                 "nessa_selection_size_samples", "nessa_grpc_server_handled", "nessa_grpc_server_handling_seconds",
                 "nessa_trainer_run_info", "nessa_streamed_samples", "nessa_trainer_trained_samples"):  # fmt: skip
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


def _counter_samples() -> set[str]:
    """The sample names of every counter and histogram the processes expose (they reset when a process restarts)."""
    names = set()
    for registry in (metrics.STORAGE_REGISTRY, metrics.TRAINER_REGISTRY):
        for family in registry.collect():
            if family.name.startswith("nessa_") and family.type == "counter":
                names.add(family.name + "_total")
            elif family.name.startswith("nessa_") and family.type == "histogram":
                names.update(family.name + s for s in ("_sum", "_count", "_bucket"))
    return names


def test_dashboard_reads_counters_only_through_increase_or_rate() -> None:
    """A raw counter summed across a trainer's restart drops to zero; increase()/rate() handle resets."""
    counters = _counter_samples()
    raw = [
        f"{panel['title']} [{target['refId']}]: {m.group(1)}"
        for panel, target in dashboard_targets()
        for m in re.finditer(r"\b(nessa_[a-z0-9_]+)\b", target["expr"])
        if m.group(1) in counters and not re.search(r"\b(increase|rate)\($", target["expr"][: m.start()])
    ]
    assert not raw, "counters read raw (wrap them in increase() or rate()):\n" + "\n".join(raw)


def test_dashboard_shows_rpc_errors_and_latency_and_runs_by_method() -> None:
    panels = {p["title"]: p for p in dashboard_panels()}
    rows = [p["title"] for p in dashboard()["panels"] if p["type"] == "row"]
    assert any("errors" in r.lower() and "latency" in r.lower() for r in rows), rows
    exprs = {title: " ".join(t["expr"] for t in p["targets"]) for title, p in panels.items()}
    assert 'grpc_code!="OK"' in exprs["RPC errors by method"]
    assert "histogram_quantile" in exprs["RPC latency by method"] and "grpc_method" in exprs["RPC latency by method"]
    assert "by (grpc_method, grpc_code)" in exprs["RPC requests by method and code"]
    assert "by (method)" in exprs["Runs by method"] and "nessa_trainer_run_info" in exprs["Runs by method"]
    # The trainer panels split by method, so full data and a subset method show side by side.
    for title in ("Test accuracy", "Accuracy", "Loss", "Epoch time", "Bytes moved per epoch vs full epoch"):
        assert "method" in exprs[title], title


def test_metric_names_put_the_unit_before_the_suffix() -> None:
    families = {f.name: f.type for r in (metrics.STORAGE_REGISTRY, metrics.TRAINER_REGISTRY) for f in r.collect()}
    renamed = ("nessa_sent_bytes", "nessa_received_bytes", "nessa_full_epoch_bytes", "nessa_streamed_samples",
               "nessa_trainer_received_bytes", "nessa_trainer_trained_samples")  # fmt: skip
    added = ("nessa_build_info", "nessa_grpc_server_started", "nessa_grpc_server_handled",
             "nessa_grpc_server_handling_seconds", "nessa_trainer_run_info")  # fmt: skip
    for new in renamed + added:
        assert new in families, new
    for old in ("nessa_bytes_sent", "nessa_bytes_received", "nessa_bytes_full_epoch", "nessa_samples_streamed",
                "nessa_trainer_bytes_received", "nessa_trainer_samples"):  # fmt: skip
        assert old not in families, old
    for name, kind in families.items():
        if name.startswith("nessa_") and kind == "counter":
            assert not re.search(r"_(bytes|seconds|samples)_[a-z]+$", name), f"{name}: the unit goes last"
