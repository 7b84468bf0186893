#!/usr/bin/env bash
# Run a bids-mcsr image the way a cluster runs it, and check what it produces.
#
#   bash scripts/test_image.sh bids-mcsr:0.1.0
#
# Steps (each timed; the last line is a one-line summary; exit status 1 on any failure):
#   version, help   `--version` and `--help`
#   demo-data       the demo dataset (bids_mcsr.evaluation.demo, as scripts/demo.sh makes it), inside the image
#   participant     the participant level as scripts/demo.sh runs it, as UID 12345:12345 with a
#                   read-only root file system, a tmpfs /tmp, no network, the input bound
#                   read-only and the output and work directories bound read-write: what
#                   `apptainer run --cleanenv --containall -B ...` gives the app
#   group           the group level on that output, the same way
#   validator       bids-validator-deno from inside the image on the derivatives (no errors)
#   sigterm         a fresh participant run stopped mid-training with `docker stop -t 20`:
#                   it must exit 143 (SIGTERM handled, not killed) and leave no derivative,
#                   staging directory or temporary file in the output
#   rerun           the same run again with the same work directory: it completes
# Environment: NPROCS (default 2), EPOCHS (participant step; default: the model's own, as the
#   demo), SIGTERM_EPOCHS (sigterm/rerun steps; default 2), KEEP=1 (keep the workspace),
#   TMPDIR (where the workspace goes), DOCKER (default docker).
set -Eeuo pipefail

IMAGE=${1:?usage: bash scripts/test_image.sh IMAGE (e.g. bids-mcsr:0.1.0)}
DOCKER=${DOCKER:-docker}
NPROCS=${NPROCS:-2}
SIGTERM_EPOCHS=${SIGTERM_EPOCHS:-2}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

"$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1 \
    || { echo "test_image: no image $IMAGE (build it: bash scripts/build_image.sh)" >&2; exit 1; }

WS=$(mktemp -d "${TMPDIR:-/tmp}/bids-mcsr-image-test.XXXXXX")
PREFIX="bids-mcsr-test-$$"
SUMMARY=()
T0=$(date +%s)
current=""

cleanup() {
    local rc=$?
    "$DOCKER" ps -aq --filter "name=^$PREFIX-" | xargs -r "$DOCKER" rm -f >/dev/null 2>&1 || true
    if [[ "${KEEP:-0}" == 1 || $rc != 0 ]]; then
        echo "test_image: workspace kept in $WS" >&2
    else
        # the outputs belong to UID 12345: remove them from a container, as root
        "$DOCKER" run --rm --network none -u 0:0 -v "$WS:/ws" --entrypoint /bin/sh "$IMAGE" \
            -c 'rm -rf /ws/* /ws/.[!.]*' >/dev/null 2>&1 || true
        rmdir "$WS" 2>/dev/null || rm -rf "$WS" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'fail "a command failed (test_image.sh line $LINENO)"' ERR

summary() {
    echo "test_image: $1 $IMAGE$(printf ' | %s' "${SUMMARY[@]}") | total $(( $(date +%s) - T0 ))s"
}

fail() {
    echo "test_image: FAILED at step $current: $*" >&2
    if [[ -f "$WS/logs/$current.log" ]]; then
        echo "---- last lines of $WS/logs/$current.log" >&2
        tail -n 40 "$WS/logs/$current.log" >&2
        echo "----" >&2
    fi
    SUMMARY+=("$current FAILED")
    summary FAIL
    exit 1
}

# step NAME FUNCTION: run FUNCTION, time it, record it.
step() {
    current=$1
    local start end
    start=$(date +%s.%N)
    echo "test_image: -- $1" >&2
    "$2"
    end=$(date +%s.%N)
    SUMMARY+=("$1 $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.0fs", b - a }')")
}

# in_image SECONDS NAME DOCKER_RUN_ARGS...: docker run --name, with a wall-clock limit; the
# container is removed if the limit is hit. Output goes to the step's log.
in_image() {
    local limit=$1 name="$PREFIX-$2" rc=0
    shift 2
    timeout "$limit" "$DOCKER" run --name "$name" "$@" >> "$WS/logs/$current.log" 2>&1 || rc=$?
    "$DOCKER" rm -f "$name" >/dev/null 2>&1 || true
    [[ $rc != 124 ]] || fail "no result after ${limit}s"
    return "$rc"
}

# What a cluster gives the app: an arbitrary UID, read-only image, private /tmp, no network.
CLUSTER=(-u 12345:12345 --read-only --tmpfs "/tmp:rw,exec,mode=1777" --network none
         -v "$WS/bids:/data:ro")
DEMO_ARGS=(--nprocs "$NPROCS" --device cpu)

mkdir -p "$WS/logs" "$WS/bids" "$WS/out" "$WS/work" "$WS/out2" "$WS/work2"
chmod 0777 "$WS/out" "$WS/work" "$WS/out2" "$WS/work2"
chmod 0755 "$WS" "$WS/bids"

# Checks run with the image's own Python, as the UID that wrote the outputs (nothing needed on
# the host): the derivatives of sub-01 are complete, the JSON files parse, the container is
# recorded; the group table lists sub-01.
check_outputs() {  # DIR MODE (complete | interrupted | group)
    in_image 300 "check-$current" -i -u 12345:12345 --read-only --network none -v "$1:/out:ro" \
        --entrypoint python "$IMAGE" - "$2" "$IMAGE" <<'EOF'
import json, pathlib, stat, sys
out, mode, image = pathlib.Path("/out"), sys.argv[1], sys.argv[2]
files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
print("\n".join(files))
private = [f for f in files if not (out / f).stat().st_mode & stat.S_IROTH]
if private:
    print(f"note: {len(private)} of {len(files)} output files are readable by their owner only, "
          f"e.g. {private[0]}")
if mode == "group":
    for name in ("group_desc-qc.tsv", "group.html"):
        assert name in files, f"{name} missing"
    assert "sub-01" in (out / "group_desc-qc.tsv").read_text(), "sub-01 not in group_desc-qc.tsv"
    print("checked the group outputs")
    sys.exit()
bad = [f for f in files if "/.staging-" in "/" + f or "/.tmp-" in "/" + f]
assert not bad, f"staging or temporary files left in the output: {bad}"
for f in files:
    if f.endswith(".json"):
        json.loads((out / f).read_text())  # no half-written JSON
sr = [f for f in files if f.startswith("sub-01/") and "_desc-sr_" in f and f.endswith(".nii.gz")]
if mode == "interrupted":
    assert not sr and not (out / "sub-01").exists(), f"derivatives after SIGTERM: {sr}"
else:
    for contrast in ("T1w", "T2w"):
        assert any(f.endswith(f"_desc-sr_{contrast}.nii.gz") for f in sr), f"no {contrast} output"
    for name in ("dataset_description.json", "sub-01.html", "logs/CITATION.md"):
        assert name in files, f"{name} missing"
    container = json.loads((out / "dataset_description.json").read_text())["GeneratedBy"][0]["Container"]
    assert container.get("Type") == "docker", f"GeneratedBy.Container is {container}"
    print(f"GeneratedBy.Container: {container} (image {image})")
print(f"checked {len(files)} files ({mode})")
EOF
}

s_version() {
    local out want
    out=$("$DOCKER" run --rm --network none "$IMAGE" --version 2>&1) || fail "--version exited non-zero: $out"
    echo "$out" > "$WS/logs/version.log"
    want=$(sed -nE 's/^version *= *"([^"]+)".*/\1/p' "$ROOT/pyproject.toml" 2>/dev/null | head -n1)
    [[ "$out" =~ ^bids-mcsr\ [0-9] ]] || fail "--version printed: $out"
    [[ -z "$want" || "$out" == "bids-mcsr $want" ]] || fail "--version printed '$out', pyproject.toml has $want"
}

s_help() {
    "$DOCKER" run --rm --network none "$IMAGE" --help > "$WS/logs/help.log" 2>&1 || fail "--help exited non-zero"
    grep -q "participant" "$WS/logs/help.log" || fail "--help does not mention the participant level"
}

s_demo_data() {
    in_image 600 demo-data --rm -u "$(id -u):$(id -g)" --read-only --tmpfs /tmp --network none \
        -v "$WS/bids:/data" --entrypoint python "$IMAGE" -m bids_mcsr.evaluation.demo /data \
        || fail "python -m bids_mcsr.evaluation.demo failed"
    [[ -f "$WS/bids/participants.tsv" ]] || fail "no demo dataset"
}

s_participant() {
    local epochs=()
    [[ -n "${EPOCHS:-}" ]] && epochs=(--epochs "$EPOCHS")
    in_image 2700 participant "${CLUSTER[@]}" -v "$WS/out:/out" -v "$WS/work:/work" \
        "$IMAGE" /data /out participant -w /work "${DEMO_ARGS[@]}" "${epochs[@]}" \
        || fail "participant level exited non-zero"
    check_outputs "$WS/out" complete || fail "the participant outputs are incomplete"
}

s_group() {
    in_image 600 group "${CLUSTER[@]}" -v "$WS/out:/out" "$IMAGE" /data /out group \
        || fail "group level exited non-zero"
    check_outputs "$WS/out" group || fail "the group outputs are incomplete"
}

s_validator() {
    # Deno's cache (DENO_DIR) is read-only here, as in a SIF image
    in_image 600 validator -u 12345:12345 --read-only --tmpfs /tmp --network none \
        -v "$WS/out:/out:ro" --entrypoint bids-validator-deno "$IMAGE" /out \
        || fail "bids-validator-deno reports errors in the derivatives (or did not run)"
}

s_sigterm() {
    local name="$PREFIX-sigterm" waited=0 t_stop code
    "$DOCKER" run -d --name "$name" "${CLUSTER[@]}" -v "$WS/out2:/out" -v "$WS/work2:/work" \
        "$IMAGE" /data /out participant -w /work "${DEMO_ARGS[@]}" --epochs "$SIGTERM_EPOCHS" \
        > /dev/null || fail "could not start the container"
    # wait for training to start (N4 and registration come first), then a little more
    while "$DOCKER" logs "$name" > "$WS/logs/sigterm.log" 2>&1 \
            && ! grep -qE "INFO (sub-[^ ]+: )?training " "$WS/logs/sigterm.log"; do
        [[ "$("$DOCKER" inspect -f '{{.State.Running}}' "$name")" == true ]] \
            || fail "the run ended before training"
        (( waited++ < 1200 )) || fail "training did not start in 20 min"
        sleep 1
    done
    sleep 5
    t_stop=$(date +%s)
    "$DOCKER" stop -t 20 "$name" > /dev/null
    t_stop=$(( $(date +%s) - t_stop ))
    "$DOCKER" logs "$name" > "$WS/logs/sigterm.log" 2>&1
    code=$("$DOCKER" inspect -f '{{.State.ExitCode}}' "$name")
    "$DOCKER" rm -f "$name" > /dev/null
    echo "stopped in ${t_stop}s, exit status $code" | tee -a "$WS/logs/sigterm.log" >&2
    [[ "$code" == 143 ]] || fail "exit status $code after SIGTERM (expected 143; 137 means it had to be killed)"
    grep -q "interrupted by SIGTERM" "$WS/logs/sigterm.log" || fail "the log does not say the run was interrupted"
    check_outputs "$WS/out2" interrupted || fail "the interrupted run left something in the output"
}

s_rerun() {
    in_image 1800 rerun "${CLUSTER[@]}" -v "$WS/out2:/out" -v "$WS/work2:/work" \
        "$IMAGE" /data /out participant -w /work "${DEMO_ARGS[@]}" --epochs "$SIGTERM_EPOCHS" \
        || fail "the re-run exited non-zero"
    check_outputs "$WS/out2" complete || fail "the re-run's outputs are incomplete"
}

step version s_version
step help s_help
step demo-data s_demo_data
step participant s_participant
step group s_group
step validator s_validator
step sigterm s_sigterm
step rerun s_rerun
current=""
summary PASS
