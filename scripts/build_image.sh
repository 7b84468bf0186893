#!/usr/bin/env bash
# Build the bids-mcsr container image and tag it bids-mcsr:<version> (version from
# pyproject.toml); print its size. Works where Docker Hub or the PyTorch index cannot be reached:
#   - base image: the Dockerfile's default (python:3.11.7-slim-bookworm) when it is present or
#     can be pulled; otherwise a Debian 12 image with python3 and python3-venv, made here from
#     Debian packages with debootstrap and `docker import` (needs root and the debootstrap
#     package; tagged bids-mcsr-base:bookworm and reused by later builds);
#   - torch: the PyTorch CPU index when it answers; otherwise the torch wheel found on this
#     machine (TORCH_WHEEL=/path/to.whl, else pip's configured find-links), copied into
#     build/docker-local/ of the build context;
#   - pip inside the build still needs PyPI for the other dependencies (docker build --network
#     host); it trusts this machine's CA bundle (PIP_CERT, pip's configured cert, else
#     /etc/ssl/certs/ca-certificates.crt), so a TLS-intercepting proxy works as it does here.
#
# Usage: bash scripts/build_image.sh [extra docker build arguments]
#        bash scripts/build_image.sh --resolve-torch INDEX_URL
#            resolve (pip install --dry-run, nothing installed) torch==<pinned> and its
#            dependencies from INDEX_URL inside the base image, as the Dockerfile's torch step
#            would; e.g. a CUDA index (https://download.pytorch.org/whl/cu126), or
#            https://pypi.org/simple whose Linux torch wheels are CUDA builds.
# Exit status: 0 built; 3 this machine lacks what the build needs (no Docker daemon, no base
#   image and no way to make one, no torch wheel or index, too little disk); other: the build
#   failed. Each build removes the images it supersedes (the previous <TAG> and its build
#   stage, kept tagged bids-mcsr-build:<version> as the layer cache of the next build).
# Environment: TAG (default bids-mcsr:<version>), BASE_IMAGE (skip the base image choice),
#   TORCH_WHEEL, TORCH_INDEX_URL (skip the torch choice), DEBIAN_MIRROR (for debootstrap;
#   default: this machine's apt source), DOCKER (default docker), NEED_GB (default 6: the free
#   space in Docker's root directory below which it stops before building, exit status 3).
set -euo pipefail
cd "$(dirname "$0")/.."

DOCKER=${DOCKER:-docker}
say() { echo "build_image: $*" >&2; }
die() { say "error: $*"; exit 1; }
# this machine lacks something the build needs (not a fault of the Dockerfile): exit status 3
die_env() { say "error: $*"; exit 3; }

command -v "$DOCKER" >/dev/null || die_env "$DOCKER not found; install Docker (Debian: apt-get install docker.io)"
"$DOCKER" info >/dev/null 2>&1 || die_env "no Docker daemon answers ($DOCKER info failed); start it (see 'No Docker daemon' in docs/troubleshooting.md)"

VERSION=$(sed -nE 's/^version *= *"([^"]+)".*/\1/p' pyproject.toml | head -n1)
[[ -n "$VERSION" ]] || die "no version in pyproject.toml"
TAG=${TAG:-bids-mcsr:$VERSION}
arg_default() { sed -nE "s/^ARG $1=(.*)$/\1/p" Dockerfile | head -n1; }
OFFICIAL_BASE=$(arg_default BASE_IMAGE)
TORCH_VERSION=$(arg_default TORCH_VERSION)
LOCAL_BASE=bids-mcsr-base:bookworm
NEED_GB=${NEED_GB:-6}  # free disk a build needs in Docker's root directory

# ---------------------------------------------------------------- base image
have_image() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

debian_mirror() {
    if [[ -n "${DEBIAN_MIRROR:-}" ]]; then echo "$DEBIAN_MIRROR"; return; fi
    local uri
    uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
          | grep -oE '^(URIs:|deb)[[:space:]]+(\[[^]]*\][[:space:]]+)?https?://[^[:space:]]+' \
          | grep -oE 'https?://[^[:space:]]+' | grep -E '/debian/?$' | head -n1 || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

make_local_base() {
    [[ "$(id -u)" == 0 ]] || die_env "making $LOCAL_BASE with debootstrap needs root (or set BASE_IMAGE)"
    command -v debootstrap >/dev/null || die_env "debootstrap not found (apt-get install debootstrap), or set BASE_IMAGE"
    local mirror rootfs
    mirror=$(debian_mirror)
    rootfs=$(mktemp -d "${TMPDIR:-/var/tmp}/bids-mcsr-rootfs.XXXXXX")
    # shellcheck disable=SC2064
    trap "rm -rf '$rootfs'" EXIT
    say "making $LOCAL_BASE: debootstrap bookworm from $mirror (python3, python3-venv)"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" "$mirror" > "$rootfs.log" 2>&1 \
        || { tail -n 20 "$rootfs.log" >&2; die_env "debootstrap failed (log: $rootfs.log)"; }
    rm -f "$rootfs.log"
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/log/*.log \
           "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
    # the same environment as the official python image sets
    tar -C "$rootfs" --numeric-owner -c . | "$DOCKER" import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' - "$LOCAL_BASE" >/dev/null || die_env "docker import failed"
    rm -rf "$rootfs"
    trap - EXIT
}

if [[ -z "${BASE_IMAGE:-}" ]]; then
    if have_image "$OFFICIAL_BASE" || timeout 300 "$DOCKER" pull -q "$OFFICIAL_BASE" >/dev/null 2>&1; then
        BASE_IMAGE=$OFFICIAL_BASE
    else
        say "cannot pull $OFFICIAL_BASE; using a local Debian 12 base image instead"
        have_image "$LOCAL_BASE" || make_local_base
        BASE_IMAGE=$LOCAL_BASE
    fi
fi
say "base image: $BASE_IMAGE"

# ---------------------------------------------------------------- CA bundle for pip
pip_config() { { python3 -m pip config list 2>/dev/null || true; } | sed -nE "s/^[^=]*\.$1='(.*)'\$/\1/p"; }
CA_BUNDLE=${PIP_CERT:-$(pip_config cert | head -n1)}
if [[ -z "$CA_BUNDLE" && -f /etc/ssl/certs/ca-certificates.crt ]]; then
    CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
fi
[[ -z "$CA_BUNDLE" || -f "$CA_BUNDLE" ]] || die "CA bundle $CA_BUNDLE is not a file"
[[ -n "$CA_BUNDLE" ]] && say "pip in the build trusts this machine's CA bundle $CA_BUNDLE"

# ---------------------------------------------------------------- resolve only (CUDA check)
if [[ "${1:-}" == --resolve-torch ]]; then
    index=${2:?--resolve-torch needs an index URL}
    say "resolving torch==$TORCH_VERSION from $index inside $BASE_IMAGE (dry run)"
    ca=()
    [[ -n "$CA_BUNDLE" ]] && ca=(-v "$CA_BUNDLE:/tmp/ca.crt:ro" -e PIP_CERT=/tmp/ca.crt)
    # shellcheck disable=SC2016  # expanded by the container's shell
    "$DOCKER" run --rm --network host "${ca[@]}" --entrypoint /bin/sh "$BASE_IMAGE" -c '
        python3 -m venv /tmp/venv && /tmp/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
            --dry-run --quiet --report /tmp/report.json --index-url "$1" "torch==$2" \
        && /tmp/venv/bin/python -c "
import json
for item in json.load(open(\"/tmp/report.json\"))[\"install\"]:
    print(item[\"metadata\"][\"name\"], item[\"metadata\"][\"version\"], item[\"download_info\"][\"url\"].rsplit(\"/\", 1)[-1])
"' sh "$index" "$TORCH_VERSION"
    exit
fi

# ---------------------------------------------------------------- torch wheel
find_local_torch_wheel() {
    local dirs=() d f
    # pip's find-links (pip config and PIP_FIND_LINKS), space-separated, file:// or paths
    read -r -a dirs <<< "$(pip_config find-links | tr '\n' ' ') ${PIP_FIND_LINKS:-}"
    for d in "${dirs[@]}"; do
        d=${d#file://}
        [[ -d "$d" ]] || continue
        for f in "$d"/torch-"$TORCH_VERSION"+cpu-cp311-cp311-manylinux*_x86_64.whl; do
            [[ -f "$f" ]] && { echo "$f"; return 0; }
        done
    done
    return 1
}

LOCAL_DIR=build/docker-local
rm -rf "$LOCAL_DIR"
build_args=()
if [[ -z "${TORCH_WHEEL:-}" && -z "${TORCH_INDEX_URL:-}" ]]; then
    if curl -fsS -o /dev/null --max-time 20 https://download.pytorch.org/whl/cpu/torch/ 2>/dev/null; then
        say "torch $TORCH_VERSION: from the PyTorch CPU index"
    else
        TORCH_WHEEL=$(find_local_torch_wheel) \
            || die_env "download.pytorch.org does not answer and no torch-$TORCH_VERSION+cpu-cp311 wheel was found in pip's find-links; set TORCH_WHEEL=/path/to/wheel"
    fi
fi
if [[ -n "${TORCH_WHEEL:-}" ]]; then
    [[ -f "$TORCH_WHEEL" ]] || die "TORCH_WHEEL=$TORCH_WHEEL is not a file"
    mkdir -p "$LOCAL_DIR"
    cp -l "$TORCH_WHEEL" "$LOCAL_DIR/" 2>/dev/null || cp "$TORCH_WHEEL" "$LOCAL_DIR/"
    say "torch $TORCH_VERSION: local wheel $TORCH_WHEEL"
    build_args+=(--build-arg "TORCH_WHEEL=$(basename "$TORCH_WHEEL")")
elif [[ -n "${TORCH_INDEX_URL:-}" ]]; then
    say "torch $TORCH_VERSION: from $TORCH_INDEX_URL"
    build_args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
fi

if [[ -n "$CA_BUNDLE" ]]; then
    mkdir -p "$LOCAL_DIR"
    cp "$CA_BUNDLE" "$LOCAL_DIR/ca-certificates.crt"
    build_args+=(--build-arg "PIP_CERT=/tmp/build/ca-certificates.crt")
fi

# ---------------------------------------------------------------- disk space
# Images a new build supersedes: the previous $TAG and build stage ($CACHE_TAG, the layer cache
# this build starts from), removed once the build is done; untagged images of either (left by
# builds before this script tagged the build stage) are removed now.
CACHE_TAG=bids-mcsr-build:$VERSION
image_id() { "$DOCKER" image inspect -f '{{.Id}}' "$1" 2>/dev/null || true; }
old_ids=("$(image_id "$TAG")" "$(image_id "$CACHE_TAG")")
for title in bids-mcsr bids-mcsr-build; do
    "$DOCKER" image prune -f --filter dangling=true \
        --filter "label=org.opencontainers.image.title=$title" >/dev/null || true
done
docker_root=$("$DOCKER" info -f '{{.DockerRootDir}}' 2>/dev/null || echo /var/lib/docker)
free_gb=$(df -Pk "$docker_root" 2>/dev/null | awk 'NR == 2 { printf "%d", $4 / 1048576 }')
if [[ -n "$free_gb" && "$free_gb" -lt $NEED_GB ]]; then
    die_env "$docker_root has ${free_gb} GB free, a build needs about $NEED_GB GB (build stage 2.1 GB, image 1.8 GB, unpacking); free disk space (docker image prune, docker builder prune)"
fi

# ---------------------------------------------------------------- build
say "building $TAG"
start=$(date +%s)
# The legacy builder: it needs neither the buildx plugin nor Docker Hub (BuildKit fetches the
# dockerfile frontend named on the Dockerfile's syntax line). Host network: the build's pip
# reaches the index even when the daemon runs without a bridge (dockerd --bridge=none).
# The build stage first, tagged, so that it stays as the next build's cache (the second
# command finds every build-stage layer cached).
for target in build final; do
    target_args=(-t "$TAG")
    if [[ $target == build ]]; then target_args=(--target build -t "$CACHE_TAG"); fi
    DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0} "$DOCKER" build --network host \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" "${build_args[@]}" \
        --build-arg "IMAGE_TAG=$TAG" "${target_args[@]}" "$@" .
done
seconds=$(( $(date +%s) - start ))
rm -rf "$LOCAL_DIR"
new_ids=("$(image_id "$TAG")" "$(image_id "$CACHE_TAG")")
for id in "${old_ids[@]}"; do
    [[ -n "$id" && " ${new_ids[*]} " != *" $id "* ]] || continue
    if "$DOCKER" rmi "$id" >/dev/null 2>&1; then say "removed the superseded image ${id#sha256:}"; fi
done
bytes=$("$DOCKER" image inspect -f '{{.Size}}' "$TAG")
size=$(awk -v b="$bytes" 'BEGIN { printf "%.2f GB", b / 1e9 }')
echo "built $TAG in ${seconds}s on $BASE_IMAGE; image size $size ($bytes bytes)"
