"""The TensorRT engine cache of one model version: where it lives, when it is stale, and the
provider options that make onnxruntime use it.

Why a cache: onnxruntime's TensorRT execution provider builds a TensorRT engine for the graph
when the session first runs; on a Jetson Nano that takes minutes. With
``trt_engine_cache_enable`` it writes the engine (and its optimisation profile) to
``trt_engine_cache_path`` and the next session loads it in seconds; ``trt_timing_cache_enable``
keeps the kernel timings, which also speeds up building a *different* model.

Why per version, and why a key file: onnxruntime names the cached engines after the graph, not
after the weights, and its documentation asks users to delete the cache by hand when the model,
onnxruntime, TensorRT or the GPU changes. So each model version gets its own folder (the
agent keeps it next to the version's package: ``engines/<file sha256>/tensorrt``) and a
``cache-key.json`` written before the build records what the engines were built from: the
model's SHA-256, the onnxruntime version and every option that shapes the engine. A folder whose
key differs (or is unreadable) is emptied before the session is created; a matching one is
reused. onnxruntime still checks the TensorRT version and the GPU itself (it names engine files
by compute capability and refuses an engine built by another TensorRT).

Why explicit profile shapes: the input is dynamic in its batch dimension. The engine is
checked on the package's reference patches (batch N_ref) and then runs whole frames (batch =
tiles per frame); without a profile covering both, TensorRT would build a second engine the
first time the live batch arrives, on the serving path. ``min 1, opt = tiles per frame,
max = max(tiles per frame, N_ref)`` is one engine for both.

Pure logic (the standard library), testable without a GPU.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Mapping

TENSORRT = "TensorrtExecutionProvider"
CACHE_DIR = "tensorrt"            # inside the version's engine folder
KEY_FILE = "cache-key.json"
KEY_FORMAT = 1

# The options that change the built engine (the cache path is where, not what: left out of the key).
_ENGINE_OPTIONS = ("trt_int8_enable", "trt_fp16_enable", "trt_profile_min_shapes", "trt_profile_opt_shapes",
                   "trt_profile_max_shapes", "trt_max_workspace_size")


def profile_shape(input_name: str, batch: int, size: int) -> str:
    """One onnxruntime profile-shape string for the NHWC uint8 input: ``input:Bx96x96x3``."""
    if batch < 1 or size < 1:
        raise ValueError(f"profile shape needs batch >= 1 and size >= 1, got {batch}, {size}")
    return f"{input_name}:{batch}x{size}x{size}x3"


def tensorrt_options(cache_dir: str | Path, *, input_name: str, input_size: int, opt_batch: int,
                     max_batch: int, int8: bool) -> dict[str, str]:
    """The TensorRT provider options for a model whose engines live in ``cache_dir``.

    ``opt_batch``: tiles per live frame; ``max_batch``: the largest batch the engine will see
    (frame or reference run). ``int8``: the package is INT8 QDQ (TensorRT then takes its
    quantisation from the graph, no calibration table). Values are strings, as onnxruntime
    takes them."""
    opt_batch, max_batch = int(opt_batch), int(max_batch)
    if not 1 <= opt_batch <= max_batch:
        raise ValueError(f"need 1 <= opt_batch <= max_batch, got {opt_batch}, {max_batch}")
    return {
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": "True",
        "trt_int8_enable": "True" if int8 else "False",
        "trt_fp16_enable": "False",
        "trt_profile_min_shapes": profile_shape(input_name, 1, input_size),
        "trt_profile_opt_shapes": profile_shape(input_name, opt_batch, input_size),
        "trt_profile_max_shapes": profile_shape(input_name, max_batch, input_size),
    }


def cache_key(model_sha256: str, ort_version: str, options: Mapping[str, str]) -> dict[str, Any]:
    """What the engines in a cache folder were built from (see the module doc)."""
    return {"format": KEY_FORMAT, "model_sha256": str(model_sha256), "onnxruntime": str(ort_version),
            "options": {k: str(options[k]) for k in _ENGINE_OPTIONS if k in options}}


def prepare(cache_dir: str | Path, key: Mapping[str, Any]) -> str:
    """Make ``cache_dir`` ready for engines built from ``key``; what was found:

    ``"reused"`` (same key: the engines in it are kept), ``"new"`` (no cache yet) or
    ``"invalidated: <why>"`` (another key or an unreadable one: the folder was emptied).
    The key is written before the build, so an engine in the folder always belongs to it
    (a build cut short leaves at worst a partial file that onnxruntime rebuilds)."""
    cache_dir = Path(cache_dir)
    key_path = cache_dir / KEY_FILE
    found = _read_key(key_path)
    if found == dict(key):
        return "reused"
    if found is None and not cache_dir.exists():
        state = "new"
    else:
        state = f"invalidated: {_why_stale(found, key)}"
        shutil.rmtree(cache_dir, ignore_errors=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = key_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(key), indent=1, sort_keys=True), encoding="utf-8")
    tmp.replace(key_path)
    return state


def _read_key(path: Path) -> dict[str, Any] | None:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _why_stale(found: Mapping[str, Any] | None, key: Mapping[str, Any]) -> str:
    if found is None:
        return f"no readable {KEY_FILE}"
    changed = sorted(k for k in set(found) | set(key) if found.get(k) != key.get(k))
    return f"{', '.join(changed)} changed"
