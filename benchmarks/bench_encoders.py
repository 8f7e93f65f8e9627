"""Encoder speed and memory: training and inference faces/s and peak memory of every registered encoder, as the
`classifier` detector with its forgery-mask cell head, at several input sides.

Each (encoder, side) runs in a fresh process, so its peak resident memory (ru_maxrss) is its own. Training step =
forward + loss (real/fake + cell masks) + backward + AdamW step, batch --batch; inference = eval mode,
inference_mode forward, batch --infer-batch; fastest of --steps timed steps after --warmup (the least disturbed on
a shared machine). Sides that do not fit an encoder's stride (112 for a stride-32 CNN) are skipped.
Prints a Markdown table; --append FILE appends it with the command, machine and date.

    python benchmarks/bench_encoders.py                                   # every encoder at 112/128/160/224
    python benchmarks/bench_encoders.py --encoders resnet18 convnextv2_atto --sides 128 --channels-last
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import torch

from bench_detectors import infer_speed, machine, train_speed
from realface.models.detectors import ClassifierOptions, DetectorConfig, build_detector
from realface.models.encoders import ENCODERS


def measure(encoder: str, side: int, batch: int, infer_batch: int, steps: int, warmup: int, channels_last: bool) -> dict:
    torch.manual_seed(0)
    cfg = DetectorConfig(name="classifier", encoder=encoder, img_size=side, options=ClassifierOptions(mask_weight=1.0))
    detector = build_detector(cfg)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    detector = detector.to(memory_format=fmt)
    x = torch.randn(batch, 3, side, side).contiguous(memory_format=fmt)
    y = torch.arange(batch) % 2
    cells = cfg.grid[0] * cfg.grid[1]
    targets = {"mask": torch.rand(batch, cells), "mask_known": torch.ones(batch)}
    original = detector.loss
    detector.loss = lambda out, labels, progress=0.0: original(out, labels, progress, targets=targets)  # type: ignore[method-assign]
    train = train_speed(detector, x, y, steps, warmup)
    infer = infer_speed(detector, torch.randn(infer_batch, 3, side, side).contiguous(memory_format=fmt), steps, warmup)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    params = sum(p.numel() for p in detector.parameters()) / 1e6
    return {"train": train, "infer": infer, "peak_mb": peak_mb, "params_m": params}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoders", nargs="+", default=sorted(ENCODERS))
    ap.add_argument("--sides", type=int, nargs="+", default=[112, 128, 160, 224])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--infer-batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--channels-last", action="store_true", help="channels-last tensors (oneDNN's preferred layout)")
    ap.add_argument("--append", type=Path, help="append the section to this Markdown file")
    ap.add_argument("--one", nargs=2, metavar=("ENCODER", "SIDE"), help=argparse.SUPPRESS)  # a child process's case
    args = ap.parse_args()
    if args.one:
        result = measure(args.one[0], int(args.one[1]), args.batch, args.infer_batch, args.steps, args.warmup, args.channels_last)
        print(json.dumps(result))
        return

    load_before = os.getloadavg()[0]
    rows = []
    for encoder in args.encoders:
        for side in args.sides:
            if side % ENCODERS[encoder].stride:
                continue
            cmd = [sys.executable, __file__, "--one", encoder, str(side), "--batch", str(args.batch),
                   "--infer-batch", str(args.infer_batch), "--steps", str(args.steps), "--warmup", str(args.warmup)]
            if args.channels_last:
                cmd.append("--channels-last")
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            r = json.loads(out)
            rows.append((encoder, side, r))
            print(f"{encoder} {side}px: train {r['train']:.1f}, infer {r['infer']:.1f} faces/s, peak {r['peak_mb']:.0f} MB",
                  file=sys.stderr, flush=True)
    load_after = os.getloadavg()[0]
    command = "python benchmarks/bench_encoders.py " + " ".join(sys.argv[1:])
    lines = [
        "## Encoders (`benchmarks/bench_encoders.py`)",
        "",
        f"Command: `{command.strip()}`.",
        f"Machine: {machine()}; torch {torch.__version__}, {torch.get_num_threads()} threads. Date: "
        f"{datetime.date.today().isoformat()}. Load average {load_before:.1f} before and {load_after:.1f} after "
        "(above 2 means other jobs took part of the cores).",
        f"The `classifier` detector with its cell head, random weights, synthetic faces; train batch {args.batch}, "
        f"infer batch {args.infer_batch}, fastest of {args.steps} steps after {args.warmup} warmup; "
        f"{'channels-last' if args.channels_last else 'contiguous'} tensors; peak = the process's peak resident memory.",
        "",
        "| encoder | side | train faces/s | infer faces/s | peak memory (MB) | params (M) |",
        "|---|---|---|---|---|---|",
        *[f"| {e} | {s} | {r['train']:.1f} | {r['infer']:.1f} | {r['peak_mb']:.0f} | {r['params_m']:.2f} |" for e, s, r in rows],
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.append is not None:
        with open(args.append, "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
