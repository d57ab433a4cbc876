"""What the ``inspector`` command resolves before its window opens: the source, the device, the
engine, the teachers, the number of threads; :class:`StartupError` says what is wrong.

Shared by the command (:mod:`inspector.qt.main`), its self-test (:mod:`inspector.qt.selftest`), the
update dialog (``default_threads``) and the screenshot scripts; it imports no widget, so every room
of the Qt layer may use it.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from inspector.errors import InspectorError

NO_CAMERA = "No camera found — playing the sample video."


def default_threads() -> int:
    """Every usable core, at most 4 (more rarely helps a small model). Measured on 2 cores
    (benchmarks/app_bench.py): 2 threads gave 29.9 displayed FPS and p95 capture→paint 48 ms,
    1 thread (leaving a core to capture and painting) 26.8 FPS and 73 ms: onnxruntime does not
    spin here (see engine.py), so the capture and GUI threads get the cores between runs anyway."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


class StartupError(InspectorError, RuntimeError):
    """The app cannot start (bad model, bad source): the message says why."""


def resolve_source(spec: str | None):
    """``(SourceSpec, notice or None)``: the given source, else the first camera, else the sample."""
    from inspector.paths import sample_video
    from inspector.capture.sources import SourceError, list_cameras, parse_source

    if spec is not None:
        try:
            return parse_source(spec), None
        except (SourceError, OSError) as exc:
            raise StartupError(f"--source {spec!r}: {exc}") from None
    try:
        cameras = list_cameras()
    except Exception as exc:  # noqa: BLE001 - no camera support is "no camera"
        logging.getLogger(__name__).info("looking for cameras failed: %s", exc)
        cameras = []
    if cameras:
        return parse_source(cameras[0][0]), None
    try:
        return parse_source(str(sample_video())), NO_CAMERA
    except (FileNotFoundError, SourceError) as exc:
        raise StartupError(f"no camera found and no sample video: {exc}") from None


def resolve_device(address: str, pairings=None):
    """The saved :class:`~inspector.link.client.Pairing` for ``HOST:PORT``; StartupError if none."""
    from inspector.link.connection import DeviceError, parse_address
    from inspector.link.pairing import PairingStore
    from inspector.link.protocol import DEFAULT_PORT

    if not re.fullmatch(r"\s*(\[[^\]]+\]|[^\s:\[\]/]+):\d+\s*", address or ""):
        raise StartupError(f"--device {address!r}: not a host:port (e.g. 192.168.1.20:{DEFAULT_PORT} or "
                           f"jetson.local:{DEFAULT_PORT})")
    try:
        host, port = parse_address(address)
        pairings = pairings or PairingStore()
        pairing = pairings.find(host, port)
    except (ValueError, DeviceError) as exc:
        raise StartupError(f"--device {address!r}: {exc}") from None
    if pairing is None:
        raise StartupError(f"--device {address!r}: not paired with that device; start the app without --device, "
                           f"enter the address in the Device panel and press Pair…")
    return pairing


def load_engine(model: Path | None, threads: int | None):
    """The engine for ``model``; without one, the shipped student in the variant that is faster
    on this CPU (:func:`inspector.edge.check.choose_variant`; ``engine.variant_reason`` says why)."""
    from platformdirs import user_cache_dir

    from inspector.edge.engine import InferenceEngine
    from inspector.edge.check import choose_variant
    from inspector.edge.fields import PackageError
    from inspector.paths import default_model

    threads = threads or default_threads()
    try:
        reason = None
        if model is None:
            choice = choose_variant(default_model(), threads, Path(user_cache_dir("crack-inspector")))
            model, reason = choice.path, choice.reason
        engine = InferenceEngine(model, threads=threads)
        engine.variant_reason = reason or f"given: {model.name}"
        return engine
    except (PackageError, FileNotFoundError, OSError, ValueError) as exc:
        raise StartupError(f"cannot load the model: {exc}") from None


def resolve_teachers(path: Path | None, disabled: bool = False) -> Path | None:
    """The teacher package the scorer runs: ``path`` (must exist), else the shipped one, else None
    (the app works without; flags then wait unscored for a later run)."""
    from inspector.paths import default_teachers

    if disabled:
        return None
    if path is not None:
        if not path.is_file():
            raise StartupError(f"--teachers {path}: no such package")
        return path
    try:
        return default_teachers()
    except FileNotFoundError as exc:
        logging.getLogger(__name__).info("%s: flags are not scored by the teachers", exc)
        return None


def make_scorer(store, teachers: Path | None):
    """A TeacherScorer on ``store`` (one thread, lowest priority), or None without a package."""
    if teachers is None:
        return None
    from inspector.review.teacher_scorer import TeacherScorer

    return TeacherScorer(store, teachers, threads=1)


def user_name() -> str | None:
    """Who runs the app (the reviewer of a label, who pushed an update or overrode a gate), or None
    if the system cannot say."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None
