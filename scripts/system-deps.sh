#!/usr/bin/env bash
# Install the system packages NeSSA needs that PyPI cannot provide, only when they are missing.
#
#   scripts/system-deps.sh PYTHON test   # the test suite: a PoCL that compiles on this CPU, and Prometheus/promtool
#   scripts/system-deps.sh PYTHON demo   # the demo: a PoCL that compiles on this CPU
#
# - PoCL: the wheel on PyPI (3.0, LLVM 14) cannot compile for recent CPUs ("unknown target CPU 'generic'",
#   pocl/pocl#1049); Debian's pocl-opencl-icd (3.1) can, and the runtime picks whichever PoCL compiles.
# - prometheus (the server and promtool): the tests check /metrics and the dashboard's queries against a real one.
# Installs with apt-get as root (or through sudo); elsewhere it says what to install and fails.
set -euo pipefail
python="${1:?usage: system-deps.sh PYTHON test|demo}"
purpose="${2:?usage: system-deps.sh PYTHON test|demo}"

missing=()
if ! "$python" -c 'from nessa.accel.runtime import OpenCLRuntime; OpenCLRuntime()' >/dev/null 2>&1; then
  missing+=(pocl-opencl-icd)
fi
if [ "$purpose" = test ] && ! command -v promtool >/dev/null 2>&1; then
  missing+=(prometheus)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "NeSSA needs these system packages (Debian names): ${missing[*]}; install them with your package manager" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "NeSSA needs: sudo apt-get install ${missing[*]} (run it as root, then retry)" >&2
    exit 1
  fi
  SUDO="sudo"
fi
echo "installing system packages: ${missing[*]}" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
