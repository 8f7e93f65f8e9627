"""Detector speed: training and inference faces/s per registered detector, on synthetic faces.

Training step = forward + loss + backward + AdamW step on the trainable parameters (batch --batch).
Inference = eval mode, `torch.inference_mode`, forward only (batch --infer-batch). rffr runs once per
block layout in --rffr-blocks (k x k blocks: k*k MAE variants per face); competitive also reports its
one-branch export (inference only). Random weights: speed does not depend on them.
Prints a Markdown table; --append FILE appends it, with the command, machine and date, in one write.

    python benchmarks/bench_detectors.py                           # vit_tiny, 112 px, CPU
    python benchmarks/bench_detectors.py --encoder resnet18 --img 128
    python benchmarks/bench_detectors.py --device cuda --img 224 --batch 64 --infer-batch 256
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from realface.models.detectors import DETECTORS, Detector, DetectorConfig, RFFROptions, build_detector


@dataclass(frozen=True)
class Row:
    label: str
    train: float | None  # faces/s, None = not measured
    infer: float
    params_m: float  # trainable parameters, millions
    total_m: float  # all parameters (frozen MAE included), millions


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_speed(detector: Detector, images: torch.Tensor, labels: torch.Tensor, steps: int, warmup: int) -> float:
    """Faces per second of the fastest of `steps` timed training steps, after `warmup` untimed ones.

    The fastest step, not the mean: on a machine shared with other jobs it is the least disturbed one.
    """
    params = [p for p in detector.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    detector.train()
    times = []
    for i in range(warmup + steps):
        sync(images.device)
        start = time.perf_counter()
        out = detector(images)
        loss, _ = detector.loss(out, labels, progress=i / (warmup + steps))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(images.device)
        times.append(time.perf_counter() - start)
    return images.shape[0] / min(times[warmup:])


@torch.inference_mode()
def infer_speed(detector: Detector, images: torch.Tensor, steps: int, warmup: int) -> float:
    """Faces per second of the fastest of `steps` timed forward passes (eval mode), after `warmup`."""
    detector.eval()
    times = []
    for _ in range(warmup + steps):
        sync(images.device)
        start = time.perf_counter()
        detector(images)
        sync(images.device)
        times.append(time.perf_counter() - start)
    return images.shape[0] / min(times[warmup:])


def millions(detector: Detector, trainable: bool) -> float:
    return sum(p.numel() for p in detector.parameters() if p.requires_grad or not trainable) / 1e6


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f'{os.cpu_count()}-core CPU, `lscpu` model name "{model}"'


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", default="vit_tiny_patch16")
    ap.add_argument("--img", type=int, default=112)
    ap.add_argument("--batch", type=int, default=8, help="training batch")
    ap.add_argument("--infer-batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rffr-blocks", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--append", type=Path, help="append the section to this Markdown file")
    args = ap.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    train_x = torch.randn(args.batch, 3, args.img, args.img, device=device)
    train_y = torch.arange(args.batch, device=device) % 2
    infer_x = torch.randn(args.infer_batch, 3, args.img, args.img, device=device)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    cases: list[tuple[str, DetectorConfig]] = []
    for name in DETECTORS:
        base = {"name": name, "encoder": args.encoder, "img_size": args.img}
        if name == "rffr":
            for k in args.rffr_blocks:
                cfg = DetectorConfig(**base, options=RFFROptions(blocks=k))
                side = cfg.img_size // cfg.options.mae_mask_cell
                cases.append((f"rffr, {k}x{k} blocks ({k * k} MAE variants/face, {side}x{side} mask cells)", cfg))
        else:
            cases.append((name, DetectorConfig(**base)))
        if name == "classifier":
            cases.append(("classifier, linear probe (freeze)", DetectorConfig(**base, freeze=True)))

    rows = []
    for label, cfg in cases:
        detector = build_detector(cfg).to(device)
        train = train_speed(detector, train_x, train_y, args.steps, args.warmup)
        infer = infer_speed(detector, infer_x, args.steps, args.warmup)
        rows.append(Row(label, train, infer, millions(detector, True), millions(detector, False)))
        print(f"{label}: train {train:.1f} faces/s, infer {infer:.1f} faces/s", file=sys.stderr, flush=True)
        if cfg.name == "competitive":
            exported = detector.export(infer_x[:8])
            infer = infer_speed(exported, infer_x, args.steps, args.warmup)
            rows.append(Row("competitive, exported (one branch)", None, infer, millions(exported, True), millions(exported, False)))
            print(f"competitive export: infer {infer:.1f} faces/s", file=sys.stderr, flush=True)
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    command = "python benchmarks/bench_detectors.py " + " ".join(sys.argv[1:])
    lines = [
        "## Detectors (`benchmarks/bench_detectors.py`)",
        "",
        f"Command: `{command.strip()}`.",
        f"Machine: {machine()}, {args.device}; torch {torch.__version__}, {torch.get_num_threads()} threads. "
        f"Date: {datetime.date.today().isoformat()}. Load average {load_before:.1f} before and {load_after:.1f} after "
        "(the machine is shared: above 2 means other jobs took part of the cores).",
        f"Encoder {args.encoder}, {args.img} px, synthetic faces, random weights. Train = forward + loss + backward + "
        f"AdamW step, batch {args.batch}; infer = eval + inference_mode forward, batch {args.infer_batch}; "
        f"fastest of {args.steps} timed steps after {args.warmup} warmup (the least disturbed by other jobs).",
        "",
        "| detector | train faces/s | infer faces/s | trainable params (M) | all params (M) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        train = "" if r.train is None else f"{r.train:.1f}"
        lines.append(f"| {r.label} | {train} | {r.infer:.1f} | {r.params_m:.2f} | {r.total_m:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.append is not None:
        with open(args.append, "a") as f:  # one write, so sections by others are not interleaved
            f.write("\n" + text)


if __name__ == "__main__":
    main()
