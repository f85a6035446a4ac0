"""What the deployment tests share: the compose files as compose reads them, the dashboard, promtool.

Used by tests/unit/test_deployment_files.py (the files, statically) and tests/system/test_deployment.py (the
compose services' commands run as local processes).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from nessa import metrics

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_GPU = ROOT / "docker-compose.gpu.yml"
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


def _merge(base: Any, override: Any) -> Any:
    """Compose's merge of an override file into a base: mappings merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _merge(base[key], value) if key in base else value
        return merged
    return override


def compose(env: dict[str, str] | None = None, gpu: bool = False) -> dict[str, Any]:
    """The compose file as compose sees it with only ``env`` set (defaults everywhere else); ``gpu``: with
    docker-compose.gpu.yml added (``docker compose -f docker-compose.yml -f docker-compose.gpu.yml``)."""
    raw = compose_raw()
    if gpu:
        raw = _merge(raw, yaml.safe_load(COMPOSE_GPU.read_text()))
    return interpolate(raw, env or {})


def compose_defaults() -> dict[str, str]:
    """Every ``${VAR:-default}`` in docker-compose.yml and docker-compose.gpu.yml: name → default."""
    found: dict[str, str] = {}
    for path in (COMPOSE, COMPOSE_GPU):
        for m in re.finditer(r"\$\{([A-Za-z_][A-Za-z0-9_]*):-([^}]*)\}", path.read_text()):
            name, default = m.group(1), m.group(2)
            assert found.setdefault(name, default) == default, f"{name} has two defaults in the compose files"
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


def dashboard_panels() -> list[dict[str, Any]]:
    """The dashboard's panels, rows left out (a row holds no query)."""
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def dashboard_targets() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(panel, target) for panel in dashboard_panels() for target in panel.get("targets", [])]


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
    """Every sample name the two processes expose: the families of the daemon's and the trainer's registries."""
    suffixes = {
        "counter": ["_total", "_created"],
        "gauge": [""],
        "histogram": ["_bucket", "_sum", "_count", "_created"],
        "info": ["_info"],
    }
    names: set[str] = set()
    for registry in (metrics.STORAGE_REGISTRY, metrics.TRAINER_REGISTRY):
        for family in registry.collect():
            if family.name.startswith("nessa_"):
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


def seconds(duration: str) -> float:
    """A compose duration such as ``5s``, ``2m`` or ``1m30s`` in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a compose duration: {duration!r}"
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)
