#!/usr/bin/env bash
# Install what the benchmarks need, idempotently: Debian's redis-server (bench_peers.py starts its own
# on 127.0.0.1), and psutil + lmcache into the repository's .venv (Redis is driven by raw RESP: no client lib).
#   bash benchmarks/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}

if ! command -v redis-server >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    if ! $SUDO apt-get install -y --no-install-recommends redis-server; then
        $SUDO apt-get update
        $SUDO apt-get install -y --no-install-recommends redis-server
    fi
    # The package's own service is not wanted: the benchmark runs its own instance on a free port.
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet redis-server 2>/dev/null; then
        $SUDO systemctl stop redis-server || true
    fi
fi
redis-server --version

need=()
"$PY" -c "import psutil" 2>/dev/null || need+=("psutil>=5.9")
if [ "${#need[@]}" -gt 0 ]; then
    "$PY" -m pip install --quiet "${need[@]}"
fi
# LMCache (its server is a baseline) is heavy (~1 min); skip it with WITH_LMCACHE=0.
if [ "${WITH_LMCACHE:-1}" = "1" ] && ! "$PY" -c "import lmcache" 2>/dev/null; then
    "$PY" -m pip install --quiet "lmcache==0.5.6"  # the version pyproject's [lmcache] extra pins
fi
"$PY" -c "import psutil; print('psutil', psutil.__version__)"
