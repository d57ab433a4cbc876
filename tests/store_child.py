"""Helper process of the crash test in ``test_store.py``: adds flags to a store until killed.

    python tests/store_child.py STORE_DIR SEED

Prints ``ready`` just before opening the store (the parent's kill clock starts there, so a short
delay kills it while opening), ``opened <temp files> <orphan images> <missing images>`` once
open (what its recovery found), and ``stored <uid> <crc32 of the RGB frame>``
after each ``add`` has returned, flushing stdout every time: a reported uid is a promise the
store must keep.
"""
from __future__ import annotations

import os
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np

from inspector.store.database import FlagStore, ModelRef

MODEL = ModelRef("crack-student", "1.0.0", "0" * 64)
SIZE = (320, 240)  # width, height: small frames keep each add quick


def real_frames() -> list[np.ndarray]:
    """A few real concrete patches (Özgenel), resized to the frame size, RGB."""
    data = Path(os.environ["CRACK_DATA_DIR"]) / "ozgenel_ccic_subset"
    files = sorted((data / "crack").glob("*.jpg"))[:4] + sorted((data / "no_crack").glob("*.jpg"))[:4]
    frames = [cv2.resize(cv2.imread(str(f), cv2.IMREAD_COLOR), SIZE, interpolation=cv2.INTER_AREA) for f in files]
    return [cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in frames]


def main(root: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    frames = real_frames()
    w, h = SIZE
    tiles = [{"box": [x, y, x + 160, y + 120], "crack_prob": 0.0} for y in (0, 120) for x in (0, 160)]
    print("ready", flush=True)
    store = FlagStore(root)
    r = store.recovered
    print("opened", len(r.temp_files_removed), len(r.orphan_images_removed), len(r.missing_images), flush=True)
    while True:
        frame = frames[rng.integers(len(frames))].copy()
        frame[rng.integers(h), :, :] = rng.integers(256, size=3)  # every frame differs
        heat = rng.random((h, w), dtype=np.float32)
        probs = rng.random(len(tiles))
        rec = store.add(frame, heat, [{**t, "crack_prob": float(p)} for t, p in zip(tiles, probs)],
                        reason="crack", source="crash test", model=MODEL, crack_prob_max=float(probs.max()))
        print("stored", rec.uid, zlib.crc32(frame.tobytes()), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
