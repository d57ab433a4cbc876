"""Helper process of the crash test in ``test_agent_repository.py``: works on a model repository
until it is killed.

    python tests/repository_child.py ROOT SEED MODE KEY_B64 [PACKAGE ...]

MODE ``activate``: activates stored versions at random and rolls back, forever.
MODE ``receive``: uploads the PACKAGE files in turn (slowly streamed), forever.

Prints ``ready`` before opening the repository (the parent's kill clock may start there),
``opened <n>`` once open (n = what recovery cleaned up), ``activating <id>`` before a switch
(an activation or a rollback) and ``active <id>`` after it returned, ``stored <id>`` after an
upload returned, flushing every time: a reported result is a promise the repository must keep.
"""
from __future__ import annotations

import io
import random
import sys
import time
from pathlib import Path

from inspector.agent.repository import ModelRepository
from inspector.link.signing import key_id_of, public_key_from_b64


class SlowStream(io.RawIOBase):
    """A body that arrives in small pieces, like a network upload."""

    def __init__(self, data: bytes, rng: random.Random):
        self._data, self._pos, self._rng = data, 0, rng

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = min(n if n >= 0 else len(self._data), 256 << 10)
        if self._rng.random() < 0.3:
            time.sleep(0.002)
        out = self._data[self._pos:self._pos + n]
        self._pos += len(out)
        return out


def main(root: str, seed: int, mode: str, key_b64: str, packages: list[str]) -> None:
    rng = random.Random(seed)
    public = public_key_from_b64(key_b64)
    print("ready", flush=True)
    repo = ModelRepository(root, trusted_keys=lambda: {key_id_of(public): public})
    print("opened", len(repo.recovered), flush=True)
    if mode == "receive":
        blobs = [Path(p).read_bytes() for p in packages]
        while True:
            data = blobs[rng.randrange(len(blobs))]
            info = repo.receive(SlowStream(data, rng), len(data))
            print("stored", info.id, flush=True)
    while True:
        models = repo.list()
        if rng.random() < 0.3 and models.previous:
            print("activating", models.previous[0], flush=True)
            active = repo.rollback().active
        else:
            target = rng.choice([m["id"] for m in models.models])
            print("activating", target, flush=True)
            active = repo.activate(target).active
        print("active", active, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5:])
