"""What the device panel says of a device, as text: each status field (text and tooltip), the gate
of a model version, a failure in one line. Plain Python: the panel and the model history view
put these strings in their widgets.
"""
from __future__ import annotations

from inspector.link import protocol as P
from inspector.link.connection import DeviceError


def describe(exc: BaseException) -> str:
    """A device's own errors read as sentences; anything else is named by its type."""
    return str(exc) if isinstance(exc, DeviceError) else f"{type(exc).__name__}: {exc}"


def gate_text(info, *, long: bool = False) -> str:
    """What a device's model list says of a version's gate (ModelInfo or its dict): "promoted",
    "overridden by X: reason", "NOT promoted", or "—" for a package without lineage."""
    d = info if isinstance(info, dict) else info.to_dict()
    override, promoted = d.get("override"), d.get("promoted")
    if isinstance(override, dict):
        text = f"overridden by {override.get('by') or '?'}: {override.get('reason') or ''}".strip()
        if long:
            failed = ", ".join(override.get("failed") or []) or "none listed"
            text = f"gate refused it (failed: {failed}); {text} ({override.get('at') or '?'})"
        return text
    if promoted is True:
        return "promoted" + (" by its gate" if long else "")
    if promoted is False:
        return "NOT promoted" + (" (the gate refused it; no override)" if long else "")
    return "—" if not long else "no lineage (not made by an update)"


def status_fields(status: P.Status, address: str | None, feed=None) -> dict[str, tuple[str, str | None]]:
    """The panel's fields for ``status`` (the device at ``address``, None if not connected;
    ``feed`` the DeviceFeed on screen, for what is received here): key → (text, tooltip or None)."""
    cam = status.camera if isinstance(status.camera, dict) else {}
    cam_fps = cam.get("fps")
    camera = " · ".join(str(x) for x in (cam.get("source"), cam.get("state"),
                                         f"{cam_fps:.1f} fps" if isinstance(cam_fps, (int, float)) else None)
                        if x) or "—"
    model = status.model or {}
    gate = gate_text(model)
    provider = status.provider.replace("ExecutionProvider", "")
    v = status.verification
    received = f", {feed.fps:.1f} received" if feed is not None else ""
    link = feed.link_ms if feed is not None else None
    return {
        "device": (f"{status.agent_name}" + (f" ({address})" if address else ""), None),
        "camera": (camera, str(cam.get("message") or "")),
        "model": ((f"{model.get('name', '?')} {model.get('version', '')}".strip()
                   + (f" · {gate}" if gate != "—" else "")) if model
                  else "starting: loading and checking its model…" if status.starting else "none",
                  f"sha256 {model.get('sha256', '')}\n{gate_text(model, long=True)}" if model else ""),
        "provider": (f"{provider} · {status.isa}" if status.isa else provider,
                     "" if v is None else
                     f"reference check: rule {v.get('rule')}, {'passed' if v.get('passed') else 'FAILED'}; "
                     f"max |Δp| {v.get('probs_max_abs', 0):.2g}, heat-map r {v.get('cam_corr', 0):.6f}, "
                     f"peak Δ {v.get('cam_peak', 0):.2g} on {v.get('n_images')} images"),
        "fps": ("— (waiting for the model)" if status.starting else f"{status.fps:.1f} inferred{received}"
                + (f" · {100 * status.tile_share:.0f} % tiles" if status.tile_share is not None else ""),
                "frames per second the device inferred; share of the tiles it inferred on recent frames "
                "(the others carried over as the camera moved: tile reuse)"),
        "link": ("—" if link is None else f"{link:.0f} ms",
                 "agent sent → received here (median); between two machines as exact as their clocks agree"),
    }
