"""inspector.fsio: the one atomic-write helper (packages, agent identity and state, pairings,
flag images, checkpoints) and the folder fsync."""
import os
import stat

import pytest

from inspector.fsio import fsync_dir, write_atomic


def mode_of(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_mode_is_exact_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        write_atomic(tmp_path / "package", lambda f: f.write(b"zip"), mode=0o644)
        write_atomic(tmp_path / "default", lambda f: f.write(b"x"))
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "package") == 0o644
    assert mode_of(tmp_path / "default") == 0o600          # no mode: the umask decides
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "secret", lambda f: f.write(b"token"), mode=0o600)
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "secret") == 0o600


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "state.json"
    write_atomic(path, lambda f: f.write(b"old"))

    def half(f):
        f.write(b"ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, half)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_an_existing_temporary_name_is_refused_not_overwritten(tmp_path):
    tmp = tmp_path / ".flag.png.tmp"
    tmp.write_bytes(b"someone else's")
    with pytest.raises(FileExistsError):
        write_atomic(tmp_path / "flag.png", lambda f: f.write(b"png"), tmp=tmp)
    assert tmp.read_bytes() == b"someone else's" and not (tmp_path / "flag.png").exists()


def test_fsync_dir_strict_or_best_effort(tmp_path):
    fsync_dir(tmp_path)
    with pytest.raises(OSError):
        fsync_dir(tmp_path / "missing")
    fsync_dir(tmp_path / "missing", best_effort=True)
