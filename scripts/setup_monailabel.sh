#!/usr/bin/env bash
# Create .venv-monailabel (if missing) and install the MONAI Label app's environment into it:
# torch and bids-mcsr's dependencies at the versions of requirements.lock, as scripts/setup.sh
# installs them (torch is its CPU build), monailabel 0.8.5 without its own requirements, and
# bids-mcsr's `monailabel` extra: what `monailabel start_server` imports (pyproject.toml says
# why and lists it). The BIDS-App's .venv is not touched.
# VENV=<dir> installs elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv-monailabel}
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -c requirements.lock torch
"$VENV/bin/python" -m pip install -q --no-deps "monailabel==0.8.5" "pydicom-seg==0.4.1"
"$VENV/bin/python" -m pip install -q -c requirements.lock -e ".[monailabel]"
"$VENV/bin/python" -c "import torch, sys; sys.exit(torch.version.cuda is not None)" \
    || { echo "setup_monailabel: a CUDA build of torch got installed; expected 2.13.0+cpu" >&2; exit 1; }
