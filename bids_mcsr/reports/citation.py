"""Methods boilerplate (``logs/CITATION.md``) describing what a run did and what to cite."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from bids_mcsr.about import METHOD_CITATION, NAME, get_version
from bids_mcsr.acquisition.backprojection import DEFAULT_CONSISTENCY_ITERATIONS

_REFERENCES = {
    "ants": "Avants BB, Tustison NJ, Song G, et al. A reproducible evaluation of ANTs "
            "similarity metric performance in brain image registration. NeuroImage 54(3), 2011.",
    "guided": "He K, Sun J, Tang X. Guided image filtering. IEEE Transactions on Pattern "
              "Analysis and Machine Intelligence 35(6), 2013.",
    "ibp": "Irani M, Peleg S. Improving resolution by image registration. CVGIP: Graphical "
           "Models and Image Processing 53(3), 1991.",
    "n4": "Tustison NJ, Avants BB, Cook PA, et al. N4ITK: improved N3 bias correction. "
          "IEEE Transactions on Medical Imaging 29(6), 2010.",
    "nipype": "Gorgolewski K, Burns CD, Madison C, et al. Nipype: a flexible, lightweight and "
              "extensible neuroimaging data processing framework in Python. "
              "Frontiers in Neuroinformatics 5:13, 2011.",
    "pybids": "Yarkoni T, Markiewicz CJ, de la Vega A, et al. PyBIDS: Python tools for BIDS "
              "datasets. Journal of Open Source Software 4(40), 1294, 2019.",
    "pytorch": "Paszke A, Gross S, Massa F, et al. PyTorch: an imperative style, "
               "high-performance deep learning library. NeurIPS 2019.",
}


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown version"


def methods_text(options: dict) -> str:
    """A Markdown methods paragraph and reference list for one run.

    Parameters
    ----------
    options : dict
        ``bias_correction``, ``registration``, ``reference``, ``model``, ``slice_profile``,
        ``epochs`` (None: the model's default), ``output_resolution`` (mm or None),
        ``output_grid``, ``consistency_iterations`` (absent: the default),
        ``guided_upsampling`` (``"on"``/``"off"``; absent: on).

    Returns
    -------
    str
        Content of ``CITATION.md``.
    """
    cited = ["mcsr", "pytorch", "nipype", "pybids"]
    steps = []
    if options["bias_correction"] == "n4":
        steps.append(f"corrected for intensity non-uniformity with N4 [n4] as implemented in "
                     f"ANTsPy {_version('antspyx')}")
        cited.append("n4")
    if options["registration"] == "rigid":
        target = (f"the {options['reference']} stack" if options.get("reference")
                  else "the stack with the finest through-plane resolution")
        steps.append(f"rigidly aligned to {target} (Mattes mutual information, ANTs [ants]); "
                     "each transform was applied by rewriting the stack's affine, so no stack "
                     "was resampled")
        cited.append("ants")
    prep = ("Each anatomical stack was " + "; then ".join(steps) + ". ") if steps else ""
    if options.get("output_grid"):
        grid = "on the grid of a user-supplied reference image"
    elif options.get("output_resolution"):
        grid = f"on an isotropic {options['output_resolution']:g} mm grid"
    else:
        grid = "on an isotropic grid at the finest in-plane resolution of the inputs"
    epochs = options.get("epochs") or "the model's default number of"
    rounds = options.get("consistency_iterations", DEFAULT_CONSISTENCY_ITERATIONS)
    consistency = ""
    if options.get("guided_upsampling", "on") == "on":
        consistency = (" Each contrast acquired only in thick slices was then replaced by a local "
                       "linear map of all contrasts' predictions, fitted on its own slices and "
                       "interpolated between them (guided filter [guided]).")
        cited.append("guided")
    if rounds:
        consistency += (f" Each contrast was then made to reproduce its acquired stacks by {rounds} "
                        f"round{'s' if rounds > 1 else ''} of iterative back-projection [ibp] "
                        "with the same slice-profile forward model.")
        cited.append("ibp")
    text = (
        f"# Methods\n\nSuper-resolved images were generated with {NAME} {get_version()}, "
        "which uses Nipype [nipype] " f"{_version('nipype')} and PyBIDS [pybids] "
        f"{_version('pybids')}. {prep}All stacks of a subject were then fitted jointly with "
        "a multi-contrast implicit neural representation in scanner coordinates [mcsr], "
        f"implemented in PyTorch [pytorch] {_version('torch')} (model '{options['model']}', "
        f"slice profile '{options['slice_profile']}', {epochs} epochs with mutual-information "
        f"based stopping), and the representation was sampled {grid}.{consistency}"
        "\n\n## References\n\n"
    )
    refs = {"mcsr": METHOD_CITATION, **_REFERENCES}
    return text + "\n".join(f"- [{key}] {refs[key]}" for key in cited) + "\n"
