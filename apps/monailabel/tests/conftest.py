"""A real ``monailabel start_server`` on a free localhost port, over a tiny BIDS dataset.

The server runs the app in ``apps/monailabel`` from this Python's environment
(``.venv-monailabel``), with every proxy pointed at a closed port: a start-up that needed
the network would fail.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from tiny_dataset import make_constant, tiny_dataset

APP = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# the server's --conf settings and the same run as bids-mcsr options: seconds, not minutes
CONF = {"seed": "0", "epochs": "1", "device": "cpu", "nprocs": "1", "omp_nthreads": "1",
        "bias_correction": "none", "skip_bids_validation": "true"}
CLI_OPTIONS = ["--seed", "0", "--epochs", "1", "--device", "cpu", "--nprocs", "1",
               "--omp-nthreads", "1", "--bias-correction", "none", "--skip-bids-validation"]
UNITS = {"sub-01": ("T1w", "T2w"), "sub-02": ("T1w", "T2w"), "sub-03/ses-1": ("T1w", "FLAIR")}
START_TIMEOUT_S = 180


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """One ``monailabel start_server`` process.

    Parameters
    ----------
    root : Path
        A scratch folder: the dataset is in ``bids/``, the work directory in ``work/``.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bids = tiny_dataset(root / "bids", UNITS)
        make_constant(self.bids / "sub-02" / "anat" / "sub-02_T2w.nii.gz")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "server.log"
        conf = [arg for key, value in {**CONF, "work_dir": str(root / "work")}.items()
                for arg in ("--conf", key, value)]
        offline = "http://127.0.0.1:9"  # the discard port: nothing answers there
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
               "MONAILABEL_PYEXE": sys.executable, "HTTP_PROXY": offline,
               "HTTPS_PROXY": offline, "ALL_PROXY": offline, "NO_PROXY": "127.0.0.1,localhost",
               "MONAI_LABEL_SESSION_PATH": str(root / "sessions")}
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [str(BIN / "monailabel"), "start_server", "--app", str(APP), "--studies",
                 str(self.bids), "--host", "127.0.0.1", "--port", str(self.port), *conf],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def wait_until_up(self) -> float:
        """Seconds until ``/info/`` answers; fails with the log's end if it never does."""
        start = time.monotonic()
        while time.monotonic() - start < START_TIMEOUT_S:
            if self.process.poll() is not None:
                break
            try:
                if httpx.get(f"{self.url}/info/", timeout=5).status_code == 200:
                    return time.monotonic() - start
            except httpx.TransportError:
                time.sleep(0.5)
        self.stop()
        pytest.fail(f"the server did not start:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's output."""
        return "\n".join(self.log.read_text().splitlines()[-lines:])

    def stop(self) -> int:
        """Stop the server (SIGTERM, then SIGKILL after 30 s); its exit status."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture(scope="session")
def server():
    """The running server (stopped at the end)."""
    root = Path(tempfile.mkdtemp(prefix="bids-mcsr-monailabel-"))
    running = Server(root)
    running.wait_until_up()
    yield running
    running.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def client(server):
    """An HTTP client of the server (no proxy: the test process keeps its own network)."""
    with httpx.Client(base_url=server.url, timeout=600, trust_env=False) as http:
        yield http
