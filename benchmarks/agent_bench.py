"""The device link over loopback: stream speed and latency, model push time, frames lost in a swap.

Starts a real agent (``python -m inspector.agent``) on 127.0.0.1 with the shipped sample video
and default model, pairs with it through the app's client (``inspector.link.client``), then:

- **stream**: results per second received by one client and frame latency (agent capture →
  client decoded; both clocks are this machine's), p50 / p95, and results the agent dropped for
  this client (gaps in ``seq``);
- **push**: signed upload + the agent's full verification (hash, signature, load, reference
  run) for packages of several sizes: exactly 5 MB and 50 MB (real packages grown by padding,
  see :func:`padded`), then the real shipped INT8 (10 MB) and FP32 (42 MB) students and
  the 1.0.0 EfficientNet-Lite0 INT8 (3.4 MB, from git history if present);
- **activation**: while the stream runs, activate another version and roll back; the longest
  gap between received frames around each swap, in frame periods, against the median gap.

    python benchmarks/agent_bench.py --docs            # TLS, as in the field (about 2 min)
    python benchmarks/agent_bench.py --insecure-http   # plain HTTP for comparison

Run it alone on the machine: the agent and the client share its 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import select
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PUSH_SIZES_MB = (5, 50)   # the sizes, reached exactly with padded packages (see padded())
READY = re.compile(r"AGENT READY port=(\d+) tls=([01]) cert_sha256=(\S+) pairing_code=(\d+) data=(.+)")


def percentile(values, q):
    return float(np.percentile(values, q)) if len(values) else float("nan")


def start_agent(data: Path, tls: bool, threads: int | None, source: str | None = None,
                reuse: bool = True) -> tuple[subprocess.Popen, re.Match]:
    cmd = [sys.executable, "-m", "inspector.agent", "--port", "0", "--host", "127.0.0.1", "--data", str(data),
           "--no-mdns"] + ([] if tls else ["--insecure-http"]) + (["--threads", str(threads)] if threads else []) \
        + (["--source", source] if source else []) + ([] if reuse else ["--no-tile-reuse"])
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline() if ready else ""
    m = READY.match(line.strip())
    if not m:
        proc.kill()
        raise SystemExit(f"the agent did not start: {line!r}")
    return proc, m


def versioned(src: Path, version: str, out: Path) -> Path:
    """A copy of a package under another version (what a fine-tuned model would be)."""
    from inspector.edge.package import load_package, write_package

    p = load_package(src, verify_reference=False)
    manifest = {**p.manifest.to_dict(), "version": version, "signature": None}
    return write_package(out / f"{p.manifest.name}-{version}.crackpkg", manifest, p.onnx_bytes, p.reference)


def padded(src: Path, target_mb: float, version: str, out: Path) -> Path:
    """``src`` re-versioned and grown to ``target_mb`` on disk by an unused initializer of
    random bytes inside its ONNX model (incompressible, so the zip keeps the size). The agent
    verifies it in full (hash, signature, load, reference run), and verification cost grows with
    size too (hashing, parsing, signature), so the push sizes the issue asks for can be measured
    exactly. The model itself is the real one: only the transported bytes grow."""
    import onnx
    from inspector.edge.package import load_package, write_package

    p = load_package(src, verify_reference=False)
    manifest = {**p.manifest.to_dict(), "version": version, "signature": None}
    target = int(target_mb * 2**20)
    proto = onnx.load_from_string(p.onnx_bytes)
    pad = max(0, target - src.stat().st_size)
    rng = np.random.default_rng(0)
    for _ in range(3):   # the zip adds a little overhead: converge on the target size
        init = onnx.numpy_helper.from_array(rng.integers(0, 256, pad, dtype=np.uint8), "bench_padding")
        proto.graph.initializer.append(init)
        path = write_package(out / f"{p.manifest.name}-{version}.crackpkg", manifest,
                             proto.SerializeToString(), p.reference)
        proto.graph.initializer.pop()
        error = target - path.stat().st_size
        if abs(error) < 2**14:
            break
        pad = max(0, pad + error)
    return path


class StreamRecorder(threading.Thread):
    """Reads the stream; records (t_received, seq, frame_seq, model_id, latency ms)."""

    def __init__(self, client):
        super().__init__(daemon=True)
        self.client, self.rows, self.stop_event = client, [], threading.Event()

    def run(self) -> None:
        with self.client.stream() as stream:
            for header, jpeg, _heat in stream:
                cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)  # what a viewer must do
                now = time.time()
                self.rows.append((now, header.seq, header.frame_seq, header.model_id, (now - header.t_capture) * 1e3))
                if self.stop_event.is_set():
                    break

    def window(self, t0: float, t1: float):
        return [r for r in self.rows if t0 <= r[0] <= t1]


def stream_stats(rows) -> dict:
    if len(rows) < 2:
        return {"fps": 0.0}
    span = rows[-1][0] - rows[0][0]
    seqs = [r[1] for r in rows]
    return {"fps": (len(rows) - 1) / span, "latency_ms_p50": percentile([r[4] for r in rows], 50),
            "latency_ms_p95": percentile([r[4] for r in rows], 95), "results": len(rows),
            "dropped_for_client": int(sum(max(0, b - a - 1) for a, b in zip(seqs, seqs[1:])))}


def swap_gap(rec: StreamRecorder, t0: float, t1: float, median_gap: float) -> dict:
    rows = rec.window(t0, t1 + 0.5)   # from the call to half a second after it returned
    gaps = [b[0] - a[0] for a, b in zip(rows, rows[1:])]
    worst = max(gaps) if gaps else float("nan")
    models = [r[3] for r in rows]
    i = gaps.index(worst) if gaps else 0
    around = rows[max(0, i - 1):i + 3]   # the slowest step: did the camera frame number jump (a slow inference)?
    return {"seconds": t1 - t0, "max_gap_ms": worst * 1e3, "median_gap_ms": median_gap * 1e3,
            "around_worst": [{"t": round(r[0] - t0, 3), "seq": r[1], "frame_seq": r[2], "model": r[3]} for r in around],
            "frames_missed": max(0, round(worst / median_gap) - 1) if gaps else None,
            "models_seen": list(dict.fromkeys(models))}


def run(args) -> dict:
    from inspector.link.client import DeviceClient
    from inspector.link.signing import SigningKey

    out: dict = {"tls": not args.insecure_http}
    with tempfile.TemporaryDirectory(prefix="agent-bench-") as tmp:
        tmp = Path(tmp)
        proc, ready = start_agent(tmp / "agent", not args.insecure_http, args.threads, args.source, args.reuse)
        try:
            key = SigningKey.generate()
            client = DeviceClient("127.0.0.1", int(ready[1]), tls=ready[2] == "1",
                                  cert_sha256=ready[3] if ready[2] == "1" else None)
            pairing = client.pair(ready[4], "agent-bench", key)
            client = DeviceClient.from_pairing(pairing)
            deadline = time.time() + 60
            while (status := client.status()).model is None and time.time() < deadline:
                time.sleep(0.2)   # the agent serves once its model passed the first frames
            out["model"], out["provider"] = status.model["id"], status.provider

            rec = StreamRecorder(client)
            rec.start()
            time.sleep(args.warmup)
            t0 = time.time()
            time.sleep(args.seconds)
            steady = rec.window(t0, time.time())
            out["stream"] = stream_stats(steady)
            out["stream"]["tile_share"] = client.status().tile_share    # the agent's own count, recent frames
            out["source"], out["reuse"] = args.source or "sample video 640×480", args.reuse
            if args.stream_only:
                return out
            median_gap = statistics.median(b[0] - a[0] for a, b in zip(steady, steady[1:]))

            packages = [REPO / "models" / "crack-student-1.1.1-int8.crackpkg",
                        REPO / "models" / "crack-student-1.1.1.crackpkg"]
            old = tmp / "lite0-1.0.0-int8.crackpkg"
            git = subprocess.run(["git", "show", "HEAD:models/crack-student-1.0.0-int8.crackpkg"], cwd=REPO,
                                 capture_output=True)
            if git.returncode != 0:  # removed from the tree: take it from the commit that deleted it
                rev = subprocess.run(["git", "log", "--format=%H", "-1", "--", "models/crack-student-1.0.0-int8.crackpkg"],
                                     cwd=REPO, capture_output=True, text=True).stdout.strip()
                git = subprocess.run(["git", "show", f"{rev}^:models/crack-student-1.0.0-int8.crackpkg"], cwd=REPO,
                                     capture_output=True) if rev else git
            if git.returncode == 0:
                old.write_bytes(git.stdout)
                packages.insert(0, old)
            out["push"] = []
            pushed = []

            def timed_push(name: str, pkg: Path):
                t = time.perf_counter()
                info = client.push(pkg, key)
                seconds = time.perf_counter() - t
                size = pkg.stat().st_size
                out["push"].append({"package": name, "mb": size / 2**20, "seconds": seconds,
                                    "mb_per_s": size / 2**20 / seconds})
                return info

            for mb in PUSH_SIZES_MB:   # grow the largest real package that is still smaller
                bases = [p for p in packages if p.stat().st_size < mb * 2**20]
                if bases:
                    base = max(bases, key=lambda p: p.stat().st_size)
                    timed_push(f"{base.name} padded to {mb} MB", padded(base, mb, f"8.{mb}.0-bench", tmp))
            for i, src in enumerate(packages):
                pushed.append(timed_push(src.name, versioned(src, f"9.{i}.0-bench", tmp)).id)

            out["activation"] = []
            time.sleep(2.0)   # let the last verification's aftermath settle: measure the swap alone
            for target in (pushed[-2], "rollback"):   # activate the shipped INT8 re-versioned, then roll back
                t = time.time()
                client.rollback() if target == "rollback" else client.activate(target)
                t_end = time.time()
                time.sleep(2.0)
                out["activation"].append({"action": target, **swap_gap(rec, t, t_end, median_gap)})
            rec.stop_event.set()
        finally:
            proc.terminate()
            proc.wait(20)
    return out


def table(r: dict) -> str:
    s = r["stream"]
    lines = [f"Agent on 127.0.0.1 ({'TLS' if r['tls'] else 'plain HTTP'}), model {r['model']}, {r['provider']}, "
             f"{r.get('source', 'sample video 640×480')} at 30 fps, tile reuse {'on' if r.get('reuse', True) else 'off'}; "
             f"client and agent share {os.cpu_count()} cores.", "",
             "| measure | value |", "|---|---|",
             f"| stream: results received per second | {s['fps']:.1f} |",
             f"| stream: frame latency capture → client decoded p50 / p95 (ms) | "
             f"{s['latency_ms_p50']:.1f} / {s['latency_ms_p95']:.1f} |",
             f"| stream: results dropped for this client (of {s['results']}) | {s['dropped_for_client']} |",
             "| stream: tiles inferred (the agent's status) | "
             + ("–" if s.get("tile_share") is None else f"{100 * s['tile_share']:.1f} %") + " |"]
    for p in r.get("push", []):
        lines.append(f"| push {p['package']} ({p['mb']:.1f} MB): upload + verification | {p['seconds']:.2f} s "
                     f"({p['mb_per_s']:.0f} MB/s) |")
    for a in r.get("activation", []):
        lines.append(f"| {a['action']}: call took / longest frame gap (median gap) / frames missed | "
                     f"{a['seconds']:.2f} s / {a['max_gap_ms']:.0f} ms ({a['median_gap_ms']:.0f} ms) / "
                     f"{a['frames_missed']} |")
    return "\n".join(lines) + "\n"


STREAM_SECTION = "## The stream on another source, tile reuse on and off"


def stream_only(args) -> int:
    """The stream alone (``--stream-only``), for each tile-reuse setting asked; with ``--docs``
    the page's stream section is replaced and the rest kept."""
    arms = []
    for reuse in ((True, False) if args.reuse_both else (args.reuse,)):
        args.reuse = reuse
        arms.append(run(args))
    text = "\n".join(table(r) for r in arms)
    print(text)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(arms, indent=2))
    if args.docs:
        page = REPO / "docs" / "benchmarks" / "agent_bench.md"
        head = page.read_text().partition(STREAM_SECTION)[0].rstrip("\n") if page.is_file() else ""
        cmd = " ".join(["python benchmarks/agent_bench.py", *sys.argv[1:]]).replace(str(REPO) + "/", "")
        page.write_text(f"{head}\n\n{STREAM_SECTION}\n\nMade by `{cmd}` on {time.strftime('%Y-%m-%d')}, "
                        f"{platform_line()}.\n\n{text}")
    return 0


def platform_line() -> str:
    from benchmarks.int8_isa import machine

    m = machine()
    return f"{m['cpu']} ({m['native_isa']}, {m['cores']} cores)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0, help="steady-state stream measurement")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=None, help="agent inference threads (default: the agent's)")
    ap.add_argument("--insecure-http", action="store_true")
    ap.add_argument("--source", help="the agent's camera (default: its sample video), e.g. the field video")
    ap.add_argument("--no-tile-reuse", dest="reuse", action="store_false", help="the agent infers every tile")
    ap.add_argument("--stream-only", action="store_true",
                    help="measure the stream, skip push and activation; with --docs its own section of the page")
    ap.add_argument("--reuse-both", action="store_true",
                    help="with --stream-only: tile reuse on, then off, in one run")
    ap.add_argument("--json", default=str(REPO / "runs" / "agent_bench.json"))
    ap.add_argument("--docs", action="store_true", help="write docs/benchmarks/agent_bench.md")
    args = ap.parse_args()
    if args.stream_only:
        return stream_only(args)
    result = run(args)
    text = table(result)
    print(text)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    if args.docs:
        (REPO / "docs" / "benchmarks" / "agent_bench.md").write_text("# Device link benchmark "
                                                                    "(`benchmarks/agent_bench.py`)\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
