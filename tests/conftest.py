"""Shared test set-up. Tests are grouped as the package is (``tests/<package>/``); the
project-wide checks (layers, lint, docs, container, descriptors) stay at this level.

The phantoms every group builds on live beside this file and are imported by name (this
folder is on ``sys.path``): :mod:`tiny_bids` (tiny BIDS datasets of a two-compartment phantom,
and the options that keep a run to seconds) and :mod:`report_synth` (a fit's results without
training, for the report and QC tests); the truth-known template case is
:func:`bids_mcsr.evaluation.phantom.mni_truth`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
