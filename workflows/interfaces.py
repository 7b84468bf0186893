"""Small nipype interfaces, each a thin call to one ``bids_mcsr.steps`` function.

Files are declared as ``File`` traits so nipype's cache notices when an input changes.
"""

from __future__ import annotations

import json
import os

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from bids_mcsr import steps


class _BiasCorrectInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="stack to correct")
    contrast = traits.Str(mandatory=True, desc="contrast key of the stack")
    threads = traits.Int(1, usedefault=True, desc="ITK threads")


class _StackOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="processed stack")


class BiasCorrect(SimpleInterface):
    """N4 bias-field correction of one stack (``bids_mcsr.steps.bias_correct``)."""

    input_spec = _BiasCorrectInputSpec
    output_spec = _StackOutputSpec

    def _run_interface(self, runtime):
        out = os.path.join(runtime.cwd, "n4.nii.gz")
        self._results["out_file"] = steps.bias_correct(
            self.inputs.in_file, self.inputs.contrast, out, self.inputs.threads)
        return runtime


class _SelectReferenceInputSpec(BaseInterfaceInputSpec):
    in_files = InputMultiObject(File(exists=True), mandatory=True, desc="stacks")
    contrasts = traits.List(traits.Str, mandatory=True, desc="their contrasts")
    names = traits.List(traits.Str, mandatory=True, desc="their BIDS file names")
    reference = traits.Either(None, traits.Str, usedefault=True,
                              desc="contrast or part of a file name to register to")


class _SelectReferenceOutputSpec(TraitedSpec):
    reference_file = File(exists=True, desc="the reference stack")
    index = traits.Int(desc="its position in in_files")


class SelectReference(SimpleInterface):
    """Pick the stack every other stack is registered to."""

    input_spec = _SelectReferenceInputSpec
    output_spec = _SelectReferenceOutputSpec

    def _run_interface(self, runtime):
        index = steps.select_reference(list(self.inputs.in_files), self.inputs.contrasts,
                                       self.inputs.names, self.inputs.reference)
        self._results["index"] = index
        self._results["reference_file"] = self.inputs.in_files[index]
        return runtime


class _RegisterInputSpec(BaseInterfaceInputSpec):
    moving_file = File(exists=True, mandatory=True, desc="stack to align")
    reference_file = File(exists=True, mandatory=True, desc="fixed stack")
    contrast = traits.Str(mandatory=True, desc="contrast of the moving stack")
    seed = traits.Int(0, usedefault=True, desc="seed of ANTs' metric sampling")


class _RegisterOutputSpec(_StackOutputSpec):
    xfm_file = File(exists=True, desc="ITK text transform, reference -> moving (LPS)")


class RigidRegister(SimpleInterface):
    """Rigid registration that rewrites the moving stack's affine (no resampling)."""

    input_spec = _RegisterInputSpec
    output_spec = _RegisterOutputSpec

    def _run_interface(self, runtime):
        out, xfm = steps.register(
            self.inputs.moving_file, self.inputs.reference_file, self.inputs.contrast,
            os.path.join(runtime.cwd, "registered.nii.gz"),
            os.path.join(runtime.cwd, "xfm.txt"), self.inputs.seed)
        self._results["out_file"], self._results["xfm_file"] = out, xfm
        return runtime


class _IdentityXfmInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="stack left where it is")


class IdentityTransform(SimpleInterface):
    """Stand-in for registration when it is switched off: the stack and an identity."""

    input_spec = _IdentityXfmInputSpec
    output_spec = _RegisterOutputSpec

    def _run_interface(self, runtime):
        out, xfm = steps.register(self.inputs.in_file, self.inputs.in_file, "none",
                                  os.path.join(runtime.cwd, "registered.nii.gz"),
                                  os.path.join(runtime.cwd, "xfm.txt"))
        self._results["out_file"], self._results["xfm_file"] = out, xfm
        return runtime


class _SuperResolveInputSpec(BaseInterfaceInputSpec):
    in_files = InputMultiObject(File(exists=True), mandatory=True, desc="registered stacks")
    source_files = traits.List(traits.Str, mandatory=True,
                               desc="the input files they come from (for messages and records)")
    contrasts = traits.List(traits.Str, mandatory=True, desc="their contrasts")
    thicknesses = traits.List(traits.Either(None, traits.Float), mandatory=True,
                              desc="their slice thicknesses in mm (None: the spacing)")
    config = traits.Dict(mandatory=True, desc="SRConfig keyword arguments")
    output_grid = traits.Either(None, File(exists=True), usedefault=True,
                                desc="image whose grid the outputs use")
    reference_index = traits.Either(None, traits.Int, usedefault=True,
                                    desc="the reference stack: orients the grid, keeps its pose")


class _SuperResolveOutputSpec(TraitedSpec):
    volumes = traits.Dict(desc="contrast -> super-resolved NIfTI")
    mask = File(exists=True, desc="foreground mask on the output grid")
    result = File(exists=True, desc="JSON: history, settings, final MI, runtime, device")


class SuperResolve(SimpleInterface):
    """Fit the multi-contrast INR and sample it on the output grid."""

    input_spec = _SuperResolveInputSpec
    output_spec = _SuperResolveOutputSpec

    def _run_interface(self, runtime):
        self._results.update(steps.superresolve(
            list(self.inputs.in_files), self.inputs.contrasts, self.inputs.thicknesses,
            os.path.join(runtime.cwd, "sr"), self.inputs.config, self.inputs.output_grid,
            self.inputs.reference_index, self.inputs.source_files))
        return runtime


class _QCInputSpec(BaseInterfaceInputSpec):
    result = File(exists=True, mandatory=True, desc="result.json of SuperResolve")


class _QCOutputSpec(TraitedSpec):
    curves = File(exists=True, desc="training curves (TSV)")
    metrics = traits.Dict(desc="final MI, runtime, device, epochs")


class TrainingQC(SimpleInterface):
    """Report inputs from a finished fit: the loss/MI curves and summary metrics."""

    input_spec = _QCInputSpec
    output_spec = _QCOutputSpec

    def _run_interface(self, runtime):
        from bids_mcsr.qc.records import curves_tsv

        with open(self.inputs.result) as handle:
            result = json.load(handle)
        curves = os.path.join(runtime.cwd, "training_curves.tsv")
        with open(curves, "w") as handle:
            handle.write(curves_tsv(result["history"]))
        self._results["curves"] = curves
        self._results["metrics"] = {k: result[k] for k in
                                    ("final_mi", "runtime_s", "device", "epochs_run",
                                     "stopped_epoch")}
        return runtime
