"""Durable file writes shared by the app, the device agent and the training tools (plain
standard library). Files written whole go through :func:`write_atomic`; the exceptions are the
app's signing key (linked, never renamed over an existing key) and the agent's uploads (streamed
to ``incoming/``, verified, then renamed)."""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import BinaryIO, Callable


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object], *,
                 tmp: str | os.PathLike | None = None, mode: int | None = None) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, flush, fsync, then rename it over
    ``path``: a reader sees the old file or the complete new one, never part of one.

    ``tmp``: the temporary file (default: a fresh ``.<name>.<random>.tmp`` in the same folder).
    It is created exclusively (an existing one is a FileExistsError and is left alone) and
    removed if anything fails after that. ``mode``: the file's permissions, set before anything
    is written (e.g. 0o600 for a secret); default: what the umask gives, not
    ``tempfile.mkstemp``'s 0600, which the rename would hand on to ``path``. The folder must
    exist, and is not fsynced: a caller that needs the rename itself to survive a power loss
    calls :func:`fsync_dir` afterwards.
    """
    path = Path(path)
    tmp = Path(tmp) if tmp is not None else path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                 0o666 if mode is None else mode)   # an existing tmp is not ours: raise, leave it
    try:
        with open(fd, "wb") as f:
            if mode is not None and hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)   # exactly ``mode``, whatever the umask
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fsync_dir(directory: str | os.PathLike, *, best_effort: bool = False) -> None:
    """fsync a folder, so that renames and new names in it survive a power loss (POSIX).

    A no-op on Windows (folders cannot be opened there; NTFS journals renames). ``best_effort``:
    ignore an OSError (a filesystem that refuses), for files that are durable enough without.
    """
    if os.name == "nt":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        if not best_effort:
            raise
