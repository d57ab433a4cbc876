"""Training events on the terminal: a tqdm bar per epoch and a line per validation, for ``distill``
and its demo (rank 0 only under torchrun)."""
from __future__ import annotations

import os
import sys


class ProgressPrinter:
    """Subscribes to training events and draws a tqdm bar per epoch (rank 0 only)."""

    def __init__(self, label: str = ""):
        self.label = label
        self.bar = None
        self.quiet = int(os.environ.get("RANK", "0")) != 0  # under torchrun every rank sends steps

    def __call__(self, event: dict) -> None:
        from tqdm import tqdm

        if self.quiet:
            return
        kind = event["event"]
        if kind == "epoch_start":
            self.bar = tqdm(total=event["steps"], desc=f"{self.label}epoch {event['epoch'] + 1}/{event['epochs']}",
                            leave=False, file=sys.stderr, dynamic_ncols=True)
        elif kind == "step" and self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=event["loss"]["loss"])
        elif kind == "epoch_end":
            if self.bar is not None:
                self.bar.close()
            val = event["val"]
            print(f"{self.label}epoch {event['epoch'] + 1}: train loss {event['train_loss']:.4f}  "
                  f"val MCC {val['mcc']:.4f}  acc {val['accuracy']:.4f}"
                  f"{'  *best*' if event['improved'] else ''}", file=sys.stderr)
        elif kind == "bad_files":
            print(event["summary"], file=sys.stderr)
        elif kind == "resumed":
            print(f"{self.label}resuming at epoch {event['epoch'] + 1}", file=sys.stderr)
