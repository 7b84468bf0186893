"""The package's layers hold: who may import what, and what --help and the group level load."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"bids_mcsr": ROOT / "bids_mcsr", "bids_mcsr.workflows": ROOT / "workflows"}
# layers that know nothing of BIDS, nipype, reports or the command line
CORE = ("bids_mcsr.image", "bids_mcsr.acquisition", "bids_mcsr.inr")
NOT_IN_CORE = ("bids", "nipype", "bids_mcsr.dataset", "bids_mcsr.qc", "bids_mcsr.reports",
               "bids_mcsr.evaluation", "bids_mcsr.workflows", "bids_mcsr.cli", "bids_mcsr.steps")


def _modules() -> dict[str, Path]:
    out = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            out[name] = path
    return out


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code (lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


MODULES = _modules()


def test_the_layout_is_found():
    assert {"bids_mcsr.inr.superres", "bids_mcsr.cli.run", "bids_mcsr.workflows.participant",
            "bids_mcsr.acquisition.slice_profile", "bids_mcsr.image.geometry"} <= set(MODULES)


# (who is bound, what it may not import, who is exempt)
RULES = {
    "core layers know nothing of BIDS, nipype, reports or the CLI": (CORE, NOT_IN_CORE, ()),
    "torch only in the INR package": (("bids_mcsr",), ("torch",), ("bids_mcsr.inr",)),
    "nothing below the CLI imports it": (("bids_mcsr",), ("bids_mcsr.cli",), ("bids_mcsr.cli",)),
    "nipype only in the workflows and the CLI": (("bids_mcsr",), ("nipype",),
                                                 ("bids_mcsr.workflows", "bids_mcsr.cli")),
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_layer_rule(rule):
    bound, forbidden, exempt = RULES[rule]
    broken = {}
    for module, path in MODULES.items():
        if _within(module, bound) and not _within(module, exempt):
            bad = {i for i in _imports(path) if _within(i, forbidden)}
            if bad:
                broken[module] = sorted(bad)
    assert not broken, f"{rule}: {broken}"


def _loaded_after(code: str) -> set[str]:
    probe = f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd="/")
    return set(out.stdout.split())


def test_help_and_version_do_not_import_torch():
    for flag in ("--help", "--version"):
        loaded = _loaded_after("from bids_mcsr.cli.run import main\n"
                               f"try:\n    main(['{flag}'])\nexcept SystemExit:\n    pass")
        assert "bids_mcsr.cli.parser" in loaded
        assert "torch" not in loaded, f"bids-mcsr {flag} imports torch"


def test_group_level_does_not_import_torch(tmp_path):
    from tiny_bids import tiny_dataset

    bids_dir = tiny_dataset(tmp_path / "bids", {"01": ("T1w",)})
    out = tmp_path / "out"
    loaded = _loaded_after("from bids_mcsr.cli.run import main\n"
                           f"main(['{bids_dir}', '{out}', 'group', '--skip-bids-validation'])")
    assert "bids_mcsr.reports.group" in loaded
    assert "torch" not in loaded


def test_no_top_level_workflows_module_is_installed():
    out = subprocess.run([sys.executable, "-c", "import workflows"], capture_output=True,
                         text=True, cwd="/")
    assert out.returncode != 0 and "No module named 'workflows'" in out.stderr
