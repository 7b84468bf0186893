#!/usr/bin/env bash
# Set up .venv-monailabel if missing (scripts/setup_monailabel.sh), then run the MONAI Label
# app's tests (apps/monailabel/tests: a real server on a free localhost port over a tiny BIDS
# dataset). scripts/test.sh does not run them: the BIDS-App's tests and .venv stay as they are.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-monailabel/bin/monailabel ]; then
    bash scripts/setup_monailabel.sh
fi
.venv-monailabel/bin/python -m pytest -ra -p no:cacheprovider apps/monailabel/tests "$@"
