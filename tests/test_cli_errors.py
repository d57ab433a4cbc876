"""Errors that say what to do (issue 13): the ``inspector`` and ``inspector-agent`` commands
refuse bad input at once, name what is wrong, and print the message, not an exception class."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from inspector.paths import sample_video
from inspector.qt.main import main

REPO = Path(__file__).resolve().parents[1]


def run(module_args: list[str], *args, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    return subprocess.run([sys.executable, *module_args, *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout, env=env)


def inspector(*args) -> subprocess.CompletedProcess:
    return run(["-c", "import sys; from inspector.qt.main import main; sys.exit(main(sys.argv[1:]))"], *args)


@pytest.mark.parametrize("command", [["--export-flags", "{tmp}/out"], ["--report", "{tmp}/r.html"]])
def test_export_and_report_from_a_store_that_does_not_exist_fail_and_create_nothing(command, tmp_path, capsys):
    typo = tmp_path / "TYPO"
    rc = main(["--store", str(typo), *(a.format(tmp=tmp_path) for a in command)])
    err = capsys.readouterr().err
    assert rc == 2 and f"no flag store in {typo}" in err and "check --store" in err, err
    assert not typo.exists() and not (tmp_path / "out").exists() and not (tmp_path / "r.html").exists()


def test_export_without_store_option_needs_the_default_store_to_exist(tmp_path, monkeypatch, capsys):
    import inspector.store.database as store_mod

    monkeypatch.setattr(store_mod, "default_root", lambda: tmp_path / "user-data" / "flags")
    assert main(["--export-flags", str(tmp_path / "out")]) == 2
    assert "no flag store in" in capsys.readouterr().err
    assert not (tmp_path / "user-data").exists()


@pytest.mark.parametrize("value, message", [("0", "must be 1 or more, got 0"), ("-2", "must be 1 or more"),
                                            ("two", "is not a whole number")])
def test_threads_must_be_at_least_one(value, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--threads", value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--threads" in err and message in err, err


@pytest.mark.parametrize("address", ["nonsense", "jetson.local", "host:port", "a:b:c"])
def test_device_that_is_not_host_port_says_so(address):
    from inspector.qt.startup import StartupError, resolve_device

    with pytest.raises(StartupError, match="not a host:port") as err:
        resolve_device(address, pairings=object())    # never consulted
    assert "not paired" not in str(err.value)


def test_device_nonsense_on_the_command_line():
    r = inspector("--device", "nonsense")
    assert r.returncode == 2
    assert "--device 'nonsense': not a host:port (e.g. 192.168.1.20:8443" in r.stderr and "paired" not in r.stderr


def test_startup_errors_print_the_message_not_the_class(tmp_path):
    not_a_folder = tmp_path / "flags"
    not_a_folder.write_text("a file where the store folder should be")
    r = inspector("--store", not_a_folder, "--source", sample_video(), "--no-teachers", "--threads", "1")
    assert r.returncode == 2
    assert f"\ninspector: cannot create the flag store folder {not_a_folder}: " in r.stderr, r.stderr
    assert "StoreError" not in r.stderr


def test_source_that_is_not_a_video_is_refused_at_once(tmp_path):
    notes = tmp_path / "notes.mp4"
    notes.write_text("not a video\n" * 100)
    r = inspector("--source", notes, "--no-teachers", "--threads", "1", "--store", tmp_path / "flags")
    assert r.returncode == 2 and f"not a video OpenCV can read: {notes}" in r.stderr, r.stderr


def test_agent_on_a_busy_port_fails_before_showing_a_pairing_code(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = run(["-m", "inspector.agent"], "--port", port, "--host", "127.0.0.1", "--data", tmp_path / "agent",
                "--no-mdns", "--insecure-http", "--threads", "1")
    assert r.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr and f"port {port}" in r.stderr, r.stderr
    assert "pairing code" not in r.stderr and "AGENT READY" not in r.stdout
    assert not (tmp_path / "agent" / "pairing-code.txt").exists()
