"""distill.training.loop.fit under torchrun: two CPU ranks (gloo) on a tiny real Özgenel set."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

DATA = Path(os.environ["CRACK_DATA_DIR"])
REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent('''
    import hashlib, json, os, sys
    import torch
    torch.set_num_threads(1)
    from distill.data.layouts import read_dataset
    from distill.data.augment import AugmentConfig
    from distill.data.torch_dataset import PatchDataset
    from distill.training.losses import build_loss
    from distill.models.registry import build_model
    from distill.training.loop import TrainConfig, fit

    root, out, records = sys.argv[1:4]
    rank = int(os.environ["RANK"])
    samples = read_dataset(root)
    crack = [s for s in samples if s.label == 1]
    no_crack = [s for s in samples if s.label == 0]

    class Recording(PatchDataset):
        seen = []
        def __getitem__(self, i):
            self.seen.append(int(i))
            return super().__getitem__(i)

    train = Recording(crack[:16] + no_crack[:16], 32, augment=AugmentConfig(), seed=0)
    val = PatchDataset(crack[16:] + no_crack[16:], 32)
    torch.manual_seed(100 + rank)  # other initial weights on each rank: DDP must start from rank 0's
    model = build_model("mobilenet_v3_small", input_size=32)
    events = []
    result = fit(model, build_loss("ce"), train, val, out,
                 TrainConfig(epochs=1, batch_size=4, seed=0, device="cpu", max_steps_per_epoch=3),
                 callback=events.append)

    def digest(state):
        h = hashlib.sha256()
        for k, v in sorted(state.items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    with open(os.path.join(records, f"rank{rank}.json"), "w") as f:
        json.dump({"seen": Recording.seen, "state": digest(model.state_dict()),
                   "params": digest(dict(model.named_parameters())),
                   "events": events, "best_mcc": result.best_mcc, "best_epoch": result.best_epoch,
                   "epochs_run": result.epochs_run}, f)
''')


def make_tiny_folders(root: Path) -> Path:
    for cls in ("crack", "no_crack"):
        files = sorted((DATA / "ozgenel_ccic_subset" / cls).glob("*.jpg"))
        stride = len(files) // 24
        (root / cls).mkdir(parents=True)
        for f in files[:24 * stride:stride]:
            os.symlink(f, root / cls / f.name)
    return root


def test_two_rank_ddp_fit(tmp_path):
    root = make_tiny_folders(tmp_path / "data")
    (tmp_path / "fit_ddp.py").write_text(SCRIPT)
    (tmp_path / "records").mkdir()
    out = tmp_path / "out"
    torchrun = REPO / ".venv" / "bin" / "torchrun"
    launcher = [str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*launcher, "--standalone", "--nproc_per_node=2", str(tmp_path / "fit_ddp.py"),
                           str(root), str(out), str(tmp_path / "records")],
                          capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]

    # one writer: exactly one best.pt and one last.pt, no leftovers
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "last.pt"]
    assert [p for p in tmp_path.rglob("*.pt") if p.parent != out] == []
    r0, r1 = (json.loads((tmp_path / "records" / f"rank{r}.json").read_text()) for r in (0, 1))

    # the same model on both ranks at the end, buffers (batch-norm statistics) included
    assert r0["params"] == r1["params"]
    assert r0["state"] == r1["state"]
    last = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    h = hashlib.sha256()
    for k, v in sorted(last["student"].items()):
        h.update(k.encode())
        h.update(v.contiguous().numpy().tobytes())
    assert h.hexdigest() == r0["state"]

    # the sampler shards the data: 3 steps x 4 images per rank, no image on both ranks
    assert len(r0["seen"]) == len(r1["seen"]) == 12
    assert len(set(r0["seen"])) == len(set(r1["seen"])) == 12
    assert not set(r0["seen"]) & set(r1["seen"])

    # step events on every rank; validation, checkpoints and epoch_end on rank 0 only
    kinds0 = [e["event"] for e in r0["events"]]
    kinds1 = [e["event"] for e in r1["events"]]
    assert kinds0 == ["epoch_start", "step", "step", "step", "epoch_end", "done"]
    assert kinds1 == ["epoch_start", "step", "step", "step", "done"]
    # every rank reports the same result; the train loss is the mean over both ranks' steps
    assert (r0["best_mcc"], r0["best_epoch"], r0["epochs_run"]) == (r1["best_mcc"], r1["best_epoch"], 1)
    assert r0["events"][-1] == r1["events"][-1]
    steps = [e["loss"]["loss"] for r in (r0, r1) for e in r["events"] if e["event"] == "step"]
    end = r0["events"][4]
    assert end["train_loss"] == pytest.approx(sum(steps) / len(steps), abs=1e-4)
    assert end["val"]["n"] == 16
