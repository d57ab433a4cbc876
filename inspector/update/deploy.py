"""Going live on a device: :func:`deploy_to_device` signs and uploads the INT8 candidate, activates
it (the agent answers only after the model passed its first live inferences, or rolls back by
itself and says why) and then polls the device's status until it reports that very model
(name, version, sha256) in service with frames flowing (:func:`wait_until_live`). Plain Python
(no Qt, no torch).
"""
from __future__ import annotations

import os
import time
from typing import Callable

from inspector.update.plan import ModelUpdateError

LIVE_TIMEOUT_S = 60.0                  # after activation: how long to wait for the device to report it live
LIVE_POLL_S = 0.5


class NotLiveError(ModelUpdateError):
    """The model is active on the device but no frame of its camera has been computed by it:
    activated, not live (the message says the camera's state)."""


def wait_until_live(client, name: str, version: str, sha256: str, *, timeout: float = LIVE_TIMEOUT_S,
                    poll: float = LIVE_POLL_S, progress: Callable[..., None] | None = None):
    """Poll ``client.status()`` until the device reports model ``name`` ``version`` (``sha256``)
    in service **and** frames of its camera computed by that model and passed by the agent's
    live check (``model_frames``/``model_checked``: counted from the swap, so the old model's
    frames never count); the :class:`~inspector.link.protocol.Status`.

    ModelUpdateError if another model is in service after an auto-rollback, or after ``timeout``;
    :class:`NotLiveError` when the model is in service but the camera delivers no frames (a camera
    neither live nor connecting), which is "activated", never "live"."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        status = client.status()
        model = status.model or {}
        ours = model.get("name") == name and model.get("version") == version and model.get("sha256") == sha256
        camera = status.camera if isinstance(status.camera, dict) else {}
        state = camera.get("state")
        if ours and status.model_checked and status.model_frames > 0:
            return status
        if ours and state not in ("live", "connecting"):
            raise NotLiveError(f"{name} {version} is active on {status.agent_name}, but its camera is {state} "
                               f"({camera.get('message') or 'no message'}): no frame computed by it yet, so it "
                               f"is not live")
        rolled = [e for e in status.events if e.get("kind") == "auto-rollback" and f"{name}-{version}" in
                  str(e.get("message", ""))]
        if rolled and not ours:
            raise ModelUpdateError(f"{status.agent_name} rolled {name} {version} back: {rolled[-1].get('message')}")
        if progress is not None and (model.get("version"), status.model_frames) != last:
            last = (model.get("version"), status.model_frames)
            progress("waiting", f"{status.agent_name}: {model.get('name', '?')} {model.get('version', '?')} "
                                f"in service, {status.model_frames} frames computed by it, {status.fps:.1f} fps")
        if time.monotonic() > deadline:
            seen = f"{status.model_frames} frames computed by it" if ours else \
                f"in service: {model.get('name', 'none')} {model.get('version', '')}"
            raise ModelUpdateError(f"{status.agent_name} did not report {name} {version} live on checked frames "
                                   f"within {timeout:.0f} s ({seen}; camera {state})")
        time.sleep(poll)


def deploy_to_device(pairing, signing_key, package: str | os.PathLike, *, timeout: float = LIVE_TIMEOUT_S,
                     progress: Callable[..., None] | None = None):
    """Sign, upload (skipped if the device already stores this very version), activate ``package``
    on the paired device, then wait until it reports it live. Returns (ModelInfo, Status)."""
    from inspector.link.client import DeviceClient
    from inspector.link.connection import DeviceError

    client = DeviceClient.from_pairing(pairing)

    def uploaded(sent: int, total: int) -> None:
        if progress is not None:
            progress("upload", sent, total)

    info, _ = client.install(package, signing_key, uploaded, activate=False)

    def activating(act) -> None:
        if progress is not None:
            progress("activating", f"{pairing.agent_name}: {act.message} ({act.state}, {act.elapsed_s:.0f} s)")

    try:  # polls the device's status: a first TensorRT build takes minutes on a Jetson Nano
        client.activate(info.id, progress=activating)
    except DeviceError as exc:
        raise ModelUpdateError(f"{pairing.agent_name} did not take {info.name} {info.version}: {exc}") from exc
    if progress is not None:
        progress("activated", f"{info.id} activated on {pairing.agent_name}; waiting for it to run live")
    status = wait_until_live(client, info.name, info.version, info.sha256, timeout=timeout,
                             progress=None if progress is None else lambda *a: progress(*a))
    return info, status
