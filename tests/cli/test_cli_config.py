"""The run configuration: one frozen object built from the validated command line."""

import dataclasses
import json
from pathlib import Path

import pytest

from bids_mcsr.cli.config import RunConfig
from bids_mcsr.cli.parser import parse_args


@pytest.fixture
def config(tmp_path: Path) -> RunConfig:
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.10.0"}')
    return RunConfig.from_namespace(parse_args(
        [str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
         "--participant-label", "02", "01", "--contrasts", "T1w", "t2w", "--nprocs", "4"]))


def test_every_option_is_a_field_and_nothing_else(config, tmp_path):
    opts = parse_args([str(config.bids_dir), str(tmp_path / "out"), "participant"])
    assert {field.name for field in dataclasses.fields(RunConfig)} == set(vars(opts))


def test_frozen_with_tuples_for_lists(config):
    assert config.participant_label == ("01", "02") and config.contrasts == ("T1w", "T2w")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.nprocs = 1


def test_omp_nthreads_defaults_to_the_units_share(config):
    assert config.nprocs == 4 and config.omp_nthreads is None


def test_record_is_json_and_dumped(config, tmp_path):
    path = config.dump(tmp_path / "logs" / "config.json")
    record = json.loads(path.read_text())
    assert record == config.record()
    assert record["bids_dir"] == str(config.bids_dir) and record["contrasts"] == ["T1w", "T2w"]


def test_sr_config_builds_an_srconfig(config):
    from bids_mcsr.inr.config import SRConfig

    sr = SRConfig(**config.sr_config(threads=3, mem_gb=None))
    assert (sr.threads, sr.mem_gb, sr.model, sr.seed) == (3, None, "fast", 0)


def test_poses_are_refined_when_a_stack_looks_misaligned_unless_told_otherwise(config, tmp_path):
    from bids_mcsr.inr.config import SRConfig

    def refines(*extra: str) -> bool | str:
        opts = parse_args([str(config.bids_dir), str(tmp_path / "out"), "participant", *extra])
        return SRConfig(**RunConfig.from_namespace(opts).sr_config(1, None)).resolved().refine_registration

    assert refines() == "auto"
    assert refines("--pose-fit", "on") is True and refines("--pose-fit", "off") is False
    assert refines("--model", "paper") is False
    assert refines("--model", "paper", "--pose-fit", "auto") == "auto"


def test_slab_widths_are_learned_where_headers_declare_gaps_unless_told_otherwise(config, tmp_path):
    from bids_mcsr.inr.config import SRConfig

    def learns(*extra: str) -> bool | str:
        opts = parse_args([str(config.bids_dir), str(tmp_path / "out"), "participant", *extra])
        return SRConfig(**RunConfig.from_namespace(opts).sr_config(1, None)).resolved().learn_profile

    assert learns() == "auto" and learns("--profile-fit", "auto") == "auto"
    assert learns("--profile-fit", "on") is True and learns("--profile-fit", "off") is False
    with pytest.raises(SystemExit):
        parse_args([str(config.bids_dir), str(tmp_path / "out"), "participant", "--profile-fit", "yes"])


def test_guided_upsampling_is_on_unless_turned_off(config, tmp_path):
    from bids_mcsr.inr.config import SRConfig

    def guided(*extra: str) -> bool:
        opts = parse_args([str(config.bids_dir), str(tmp_path / "out"), "participant", *extra])
        return SRConfig(**RunConfig.from_namespace(opts).sr_config(1, None)).guided_upsampling

    assert guided() is True and guided("--guided-upsampling", "on") is True
    assert guided("--guided-upsampling", "off") is False
