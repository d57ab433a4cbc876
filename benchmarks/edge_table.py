"""Edge-model speed: PyTorch vs onnxruntime FP32 vs INT8, with and without the in-graph heat-map.

For each student architecture (weights do not change speed; Lite0 starts from ImageNet, the
others get batch-norm statistics from real images) at the documented input size:

- parameters, FP32 and INT8 file sizes;
- latency (median ms) at batch 1 and at the tile batch (the tiles of one 640×480 frame):
  PyTorch FP32 logits; PyTorch + pytorch-grad-cam (the reference heat-map, a backward pass);
  ORT FP32 and ORT INT8, each with the heat-map output and without it (graph cut before it);
- whole-frame inspection frames per second on real 640×480 frames through the inference
  engine (tiling + one batch + heat-map stitching + colour overlay) with the INT8 package.

A shipped package (``--package``) gets the whole-frame row too. Run it alone on the machine:

    python benchmarks/edge_table.py --docs
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"
ARCHS = ("mobilenet_v3_small", "resnet18", "efficientnet_lite0")


def median_ms(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def real_patches(n: int, size: int) -> np.ndarray:
    from distill.data.layouts import read_dataset
    from distill.export.package import uint8_patches

    samples = read_dataset(DATA / "ozgenel_ccic_subset")
    step = max(1, len(samples) // n)
    return uint8_patches(samples[::step][:n], size)


def real_frames(n: int = 8) -> list[np.ndarray]:
    import cv2

    from distill.data.imageio import load_rgb

    paths = sorted((DATA / "uav75" / "images").glob("*.jpg"))[:n // 2] + \
        sorted((DATA / "crackforest_cfd" / "images").glob("*.jpg"))[:n - n // 2]
    return [cv2.resize(load_rgb(p), (640, 480), interpolation=cv2.INTER_AREA) for p in paths]


def without_cam(onnx_path: Path) -> Path:
    import onnx.utils

    out = onnx_path.with_name(onnx_path.stem + "-nocam.onnx")
    onnx.utils.extract_model(str(onnx_path), str(out), ["image"], ["logits", "probs"])
    return out


def calibrated_model(arch: str, size: int, images: np.ndarray):
    import torch

    from distill.models.registry import build_model

    model = build_model(arch, input_size=size, pretrained=arch.startswith("efficientnet_lite"))
    if not arch.startswith("efficientnet_lite"):
        model.train()
        with torch.no_grad():  # realistic activations: batch-norm statistics of real images
            for chunk in np.array_split(images, 4):
                model(torch.from_numpy(chunk).permute(0, 3, 1, 2).float() / 255)
    return model.eval()


def bench_arch(arch: str, size: int, tile_batch: int, runs: int, images: np.ndarray, frames, work: Path) -> dict:
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from distill.models.checkpoint import save_checkpoint
    from distill.export.package import build_packages, onnx_session
    from distill.export.gradcam import GradCamTarget

    model = calibrated_model(arch, size, images)
    ckpt = work / f"{arch}.pt"
    save_checkpoint(ckpt, model)
    from distill.data.layouts import read_dataset

    held_out = read_dataset(DATA / "ozgenel_ccic_subset")[::40]
    report = build_packages(ckpt, work, name=arch.replace("_", "-"), version="0.0.1", calibration=held_out,
                            eval_sets={"ozgenel_sample": held_out}, training_data=[{"name": "benchmark", "licence": "n/a"}],
                            calibration_count=128)
    pkgs = report["packages"]
    row = {"arch": arch, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
           "fp32_mb": report["quantization"]["fp32_bytes"] / 1e6, "int8_mb": report["quantization"]["int8_bytes"] / 1e6,
           "latency_ms": {}}
    from inspector.edge.package import load_package

    onnx_files = {}
    for variant in ("fp32", "int8"):
        path = work / f"{arch}-{variant}.onnx"
        path.write_bytes(load_package(pkgs[variant]).onnx_bytes)
        onnx_files[variant] = path
        onnx_files[f"{variant}_nocam"] = without_cam(path)

    x1, xt = images[:1], images[:tile_batch]
    t1 = torch.from_numpy(x1).permute(0, 3, 1, 2).float() / 255
    tt = torch.from_numpy(xt).permute(0, 3, 1, 2).float() / 255
    lat = row["latency_ms"]
    with torch.no_grad():
        lat["torch_fp32"] = {"b1": median_ms(lambda: model(t1), runs), "tile": median_ms(lambda: model(tt), runs)}
    target_model = GradCamTarget(model)
    cam = GradCAM(model=target_model, target_layers=[target_model.target])
    lat["torch_gradcam"] = {
        "b1": median_ms(lambda: cam(input_tensor=t1, targets=[ClassifierOutputTarget(1)]), runs),
        "tile": median_ms(lambda: cam(input_tensor=tt, targets=[ClassifierOutputTarget(1)] * len(tt)), runs)}
    for key, path in onnx_files.items():
        sess = onnx_session(path)
        outs = ["logits", "probs"] if key.endswith("nocam") else ["logits", "probs", "cam"]
        lat[f"ort_{key}"] = {"b1": median_ms(lambda: sess.run(outs, {"image": x1}), runs),
                             "tile": median_ms(lambda: sess.run(outs, {"image": xt}), runs)}
    row["frame_fps"] = whole_frame_fps(pkgs["int8"], frames, runs, FRAME_TILING)
    row["frame_fps_fp32"] = whole_frame_fps(pkgs["fp32"], frames, runs, FRAME_TILING)
    row["quantization"] = {k: report["quantization"][k] for k in ("top1_agreement", "cam_corr_mean", "size_ratio")}
    return row


TILE_SIZE, TILE_OVERLAP = 160, 0.0  # frame pixels per tile (resized to the input): the shipped package's tiling
FRAME_TILING = {"tile_size": TILE_SIZE, "tile_overlap": TILE_OVERLAP}


def whole_frame_fps(package: str, frames, runs: int, tiling: dict | None = None) -> dict:
    """``tiling``: {"tile_size", "tile_overlap"}; None = the package's own (its manifest)."""
    from inspector.edge.engine import InferenceEngine, overlay

    engine = InferenceEngine(package, **(tiling or {}))

    def one(frame):
        result = engine.inspect(frame)
        overlay(frame, result.heatmap)
        return result

    one(frames[0])
    times, tiles, stages = [], 0, {}
    for i in range(max(runs, len(frames))):
        t = time.perf_counter()
        result = one(frames[i % len(frames)])
        times.append(time.perf_counter() - t)
        tiles = len(result.tiles)
        for k, v in result.timings.items():
            stages.setdefault(k, []).append(v)
    return {"fps": 1.0 / statistics.median(times), "ms_p50": statistics.median(times) * 1000,
            "tiles": tiles, "stages_ms": {k: statistics.median(v) for k, v in stages.items()},
            "providers": list(engine.providers)}


def table(rows: list[dict], args) -> str:
    lines = [f"Input {args.size} px, tile batch {args.tile_batch}, median of {args.runs} runs, "
             f"{platform.machine()} CPU, onnxruntime default threads; whole frames tiled at {TILE_SIZE} px, "
             f"overlap {TILE_OVERLAP}.", "",
             "| student | params (M) | FP32 MB | INT8 MB | torch FP32 b1 / tile ms | torch + grad-cam b1 / tile ms "
             "| ORT FP32 b1 / tile ms (no map) | ORT FP32 b1 / tile ms (map) | ORT INT8 b1 / tile ms (no map) "
             "| ORT INT8 b1 / tile ms (map) | map overhead INT8 tile | INT8 vs FP32 (tile, map) "
             "| vs torch+grad-cam (tile) | 640×480 FPS INT8 (FP32) | INT8 top-1 agree | INT8 map corr |",
             "|" + "---|" * 16]
    for r in rows:
        lat = r["latency_ms"]

        def pair(k):
            return f"{lat[k]['b1']:.1f} / {lat[k]['tile']:.1f}"

        overhead = lat["ort_int8"]["tile"] / lat["ort_int8_nocam"]["tile"] - 1
        lines.append(
            f"| {r['arch']} | {r['params_m']:.2f} | {r['fp32_mb']:.1f} | {r['int8_mb']:.1f} | {pair('torch_fp32')} "
            f"| {pair('torch_gradcam')} | {pair('ort_fp32_nocam')} | {pair('ort_fp32')} | {pair('ort_int8_nocam')} "
            f"| {pair('ort_int8')} | {overhead * 100:+.0f} % | {lat['ort_fp32']['tile'] / lat['ort_int8']['tile']:.2f}× "
            f"| {lat['torch_gradcam']['tile'] / lat['ort_int8']['tile']:.1f}× "
            f"| {r['frame_fps']['fps']:.1f} ({r['frame_fps_fp32']['fps']:.1f}), {r['frame_fps']['tiles']} tiles "
            f"| {r['quantization']['top1_agreement']:.3f} | {r['quantization']['cam_corr_mean']:.3f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", nargs="+", default=list(ARCHS))
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--tile-batch", type=int, default=12, help="tiles of one 640×480 frame at 160 px, no overlap")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--package", action="append", default=[], help="also time this package on whole frames")
    ap.add_argument("--json", default=str(REPO / "runs" / "edge_table.json"))
    ap.add_argument("--docs", action="store_true", help="write docs/benchmarks/edge_table.md")
    args = ap.parse_args()
    images = real_patches(64, args.size)
    frames = real_frames()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            rows.append(bench_arch(arch, args.size, args.tile_batch, args.runs, images, frames, Path(tmp)))
            print(json.dumps(rows[-1], indent=1, default=str), file=sys.stderr)
    shipped = {p: whole_frame_fps(p, frames, args.runs) for p in args.package}
    text = table(rows, args)
    for p, r in shipped.items():
        text += (f"\n\nShipped `{Path(p).name}`: {r['fps']:.1f} FPS on 640×480 frames ({r['tiles']} tiles, "
                 f"p50 {r['ms_p50']:.1f} ms; stages " + ", ".join(f"{k} {v:.1f}" for k, v in r["stages_ms"].items())
                 + f" ms; providers {r['providers']}).")
    print(text)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"rows": rows, "shipped": shipped, "args": vars(args)}, indent=2, default=str))
    if args.docs:
        docs = REPO / "docs" / "benchmarks"
        docs.mkdir(parents=True, exist_ok=True)
        (docs / "edge_table.md").write_text(text + "\n")
        (docs / "edge_table.json").write_text(Path(args.json).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
