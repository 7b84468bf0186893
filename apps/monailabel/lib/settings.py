"""The server's settings: ``--conf`` pairs turned into the BIDS-App's folders and command."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from lib.bids_bridge import Image, command

# --conf keys passed on to bids-mcsr as ``--<key with dashes> <value>``
VALUE_OPTIONS = ("seed", "device", "epochs", "model", "nprocs", "omp_nthreads", "mem_gb",
                 "bias_correction", "registration", "slice_profile", "consistency_iterations",
                 "holdout_fraction", "output_resolution", "reference", "pose_fit",
                 "profile_fit")
# --conf keys passed on as a bare ``--<key with dashes>`` when their value is true
FLAG_OPTIONS = ("skip_bids_validation",)
TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Settings:
    """Where the BIDS-App reads and writes for this server, and with which options.

    Attributes
    ----------
    studies : Path
        The BIDS dataset (``--studies``).
    output_dir : Path
        Its derivatives folder (``--conf output_dir``; default
        ``<studies>/derivatives/bids-mcsr``, where the BIDS-App's users look).
    work_dir : Path
        The BIDS-App's work directory and this app's cache records (``--conf work_dir``;
        default ``<app>/work/<dataset name>-<hash of its path>``, outside the dataset).
    options : tuple of str
        bids-mcsr options from the ``--conf`` keys in ``VALUE_OPTIONS`` and ``FLAG_OPTIONS``;
        every other option keeps the BIDS-App's default.
    """

    studies: Path
    output_dir: Path
    work_dir: Path
    options: tuple[str, ...]

    @classmethod
    def from_conf(cls, app_dir: str, studies: str, conf: dict[str, str]) -> Settings:
        """Read the settings from ``monailabel start_server``'s arguments.

        Parameters
        ----------
        app_dir : str
            The app folder (``--app``).
        studies : str
            The BIDS dataset (``--studies``).
        conf : dict of str to str
            The ``--conf`` pairs; keys that are not settings of this app are ignored.

        Returns
        -------
        Settings
        """
        root = Path(studies).resolve()
        digest = hashlib.sha256(str(root).encode()).hexdigest()[:8]
        options: list[str] = []
        for key in VALUE_OPTIONS:
            if key in conf:
                options += ["--" + key.replace("_", "-"), str(conf[key])]
        options += ["--" + key.replace("_", "-") for key in FLAG_OPTIONS
                    if str(conf.get(key, "")).lower() in TRUE]
        return cls(
            studies=root,
            output_dir=Path(conf.get("output_dir", root / "derivatives" / "bids-mcsr")).resolve(),
            work_dir=Path(conf.get("work_dir",
                                   Path(app_dir) / "work" / f"{root.name}-{digest}")).resolve(),
            options=tuple(options),
        )

    def participant_command(self, image: Image) -> list[str]:
        """The bids-mcsr command that super-resolves the subject/session of ``image``.

        ``--force`` makes it redo a subject whose derivatives exist, so that they follow
        these settings.

        Parameters
        ----------
        image : Image
            Any image of the subject/session.

        Returns
        -------
        list of str
        """
        session = ["--session-label", image.session] if image.session else []
        return [*command(), str(self.studies), str(self.output_dir), "participant",
                "--participant-label", image.subject, *session, "-w", str(self.work_dir),
                *self.options, "--force"]
