"""Helper process of the relabel crash test in ``test_review.py``: relabels flags until killed.

    python tests/review_child.py STORE_DIR SEED

Prints ``ready`` before opening the store, then for each change ``intend <id> <label> <note>``
before and ``done <id> <label> <note>`` after ``set_review`` returned, flushing every line:
a reported change is a promise the store must keep.
"""
from __future__ import annotations

import random
import sys

from inspector.store.database import FlagStore


def main(root: str, seed: int) -> None:
    rng = random.Random(seed)
    print("ready", flush=True)
    store = FlagStore(root)
    ids = [r.id for r in store.list()]
    n = 0
    while True:
        flag_id, label = rng.choice(ids), rng.choice(["crack", "no_crack", "unsure"])
        note = f"s{seed}-n{n}"
        n += 1
        print("intend", flag_id, label, note, flush=True)
        store.set_review(flag_id, label=label, note=note, reviewer="crash test")
        print("done", flag_id, label, note, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
