"""Named model configurations and the training defaults that go with them: the one home of
every default the fit uses (architecture, epochs, batch, learning rate, MI stopping rule).

Torch-free, so that the command line, reports and QC can read the defaults without
importing the network code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

DEFAULT_MODEL = "fast"
MI_WINDOW = 4  # epochs over which the MI change is averaged
MI_TOLERANCE_NATS = 2e-3  # MI has plateaued when it moves less than this per epoch
MI_MIN_EPOCHS = 6  # the MI rule never stops before this epoch


@dataclass
class ModelSpec:
    """Architecture and default training settings of a named model."""

    name: str
    encoding: str
    encoding_args: dict = field(default_factory=dict)
    trunk_width: int = 256
    trunk_depth: int = 4
    head_width: int = 64
    epochs: int = 20
    batch_size: int = 4096
    lr: float = 1e-3

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    "paper": ModelSpec("paper", "fourier", {"n_frequencies": 256, "scale": 4.0},
                       trunk_width=1024, trunk_depth=5, head_width=512,
                       epochs=50, batch_size=1000, lr=4e-4),
    "fast": ModelSpec("fast", "hashgrid",
                      {"n_levels": 8, "n_features": 2, "log2_table_size": 19,
                       "coarsest_mm": 32.0, "finest_mm": 2.0},
                      trunk_width=64, trunk_depth=2, head_width=32,
                      epochs=10, batch_size=8192, lr=5e-3),
}


def model_spec(name: str, **overrides) -> ModelSpec:
    """The named configuration, with fields overridden by keyword.

    ``paper``: McGinnis et al. 2023, Gaussian Fourier features (256 frequencies, scale 4),
    5-layer 1024-wide ReLU trunk, a 512-wide hidden layer per head, Adam lr 4e-4, cosine
    schedule, 50 epochs, batches of 1000.

    ``fast``: a hash-grid encoding (32 mm to 2 mm cells) with a small split-head MLP,
    sized for minutes on a 2-core CPU.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(PRESETS)}")
    spec = replace(PRESETS[name], encoding_args=dict(PRESETS[name].encoding_args))
    for key, value in overrides.items():
        if key == "encoding_args":
            spec.encoding_args = {**spec.encoding_args, **value}
        elif value is not None:
            setattr(spec, key, value)
    return spec
