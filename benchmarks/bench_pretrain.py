"""Pretraining step speed and peak memory: visible-only MAE encoder vs all tokens, random vs CRFR-P masking,
with and without self-distillation.

One step = sample masks + forward + backward + AdamW step + EMA teacher update, on synthetic images and
synthetic face-shaped region maps (real shapes, no data needed). Each case runs in its own process so
its peak memory is its own. Prints a Markdown table.

    python benchmarks/bench_pretrain.py                       # vit_tiny, 224 and 112, batch 32, CPU
    python benchmarks/bench_pretrain.py --decoders 128x2 256x4  # also a heavier decoder
    python benchmarks/bench_pretrain.py --device cuda --batch 128
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import cv2
import numpy as np
import torch

from realface.faces.regions import BOUNDARY, EYEBROWS, EYES, MOUTH, NOSE, SKIN, patch_region_fractions
from realface.models.masking import mask_to_indices
from realface.models.pretrainer import ModelConfig, Pretrainer, build_pretrainer


@dataclass(frozen=True)
class Case:
    """One benchmark configuration."""

    img_size: int
    mask: str  # masking strategy
    visible_only: bool  # MAE encoder on visible patches (True) or on all patches (False)
    distill: bool  # self-distillation with an EMA teacher on the full view
    decoder: tuple[int, int, int]  # decoder (width, depth, heads)


def synthetic_fractions(img_size: int, patch: int, n: int, seed: int) -> np.ndarray:
    """Face-shaped region maps (jittered ellipses and lines), as per-patch fractions: (n, g, g, R)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        s = img_size * rng.uniform(0.9, 1.1)
        c = img_size / 2 + rng.normal(0, 0.03 * img_size, 2)
        label = np.zeros((img_size, img_size), np.uint8)

        def ellipse(center: np.ndarray, axes: tuple[float, float], value: int, thickness: int = -1) -> None:
            cx, cy = (int(v) for v in center)
            cv2.ellipse(label, (cx, cy), (int(axes[0]), int(axes[1])), 0, 0, 360, value, thickness)

        ellipse(c, (0.36 * s, 0.46 * s), SKIN)
        ellipse(c, (0.36 * s, 0.46 * s), BOUNDARY, max(1, int(0.05 * s)))
        for side in (-1, 1):
            eye = c + (side * 0.15 * s, -0.08 * s)
            ellipse(eye, (0.06 * s, 0.03 * s), EYES)
            brow = (eye + (-0.07 * s, -0.07 * s)).astype(int), (eye + (0.07 * s, -0.08 * s)).astype(int)
            cv2.line(label, tuple(brow[0]), tuple(brow[1]), EYEBROWS, max(1, int(0.025 * s)))
        ellipse(c + (0, 0.06 * s), (0.06 * s, 0.1 * s), NOSE)
        ellipse(c + (0, 0.24 * s), (0.12 * s, 0.045 * s), MOUTH)
        out.append(patch_region_fractions(label, patch))
    return np.stack(out)


def all_tokens_forward(model: Pretrainer, imgs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Same model and loss, but the encoder runs on every patch (as SimMIM/BEiT-style encoders do)."""
    mae = model.mae
    latent = mae.encoder.forward_features(imgs)  # (N, 1 + L, D)
    restore = torch.arange(mask.shape[1], device=imgs.device).expand(mask.shape[0], -1)  # identity order
    pred = mae.forward_decoder(latent, restore)  # (N, L, p*p*3), no mask tokens needed
    return mae.forward_loss(imgs, pred, mask, None)[0]


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _reset_peak_rss() -> bool:
    """Reset this process's VmHWM (Linux clear_refs "5"); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class Runner:
    """One case's model, optimizer and inputs, stepped in turn with the other cases of its group."""

    case: Case
    model: Pretrainer
    opt: torch.optim.Optimizer
    imgs: torch.Tensor  # (N, 3, H, W)
    fractions: torch.Tensor  # (N, g, g, R)
    generator: torch.Generator
    times: list[float]
    peak_mib: float = 0.0

    def step(self, step: int, total: int, device: str) -> None:
        """sample masks + forward + backward + AdamW + EMA update; records time and peak memory."""
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        else:
            _reset_peak_rss()
            before = _status_kb("VmRSS") * 1024
        start = time.perf_counter()
        masks = self.model.sample_masks(len(self.imgs), self.generator, self.fractions)
        mask, region_mask = masks.mask.to(device), masks.region_mask.to(device)
        if self.case.visible_only:
            loss = self.model(self.imgs, mask, region_mask).loss
        else:
            mask_to_indices(mask)  # same bookkeeping as the visible-only path
            loss = all_tokens_forward(self.model, self.imgs, mask)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.model.after_step(step, total)
        if device == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = _status_kb("VmHWM") * 1024
        self.times.append(time.perf_counter() - start)
        self.peak_mib = max(self.peak_mib, (peak - before) / 2**20)


def make_runner(case: Case, batch: int, device: str, seed: int) -> Runner:
    torch.manual_seed(seed)
    width, depth, heads = case.decoder
    cfg = ModelConfig(
        encoder="vit_tiny_patch16",
        img_size=case.img_size,
        decoder_dim=width,
        decoder_depth=depth,
        decoder_heads=heads,
        mask=case.mask,
        region_weight=0.007 if case.mask == "crfr-p" else 0.0,
        distill_weight=0.1 if case.distill else 0.0,
    )
    model = build_pretrainer(cfg).to(device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.05, fused=True)
    imgs = torch.randn(batch, 3, case.img_size, case.img_size, device=device)
    fractions = torch.from_numpy(synthetic_fractions(case.img_size, model.encoder.patch_size, batch, seed))
    return Runner(case, model, opt, imgs, fractions, torch.Generator().manual_seed(seed), [])


def run_group(group: list[Case], batch: int, steps: int, warmup: int, device: str, seed: int) -> list[dict[str, float]]:
    """Step the cases of a group in turn (so that load from other processes hits all alike).

    Returns per case: best and median step time over the timed steps, images/s at the best time, and
    the peak memory a step adds on top of what is resident before it (activations, gradients, temporaries).
    """
    runners = [make_runner(case, batch, device, seed) for case in group]
    total = warmup + steps
    for step in range(total):
        for runner in runners:
            runner.step(step, total, device)
    out = []
    for runner in runners:
        timed = runner.times[warmup:]
        best = min(timed)
        out.append({"best_s": best, "median_s": float(np.median(timed)), "imgs_per_s": batch / best, "step_mib": runner.peak_mib})
    return out


def groups(sizes: list[int], decoders: list[tuple[int, int, int]]) -> list[list[Case]]:
    """Cases grouped by image size and decoder; the all-tokens cases are the reference of their group."""
    out = []
    for size in sizes:
        for dec in decoders:
            out.append([
                Case(size, "random", True, False, dec),
                Case(size, "random", False, False, dec),
                Case(size, "crfr-p", True, False, dec),
                Case(size, "crfr-p", False, False, dec),
                Case(size, "crfr-p", True, True, dec),
            ])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 112])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--decoders", nargs="+", default=["128x2"], help="decoder WIDTHxDEPTH list, e.g. 128x2 256x4")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:  # one group, in its own process
        group = [Case(**{**c, "decoder": tuple(c["decoder"])}) for c in json.loads(args.child)]
        print(json.dumps(run_group(group, args.batch, args.steps, args.warmup, args.device, args.seed)))
        return

    decoders = [(int(w), int(d), max(1, int(w) // 32)) for w, d in (s.split("x") for s in args.decoders)]
    # big blocks via mmap, so freed activations leave the RSS and per-step peaks are measurable
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    rows: list[tuple[Case, dict[str, float]]] = []
    for group in groups(args.sizes, decoders):
        cmd = [sys.executable, __file__, "--child", json.dumps([asdict(c) for c in group]), "--batch", str(args.batch),
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device, "--seed", str(args.seed),
               "--threads", str(args.threads)]
        proc = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
        results = json.loads(proc.stdout.strip().splitlines()[-1])
        rows += list(zip(group, results))
        for case, res in zip(group, results):
            print(f"{case}: {res}", file=sys.stderr, flush=True)

    mem = "step peak GPU MiB" if args.device == "cuda" else "step peak RSS MiB"
    print(f"\nCommand: `python benchmarks/bench_pretrain.py {' '.join(sys.argv[1:])}`")
    print(f"vit_tiny_patch16, torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"batch {args.batch}, mask ratio 0.75, best and median of {args.steps} steps after {args.warmup} warmup, "
          "cases interleaved step by step\n")
    print(f"| img | decoder | mask | encoder tokens | self-distill | step s best (median) | images/s | {mem} | speedup vs all tokens |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case, res in rows:
        ref = next(r for c, r in rows if c == Case(case.img_size, case.mask, False, False, case.decoder))
        speedup = ref["best_s"] / res["best_s"]
        tokens = "visible (25%)" if case.visible_only else "all"
        print(f"| {case.img_size} | {case.decoder[0]}x{case.decoder[1]} | {case.mask} | {tokens} | "
              f"{'yes' if case.distill else 'no'} | {res['best_s']:.3f} ({res['median_s']:.3f}) | "
              f"{res['imgs_per_s']:.1f} | {res['step_mib']:.0f} | {speedup:.2f}x |")


if __name__ == "__main__":
    main()
