"""inspector.qt.platform_check: the X libraries Qt's xcb plugin needs, checked before QApplication
(no display needed: the loader and ldd are faked where a library has to be missing)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from inspector.qt import platform_check as pc

REPO = Path(__file__).resolve().parents[1]
X11 = {"DISPLAY": ":0"}
LDD_MISSING = """\
\tlinux-vdso.so.1 (0x00007ffd3c5f1000)
\tlibQt6XcbQpa.so.6 => /venv/PySide6/Qt/plugins/platforms/../../lib/libQt6XcbQpa.so.6 (0x00007f60f6fa8000)
\tlibxkbcommon-x11.so.0 => /lib/x86_64-linux-gnu/libxkbcommon-x11.so.0 (0x00007f60f63af000)
\tlibxcb-cursor.so.0 => not found
\tlibxcb-icccm.so.4 => /lib/x86_64-linux-gnu/libxcb-icccm.so.4 (0x00007f60f63a8000)
\tlibxcb-keysyms.so.1 => not found
\tlibxcb-cursor.so.0 => not found
\t/lib64/ld-linux-x86-64.so.2 (0x00007f60f7078000)
"""


def all_found(plugin):
    return {name: f"/lib/x86_64-linux-gnu/{name}" for name in pc.XCB_PLUGIN_LIBRARIES}


def without(*names):
    def resolve(plugin):
        return {**all_found(plugin), **{name: None for name in names}}
    return resolve


@pytest.fixture
def plugin(monkeypatch, tmp_path):
    """A stand-in libqxcb.so: resolve() is faked, so only its path matters."""
    path = tmp_path / "libqxcb.so"
    path.write_bytes(b"")
    monkeypatch.setattr(pc, "plugin_path", lambda: path)
    return path


def test_nothing_missing_when_every_library_resolves(monkeypatch, plugin):
    monkeypatch.setattr(pc, "resolve", all_found)
    assert pc.unresolved_libraries() == []
    assert pc.missing_packages(X11) == {}
    assert pc.check(X11) is None


def test_unresolved_libraries_are_named_with_their_apt_packages(monkeypatch, plugin):
    monkeypatch.setattr(pc, "resolve", without("libxcb-cursor.so.0", "libxcb-icccm.so.4", "libxcb-keysyms.so.1"))
    assert pc.missing_packages(X11) == {"libxcb-cursor.so.0": "libxcb-cursor0",
                                        "libxcb-icccm.so.4": "libxcb-icccm4",
                                        "libxcb-keysyms.so.1": "libxcb-keysyms1"}
    msg = pc.check(X11)
    assert msg.startswith("Qt's xcb platform plugin needs libraries this system lacks: "
                          "libxcb-cursor.so.0 (libxcb-cursor0), libxcb-icccm.so.4 (libxcb-icccm4), ")
    assert msg.endswith("Install them with: sudo apt-get install -y libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1")


def test_ldd_output_is_parsed_not_found_lines_and_all():
    libs = pc.parse_ldd(LDD_MISSING)
    assert libs["libxcb-cursor.so.0"] is None and libs["libxcb-keysyms.so.1"] is None
    assert libs["libxcb-icccm.so.4"] == "/lib/x86_64-linux-gnu/libxcb-icccm.so.4"
    assert libs["libQt6XcbQpa.so.6"].endswith("/libQt6XcbQpa.so.6")
    assert "linux-vdso.so.1" not in libs and not any("ld-linux" in name for name in libs)


def test_ldd_not_found_lines_reach_the_message(monkeypatch, plugin):
    class Ldd:
        returncode, stdout = 0, LDD_MISSING

    monkeypatch.setattr(pc.subprocess, "run", lambda *a, **k: Ldd())
    monkeypatch.setattr(pc.shutil, "which", lambda name: "/usr/bin/ldd")
    assert pc.missing_packages(X11) == {"libxcb-cursor.so.0": "libxcb-cursor0",
                                        "libxcb-keysyms.so.1": "libxcb-keysyms1"}
    assert "sudo apt-get install -y libxcb-cursor0 libxcb-keysyms1" in pc.check(X11)


@pytest.mark.parametrize("ldd", ["absent", "fails"])
def test_without_a_working_ldd_ctypes_tries_the_libraries(monkeypatch, plugin, ldd):
    class Broken:
        returncode, stdout = 1, ""      # e.g. "error while loading shared libraries: ... file too short"

    if ldd == "absent":
        monkeypatch.setattr(pc.shutil, "which", lambda name: None)
    else:
        monkeypatch.setattr(pc.shutil, "which", lambda name: "/usr/bin/ldd")
        monkeypatch.setattr(pc.subprocess, "run", lambda *a, **k: Broken())
    tried = []

    def cdll(name):
        tried.append(name)
        if name == "libxcb-cursor.so.0":
            raise OSError(f"{name}: cannot open shared object file: No such file or directory")

    monkeypatch.setattr(pc.ctypes, "CDLL", cdll)
    assert pc.missing_packages(X11) == {"libxcb-cursor.so.0": "libxcb-cursor0"}
    assert tried == list(pc.XCB_PLUGIN_LIBRARIES)


@pytest.mark.parametrize("env, xcb", [
    ({"DISPLAY": ":0"}, True),
    ({"DISPLAY": ":0", "QT_QPA_PLATFORM": "xcb"}, True),
    ({"DISPLAY": ":0", "QT_QPA_PLATFORM": "xcb;wayland"}, True),
    ({"DISPLAY": ":0", "WAYLAND_DISPLAY": "wayland-0", "QT_QPA_PLATFORM": "xcb"}, True),   # XWayland, as asked
    ({"DISPLAY": ":0", "QT_QPA_PLATFORM": "offscreen"}, False),
    ({"DISPLAY": ":0", "QT_QPA_PLATFORM": "wayland"}, False),
    ({"DISPLAY": ":0", "WAYLAND_DISPLAY": "wayland-0"}, False),
    ({"WAYLAND_DISPLAY": "wayland-0"}, False),
    ({}, False),
    ({"QT_QPA_PLATFORM": "xcb"}, False),            # no X display: Qt fails to connect, not to load
])
def test_the_check_applies_only_when_qt_uses_xcb(monkeypatch, plugin, env, xcb):
    assert pc.uses_xcb(env, platform="linux") is xcb

    def resolve(plugin):
        raise AssertionError("checked although Qt does not use xcb")

    monkeypatch.setattr(pc, "resolve", without("libxcb-cursor.so.0") if xcb else resolve)
    assert (pc.check(env) is not None) is xcb


def test_not_on_other_systems():
    assert not pc.uses_xcb({"DISPLAY": ":0"}, platform="darwin")
    assert not pc.uses_xcb({"DISPLAY": ":0"}, platform="win32")


def test_package_names():
    assert pc.package_for("libxkbcommon-x11.so.0") == "libxkbcommon-x11-0"
    assert pc.package_for("libxcb-render-util.so.0") == "libxcb-render-util0"
    assert pc.package_for("libxcb-xinerama.so.0") == "libxcb-xinerama0"      # Debian's rule
    assert pc.package_for("libXrender.so.1") == "libxrender1"
    assert pc.package_for("libfoo-2.so.3") == "libfoo-2-3"


def test_the_bundle_plugin_is_found_under_meipass(monkeypatch, tmp_path):
    plugin = tmp_path / "PySide6" / "Qt" / "plugins" / "platforms" / "libqxcb.so"
    plugin.parent.mkdir(parents=True)
    plugin.write_bytes(b"")
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path), raising=False)
    assert pc.plugin_path() == plugin


def test_the_real_plugin_and_its_libraries():
    """On this machine, with the real ldd: the plugin is where PySide6 is, ctypes agrees with ldd
    about what is missing, and every X library it loads has a known package."""
    plugin = pc.plugin_path()
    assert plugin is not None and plugin.parts[-4:] == ("Qt", "plugins", "platforms", "libqxcb.so")
    libs = pc.resolve(plugin)
    assert libs is not None
    assert set(pc.XCB_PLUGIN_LIBRARIES) <= set(libs)
    x_libs = [name for name in libs if name.startswith(("libxcb", "libX", "libxkb"))]
    assert x_libs and all(name in pc.PACKAGES for name in x_libs), x_libs
    assert sorted(pc.unresolved_libraries(plugin)) == sorted(pc.unloadable())


def test_main_prints_the_packages_one_a_line(monkeypatch, capsys, plugin):
    monkeypatch.setattr(pc, "resolve", without("libxcb-cursor.so.0", "libxcb-keysyms.so.1", "libxcb-image.so.0"))
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert pc.main([]) == 0
    assert capsys.readouterr().out == "libxcb-cursor0\nlibxcb-keysyms1\nlibxcb-image0\n"
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    assert pc.main([]) == 0
    assert capsys.readouterr().out == ""
    assert pc.main(["--always"]) == 0
    assert capsys.readouterr().out == "libxcb-cursor0\nlibxcb-keysyms1\nlibxcb-image0\n"


def run(code_or_module, env, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")} | env
    return subprocess.run([sys.executable, *code_or_module, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


def test_module_as_run_sh_runs_it():
    """``python -m inspector.qt.platform_check``: nothing offscreen; with --always, this machine's
    missing packages (none where the xcb libraries are installed), exit 0 either way."""
    proc = run(["-m", "inspector.qt.platform_check"], {"DISPLAY": ":0", "QT_QPA_PLATFORM": "offscreen"})
    assert (proc.returncode, proc.stdout) == (0, ""), proc.stderr
    proc = run(["-m", "inspector.qt.platform_check"], {}, "--always")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == list(dict.fromkeys(map(pc.package_for, pc.unresolved_libraries())))


def test_inspector_exits_1_naming_the_packages_before_qapplication():
    """The window's start (inspector.qt.main) with a library made unfindable: status 1, the message
    on stderr, Qt never asked for a platform (DISPLAY points nowhere)."""
    code = ("import inspector.qt.platform_check as pc\n"
            "pc.unresolved_libraries = lambda plugin=None: ['libxcb-cursor.so.0', 'libxcb-keysyms.so.1']\n"
            "from inspector.qt.main import main\n"
            "raise SystemExit(main(['--no-teachers']))\n")
    proc = run(["-c", code], {"DISPLAY": ":97"})
    assert proc.returncode == 1, proc.stderr
    assert ("inspector: Qt's xcb platform plugin needs libraries this system lacks: libxcb-cursor.so.0 "
            "(libxcb-cursor0), libxcb-keysyms.so.1 (libxcb-keysyms1). Install them with: "
            "sudo apt-get install -y libxcb-cursor0 libxcb-keysyms1") in proc.stderr
    assert "QApplication" not in proc.stderr and "qt.qpa" not in proc.stderr
