#!/usr/bin/env bash
# Create .venv (if missing) and install bids-mcsr with its test dependencies, at the versions
# of requirements.lock (what the tests ran with; torch is its CPU build); see docs for CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c requirements.lock torch
.venv/bin/python -m pip install -q -c requirements.lock -e ".[test]"
