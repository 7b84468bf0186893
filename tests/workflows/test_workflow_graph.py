"""The participant workflow builds (without running) for real layouts and every option."""

from pathlib import Path

import pytest

from bids_mcsr.dataset.discovery import discover, open_layout
from bids_mcsr.workflows.participant import STEP_NAMES, init_participant_wf

EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "bids-examples"
CONFIG = {"model": "fast", "slice_profile": "gaussian", "epochs": 2, "seed": 0}


@pytest.fixture(scope="module")
def units(tmp_path_factory):
    layout = open_layout(EXAMPLES / "ds004332", tmp_path_factory.mktemp("db"))
    return discover(layout).units


@pytest.mark.parametrize("bias, registration", [("n4", "rigid"), ("none", "none"),
                                                ("n4", "none"), ("none", "rigid")])
def test_graph_builds(units, bias, registration, tmp_path):
    wf = init_participant_wf(units[0], CONFIG, bias_correction=bias, registration=registration,
                             omp_nthreads=2, mem_gb=4)
    wf.base_dir = str(tmp_path)
    names = set(wf.list_node_names())
    expected = {"inputnode", "outputnode", "select_reference", "register", "superres", "qc"}
    assert expected | ({"n4"} if bias == "n4" else set()) == names
    assert set(STEP_NAMES) >= names - {"inputnode", "outputnode"}
    wf._create_flat_graph()  # resolves every connection without running anything
    assert len(wf.get_node("inputnode").inputs.in_files) == len(units[0].runs)


def test_resources_and_output_grid(units, tmp_path):
    grid = tmp_path / "grid.nii.gz"
    grid.touch()
    wf = init_participant_wf(units[1], CONFIG, output_grid=grid, omp_nthreads=3, mem_gb=6)
    superres = wf.get_node("superres")
    assert (superres.n_procs, superres.mem_gb) == (3, 6)
    assert superres.inputs.output_grid == str(grid)
    assert wf.get_node("n4").n_procs == 3
    assert wf.name == "sub_02_wf"
