#!/usr/bin/env bash
# The compose stack against a real Docker engine, end to end (make test-docker; not part of .ci/run):
#
#   scripts/test-docker.sh
#
# Builds the storage and trainer images, then `docker compose up` of ingest, storage, trainer and prometheus (the
# stack without grafana, which needs a registry to pull from) in a project of its own (nessa-test, its own
# volumes), and checks:
#   1. storage becomes healthy (its gRPC health check answers SERVING);
#   2. the trainer runs its epochs and exits 0;
#   3. Prometheus scraped both targets (`up` == 1 for job storage and job trainer);
#   4. the daemon's sent-bytes counter equals the trainer's received-bytes counter, per dataset and kind;
#   5. every PromQL query of the dashboard (services/monitoring/grafana/dashboards/nessa.json) returns data;
#   6. `docker compose down -v`, then a second `up` works from nothing (ingest writes the dataset again, storage
#      healthy, trainer exits 0);
#   7. `docker compose stop trainer` during an epoch ends the trainer cleanly: exit 130, no traceback.
#
# Needs: Docker Compose v2 (`docker compose`), a running engine, python3 (stdlib only) and free host ports (set
# NESSA_GRPC_PORT, NESSA_STORAGE_METRICS_PORT, NESSA_TRAINER_METRICS_PORT, PROMETHEUS_PORT to move them). Any
# COMPOSE_FILE, TORCH_INDEX_URL or DOCKER_BUILDKIT in the environment is used as is (see
# ../shared/tools/docker-local.sh env for a machine without Docker Hub). KEEP=1 leaves the stack up at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

PROJECT="${NESSA_TEST_PROJECT:-nessa-test}"
SERVICES=(ingest storage trainer prometheus)
# A small run: 16,000 training samples, a few epochs at 20 %; long enough for several 5 s scrapes.
export NESSA_INGEST_ARGS="${NESSA_INGEST_ARGS:---num-samples 20000 --quiet}"
export NESSA_EPOCHS="${NESSA_EPOCHS:-8}"
export NESSA_FRACTION="${NESSA_FRACTION:-0.2}"
export NESSA_METHOD="${NESSA_METHOD:-craig}"
export NESSA_TOKEN="${NESSA_TOKEN:-test-docker-token}"
export NESSA_METRICS_LINGER="${NESSA_METRICS_LINGER:-12}"
PROM_PORT="${PROMETHEUS_PORT:-9090}"
STORAGE_DEADLINE=240   # s: ingest + opening datasets + building the kernels
TRAINER_DEADLINE=900   # s: the trainer's epochs on a small shared CPU

failures=0
say() { printf '%s\n' "$*"; }
pass() { say "PASS  $*"; }
fail() { say "FAIL  $*"; failures=$((failures + 1)); }
die() { say "FAIL  $*"; exit 1; }
dc() { docker compose -p "$PROJECT" "$@"; }
cid() { dc ps -aq "$1"; }
state() { docker inspect -f "{{$1}}" "$2" 2>/dev/null || true; }

docker compose version >/dev/null 2>&1 || die "Docker Compose v2 is required (\`docker compose\`, the CLI plugin)"
docker info >/dev/null 2>&1 || die "no Docker engine answers (is dockerd running? DOCKER_HOST?)"
say "compose $(docker compose version --short), engine $(docker version --format '{{.Server.Version}}'), project $PROJECT"

cleanup() {
  local rc=$?
  if [ "$rc" != 0 ] || [ "$failures" != 0 ]; then
    say "--- last logs ---"
    dc logs --no-color --tail 40 2>/dev/null || true
  fi
  if [ "${KEEP:-0}" != 1 ]; then dc down -v --remove-orphans >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

wait_healthy() {  # wait_healthy SERVICE DEADLINE: seconds until its container's health is "healthy"
  local start=$SECONDS id status
  while [ $((SECONDS - start)) -lt "$2" ]; do
    id="$(cid "$1")"
    status="$(state .State.Health.Status "$id")"
    [ "$status" = healthy ] && { echo $((SECONDS - start)); return 0; }
    [ "$(state .State.Status "$id")" = exited ] && break
    sleep 1
  done
  return 1
}

wait_exit() {  # wait_exit SERVICE DEADLINE: prints the exit code once the container stops (fails at the deadline)
  local start=$SECONDS id
  while [ $((SECONDS - start)) -lt "$2" ]; do
    id="$(cid "$1")"
    if [ -n "$id" ] && [ "$(state .State.Status "$id")" = exited ]; then
      state .State.ExitCode "$id"
      return 0
    fi
    sleep 2
  done
  return 1
}

wait_log() {  # wait_log SERVICE PATTERN DEADLINE
  local start=$SECONDS
  while [ $((SECONDS - start)) -lt "$3" ]; do
    dc logs --no-color "$1" 2>/dev/null | grep -q -- "$2" && return 0
    sleep 1
  done
  return 1
}

up_and_check() {  # up_and_check LABEL: one `up` of the stack; checks health and the trainer's exit
  local label="$1" t0=$SECONDS code scrape
  if ! dc up -d --no-build "${SERVICES[@]}" >/tmp/nessa-test-up.log 2>&1; then
    cat /tmp/nessa-test-up.log
    fail "$label: docker compose up"
    return 1
  fi
  if wait_healthy storage "$STORAGE_DEADLINE" >/dev/null; then
    pass "$label: storage healthy $((SECONDS - t0)) s after up (ingest and kernel build included)"
  else
    fail "$label: storage not healthy within ${STORAGE_DEADLINE} s"
    return 1
  fi
  scrape="$(python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' \
    "http://127.0.0.1:${NESSA_STORAGE_METRICS_PORT:-9400}/metrics" 2>/dev/null || true)"
  if grep -q '^nessa_build_info' <<<"$scrape" && grep -q '^nessa_grpc_server_started_total' <<<"$scrape" \
    && ! grep -q '^nessa_trainer_' <<<"$scrape"; then
    pass "$label: the storage /metrics serves daemon series only ($(grep -c '^nessa_' <<<"$scrape") nessa_ samples, no nessa_trainer_)"
  else
    fail "$label: the storage /metrics is missing daemon series or serves trainer series"
  fi
  if code="$(wait_exit trainer "$TRAINER_DEADLINE")"; then
    if [ "$code" = 0 ]; then
      pass "$label: trainer exited 0 after $NESSA_EPOCHS epochs ($((SECONDS - t0)) s after up): $(dc logs --no-color trainer | grep 'final accuracy' | tail -n1 | sed 's/^[^|]*| //')"
    else
      fail "$label: trainer exited $code"
      return 1
    fi
  else
    fail "$label: trainer still running after ${TRAINER_DEADLINE} s"
    return 1
  fi
}

# --- build ---------------------------------------------------------------------------------------------------------
t0=$SECONDS
dc build storage trainer >/tmp/nessa-test-build.log 2>&1 || { tail -n 40 /tmp/nessa-test-build.log; die "docker compose build"; }
pass "images built in $((SECONDS - t0)) s: $(docker images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^nessa-(storage|trainer):' | tr '\n' ' ')"
dc down -v --remove-orphans >/dev/null 2>&1 || true

# --- first up: health, exit, Prometheus, bytes, dashboard -----------------------------------------------------------
if up_and_check "first up"; then
  if python3 - "http://127.0.0.1:$PROM_PORT" services/monitoring/grafana/dashboards/nessa.json <<'EOF'; then
"""Prometheus checks: up, the two bytes counters, every dashboard query (waits for conditions, with deadlines)."""
import json
import math
import sys
import time
import urllib.parse
import urllib.request

base, dashboard_path = sys.argv[1], sys.argv[2]
WINDOW = "30m"  # the run's series, including the trainer's (stale since it exited)
GRAFANA = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "$dataset": "mnist1d", "$method": ".*"}
failed = 0


def query(path, **params):
    with urllib.request.urlopen(f"{base}{path}?{urllib.parse.urlencode(params)}", timeout=30) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]["result"]


def report(ok, text):
    global failed
    print(("PASS  " if ok else "FAIL  ") + text)
    failed += not ok


def until(check, deadline_s):
    end = time.monotonic() + deadline_s
    while True:
        result = check()
        if result[0] or time.monotonic() > end:
            return result
        time.sleep(1)


def ups():
    got = {r["metric"]["job"]: r["value"][1] for r in query("/api/v1/query", query=f"max_over_time(up[{WINDOW}])")}
    return got.get("storage") == "1" and got.get("trainer") == "1", got


ok, got = until(ups, 60)
report(ok, f"prometheus: up == 1 for both targets ({got})")


def by_key(result):
    return {(r["metric"].get("dataset"), r["metric"].get("kind")): float(r["value"][1]) for r in result}


def bytes_match():
    sent = by_key(query("/api/v1/query", query='sum by (dataset, kind) (nessa_sent_bytes_total{kind!="proxy"})'))
    received = by_key(query("/api/v1/query", query=(
        f"sum by (dataset, kind) (max_over_time(nessa_trainer_received_bytes_total[{WINDOW}]))")))
    return bool(sent) and sent == received and all(v > 0 for v in sent.values()), (sent, received)


ok, (sent, received) = until(bytes_match, 60)
detail = ", ".join(f"{d}/{k}: {int(v)} B" for (d, k), v in sorted(sent.items()))
report(ok, f"bytes: the daemon's nessa_sent_bytes_total == the trainer's nessa_trainer_received_bytes_total "
       f"({detail})" + ("" if ok else f"; trainer: {received}"))

board = json.load(open(dashboard_path))
panels = [p for p in board["panels"] if p.get("targets")]
for row in board["panels"]:
    panels += [p for p in row.get("panels", []) if p.get("targets")]
end = time.time()
start = end - 1800
empty, total = [], 0
for panel in panels:
    for target in panel["targets"]:
        expr = target["expr"]
        for name in sorted(GRAFANA, key=len, reverse=True):
            expr = expr.replace(name, GRAFANA[name])
        total += 1
        result = query("/api/v1/query_range", query=expr, start=f"{start:.0f}", end=f"{end:.0f}", step="5")
        points = sum(1 for s in result for _, v in s["values"] if math.isfinite(float(v)))
        if points == 0:
            empty.append(f"{panel['title']} [{target['refId']}]: {expr}")
report(not empty, f"dashboard: {total - len(empty)} of {total} queries return data"
       + ("" if not empty else ":\n      " + "\n      ".join(empty)))
sys.exit(1 if failed else 0)
EOF
    :
  else
    failures=$((failures + 1))
  fi
fi

# --- down -v, second up from nothing ---------------------------------------------------------------------------------
dc down -v --remove-orphans >/dev/null 2>&1 && pass "docker compose down -v (volumes: $(docker volume ls -q | grep -c "^${PROJECT}_" || true) left)" \
  || fail "docker compose down -v"
if up_and_check "second up"; then
  if dc logs --no-color ingest | grep -q "nothing to do"; then
    fail "second up: ingest found a dataset after down -v"
  else
    pass "second up: ingest wrote the dataset again"
  fi
fi

# --- stop during an epoch ------------------------------------------------------------------------------------------
# A longer run (its own checkpoint directory), stopped once its first epoch is done: the trainer abandons the epoch.
NESSA_EPOCHS=200 dc up -d --no-build --no-deps trainer >/dev/null 2>&1
if wait_log trainer "epoch 1/200" "$TRAINER_DEADLINE"; then
  dc stop trainer >/dev/null 2>&1
  code="$(state .State.ExitCode "$(cid trainer)")"
  if [ "$code" = 130 ] && ! dc logs --no-color trainer | grep -q Traceback; then
    pass "docker compose stop trainer: exit 130 (interrupted), no traceback"
  else
    fail "docker compose stop trainer: exit $code$(dc logs --no-color trainer | grep -q Traceback && echo ', with a traceback')"
  fi
else
  fail "the longer run never finished its first epoch"
fi

if [ "$failures" = 0 ]; then say "test-docker: all checks passed"; else say "test-docker: $failures check(s) failed"; fi
[ "$failures" = 0 ]
