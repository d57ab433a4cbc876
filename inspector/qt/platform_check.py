"""Does Qt's xcb platform plugin find the system libraries it needs? Checked before QApplication.

Qt 6.5+ (the PySide6 wheel) links its X11 plugin, ``PySide6/Qt/plugins/platforms/libqxcb.so`` and
``Qt/lib/libQt6XcbQpa.so.6``, against xcb libraries a fresh Debian/Ubuntu does not have
(``libxcb-cursor0``, ``libxcb-icccm4``, ``libxcb-keysyms1``…). Without them Qt only says "Could
not load the Qt platform plugin "xcb"" and aborts; :func:`check` names the missing libraries and
the apt packages that have them instead. It runs ``ldd`` on the plugin (every unresolved library,
also the ones its libraries need); without ``ldd`` it tries to load the plugin's libraries with
ctypes (:data:`XCB_PLUGIN_LIBRARIES`, measured with ``readelf -d`` on PySide6 6.11).

It applies only when Qt will use xcb (:func:`uses_xcb`): Linux with an X display, and
QT_QPA_PLATFORM unset (then not under Wayland) or ``xcb``; offscreen (the self-test, the tests)
and Wayland skip it. In the PyInstaller bundle (``sys.frozen``) the plugin is under
``_internal/PySide6/...`` and the bundled xcb libraries (``build.spec``) are in ``_internal/``, on
the LD_LIBRARY_PATH the bootloader sets, so ``ldd`` sees what the plugin will load.

    python -m inspector.qt.platform_check           # the missing apt packages, one a line (exit 0)
    python -m inspector.qt.platform_check --always  # also without an X display (the bundle build)

Imports no Qt: ``run.sh`` runs it before the window, ``build.spec`` uses :func:`resolve`.
"""
from __future__ import annotations

import argparse
import ctypes
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

PLUGIN = Path("Qt", "plugins", "platforms", "libqxcb.so")

# Debian/Ubuntu package of every library the xcb plugin loads (its DT_NEEDED, libQt6XcbQpa's and
# libQt6Gui's, and theirs: `ldd libqxcb.so` on Debian 12, `dpkg -S`); Qt's own come with PySide6.
PACKAGES = {
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-util.so.1": "libxcb-util1",
    "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-render.so.0": "libxcb-render0",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-shm.so.0": "libxcb-shm0",
    "libxcb-sync.so.1": "libxcb-sync1",
    "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-xkb.so.1": "libxcb-xkb1",
    "libxcb.so.1": "libxcb1",
    "libxkbcommon.so.0": "libxkbcommon0",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libX11-xcb.so.1": "libx11-xcb1",
    "libX11.so.6": "libx11-6",
    "libXau.so.6": "libxau6",
    "libXdmcp.so.6": "libxdmcp6",
    "libGL.so.1": "libgl1",
    "libEGL.so.1": "libegl1",
    "libGLX.so.0": "libglx0",
    "libGLdispatch.so.0": "libglvnd0",
    "libfontconfig.so.1": "libfontconfig1",
    "libfreetype.so.6": "libfreetype6",
    "libglib-2.0.so.0": "libglib2.0-0",
    "libgthread-2.0.so.0": "libglib2.0-0",
    "libdbus-1.so.3": "libdbus-1-3",
    "libpng16.so.16": "libpng16-16",
    "libexpat.so.1": "libexpat1",
    "libpcre2-8.so.0": "libpcre2-8-0",
    "libbrotlidec.so.1": "libbrotli1",
    "libbrotlicommon.so.1": "libbrotli1",
    "libbsd.so.0": "libbsd0",
    "libmd.so.0": "libmd0",
    "libzstd.so.1": "libzstd1",
    "libz.so.1": "zlib1g",
}
# What libqxcb.so and libQt6XcbQpa.so.6 link against besides Qt and the C/C++ runtime (readelf -d,
# PySide6 6.11): the ctypes fallback's list.
XCB_PLUGIN_LIBRARIES = (
    "libxcb.so.1", "libxcb-cursor.so.0", "libxcb-icccm.so.4", "libxcb-keysyms.so.1",
    "libxcb-image.so.0", "libxcb-render-util.so.0", "libxcb-util.so.1", "libxcb-randr.so.0",
    "libxcb-render.so.0", "libxcb-shape.so.0", "libxcb-shm.so.0", "libxcb-sync.so.1",
    "libxcb-xfixes.so.0", "libxcb-xkb.so.1", "libxkbcommon.so.0", "libxkbcommon-x11.so.0",
    "libX11-xcb.so.1", "libX11.so.6", "libGL.so.1", "libglib-2.0.so.0", "libgthread-2.0.so.0",
)
_LDD_LINE = re.compile(r"^\s*(\S+)\s+=>\s+(.*?)\s*(\(0x[0-9a-fA-F]+\))?\s*$")


def uses_xcb(environ: Mapping[str, str] | None = None, platform: str | None = None) -> bool:
    """Will Qt open its xcb platform? Linux with DISPLAY set, and QT_QPA_PLATFORM ``xcb`` (its
    first choice: ``xcb:OPTIONS`` or ``xcb;wayland`` too), or unset with no WAYLAND_DISPLAY."""
    env = os.environ if environ is None else environ
    if not (platform or sys.platform).startswith("linux") or not env.get("DISPLAY"):
        return False
    requested = [name.split(":")[0].strip() for name in env.get("QT_QPA_PLATFORM", "").split(";")]
    requested = [name for name in requested if name]
    if requested:
        return requested[0] == "xcb"
    return not env.get("WAYLAND_DISPLAY")


def plugin_path() -> Path | None:
    """``libqxcb.so`` of the PySide6 this process would load (the bundle's in a frozen app), or
    None when there is none."""
    if getattr(sys, "frozen", False):
        roots = [Path(getattr(sys, "_MEIPASS", Path(sys.executable).parent)) / "PySide6"]
    else:
        spec = importlib.util.find_spec("PySide6")     # finds the package without importing Qt
        roots = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    for root in roots:
        if (root / PLUGIN).is_file():
            return root / PLUGIN
    return None


def parse_ldd(output: str) -> dict[str, str | None]:
    """``ldd`` output → {library name: resolved path, or None for "not found"} (lines without
    ``=>``, the vdso and the loader, are left out)."""
    libraries: dict[str, str | None] = {}
    for line in output.splitlines():
        m = _LDD_LINE.match(line)
        if m is None:
            continue
        name, target = m.group(1), m.group(2)
        libraries[name] = None if target == "not found" else (target or None)
    return libraries


def resolve(plugin: Path) -> dict[str, str | None] | None:
    """Every library ``plugin`` loads, directly or through its libraries → where the loader finds
    it (None: not found), as ``ldd`` says with this process's LD_LIBRARY_PATH; None when ``ldd``
    cannot say (not installed, failed: then :func:`unloadable` tries them)."""
    ldd = shutil.which("ldd")
    if ldd is None:
        return None
    try:
        proc = subprocess.run([ldd, str(plugin)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:        # e.g. a library there but broken: "file too short"
        return None
    return parse_ldd(proc.stdout) or None


def unloadable(names: tuple[str, ...] = XCB_PLUGIN_LIBRARIES) -> list[str]:
    """The libraries of ``names`` this process cannot load (ctypes, the loader's search path):
    the fallback without ``ldd``."""
    missing = []
    for name in names:
        try:
            ctypes.CDLL(name)
        except OSError:
            missing.append(name)
    return missing


def unresolved_libraries(plugin: Path | None = None) -> list[str]:
    """The libraries Qt's xcb plugin needs that the loader will not find (empty: none)."""
    plugin = plugin_path() if plugin is None else plugin
    libraries = resolve(plugin) if plugin is not None else None
    if libraries is None:
        return unloadable()
    return [name for name, path in libraries.items() if path is None]


def package_for(library: str) -> str:
    """The Debian/Ubuntu package that has ``library`` (a soname such as ``libxcb-cursor.so.0``):
    :data:`PACKAGES`, else Debian's naming rule (libNAME.so.N → libNAMEN, libNAME-1.so.0 →
    libNAME-1-0)."""
    if library in PACKAGES:
        return PACKAGES[library]
    stem, _, version = library.partition(".so")
    major = version.lstrip(".").split(".")[0]
    stem = stem.lower()
    if not major:
        return stem
    return f"{stem}-{major}" if stem[-1:].isdigit() else f"{stem}{major}"


def missing_packages(environ: Mapping[str, str] | None = None, *, always: bool = False) -> dict[str, str]:
    """{missing library: its apt package} for Qt's xcb plugin; empty when nothing is missing or
    xcb will not be used (unless ``always``)."""
    if not always and not uses_xcb(environ):
        return {}
    return {name: package_for(name) for name in unresolved_libraries()}


def message(missing: Mapping[str, str]) -> str:
    """What to tell the user about ``missing`` ({library: package})."""
    libraries = ", ".join(f"{name} ({package})" for name, package in missing.items())
    packages = " ".join(dict.fromkeys(missing.values()))
    return (f"Qt's xcb platform plugin needs libraries this system lacks: {libraries}. "
            f"Install them with: sudo apt-get install -y {packages}")


def check(environ: Mapping[str, str] | None = None) -> str | None:
    """Before QApplication: the message naming what to install, or None when the xcb plugin will
    load (or is not used)."""
    missing = missing_packages(environ)
    return message(missing) if missing else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m inspector.qt.platform_check",
                                description="Print the apt packages Qt's xcb platform plugin needs "
                                            "and this system lacks, one a line (nothing: none).")
    p.add_argument("--always", action="store_true",
                   help="check even when Qt would not use xcb here (no DISPLAY, Wayland, offscreen)")
    args = p.parse_args(argv)
    for package in dict.fromkeys(missing_packages(always=args.always).values()):
        print(package)
    return 0


if __name__ == "__main__":
    sys.exit(main())
