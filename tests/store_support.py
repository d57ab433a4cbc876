"""What the flag store's tests share: real frames (Özgenel patches enlarged to a non-square frame,
so a swapped width/height shows), their heat-maps and tiles, and adding a flag made of them."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from inspector.store.database import FlagRecord, FlagStore, ModelRef

OZ = Path(os.environ["CRACK_DATA_DIR"]) / "ozgenel_ccic_subset"
MODEL = ModelRef("crack-student", "1.0.0", "ab" * 32)
W, H = 300, 200
TILE_BOXES = [[0, 0, 150, 150], [150, 0, 300, 150], [0, 50, 150, 200], [150, 50, 300, 200]]


def real_frame(cls: str = "crack", index: int = 0) -> np.ndarray:
    path = sorted((OZ / cls).glob("*.jpg"))[index]
    bgr = cv2.resize(cv2.imread(str(path), cv2.IMREAD_COLOR), (W, H), interpolation=cv2.INTER_LINEAR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def heat_of(frame: np.ndarray) -> np.ndarray:
    """A smooth float32 heat-map in [0, 1], high on dark pixels (where cracks are)."""
    grey = cv2.GaussianBlur(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), (9, 9), 0).astype(np.float32)
    return 1.0 - grey / 255.0


def tiles(*probs: float) -> list[dict]:
    return [{"box": box, "crack_prob": p} for box, p in zip(TILE_BOXES, probs)]


def add(store: FlagStore, frame: np.ndarray | None = None, probs=(0.95, 0.1, 0.5, 0.3), **kw) -> FlagRecord:
    frame = real_frame() if frame is None else frame
    kw = {"reason": "crack", "source": "camera 0", "model": MODEL, "crack_prob_max": max(probs), **kw}
    return store.add(frame, heat_of(frame), tiles(*probs), **kw)


def image_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in (root / "images").rglob("*") if p.is_file()}
