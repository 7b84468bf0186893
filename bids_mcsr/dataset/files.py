"""Atomic file writes: every derivative lands in one piece.

A file is written to a temporary name in its own directory and moved into place with
``os.replace``, so a reader never sees half of it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` when the block succeeds.

    The temporary name keeps the final suffixes (``.nii.gz``, ``.txt``) so that writers that
    pick a format by extension still work; the file gets the mode a plain ``open`` would give
    (0666 less the umask). On error the temporary file is removed.

    Parameters
    ----------
    path : Path
        Final destination.

    Yields
    ------
    Path
        Where to write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix="-" + path.name)
    os.close(handle)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def current_umask() -> int:
    """The process umask, from ``/proc`` where it is shown (no window in which another
    thread's files get mode 0666), else by setting and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, content: str | bytes) -> Path:
    """Write text or bytes to ``path`` atomically.

    Parameters
    ----------
    path : Path
        Destination.
    content : str or bytes
        What to write (text is UTF-8).

    Returns
    -------
    Path
        ``path``.
    """
    with atomic_path(path) as tmp:
        if isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            tmp.write_text(content, encoding="utf-8")
    return Path(path)


def write_json(path: Path, data: dict) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    return atomic_write(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
