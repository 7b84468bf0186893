"""The model presets: ``paper`` is the published code's configuration, ``fast`` is unchanged,
unset settings take the model's value and an explicit one overrides it."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bids_mcsr.acquisition.simulate import simulate_stack
from bids_mcsr.cli.parser import parse_args
from bids_mcsr.evaluation.phantom import mni_truth
from bids_mcsr.image.geometry import CoordinateFrame
from bids_mcsr.image.intensity import IntensityScaler
from bids_mcsr.image.io import Stack
from bids_mcsr.inr.acquisition_fit import StackAcquisition
from bids_mcsr.inr.config import SRConfig
from bids_mcsr.inr.model import build_model
from bids_mcsr.inr.presets import (
    MIN_BUDGET_EPOCHS,
    PRESETS,
    RUN_CHOICES,
    epochs_within_budget,
    model_spec,
    run_choices,
)
from bids_mcsr.inr.sampling import build_samples, stack_masks_and_scalers
from bids_mcsr.inr.superres import super_resolve
from bids_mcsr.inr.training import TrainConfig, train


def tiny_case():
    """A 32 mm cube of the 2 mm template as a 6 mm axial T1w and a 6 mm sagittal T2w stack
    (about 1500 voxels each: small enough for the 1024-wide paper network on a CPU)."""
    vols, affine = mni_truth(2)
    start = np.array([37, 46, 37])
    crop = tuple(slice(a, a + 16) for a in start)
    affine = affine.copy()
    affine[:3, 3] += affine[:3, :3] @ start
    return [Stack(*simulate_stack(vols["T1w"][crop], affine, 2, 6.0), "T1w", "t1.nii.gz"),
            Stack(*simulate_stack(vols["T2w"][crop], affine, 0, 6.0), "T2w", "t2.nii.gz")]


def test_paper_preset_is_the_published_code():
    spec = model_spec("paper")
    assert (spec.encoding, spec.encoding_args) == ("fourier", {"n_frequencies": 256, "scale": 4.0})
    assert (spec.trunk_width, spec.trunk_depth, spec.head_width) == (1024, 5, 512)
    assert (spec.epochs, spec.batch_size, spec.lr) == (50, 1000, 4e-4)
    assert (spec.adam_betas, spec.adam_eps) == ((0.9, 0.999), 1e-8)
    assert (spec.schedule, spec.lr_floor) == ("per-epoch", 0.0)
    assert (spec.min_steps_per_epoch, spec.drop_last) == (1, False)
    assert (spec.background_fraction, spec.intensity_scaling) == (1.0, "minmax")
    assert (spec.slice_profile, spec.consistency_iterations, spec.holdout_fraction) == ("none", 0, 0.0)


def test_fast_preset_keeps_its_training_choices():
    spec = model_spec("fast")
    assert ((spec.lr, spec.adam_betas, spec.adam_eps, spec.schedule, spec.lr_floor)
            == (1e-2, (0.9, 0.99), 1e-15, "per-step", 0.01))
    assert (spec.min_steps_per_epoch, spec.drop_last) == (200, True)
    assert (spec.background_fraction, spec.intensity_scaling) == (0.2, "percentile")
    assert (spec.slice_profile, spec.consistency_iterations, spec.holdout_fraction) == ("boxcar", 3, 0.05)
    assert TrainConfig().adam_betas == spec.adam_betas and TrainConfig().schedule == spec.schedule


def test_unset_choices_take_the_model_value_and_given_ones_stay():
    paper = SRConfig(model="paper").resolved()
    assert {name: getattr(paper, name) for name in RUN_CHOICES} == {
        "slice_profile": "none", "consistency_iterations": 0, "holdout_fraction": 0.0,
        "background_fraction": 1.0, "intensity_scaling": "minmax", "mi_stopping": False,
        "refine_registration": False}
    assert SRConfig().resolved().mi_stopping is True  # ours stops when MI plateaus
    assert SRConfig().resolved().refine_registration == "auto"  # when a stack looks misaligned
    mixed = SRConfig(model="paper", slice_profile="gaussian", consistency_iterations=2).resolved()
    assert (mixed.slice_profile, mixed.consistency_iterations, mixed.holdout_fraction) == ("gaussian", 2, 0.0)
    assert SRConfig().resolved().slice_profile == "boxcar"
    with pytest.raises(ValueError, match="per-run choice"):
        run_choices("fast", epochs=None)


def _options(tmp_path: Path, *extra: str):
    bids = tmp_path / "bids"
    bids.mkdir(exist_ok=True)
    (bids / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.10.0"}')
    return parse_args([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w"), *extra])


def test_command_line_takes_the_model_defaults_unless_given(tmp_path):
    fast = _options(tmp_path)
    assert (fast.slice_profile, fast.consistency_iterations, fast.holdout_fraction) == ("boxcar", 3, 0.05)
    paper = _options(tmp_path, "--model", "paper")
    assert (paper.slice_profile, paper.consistency_iterations, paper.holdout_fraction) == ("none", 0, 0.0)
    ours = _options(tmp_path, "--model", "paper", "--slice-profile", "gaussian",
                    "--consistency-iterations", "3", "--holdout-fraction", "0.05")
    assert (ours.slice_profile, ours.consistency_iterations, ours.holdout_fraction) == ("gaussian", 3, 0.05)


def test_minmax_scaling_maps_the_stack_onto_zero_to_one():
    data = np.random.default_rng(0).gamma(2.0, 50.0, (20, 20, 5)).astype(np.float32)
    scaler = IntensityScaler.fit(data, data > 100, "minmax")
    scaled = scaler.forward(data)
    assert scaled.min() == 0 and np.isclose(scaled.max(), 1)
    assert IntensityScaler.fit(data, data > 100).high < data.max()  # percentile: robust
    with pytest.raises(ValueError, match="intensity scaling"):
        IntensityScaler.fit(data, data > 100, "zscore")


def test_per_epoch_cosine_reaches_zero_after_the_last_epoch():
    cfg = TrainConfig(epochs=4, lr=1.0, schedule="per-epoch", lr_floor=0.0)
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = cfg.scheduler(opt, steps_per_epoch=7)
    seen = []
    for _ in range(cfg.epochs):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert np.allclose(seen, [0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert TrainConfig(drop_last=False).steps_per_epoch(2500, 1000) == 3
    assert TrainConfig().steps_per_epoch(2500, 1000) == 2


class _Counting(torch.nn.Module):
    """A network that records how many points it is asked for."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner, self.points = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.points += x.shape[0]
        return self.inner(x)


@pytest.mark.slow
def test_a_paper_epoch_trains_on_every_voxel_once():
    stacks = tiny_case()
    frame = CoordinateFrame.from_stacks(stacks)
    masks, scalers = stack_masks_and_scalers(stacks, "minmax")
    samples = build_samples(stacks, ["T1w", "T2w"], frame, scalers, masks, "none")
    acquisition = StackAcquisition(stacks, frame, samples.profiled, "none", learn_profile=False,
                                   refine_pose=False, reference=0)
    model = build_model(model_spec("fast"), 2, 2 * frame.half_extent_mm)  # the loop is the paper's
    spec = model_spec("paper")
    cfg = TrainConfig(epochs=1, batch_size=spec.batch_size, lr=spec.lr, adam_betas=spec.adam_betas,
                      adam_eps=spec.adam_eps, schedule=spec.schedule, lr_floor=spec.lr_floor,
                      drop_last=spec.drop_last, min_steps_per_epoch=spec.min_steps_per_epoch,
                      background_fraction=spec.background_fraction, mi_stopping=False)
    counting = _Counting(model)
    train(counting, acquisition, samples, ["T1w", "T2w"], cfg, torch.device("cpu"))
    assert len(samples) % spec.batch_size != 0  # the last batch is a partial one
    assert counting.points == len(samples) == samples.n_epoch(1.0)
    assert np.array_equal(np.sort(samples.epoch_indices(np.random.default_rng(0), 1.0)),
                          np.arange(len(samples)))


@pytest.mark.slow
def test_a_paper_run_uses_its_published_choices_and_a_flag_overrides_one():
    stacks = tiny_case()
    res = super_resolve(stacks, SRConfig(model="paper", epochs=1, threads=2, keep_network_output=True,
                                         mi_stopping=False))
    s = res.settings
    assert (s["slice_profile"], s["consistency_iterations"], s["holdout_fraction"]) == ("none", 0, 0.0)
    assert (s["background_fraction"], s["intensity_scaling"]) == (1.0, "minmax")
    assert (s["model"]["schedule"], tuple(s["model"]["adam_betas"]), s["model"]["adam_eps"]) == (
        "per-epoch", (0.9, 0.999), 1e-8)
    for stack in stacks:  # min-max: each stack's own minimum and maximum
        scaler = s["intensity_scalers"][stack.name]
        assert (scaler["low"], scaler["high"]) == (float(stack.data.min()), float(stack.data.max()))
    for c in res.contrasts:  # no back-projection, no held-out slices
        assert np.array_equal(res.volumes[c], res.network_volumes[c])
        assert res.validation[c]["gain_db"] is None
        assert all(a["heldout_slices"] == [] for a in res.acquisition)
    ours = super_resolve(stacks, SRConfig(model="paper", epochs=1, threads=2, mi_stopping=False,
                                          slice_profile="gaussian", profile_samples=2,
                                          consistency_iterations=1))
    assert ours.settings["slice_profile"] == ours.settings["model"]["slice_profile"] == "gaussian"
    assert ours.settings["consistency_iterations"] == 1
    assert ours.settings["intensity_scaling"] == "minmax"


def test_the_evaluation_budget_cuts_epochs_only_for_data_that_exceed_it():
    fast = model_spec("fast")
    assert fast.epochs == 10 and fast.max_evaluations == 170_000_000
    assert epochs_within_budget(fast, 8_364_120) == 10  # two whole-head stacks (pipeline benchmark)
    assert epochs_within_budget(fast, 16_647_835) == 10  # four whole-head stacks, four contrasts
    assert epochs_within_budget(fast, 24_167_917) == 7  # six stacks (a 3D T1w), four contrasts
    assert epochs_within_budget(fast, 10**9) == MIN_BUDGET_EPOCHS
    assert epochs_within_budget(model_spec("paper"), 10**9) == 50  # no budget


def test_the_budget_counts_the_held_out_voxels_of_the_width_steps():
    """A width step every ``acquisition_every``-th step on a quarter of a batch: 1/16 more
    evaluations, so four whole-head stacks whose widths learn train 9 epochs, six stacks 6."""
    config = TrainConfig()
    assert config.width_batch(8192) == 2048 and config.width_batch(2) == 1
    assert config.width_evaluations(16_000_000) == 1_000_000
    fast = model_spec("fast")
    for per_epoch, epochs in ((8_364_120, 10), (16_647_835, 9), (24_167_917, 6)):
        assert epochs_within_budget(fast, per_epoch + config.width_evaluations(per_epoch)) == epochs


def test_a_fit_over_the_budget_trains_fewer_epochs_unless_they_are_given(monkeypatch):
    monkeypatch.setattr(PRESETS["fast"], "max_evaluations", 1000)  # far below one epoch of the case
    quick = dict(mi_stopping=False, consistency_iterations=0, guided_upsampling=False, threads=1)
    budgeted = super_resolve(tiny_case(), SRConfig(**quick))
    assert budgeted.epochs_run == MIN_BUDGET_EPOCHS == budgeted.settings["model"]["epochs"]
    given = super_resolve(tiny_case(), SRConfig(epochs=5, **quick))
    assert given.epochs_run == 5
