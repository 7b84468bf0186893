"""How the participant fit scales with the number of stacks and contrasts (clinical protocols).

A ladder of protocols acquired from one truth, the whole ICBM 2009a template of
``bids_mcsr.evaluation.phantom.mni_truth`` (1 mm: 197x233x189 voxels; ``--truth-mm 2`` for a
quick look), each stack by ``acquisitions.make_stacks``: rectangular 4 mm slabs every 4 mm,
no noise; a 3D stack is the truth itself (isotropic at the truth's resolution). The
contrast-enhanced T1w (``bids_mcsr.evaluation.lesions.CE_T1W``) is the T1w, as
``build_lesion_case`` derives it outside lesions (no lesions are inserted here), so it is a
separate contrast head with its own stack, which is all that matters for the cost.

Rows (``ladder()``):

0. 2 stacks / 2 contrasts: T1w ax, T2w cor;
1. 3 stacks / 3 contrasts: + FLAIR sag;
2. 4 stacks / 4 contrasts: + ce-T1w ax;
3. 6 stacks / 4 contrasts: T1w 3D, ce-T1w ax, T2w ax, T2w cor, FLAIR ax, FLAIR sag.

Every row runs ``super_resolve`` with the app's defaults (``SRConfig(threads=..., seed=0)``,
its default output grid) in a fresh process of its own, on stacks read back from NIfTI files,
so that the peak resident memory is the row's alone. Recorded per row: the wall time of each
step (the result's timings, plus writing the outputs), the training samples, the epochs run,
the output grid, the up-front memory plan of the app's input check
(``bids_mcsr.inr.memory.plan_memory``, without ``--mem-gb``, for the row's threads and
device) and the measured peak resident memory of the row's process (``VmHWM`` of
``/proc/self/status``: on Linux ``getrusage(RUSAGE_SELF).ru_maxrss`` of a freshly started
child also counts its parent's peak, carried over the vfork and exec). N4 and rigid
registration are not included (``bench_pipeline.py`` times them for two stacks): the
simulated stacks are aligned.

``--participant``: each row as a user runs it instead. Its stacks are written as a BIDS
dataset (``sub-01``: the 3D T1w as ``sub-01_T1w`` with ``MRAcquisitionType`` 3D, the 2D
stacks as ``sub-01_acq-<plane>_<contrast>`` with their ``SliceThickness``, the ce-T1w as
``sub-01_acq-ax_ce-gadolinium_T1w``), and ``bids-mcsr <bids> <out> participant --nprocs
<threads> --device cpu --skip-bids-validation --seed 0`` runs on it: N4, registration, the
fit, the derivatives and the report. Recorded: its wall time, the subject's seconds from the
run log, and the peak resident memory of its whole process tree (``bench_dataset``'s
sampler, an upper bound).

Usage::

    nice -n 10 python benchmarks/bench_scale.py --truth-mm 1 --threads 2 \\
        --json benchmarks/results/scale.json
    python benchmarks/bench_scale.py --truth-mm 2 --epochs 1 --threads 1   # a quick check that it runs
    python benchmarks/bench_scale.py --participant --rows 3 --json benchmarks/results/scale_participant.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from acquisitions import AX, COR, SAG, Acquisition, StackSpec, header_thickness, make_stacks  # noqa: E402

from bids_mcsr.evaluation.lesions import CE_T1W  # noqa: E402

GB = 2**30
AXIS_NAMES = {AX: "ax", COR: "cor", SAG: "sag", None: "3D"}


def ladder() -> list[Acquisition]:
    """The protocols, fewest stacks first.

    Returns
    -------
    list of Acquisition
        Rectangular 4 mm slabs every 4 mm, no noise; ``axis=None`` is a 3D stack.
    """
    def thick(contrast: str, axis: int) -> StackSpec:
        return StackSpec(contrast, axis, "rect")
    two = [thick("T1w", AX), thick("T2w", COR)]
    return [
        Acquisition("2 stacks: T1w ax, T2w cor", two),
        Acquisition("3 stacks: + FLAIR sag", two + [thick("FLAIR", SAG)]),
        Acquisition("4 stacks: + ce-T1w ax", two + [thick("FLAIR", SAG), thick(CE_T1W, AX)]),
        Acquisition("6 stacks: T1w 3D, ce-T1w ax, T2w ax+cor, FLAIR ax+sag",
                    [StackSpec("T1w", None), thick(CE_T1W, AX), thick("T2w", AX), thick("T2w", COR),
                     thick("FLAIR", AX), thick("FLAIR", SAG)]),
    ]


def stack_file(spec: StackSpec) -> str:
    """File name of a stack in the stack folder, one per contrast and orientation."""
    return f"{spec.contrast}_{AXIS_NAMES[spec.axis]}.nii.gz"


def write_stacks(rows: list[Acquisition], truth_mm: int, folder: Path) -> None:
    """Simulate every stack the rows need, once each, and save it to ``folder``.

    Parameters
    ----------
    rows : list of Acquisition
        The protocols to run.
    truth_mm : int
        Voxel size of the template (1 or 2 mm), not cropped.
    folder : Path
        Where the ``stack_file`` NIfTI files go.
    """
    import nibabel as nib

    from bids_mcsr.evaluation.phantom import mni_truth

    vols, affine = mni_truth(truth_mm, crop=False)
    vols[CE_T1W] = vols["T1w"]  # build_lesion_case's ce-T1w without lesions
    head = vols["T1w"] > 0.05 * vols["T1w"].max()
    specs = {stack_file(s): s for row in rows for s in row.stacks}
    for name, spec in specs.items():
        (stack,), _ = make_stacks(Acquisition(name, [spec]), vols, affine, head, seed=0)
        nib.save(stack.to_nifti(), str(folder / name))


def peak_rss_gb() -> float:
    """Peak resident memory of this process (GB): ``VmHWM`` where ``/proc`` has it, else
    ``ru_maxrss`` (which on Linux includes the parent's peak in a freshly started child)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / GB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def planned_gb(stacks: list, config) -> float:
    """The app's up-front peak-memory estimate for these stacks (``cli.inputs``' input check,
    without ``--mem-gb``), in GB."""
    from bids_mcsr.inr.device import select_device
    from bids_mcsr.inr.memory import estimate, plan_memory
    from bids_mcsr.inr.presets import model_spec
    from bids_mcsr.inr.sampling import profile_points_per_sample

    resolved = config.resolved()
    n_profile = profile_points_per_sample(stacks, resolved.slice_profile, config.profile_samples)
    spec = model_spec(config.model, epochs=config.epochs)
    return plan_memory(estimate(stacks, config.output_spacing), spec, n_profile,
                       workers=config.threads or 1,
                       cuda=select_device(config.device).type == "cuda").peak_bytes / GB


def score(res, stacks: list, truth_mm: int) -> dict:
    """PSNR (dB) inside the head against the truth, per contrast: the output, the network
    before guided upsampling and back-projection, and cubic interpolation of its stacks."""
    from cases import head_mask

    from bids_mcsr.evaluation.phantom import mni_truth
    from bids_mcsr.image.metrics import cubic_baseline, psnr

    vols, _ = mni_truth(truth_mm, crop=False)
    vols[CE_T1W] = vols["T1w"]
    if vols["T1w"].shape != res.grid.shape:
        return {}
    head = head_mask(vols["T1w"])
    out = {}
    for c in res.contrasts:
        own = [s for s in stacks if s.contrast == c]
        out[c] = {"sr": psnr(res.volumes[c], vols[c], head),
                  "net": psnr(res.network_volumes[c], vols[c], head),
                  "cubic": psnr(cubic_baseline(own, res.grid), vols[c], head)}
    return out


def run_one(row: Acquisition, folder: Path, threads: int, epochs: int | None, truth_mm: int) -> dict:
    """Fit one protocol in this process and return its figures.

    Parameters
    ----------
    row : Acquisition
        The protocol.
    folder : Path
        The stack folder of :func:`write_stacks`.
    threads : int
        Threads of the fit.
    epochs : int or None
        Training epochs (None: the model's).

    Returns
    -------
    dict
        Steps (s), total (s), samples, epochs run, output grid, planned and peak memory (GB).
    """
    from bids_mcsr.image.io import load_stack
    from bids_mcsr.inr.config import SRConfig
    from bids_mcsr.inr.result import save_result
    from bids_mcsr.inr.superres import super_resolve

    rss_before = peak_rss_gb()
    stacks = [load_stack(folder / stack_file(s), s.contrast, header_thickness(s)) for s in row.stacks]
    config = SRConfig(threads=threads, seed=0, epochs=epochs, keep_network_output=True)
    planned = planned_gb(stacks, config)
    res = super_resolve(stacks, config)
    steps = {"setup": res.timings["setup_s"], "training": res.timings["training_s"],
             "inference": res.timings["inference_s"], "data consistency": res.timings["consistency_s"]}
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        save_result(res, Path(out))
    steps["writing"] = time.perf_counter() - t
    quality = score(res, stacks, truth_mm)
    return {"quality": quality, "protocol": row.name, "stacks": [stack_file(s) for s in row.stacks],
            "stack_shapes": [list(s.data.shape) for s in stacks],
            "n_stacks": len(stacks), "n_contrasts": len(res.contrasts),
            "samples": int(sum(s.data.size for s in stacks)), "epochs_run": res.epochs_run,
            "grid": list(res.grid.shape), "grid_voxels": int(res.grid.n_voxels),
            "steps_s": steps, "total_s": float(sum(steps.values())),
            "planned_gb": planned, "peak_rss_gb": peak_rss_gb(), "rss_before_gb": rss_before,
            "device": res.device, "slice_profile": res.settings["slice_profile"]}


def run_child(index: int, folder: Path, a: argparse.Namespace) -> dict:
    """Run ladder row ``index`` in a fresh process (``--one``) and read back its figures."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--one", str(index),
               "--stack-dir", str(folder), "--json-out", str(out), "--threads", str(a.threads),
               "--truth-mm", str(a.truth_mm)]
        if a.epochs is not None:
            cmd += ["--epochs", str(a.epochs)]
        t = time.perf_counter()
        subprocess.run(cmd, check=True)
        figures = json.loads(out.read_text())
    figures["process_s"] = time.perf_counter() - t
    return figures


def bids_stem(spec: StackSpec) -> str:
    """The stack's BIDS file name stem in ``sub-01/anat``."""
    entities, suffix = spec.contrast.rsplit("_", 1) if "_" in spec.contrast else ("", spec.contrast)
    parts = ["sub-01"] + ([f"acq-{AXIS_NAMES[spec.axis]}"] if spec.axis is not None else [])
    return "_".join(parts + ([entities] if entities else []) + [suffix])


def write_bids(row: Acquisition, folder: Path, dest: Path) -> Path:
    """The row's stacks (from the stack folder of :func:`write_stacks`) as a one-subject BIDS
    dataset at ``dest``."""
    from bids_mcsr.dataset.files import write_json

    anat = dest / "sub-01" / "anat"
    anat.mkdir(parents=True)
    write_json(dest / "dataset_description.json", {"Name": f"bids-mcsr scale benchmark: {row.name}",
                                                   "BIDSVersion": "1.10.0", "DatasetType": "raw"})
    (dest / "participants.tsv").write_text("participant_id\nsub-01\n")
    for spec in row.stacks:
        stem = anat / bids_stem(spec)
        shutil.copy(folder / stack_file(spec), f"{stem}.nii.gz")
        sidecar = ({"MRAcquisitionType": "3D"} if spec.axis is None else
                   {"MRAcquisitionType": "2D", "SliceThickness": header_thickness(spec)})
        write_json(Path(f"{stem}.json"), sidecar)
    return dest


def run_participant(index: int, folder: Path, a: argparse.Namespace) -> dict:
    """Run ladder row ``index`` through the command line's participant level and measure it."""
    from bench_dataset import CLI, parse_log, run_and_watch

    row = ladder()[index]
    with tempfile.TemporaryDirectory(prefix="bids_mcsr_scale_") as tmp:
        bids, out = write_bids(row, folder, Path(tmp) / "bids"), Path(tmp) / "out"
        command = [str(CLI), str(bids), str(out), "participant", "-w", str(Path(tmp) / "work"),
                   "--nprocs", str(a.threads), "--device", "cpu", "--skip-bids-validation", "--seed", "0"]
        if a.epochs is not None:
            command += ["--epochs", str(a.epochs)]
        rc, wall, peak = run_and_watch(command, Path(tmp) / "console.txt")
        if rc != 0:
            raise RuntimeError(f"{' '.join(command)} exited {rc}:\n"
                               + (Path(tmp) / "console.txt").read_text()[-3000:])
        logs = sorted((out / "logs").glob("bids-mcsr_*.log"))
        units = [u for log in logs for u in parse_log(log.read_text())]
        written = sorted(p.name for p in (out / "sub-01" / "anat").glob("*desc-sr*.nii.gz"))
        record = json.loads(next((out / "sub-01" / "qc").glob("*_desc-qc.json")).read_text())
    return {"protocol": row.name, "stacks": [bids_stem(s) for s in row.stacks], "n_stacks": len(row.stacks),
            "wall_s": wall, "subject_s": units[0].seconds if units else None,
            "step_times_s": record["provenance"]["step_times_s"],
            "peak_tree_rss_gb": peak / GB, "outputs": written, "command": command[1:]}


def markdown(rows: list[dict]) -> str:
    """The docs table of the rows' figures."""
    lines = ["| protocol | stacks | contrasts | samples | output grid | epochs | training s | total s "
             "| planned GB | peak RSS GB |", "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['protocol']} | {r['n_stacks']} | {r['n_contrasts']} | {r['samples']:,} | "
                     f"{'x'.join(str(n) for n in r['grid'])} | {r['epochs_run']} | "
                     f"{r['steps_s']['training']:.1f} | {r['total_s']:.1f} | {r['planned_gb']:.2f} | "
                     f"{r['peak_rss_gb']:.2f} |")
    return "\n".join(lines)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--truth-mm", type=int, default=1, choices=[1, 2],
                   help="voxel size of the template (1: the benchmark; 2: a quick look)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the app's)")
    p.add_argument("--rows", default=None, help="comma-separated ladder rows (default: all)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--participant", action="store_true",
                   help="run each row through the command line's participant level (see above)")
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # the child: one row
    p.add_argument("--stack-dir", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--json-out", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse(argv)
    rows = ladder()
    if a.one is not None:
        a.json_out.write_text(json.dumps(run_one(rows[a.one], a.stack_dir, a.threads, a.epochs, a.truth_mm)))
        return 0
    picked = [int(i) for i in a.rows.split(",")] if a.rows else list(range(len(rows)))
    meta = {"truth_mm": a.truth_mm, "threads": a.threads, "epochs": a.epochs,
            "python": platform.python_version(), "machine": platform.machine()}
    done: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        write_stacks([rows[i] for i in picked], a.truth_mm, Path(tmp))
        print(f"stacks simulated in {time.perf_counter() - t:.0f} s ({a.truth_mm} mm truth)", flush=True)
        for i in picked:
            if a.participant:
                done.append(run_participant(i, Path(tmp), a))
                r = done[-1]
                print(f"row {i}: {r['protocol']}: participant level {r['wall_s']:.1f} s (subject "
                      f"{r['subject_s']} s), peak tree RSS {r['peak_tree_rss_gb']:.2f} GB, "
                      f"outputs {', '.join(r['outputs'])}", flush=True)
            else:
                done.append(run_child(i, Path(tmp), a))
                r = done[-1]
                print(f"row {i}: {r['protocol']}: {r['total_s']:.1f} s, peak {r['peak_rss_gb']:.2f} GB "
                      f"(planned {r['planned_gb']:.2f}), steps "
                      + ", ".join(f"{k} {v:.1f}" for k, v in r["steps_s"].items()) + "; PSNR sr/net/cubic "
                      + ", ".join(f"{c} {q['sr']:.2f}/{q['net']:.2f}/{q['cubic']:.2f}"
                                  for c, q in r["quality"].items()), flush=True)
            if a.json:  # rewritten after every row: a cut run keeps its rows
                a.json.parent.mkdir(parents=True, exist_ok=True)
                meta.update(device=r.get("device", "cpu"), participant=a.participant)
                a.json.write_text(json.dumps({"meta": meta, "rows": done}, indent=1))
    if not a.participant:
        print(markdown(done))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
