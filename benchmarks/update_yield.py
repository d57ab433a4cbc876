"""How much of the CPU a model update gets while this laptop also infers, before and after the
app yields (issue 20: "while an update trains, the laptop's own inference must yield the cores").

    python benchmarks/update_yield.py                 # ~5 min on 2 cores
    python benchmarks/update_yield.py --table-only    # remake the md from the committed rows

**The job**: a stand-in for ``distill update``'s training stages with the same cost per step:
training steps of a ResNet-18 (the shipped student's architecture) on batches of 32 at 96 px,
torch on 2 threads, in a child process at normal priority (as the app now starts the job);
steps per second over :data:`MEASURE_S` after :data:`WARMUP_S`.

**Beside it**, one at a time:

* nothing (``alone``);
* the demo device (``DemoDevice``: the real agent on loopback, the sample video, the shipped
  INT8 model, its default threads) at nice 0 (``before``: what the app did until now, with the job
  at nice 10 it got less still) and after :meth:`DemoDevice.lower_priority` (nice 19, ``after``);
* the local live view (``LiveInspector`` on the sample video, the shipped model, 2 threads) at
  full speed and paced to one inference per 0.5 s (``pace``, what the window sets).

Each row also says what the other side got: the agent's FPS from its status, the live view's
inferences per second. Rows go to ``docs/benchmarks/update_yield.rows.jsonl`` (appended, one run
per machine and date), the table to ``docs/benchmarks/update_yield.md``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OUT = REPO / "docs" / "benchmarks"
ROWS = OUT / "update_yield.rows.jsonl"
MD = OUT / "update_yield.md"
WARMUP_S = 8.0
MEASURE_S = 30.0
PACE_S = 0.5     # = inspector.qt.window.UPDATE_PACE_S (the window is Qt; this benchmark is not)

JOB = r"""
import sys, time, torch, torchvision
torch.set_num_threads(2)
torch.manual_seed(0)
model = torchvision.models.resnet18(num_classes=2)
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
x, y = torch.rand(32, 3, 96, 96), torch.randint(0, 2, (32,))
warmup, measure = float(sys.argv[1]), float(sys.argv[2])
t0 = time.perf_counter(); steps = 0; t_start = None
while True:
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
    now = time.perf_counter()
    if t_start is None and now - t0 >= warmup:
        t_start, steps = now, 0
    elif t_start is not None:
        steps += 1
        if now - t_start >= measure:
            print(steps / (now - t_start)); break
"""


def run_job() -> float:
    """Training steps per second of the stand-in job (a child process, normal priority)."""
    out = subprocess.run([sys.executable, "-c", JOB, str(WARMUP_S), str(MEASURE_S)], check=True,
                         capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def with_demo(nice: int | None) -> tuple[float, float]:
    """(job steps/s, agent FPS) with the demo device running beside the job."""
    from inspector.link.client import DeviceClient
    from inspector.link.demo import DemoDevice
    from inspector.link.pairing import PairingStore

    with tempfile.TemporaryDirectory() as tmp, DemoDevice(PairingStore(Path(tmp) / "c"), data=Path(tmp) / "d") as demo:
        demo.wait_live(120)
        if nice is not None:
            assert demo.lower_priority(nice), "could not lower the demo device's priority"
        steps = run_job()
        fps = DeviceClient.from_pairing(demo.pairing).status().fps
    return steps, fps


def with_live_view(pace: float | None) -> tuple[float, float]:
    """(job steps/s, local inferences per second) with the live view running beside the job."""
    from inspector.capture.sources import FrameGrabber, parse_source
    from inspector.edge.engine import InferenceEngine
    from inspector.live.flagging import Flagger, FlagPolicy
    from inspector.live.loop import LiveInspector
    from inspector.paths import default_model, sample_video
    from inspector.store.database import FlagStore

    count = [0]
    lock = threading.Lock()

    def on_result(_):
        with lock:
            count[0] += 1

    engine = InferenceEngine(default_model(), threads=2)     # the shipped INT8 student
    with tempfile.TemporaryDirectory() as tmp, FlagStore(Path(tmp) / "flags") as store:
        live = LiveInspector(engine, FrameGrabber(parse_source(sample_video()), loop=True, realtime=True), store,
                             Flagger(FlagPolicy(auto=False)), on_result=on_result)
        live.pace = pace
        live.start()
        try:
            t0 = time.perf_counter()
            steps = run_job()
            rate = count[0] / (time.perf_counter() - t0)
        finally:
            live.stop()
    return steps, rate


def measure() -> list[dict]:
    from inspector.edge.numerics import cpu_model, int8_isa

    machine = {"cpu": cpu_model(), "isa": int8_isa(), "cores": os.cpu_count(),
               "date": _dt.date.today().isoformat()}
    rows = []

    def row(beside: str, when: str, steps: float, other: str, other_rate: float | None) -> None:
        rows.append({**machine, "beside": beside, "when": when, "job_steps_per_s": round(steps, 3),
                     "other": other, "other_rate": None if other_rate is None else round(other_rate, 2)})
        print(f"{beside:22s} {when:7s} job {steps:6.2f} steps/s   {other} {other_rate}", flush=True)

    row("nothing", "alone", run_job(), "", None)
    steps, fps = with_demo(None)
    row("demo device", "before", steps, "agent fps", fps)
    steps, fps = with_demo(19)
    row("demo device", "after", steps, "agent fps", fps)
    steps, rate = with_live_view(None)
    row("local live view", "before", steps, "inferences/s", rate)
    steps, rate = with_live_view(PACE_S)
    row("local live view", "after", steps, "inferences/s", rate)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["# A model update beside this laptop's own inference", "",
             "Made by `benchmarks/update_yield.py` from `update_yield.rows.jsonl` "
             "(`python benchmarks/update_yield.py --table-only`). The job: ResNet-18 training steps "
             "(batch 32, 96 px, 2 torch threads) at normal priority; *before*: the other side at full "
             "speed and normal priority; *after*: what the app now does while an update trains "
             "(demo device at nice 19, local live view paced to one inference per 0.5 s).", ""]
    for (cpu, isa, date), group in _runs(rows).items():
        alone = next((r["job_steps_per_s"] for r in group if r["when"] == "alone"), None)
        lines += [f"## {cpu} ({isa}), {date}", "",
                  "| beside the job | when | job steps/s | of alone | the other side |", "|---|---|---|---|---|"]
        for r in group:
            share = f"{r['job_steps_per_s'] / alone:.0%}" if alone else "—"
            other = f"{r['other_rate']} {r['other']}" if r["other_rate"] is not None else "—"
            lines.append(f"| {r['beside']} | {r['when']} | {r['job_steps_per_s']:.2f} | {share} | {other} |")
        lines.append("")
    return "\n".join(lines)


def _runs(rows: list[dict]) -> dict:
    runs: dict = {}
    for r in rows:
        runs.setdefault((r["cpu"], r["isa"], r["date"]), []).append(r)
    return runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--table-only", action="store_true", help="remake the md from the committed rows")
    args = p.parse_args(argv)
    if not args.table_only:
        new = measure()
        with ROWS.open("a") as f:
            for r in new:
                f.write(json.dumps(r) + "\n")
    rows = [json.loads(line) for line in ROWS.read_text().splitlines() if line.strip()]
    MD.write_text(table(rows) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
