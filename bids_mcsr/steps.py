"""The participant pipeline's steps as file-in, file-out functions.

Each step reads its inputs from disk and writes its outputs to paths it is given, so a
workflow engine can cache it; none of them knows about nipype.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_mcsr.image.geometry import Grid, check_overlap, make_output_grid, pick_reference
from bids_mcsr.image.io import Stack, load_stack
from bids_mcsr.image.preprocess import itk_transform_text, n4_correct, register_rigid, save_stack
from bids_mcsr.inr.config import SRConfig
from bids_mcsr.inr.result import save_result
from bids_mcsr.inr.superres import super_resolve

log = logging.getLogger("bids_mcsr")


def bias_correct(in_file: str, contrast: str, out_file: str, threads: int | None = None) -> str:
    """N4-correct one stack file.

    Parameters
    ----------
    in_file : str
        Input NIfTI.
    contrast : str
        Its contrast key (``T1w``, ``ce-gadolinium_T1w``).
    out_file : str
        Where to write the corrected stack.
    threads : int, optional
        ITK threads.

    Returns
    -------
    str
        ``out_file``.
    """
    save_stack(n4_correct(load_stack(in_file, contrast), threads), Path(out_file))
    return out_file


def select_reference(in_files: list[str], contrasts: list[str], names: list[str],
                     reference: str | None = None) -> int:
    """Index of the stack the others are registered to.

    Parameters
    ----------
    in_files : list of str
        Stack files (headers are read).
    contrasts : list of str
        Their contrasts.
    names : list of str
        Their original BIDS file names.
    reference : str, optional
        A contrast key (``T1w`` is not ``ce-gadolinium_T1w``), else part of a file name;
        default: the finest through-plane spacing.

    Returns
    -------
    int
        Index into ``in_files``.

    Raises
    ------
    InputError
        When ``reference`` matches no stack.
    """
    return pick_reference([nib.load(f).header.get_zooms()[:3] for f in in_files], contrasts, names,
                          reference)


def register(moving_file: str, reference_file: str, contrast: str, out_file: str,
             xfm_file: str, seed: int = 0) -> tuple[str, str]:
    """Rigidly align a stack file to the reference by rewriting its affine.

    The reference itself gets the identity.

    Parameters
    ----------
    moving_file, reference_file : str
        Stack files.
    contrast : str
        Contrast of the moving stack.
    out_file : str
        Where the moving stack is written with its new affine (voxels unchanged).
    xfm_file : str
        Where the ITK text transform (reference -> moving points, LPS) is written.
    seed : int
        The run's seed (ANTs' metric sampling).

    Returns
    -------
    tuple of str
        ``(out_file, xfm_file)``.
    """
    moving = load_stack(moving_file, contrast)
    if Path(moving_file).resolve() == Path(reference_file).resolve():
        world, aligned = np.eye(4), moving
    else:
        world, aligned = register_rigid(moving, load_stack(reference_file, "reference"), seed)
    save_stack(aligned, Path(out_file))
    Path(xfm_file).write_text(itk_transform_text(world))
    return out_file, xfm_file


def _note_isotropic(stacks: list[Stack]) -> None:
    """Say when a contrast's only stack is already isotropic: it is used as it is."""
    for stack in stacks:
        alone = sum(s.contrast == stack.contrast for s in stacks) == 1
        if alone and stack.is_isotropic:
            sizes = "x".join(f"{v:.2g}" for v in stack.voxel_sizes)
            log.info("%s: the only %s stack is already isotropic (%s mm); it is used as it "
                     "is, as a high-resolution input", stack.name, stack.contrast, sizes)


def superresolve(in_files: list[str], contrasts: list[str],
                 thicknesses: list[float | None], out_dir: str, config: dict,
                 output_grid: str | None = None, reference_index: int | None = None,
                 source_files: list[str] | None = None) -> dict:
    """Fit the INR to registered stack files and write its outputs to ``out_dir``.

    Parameters
    ----------
    in_files, contrasts, thicknesses : list
        Registered stacks, their contrasts and slice thicknesses (mm or None).
    out_dir : str
        Receives ``<contrast>.nii.gz`` per contrast, ``mask.nii.gz`` and ``result.json``.
    config : dict
        ``SRConfig`` keyword arguments.
    output_grid : str, optional
        NIfTI whose grid the outputs are sampled on.
    reference_index : int, optional
        The reference stack (:func:`select_reference`): orients the output grid, keeps its pose.
    source_files : list of str, optional
        The input files the stacks come from: messages and records name them, not the
        registered copies.

    Returns
    -------
    dict
        ``volumes`` (contrast -> path), ``mask``, ``result`` (path of ``result.json``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stacks = [load_stack(f, c, t) for f, c, t in zip(in_files, contrasts, thicknesses)]
    if source_files:
        stacks = [replace(s, path=str(src)) for s, src in zip(stacks, source_files)]
    check_overlap(stacks)
    _note_isotropic(stacks)
    sr_config = SRConfig(**config)
    if output_grid:
        ref = nib.load(output_grid)
        grid = Grid(tuple(int(n) for n in ref.shape[:3]), np.asarray(ref.affine, float))
    else:
        grid = make_output_grid(stacks, sr_config.output_spacing, reference_index)
    return save_result(super_resolve(stacks, sr_config, grid=grid, reference=reference_index), out)
