"""Participant-level workflow: N4 -> rigid registration -> INR super-resolution -> QC."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces.utility import IdentityInterface
from nipype.pipeline import engine as pe

from bids_mcsr.dataset.units import SubjectSession
from bids_mcsr.workflows.interfaces import (
    BiasCorrect,
    IdentityTransform,
    RigidRegister,
    SelectReference,
    SuperResolve,
    TrainingQC,
)

STEP_NAMES = {
    "n4": "bias correction",
    "select_reference": "reference selection",
    "register": "registration",
    "superres": "super-resolution",
    "qc": "QC",
}


OUTPUTS = ["volumes", "mask", "result", "xfm_files", "reference_index", "curves", "metrics"]


def workflow_name(unit: SubjectSession) -> str:
    """nipype-safe workflow name of a subject/session (``sub_01_ses_02_wf``)."""
    return unit.name.replace("-", "_") + "_wf"


def _inputnode(unit: SubjectSession) -> pe.Node:
    """The unit's runs: files, contrast keys, header thicknesses and original names."""
    node = pe.Node(IdentityInterface(fields=["in_files", "contrasts", "thicknesses", "names"]),
                   name="inputnode")
    node.inputs.in_files = [run.path for run in unit.runs]
    node.inputs.contrasts = [run.contrast for run in unit.runs]
    node.inputs.thicknesses = [run.slice_thickness for run in unit.runs]
    node.inputs.names = [Path(run.path).name for run in unit.runs]
    return node


def _stacks_source(bias_correction: str, omp_nthreads: int,
                   inputnode: pe.Node) -> tuple[pe.Node, str, list]:
    """Where the stacks to register come from: N4 of every input, or the inputs; with edges."""
    if bias_correction != "n4":
        return inputnode, "in_files", []
    n4 = pe.MapNode(BiasCorrect(threads=omp_nthreads), iterfield=["in_file", "contrast"],
                    name="n4", n_procs=omp_nthreads)
    return n4, "out_file", [(inputnode, n4, [("in_files", "in_file"), ("contrasts", "contrast")])]


def _register_node(registration: str, seed: int, stacks_source: pe.Node,
                   stacks_field: str, inputnode: pe.Node,
                   select_reference: pe.Node) -> tuple[pe.MapNode, list]:
    """Rigid registration to the reference stack, or identity transforms; with its edges."""
    if registration == "rigid":
        register = pe.MapNode(RigidRegister(seed=seed),  # one ITK thread: reproducible
                              iterfield=["moving_file", "contrast"], name="register")
        return register, [(stacks_source, register, [(stacks_field, "moving_file")]),
                          (inputnode, register, [("contrasts", "contrast")]),
                          (select_reference, register, [("reference_file", "reference_file")])]
    register = pe.MapNode(IdentityTransform(), iterfield=["in_file"], name="register")
    return register, [(stacks_source, register, [(stacks_field, "in_file")])]


def _superres_node(sr_config: dict, output_grid: Path | None, omp_nthreads: int,
                   mem_gb: float | None) -> pe.Node:
    node = pe.Node(SuperResolve(config=sr_config), name="superres",
                   n_procs=omp_nthreads, mem_gb=mem_gb or 2.0)
    if output_grid is not None:
        node.inputs.output_grid = str(output_grid)
    # runs in the unit's process so that its per-epoch progress reaches the run's log
    node.run_without_submitting = True
    return node


def init_participant_wf(unit: SubjectSession, sr_config: dict, *,
                        bias_correction: str = "n4", registration: str = "rigid",
                        reference: str | None = None, output_grid: Path | None = None,
                        omp_nthreads: int = 1, mem_gb: float | None = None,
                        name: str | None = None) -> pe.Workflow:
    """Build the workflow that super-resolves one subject/session.

    Parameters
    ----------
    unit : SubjectSession
        Runs to fit together; they fill the inputnode.
    sr_config : dict
        ``SRConfig`` keyword arguments.
    bias_correction : {"n4", "none"}
        N4 each stack first, or not.
    registration : {"rigid", "none"}
        Align every stack to the reference by rewriting its affine, or trust the headers.
    reference : str, optional
        Contrast or file-name part of the reference stack; default the finest through-plane.
    output_grid : Path, optional
        Image whose grid the outputs are written on.
    omp_nthreads : int
        Threads of each ANTs/PyTorch process.
    mem_gb : float, optional
        Memory the super-resolution node may use.
    name : str, optional
        Workflow name; default from the unit.

    Returns
    -------
    nipype.pipeline.engine.Workflow
        With nodes ``inputnode`` (``in_files``, ``contrasts``, ``thicknesses``, ``names``)
        and ``outputnode`` (:data:`OUTPUTS`).
    """
    wf = pe.Workflow(name=name or workflow_name(unit))
    inputnode = _inputnode(unit)
    outputnode = pe.Node(IdentityInterface(fields=OUTPUTS), name="outputnode")
    stacks_source, stacks_field, connections = _stacks_source(bias_correction, omp_nthreads,
                                                              inputnode)
    select_reference = pe.Node(SelectReference(reference=reference), name="select_reference")
    register, to_register = _register_node(registration, int(sr_config.get("seed", 0)),
                                           stacks_source,
                                           stacks_field, inputnode, select_reference)
    connections += to_register
    superres = _superres_node(sr_config, output_grid, omp_nthreads, mem_gb)
    qc = pe.Node(TrainingQC(), name="qc")
    connections += [
        (stacks_source, select_reference, [(stacks_field, "in_files")]),
        (inputnode, select_reference, [("contrasts", "contrasts"), ("names", "names")]),
        (register, superres, [("out_file", "in_files")]),
        (inputnode, superres, [("contrasts", "contrasts"), ("thicknesses", "thicknesses"),
                               ("in_files", "source_files")]),
        (superres, qc, [("result", "result")]),
        (register, outputnode, [("xfm_file", "xfm_files")]),
        (select_reference, outputnode, [("index", "reference_index")]),
        (select_reference, superres, [("index", "reference_index")]),
        (superres, outputnode, [("volumes", "volumes"), ("mask", "mask"), ("result", "result")]),
        (qc, outputnode, [("curves", "curves"), ("metrics", "metrics")]),
    ]
    wf.connect(connections)
    return wf
