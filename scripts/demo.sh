#!/usr/bin/env bash
# Set up, build the demo BIDS dataset (from templates shipped with nilearn; nothing is
# downloaded) into demo_bids/, and run the participant level into demo_output/ on CPU.
# Extra arguments are passed to bids-mcsr, e.g. `bash scripts/demo.sh --epochs 4`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m bids_mcsr.evaluation.demo demo_bids
.venv/bin/bids-mcsr demo_bids demo_output participant -w work \
    --nprocs 2 --device cpu "$@"
echo "Derivatives written to demo_output/ (logs and methods text in demo_output/logs/)"
