#!/usr/bin/env bash
# Set up kvbucket's Python environment in $REPO/.venv (idempotent, non-interactive).
#
#   scripts/setup.sh          # the daemon only: kvbucket and its requirements (no torch)
#   scripts/setup.sh --dev    # everything the tests and benchmarks use: torch 2.13.0 (CPU),
#                             # LMCache, pytest, moto, ... plus the vLLM venv (.venv-vllm)
#
# torch is installed first and pinned: a bare `torch` requirement pulls a multi-GB CUDA build.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${KVBUCKET_VENV:-$REPO/.venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
DEV=0
[[ "${1:-}" == "--dev" ]] && DEV=1
STAMP="$VENV/.kvbucket-setup-stamp-$DEV"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_PROGRESS_BAR=off

# setup.py builds the client's C copy (clients/_streamcopy.c): a change to either reinstalls.
WANT="$(cat "${BASH_SOURCE[0]}" "$REPO/pyproject.toml" "$REPO/setup.py" "$REPO/clients/_streamcopy.c" | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$VENV/bin/kvbucket" ]]; then
    echo "setup: $VENV is up to date"
else
    [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
    PIP=("$VENV/bin/python" -m pip)
    "${PIP[@]}" install -q --upgrade pip 2>&1 | { grep -v -i warning || true; }
    if [[ $DEV == 1 ]]; then
        echo "setup: installing torch 2.13.0 (CPU), kvbucket[dev,lmcache]"
        "${PIP[@]}" install -q torch==2.13.0 2>&1 | { grep -v -i warning || true; }
        "${PIP[@]}" install -q -e "$REPO[dev,lmcache]" 2>&1 | { grep -v -i warning || true; }
    else
        echo "setup: installing kvbucket"
        "${PIP[@]}" install -q -e "$REPO" 2>&1 | { grep -v -i warning || true; }
    fi
    "$VENV/bin/python" -c "import kvbucket.server.app" # fail here, not later
    if "$VENV/bin/python" -c "import kvbucket.clients._streamcopy" 2>/dev/null; then
        echo "setup: built the client's non-temporal copy (clients/_streamcopy.c)"
    else
        echo "setup: clients/_streamcopy.c not built (no C compiler?): shared-memory puts copy with numpy"
    fi
    echo "$WANT" >"$STAMP"
fi

if [[ $DEV == 1 ]]; then
    "$REPO/scripts/setup-vllm-venv.sh"
fi
