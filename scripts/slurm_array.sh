#!/usr/bin/env bash
# Run the bids-mcsr participant level as a SLURM job array: one participant per array task,
# each with a private work directory, all writing into one output directory.
#
#   n=$(( $(grep -c . "$BIDS_DIR/participants.tsv") - 1 ))      # participants (header excluded)
#   jid=$(BIDS_DIR=... OUTPUT_DIR=... SIF=... sbatch --parsable --array=1-"$n" scripts/slurm_array.sh)
#   sbatch --dependency=afterok:"$jid" --wrap "apptainer run --cleanenv -B ... group"  # docs/hpc.md
#
# Array task N processes the N-th participant row of $BIDS_DIR/participants.tsv (1-based).
# Environment (read at run time; sbatch passes the submitting shell's environment by default):
#   BIDS_DIR      input BIDS dataset (required)
#   OUTPUT_DIR    derivatives directory, shared by all tasks (required)
#   SIF           the image (default: bids-mcsr.sif in the submission directory)
#   WORK_ROOT     parent of the per-task work dirs (default: $PWD/work); each task uses
#                 $WORK_ROOT/sub-<label>, so a resubmitted task resumes its finished steps
#   NPROCS        CPUs for the app (default: $SLURM_CPUS_PER_TASK, else 1)
#   OMP_NTHREADS  threads per process (default: NPROCS, as one participant runs per task)
#   MEM_GB        memory cap for the app in GB (default: 90% of --mem when SLURM sets it)
#   GPU=1         add --nv and --device cuda (also request a GPU, e.g. sbatch --gres=gpu:1)
#   EXTRA_ARGS    more bids-mcsr options, word-split (e.g. "--model paper --contrasts T1w T2w")
#   APPTAINER     the runtime (default: apptainer, else singularity)
#   DRY_RUN=1     print the command instead of running it
#
#SBATCH --job-name=bids-mcsr
#SBATCH --cpus-per-task=4
#SBATCH --mem=16G
#SBATCH --time=04:00:00
#SBATCH --output=bids-mcsr_%A_%a.log
set -euo pipefail

die() { echo "slurm_array.sh: $*" >&2; exit 1; }

: "${BIDS_DIR:?set BIDS_DIR to the input BIDS dataset}"
: "${OUTPUT_DIR:?set OUTPUT_DIR to the derivatives directory}"
: "${SLURM_ARRAY_TASK_ID:?not an array task: submit with sbatch --array=1-N}"
[[ "$SLURM_ARRAY_TASK_ID" =~ ^[0-9]+$ ]] || die "SLURM_ARRAY_TASK_ID=$SLURM_ARRAY_TASK_ID is not a number"
BIDS_DIR=$(cd "$BIDS_DIR" && pwd) || die "BIDS_DIR $BIDS_DIR does not exist"
TSV="$BIDS_DIR/participants.tsv"
[[ -f "$TSV" ]] || die "$TSV not found; it lists the participants, one per array task"

# The N-th data row's participant_id (column found by name; CRLF tolerated; sub- stripped).
label=$(awk -F'\t' -v n="$SLURM_ARRAY_TASK_ID" '
    { sub(/\r$/, "") }
    NR == 1 { for (i = 1; i <= NF; i++) if ($i == "participant_id") col = i; next }
    !col    { exit 2 }
    NF && ++row == n { print $col; exit }
' "$TSV") || die "$TSV has no participant_id column"
label=${label#sub-}
[[ -n "$label" ]] || die "task $SLURM_ARRAY_TASK_ID: $TSV has fewer participant rows"

SIF=$(realpath -m "${SIF:-bids-mcsr.sif}")
OUTPUT_DIR=$(realpath -m "$OUTPUT_DIR")
WORK_ROOT=$(realpath -m "${WORK_ROOT:-work}")
WORK="$WORK_ROOT/sub-$label"
NPROCS=${NPROCS:-${SLURM_CPUS_PER_TASK:-1}}
OMP_NTHREADS=${OMP_NTHREADS:-$NPROCS}
if [[ -z "${MEM_GB:-}" && -n "${SLURM_MEM_PER_NODE:-}" ]]; then
    MEM_GB=$(awk -v mb="$SLURM_MEM_PER_NODE" 'BEGIN { g = int(mb * 0.9 / 1024); print (g < 1 ? 1 : g) }')
fi
if [[ -z "${APPTAINER:-}" ]]; then
    APPTAINER=$(command -v apptainer || command -v singularity || echo apptainer)
fi

cmd=("$APPTAINER" run --cleanenv)
[[ "${GPU:-0}" == 1 ]] && cmd+=(--nv)
cmd+=(--home "$WORK/home:/home/bidsapp"
      -B "$BIDS_DIR:/data:ro" -B "$OUTPUT_DIR:/out" -B "$WORK:/work"
      "$SIF" /data /out participant
      --participant-label "$label" -w /work/bids-mcsr
      --nprocs "$NPROCS" --omp-nthreads "$OMP_NTHREADS")
[[ -n "${MEM_GB:-}" ]] && cmd+=(--mem-gb "$MEM_GB")
[[ "${GPU:-0}" == 1 ]] && cmd+=(--device cuda)
if [[ -n "${EXTRA_ARGS:-}" ]]; then
    read -r -a extra <<< "$EXTRA_ARGS"
    cmd+=("${extra[@]}")
fi

if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "${cmd[@]}"
    printf '\n'
    exit 0
fi
mkdir -p "$OUTPUT_DIR" "$WORK/home"
echo "task $SLURM_ARRAY_TASK_ID: sub-$label, work dir $WORK" >&2
exec "${cmd[@]}"
