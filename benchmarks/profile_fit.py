"""Where the INR fit's time goes: a per-part profile of training steps, inference and one
back-projection round on the pipeline benchmark's subject.

The problem is :mod:`benchmarks.bench_pipeline`'s: two 4 mm stacks in complementary
orientations (T1w axial, T2w coronal) simulated from the ICBM 2009a template, output on the
template's grid; N4 and the rigid registration are skipped (they do not change the fit's
cost). The fit is set up exactly as :func:`bids_mcsr.inr.superres.super_resolve` does, through
the library's private functions: ``superres._problem`` (samples, acquisition parameters),
``superres._train`` (model, memory plan and training settings; its call of ``train`` is
replaced by a stub so that nothing is trained) and ``training._Fit`` (optimisers, schedule,
compiled forward). The timed steps are the library's own loop, ``_Fit.epoch``, cut to
``--steps`` steps of an epoch past the acquisition warm-up (so every ``acquisition_every``-th
step also learns the stack poses, as in most of a real fit), after ``--warmup`` untimed steps.

Each part is timed with ``time.perf_counter`` around the library's calls (wrappers, module
forward hooks, optimiser step hooks) and marked with ``torch.autograd.profiler.record_function``
(``mcsr::...``) for the profiler pass. The backward pass is split with gradient hooks on the
network's output, the encoding's output and the pose-moved points: the autograd engine runs a
CPU graph in one thread, in reverse order of creation, so the hooks fire between the loss's,
the MLP's, the encoding's and the poses' backward. Parts:

* batch sampling: the epoch's shuffle (``TrainingSamples.epoch_indices``), amortised over the
  real epoch's steps;
* profile points: the slab's stratified points of the batch (gathers, quantiles);
* pose transform: ``StackAcquisition.move``;
* encoding / MLP forward: the hash grid, then trunk and heads (with ``--compile`` one part,
  "network forward", and one "network backward");
* loss: the gathers of contrast and value, the profile mean, the contrast-balanced MSE;
* backward: loss, MLP, encoding (the table scatter; on pose steps also the coordinate
  gradient) and pose (rotation and translation);
* optimiser step: Adam;
* width step: the held-out slice-profile width step (only with learned profiles);
* per-epoch scoring: held-out error and MI after the epoch (``_Fit.record``), amortised;
* Python overhead: the step's wall time less every part above (loop, schedule, hooks).

A second, shorter pass (``--profiler-steps``) runs the same steps under ``torch.profiler``
(CPU activities, shapes not recorded) and lists the operators with the most self time and
the autograd nodes with the most total time; ``--trace`` writes its Chrome trace.

Inference is timed as ``predict_points`` on 1M consecutive voxels of the output grid (raster
order, as ``predict_grid`` visits them), the back-projection as one round of
``enforce_consistency`` per contrast on the network's (barely trained) volumes. CPU only.

Usage::

    python benchmarks/profile_fit.py                        # 2 mm template, 50 steps, 2 threads
    python benchmarks/profile_fit.py --truth-mm 2 --steps 30 --threads 1
    python benchmarks/profile_fit.py --truth-mm 1 --threads 2 --json profile.json
    python benchmarks/profile_fit.py --compile              # torch.compile, as long fits use
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import defaultdict
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable, Iterator
from unittest import mock

import numpy as np
import torch
from torch.autograd.profiler import record_function

from bids_mcsr.acquisition.backprojection import enforce_consistency
from bids_mcsr.acquisition.simulate import simulate_stack
from bids_mcsr.evaluation.phantom import mni_truth
from bids_mcsr.image.geometry import Grid, pick_reference, voxel_centres_chunk
from bids_mcsr.image.io import Stack
from bids_mcsr.image.noise import estimate_noise
from bids_mcsr.inr import superres, training
from bids_mcsr.inr.config import SRConfig
from bids_mcsr.inr.inference import predict_grid, predict_points
from bids_mcsr.inr.training import TrainHistory

INFERENCE_POINTS = 1_000_000
# the step table's rows: key, label
PARTS = (
    ("sampling", "batch sampling (epoch shuffle, amortised)"),
    ("points", "profile points (slab sampling, gathers)"),
    ("pose", "pose transform"),
    ("encoding_fwd", "hash-grid encoding forward"),
    ("mlp_fwd", "MLP forward (trunk + heads)"),
    ("network_fwd", "network forward (compiled)"),
    ("loss", "loss (gathers, profile mean, balanced MSE)"),
    ("loss_bwd", "loss backward"),
    ("mlp_bwd", "MLP backward"),
    ("encoding_bwd", "encoding backward (table scatter; coordinates on pose steps)"),
    ("network_bwd", "network backward (compiled)"),
    ("pose_bwd", "pose backward (pose steps)"),
    ("optimiser", "optimiser step (Adam)"),
    ("width_step", "width step (held-out, learned profiles)"),
    ("scoring", "per-epoch scoring (held-out error, MI; amortised)"),
    ("overhead", "Python overhead (wall minus the parts)"),
)


def build_stacks(truth_mm: int, crop: bool, thickness: float) -> tuple[list[Stack], Grid]:
    """The pipeline benchmark's subject: T1w axial and T2w coronal thick-slice stacks.

    Parameters
    ----------
    truth_mm : int
        Voxel size of the template (1 or 2 mm).
    crop : bool
        Trim the empty border around the head (the benchmark does not).
    thickness : float
        Slice thickness (and spacing) of the stacks, mm.

    Returns
    -------
    stacks : list of Stack
        The two stacks.
    grid : Grid
        The template's grid (the output grid).
    """
    vols, affine = mni_truth(truth_mm, crop=crop)
    t1 = Stack(*simulate_stack(vols["T1w"], affine, 2, thickness), "T1w", "acq-ax_T1w")
    t2 = Stack(*simulate_stack(vols["T2w"], affine, 1, thickness), "T2w", "acq-cor_T2w")
    return [t1, t2], Grid(vols["T1w"].shape, affine)


def set_up_fit(stacks: list[Stack], grid: Grid, config: SRConfig, device: torch.device):
    """The fit's state as :func:`~bids_mcsr.inr.superres.super_resolve` builds it.

    Parameters
    ----------
    stacks : list of Stack
        The subject's stacks.
    grid : Grid
        The output grid.
    config : SRConfig
        Resolved settings.
    device : torch.device
        Where to train.

    Returns
    -------
    problem : superres._Problem
        Samples, acquisition parameters, frame and masks.
    fit : training._Fit
        Model, optimisers, schedule and the (possibly compiled) forward.
    plan : bids_mcsr.inr.memory.MemoryPlan
        The memory plan (its chunk is inference's).
    """
    reference = pick_reference([s.voxel_sizes for s in stacks])
    problem = superres._problem(stacks, config, grid, reference)
    with mock.patch.object(superres, "train", lambda *args, **kwargs: TrainHistory([])):
        model, _, tcfg, plan, _ = superres._train(problem, config, device, None, None)
    fit = training._Fit(model, problem.acquisition, problem.samples, problem.contrasts, tcfg, device)
    return problem, fit, plan


class Probes:
    """Timers of the parts of a training step, fed by wrappers and hooks on the library's calls.

    ``totals`` are seconds summed over the steps run while installed (:meth:`install`);
    ``steps`` counts them.
    """

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.steps = 0
        self.active = False  # inside the step's own loss (not the width step, not scoring)
        self.marks: dict[str, float] = {}
        self._ranges: dict[str, record_function] = {}

    def reset(self) -> None:
        self.totals.clear()
        self.steps = 0

    def timed(self, fn: Callable, key: str, always: bool = False) -> Callable:
        """``fn``, its time added to ``totals[key]`` (only inside a step's loss unless ``always``)."""
        def wrapper(*args, **kwargs):
            if not (self.active or always):
                return fn(*args, **kwargs)
            t = time.perf_counter()
            with record_function(f"mcsr::{key}"):
                out = fn(*args, **kwargs)
            self.totals[key] += time.perf_counter() - t
            return out
        return wrapper

    def _begin(self, key: str) -> None:
        if self.active:
            self.marks[key] = time.perf_counter()
            self._ranges[key] = record_function(f"mcsr::{key}").__enter__()

    def _end(self, key: str, output: torch.Tensor, grad_mark: str) -> None:
        if not self.active or key not in self.marks:
            return
        self._ranges.pop(key).__exit__(None, None, None)
        self.totals[key] += time.perf_counter() - self.marks.pop(key)
        if output.requires_grad:
            output.register_hook(lambda grad: self._mark(grad_mark))

    def _mark(self, name: str) -> None:
        self.marks[name] = time.perf_counter()

    def _loss(self, fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            self.marks.clear()
            self.active = True
            t = time.perf_counter()
            try:
                with record_function("mcsr::loss_call"):
                    out = fn(*args, **kwargs)
            finally:
                self.active = False
            self.marks["backward_start"] = time.perf_counter()
            self.totals["loss_call"] += self.marks["backward_start"] - t
            return out
        return wrapper

    def _before_step(self, *_) -> None:
        """Split the backward that just ended at its gradient marks (see the module docstring)."""
        m, now = self.marks, time.perf_counter()
        m["step_start"] = now
        chain = [("backward_start", "loss_bwd"), ("out_grad", "mlp_bwd" if "enc_grad" in m else
                                                  "network_bwd"),
                 ("enc_grad", "encoding_bwd"), ("points_grad", "pose_bwd")]
        present = [(m[mark], key) for mark, key in chain if mark in m]
        for (t, key), (t_next, _) in zip(present, present[1:] + [(now, "")]):
            self.totals[key] += t_next - t
        self.totals["backward"] += now - m.get("backward_start", now)

    def _after_step(self, *_) -> None:
        self.totals["optimiser"] += time.perf_counter() - self.marks.get("step_start", time.perf_counter())
        self.steps += 1

    @contextmanager
    def install(self, fit: training._Fit) -> Iterator[Probes]:
        """Wrap and hook ``fit``'s calls for as long as the context lasts.

        With an eager forward the encoding gets forward hooks (encoding vs MLP); with a
        compiled one only the compiled module does (the network as a whole).
        """
        samples, acquisition = fit.samples, fit.acquisition
        compiled = fit.forward is not fit.model
        network = fit.forward if compiled else fit.model
        with ExitStack() as stack:
            stack.enter_context(mock.patch.object(samples, "epoch_indices",
                                                  self.timed(samples.epoch_indices, "shuffle", True)))
            stack.enter_context(mock.patch.object(samples, "profile_points",
                                                  self.timed(samples.profile_points, "points_call")))
            stack.enter_context(mock.patch.object(acquisition, "move", self._move(acquisition.move)))
            stack.enter_context(mock.patch.object(fit, "_loss", self._loss(fit._loss)))
            stack.enter_context(mock.patch.object(training, "width_step",
                                                  self.timed(training.width_step, "width_step", True)))
            handles = [
                network.register_forward_pre_hook(lambda mod, inp: self._begin("network")),
                network.register_forward_hook(lambda mod, inp, out: self._end("network", out, "out_grad")),
                fit.opt.register_step_pre_hook(self._before_step),
                fit.opt.register_step_post_hook(self._after_step),
            ]
            if not compiled:
                encoding = fit.model.encoding
                handles += [
                    encoding.register_forward_pre_hook(lambda mod, inp: self._begin("encoding")),
                    encoding.register_forward_hook(
                        lambda mod, inp, out: self._end("encoding", out, "enc_grad")),
                ]
            try:
                yield self
            finally:
                for handle in handles:
                    handle.remove()

    def _move(self, fn: Callable) -> Callable:
        timed = self.timed(fn, "pose")

        def wrapper(*args, **kwargs):
            out = timed(*args, **kwargs)
            if self.active and out.requires_grad:
                out.register_hook(lambda grad: self._mark("points_grad"))
            return out
        return wrapper


def run_steps(fit: training._Fit, n_steps: int, epoch: int) -> tuple[np.ndarray, int, float]:
    """``n_steps`` steps of the library's epoch loop (``_Fit.epoch``).

    Returns
    -------
    per_contrast : numpy.ndarray
        The epoch's per-contrast mean loss.
    trained : int
        Voxels trained on.
    seconds : float
        Wall time of the call.
    """
    real = fit.steps_per_epoch
    fit.steps_per_epoch = n_steps
    try:
        t = time.perf_counter()
        per_contrast, trained = fit.epoch(epoch)
        return per_contrast, trained, time.perf_counter() - t
    finally:
        fit.steps_per_epoch = real


def step_table(probes: Probes, wall_s: float, scoring_s: float, steps_per_epoch: int) -> dict[str, float]:
    """Milliseconds per step of every part (:data:`PARTS`) and the ``total``.

    The epoch shuffle and the per-epoch scoring are amortised over the real epoch's
    ``steps_per_epoch`` steps; the overhead is the steps' wall time less the parts in them.
    """
    tot, n = probes.totals, max(probes.steps, 1)
    per_step = {
        "points": tot["points_call"] - tot["pose"],
        "pose": tot["pose"],
        "encoding_fwd": tot["encoding"],
        "mlp_fwd": tot["network"] - tot["encoding"] if tot["encoding"] else 0.0,
        "network_fwd": 0.0 if tot["encoding"] else tot["network"],
        "loss": tot["loss_call"] - tot["points_call"] - tot["network"],
    }
    for key in ("loss_bwd", "mlp_bwd", "encoding_bwd", "network_bwd", "pose_bwd", "optimiser", "width_step"):
        per_step[key] = tot[key]
    steps_wall = wall_s - tot["shuffle"]
    per_step["overhead"] = steps_wall - sum(per_step.values())
    ms = {key: 1e3 * value / n for key, value in per_step.items()}
    ms["sampling"] = 1e3 * tot["shuffle"] / steps_per_epoch
    ms["scoring"] = 1e3 * scoring_s / steps_per_epoch
    ms["total"] = sum(ms.values())
    ms["backward"] = 1e3 * tot["backward"] / n
    return ms


def profiler_pass(fit: training._Fit, probes: Probes, n_steps: int, top: int,
                  trace: Path | None) -> dict:
    """The same steps under ``torch.profiler``: top operators by self time and autograd
    nodes by total time, milliseconds per step."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    with probes.install(fit), torch.profiler.profile(activities=activities, record_shapes=False) as prof:
        run_steps(fit, n_steps, epoch=fit.config.acquisition_warmup + 1)
    if trace is not None:
        prof.export_chrome_trace(str(trace))
    events = prof.key_averages()
    ops = [e for e in events if not e.key.startswith(("mcsr::", "autograd::", "Optimizer."))]
    self_total = sum(e.self_cpu_time_total for e in ops) or 1.0
    ops.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    nodes = [e for e in events if e.key.startswith("autograd::engine::evaluate_function: ")]
    nodes.sort(key=lambda e: e.cpu_time_total, reverse=True)
    return {
        "steps": n_steps,
        "ops": [{"name": e.key, "self_ms_per_step": e.self_cpu_time_total / 1e3 / n_steps,
                 "share_of_op_time": e.self_cpu_time_total / self_total, "calls_per_step": e.count / n_steps}
                for e in ops[:top]],
        "autograd_nodes": [{"name": e.key.split(": ", 1)[1],
                            "total_ms_per_step": e.cpu_time_total / 1e3 / n_steps,
                            "calls_per_step": e.count / n_steps} for e in nodes[:top]],
    }


def time_inference(model: torch.nn.Module, problem, grid: Grid, device: torch.device,
                   chunk: int) -> tuple[float, np.ndarray, float]:
    """Voxels/s of ``predict_points`` on up to 1M consecutive grid voxels (the grid's middle),
    and the whole grid's prediction (``predict_grid``) with its seconds."""
    n = min(INFERENCE_POINTS, grid.n_voxels)
    start = (grid.n_voxels - n) // 2
    coords = problem.frame.normalise(voxel_centres_chunk(grid.shape, grid.affine, start, start + n))
    coords = coords.astype(np.float32)
    predict_points(model, coords[:chunk], device, chunk)  # warm-up
    t = time.perf_counter()
    predict_points(model, coords, device, chunk)
    points_per_s = n / (time.perf_counter() - t)
    t = time.perf_counter()
    pred = predict_grid(model, problem.frame, grid, device, chunk)
    return points_per_s, pred, time.perf_counter() - t


def time_backprojection(pred: np.ndarray, stacks: list[Stack], problem, config: SRConfig) -> float:
    """Seconds of one ``enforce_consistency`` round per contrast, on the network's volumes in
    each contrast's first stack's scale, as ``superres._to_volumes`` calls it."""
    fitted = [f.apply(s) for f, s in zip(problem.acquisition.fitted(), stacks)]
    seconds = 0.0
    for i, c in enumerate(problem.contrasts):
        own = [k for k, s in enumerate(stacks) if s.contrast == c]
        first = problem.scalers[own[0]]
        scaled = [superres.in_scale_of(fitted[k], problem.scalers[k], first) for k in own]
        sigmas = [estimate_noise(stacks[k]) * (first.high - first.low)
                  / (problem.scalers[k].high - problem.scalers[k].low) for k in own]
        t = time.perf_counter()
        enforce_consistency(first.inverse(pred[i]), problem.grid, scaled, config.slice_profile, 1,
                            config.profile_samples, noise=sigmas, workers=torch.get_num_threads())
        seconds += time.perf_counter() - t
    return seconds


def print_tables(ms: dict[str, float], evals_per_step: int, prof: dict | None, extra: dict) -> None:
    """The step table (markdown), throughputs, and the profiler's lists."""
    print("\n| part | ms per step | share of the step |\n|---|---:|---:|")
    for key, label in PARTS:
        if ms.get(key, 0.0) != 0.0 or key in ("sampling", "overhead"):
            print(f"| {label} | {ms[key]:.2f} | {100 * ms[key] / ms['total']:.1f} % |")
    print(f"| **total** | **{ms['total']:.2f}** | 100 % |")
    print(f"\nbackward in all: {ms['backward']:.2f} ms per step; network evaluations "
          f"(samples x profile points): {evals_per_step} per step, "
          f"{evals_per_step / ms['total'] * 1e3:,.0f}/s with the per-epoch costs, "
          f"{evals_per_step / (ms['total'] - ms['sampling'] - ms['scoring']) * 1e3:,.0f}/s in the steps")
    print(f"inference: {extra['inference_voxels_per_s']:,.0f} voxels/s (predict_points, "
          f"{extra['inference_points']:,} points); whole grid {extra['grid_voxels']:,} voxels in "
          f"{extra['predict_grid_s']:.2f} s")
    print(f"back-projection: one enforce_consistency round, every contrast: "
          f"{extra['backprojection_round_s']:.2f} s")
    if prof is None:
        return
    print(f"\ntorch.profiler, {prof['steps']} steps (profiler overhead included): "
          "operators by self CPU time\n\n| operator | self ms per step | share of op time | calls per step |"
          "\n|---|---:|---:|---:|")
    for op in prof["ops"]:
        print(f"| {op['name']} | {op['self_ms_per_step']:.2f} | {100 * op['share_of_op_time']:.1f} % "
              f"| {op['calls_per_step']:.1f} |")
    print("\nautograd nodes by total CPU time\n\n| node | ms per step | calls per step |\n|---|---:|---:|")
    for node in prof["autograd_nodes"]:
        print(f"| {node['name']} | {node['total_ms_per_step']:.2f} | {node['calls_per_step']:.1f} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fast", choices=["fast", "paper"])
    p.add_argument("--truth-mm", type=int, default=2, choices=[1, 2],
                   help="voxel size of the template (1: the pipeline benchmark's; 2: quicker)")
    p.add_argument("--crop", action="store_true", help="trim the empty border around the head")
    p.add_argument("--thickness", type=float, default=4.0, help="slice thickness of the stacks, mm")
    p.add_argument("--steps", type=int, default=50, help="timed training steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed training steps first")
    p.add_argument("--profiler-steps", type=int, default=10,
                   help="steps of the torch.profiler pass (0: none)")
    p.add_argument("--top", type=int, default=12, help="rows of the profiler's lists")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the network, as training does on long fits (compiling takes long)")
    p.add_argument("--trace", type=Path, default=None, help="write the profiler pass's Chrome trace")
    p.add_argument("--json", type=Path, default=None, help="save the figures")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    device = torch.device("cpu")
    config = SRConfig(model=a.model, threads=a.threads, compile=a.compile, device="cpu").resolved()
    t = time.perf_counter()
    stacks, grid = build_stacks(a.truth_mm, a.crop, a.thickness)
    problem, fit, plan = set_up_fit(stacks, grid, config, device)
    setup_s = time.perf_counter() - t
    n_steps = min(a.steps, fit.steps_per_epoch)
    epoch = fit.config.acquisition_warmup + 1  # past the warm-up: the poses learn too

    t = time.perf_counter()
    run_steps(fit, max(a.warmup, 1), epoch)
    warmup_s = time.perf_counter() - t
    compiled = fit.forward is not fit.model
    probes = Probes()
    with probes.install(fit):
        per_contrast, trained, wall_s = run_steps(fit, n_steps, epoch)
    t = time.perf_counter()
    fit.record(epoch, per_contrast, trained, wall_s, problem.mi_coords)
    scoring_s = time.perf_counter() - t
    ms = step_table(probes, wall_s, scoring_s, fit.steps_per_epoch)
    prof = (profiler_pass(fit, Probes(), min(a.profiler_steps, fit.steps_per_epoch), a.top, a.trace)
            if a.profiler_steps > 0 else None)
    points_per_s, pred, grid_s = time_inference(fit.model, problem, grid, device, plan.chunk)
    extra = {"inference_voxels_per_s": points_per_s, "inference_points": min(INFERENCE_POINTS, grid.n_voxels),
             "grid_voxels": grid.n_voxels, "predict_grid_s": grid_s,
             "backprojection_round_s": time_backprojection(pred, stacks, problem, config)}

    samples = fit.samples
    evals_per_step = fit.batch_size * samples.n_profile
    print(f"bids-mcsr fit profile: {a.model} model, profile {config.slice_profile}, "
          f"torch {torch.__version__} (CPU, {a.threads} threads), python {platform.python_version()}"
          f"{', torch.compile' if compiled else ''}")
    print(f"stacks {' + '.join(str(s.data.shape) for s in stacks)} -> grid {grid.shape} at {a.truth_mm} mm; "
          f"{len(samples):,} samples, batch {fit.batch_size} x {samples.n_profile} profile points, "
          f"{fit.steps_per_epoch} steps per epoch; poses learned: {fit.acquisition.rotation.requires_grad} "
          f"(every {fit.config.acquisition_every}th step), widths: {fit.width_opt is not None}")
    print(f"timed {probes.steps} steps after {max(a.warmup, 1)} warm-up steps ({warmup_s:.1f} s); "
          f"setup {setup_s:.1f} s")
    print_tables(ms, evals_per_step, prof, extra)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({
            "meta": {"torch": torch.__version__, "python": platform.python_version(), "device": "cpu"},
            "settings": {"model": a.model, "truth_mm": a.truth_mm, "crop": a.crop,
                         "thickness_mm": a.thickness, "threads": a.threads, "compiled": compiled,
                         "steps": probes.steps, "warmup": max(a.warmup, 1)},
            "problem": {"samples": len(samples), "batch_size": fit.batch_size,
                        "profile_points": samples.n_profile, "steps_per_epoch": fit.steps_per_epoch,
                        "grid": list(grid.shape)},
            "ms_per_step": ms, "evaluations_per_step": evals_per_step,
            "evaluations_per_s": evals_per_step / ms["total"] * 1e3, **extra, "profiler": prof}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
