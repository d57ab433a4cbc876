"""Durable file writes shared by the app and the training tools (plain standard library)."""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import BinaryIO, Callable


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object], *,
                 tmp: str | os.PathLike | None = None) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, flush, fsync, then rename it over
    ``path``: a reader sees the old file or the complete new one, never part of one.

    ``tmp``: the temporary file (default: a fresh ``.<name>.<random>.tmp`` in the same folder).
    It is opened exclusively (an existing one is a FileExistsError) and removed if anything
    fails. It is created with the umask's mode, not ``tempfile.mkstemp``'s 0600, which the
    rename would hand on to ``path``. The folder must exist, and is not fsynced: a caller that
    needs the rename itself to survive a power loss fsyncs the folder afterwards.
    """
    path = Path(path)
    tmp = Path(tmp) if tmp is not None else path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
