"""Peak memory of `realface serve` while it answers uploads: N face images (one at a time, then from 4 client
threads) and one 32-frame video (FF++ 519.mp4, 640x480), on loopback.

Starts the real command (`python -m realface serve`) as a child process, so the numbers are those of the
service alone: resident memory (VmRSS) after start-up and after each phase, and the process's peak (VmHWM,
from /proc). Also end-to-end seconds per request as a client sees them. Prints a Markdown table and the
command. The model is the shipped default with --shipped, any bundle with --model, else a random-weights
ViT-tiny at 224 px (the shipped model's size; its scores mean nothing, its memory and time are real).

    python benchmarks/bench_serve.py [--model DIR | --shipped] [--images 100] [--frames 32] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx


def _status_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _random_bundle(out: Path) -> Path:
    """A random-weights ViT-tiny detector at 224 px, exported like the shipped weights (fp16)."""
    import torch

    from realface.bundle import Bundle, Decision, export_bundle
    from realface.data.faceset import Preprocessing
    from realface.models.detectors import DetectorConfig, build_detector

    torch.manual_seed(0)
    config = DetectorConfig(name="vit", img_size=224)
    bundle = Bundle(
        build_detector(config).eval(), config, Preprocessing(img_size=224), Decision(),
        {"name": "benchmark model (random weights)"}, Path("."),
    )  # fmt: skip
    return export_bundle(bundle, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", type=Path, default=None, help="a finetune run or exported bundle")
    which.add_argument("--shipped", action="store_true", help="the default weights inside the package")
    parser.add_argument("--images", type=int, default=100, help="image uploads per phase")
    parser.add_argument("--frames", type=int, default=32, help="frames sampled from the video")
    parser.add_argument("--max-jobs", type=int, default=2)
    args = parser.parse_args()

    images = [p.read_bytes() for p in sorted((args.data / "utkface" / "images").glob("*.jpg"))[: args.images]]
    video = (args.data / "ffpp-videos" / "original" / "519.mp4").read_bytes()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        model = args.model or (None if args.shipped else _random_bundle(Path(tmp) / "model"))
        port = _free_port()
        command = [sys.executable, "-m", "realface", "serve", "--port", str(port), "--frames", str(args.frames),
                   "--max-jobs", str(args.max_jobs)] + (["--model", str(model)] if model else [])  # fmt: skip
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        rows: list[tuple[str, int, float, float, float]] = []
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
                start = time.perf_counter()
                while True:
                    if server.poll() is not None:
                        raise SystemExit(f"serve exited: {server.stderr.read().decode()[-2000:]}")
                    try:
                        if http.get("/healthz").status_code == 200:
                            break
                    except httpx.TransportError:
                        time.sleep(0.1)
                startup = time.perf_counter() - start
                rows.append(("start-up (model loaded)", 0, startup, 0.0, _status_mib(server.pid, "VmRSS")))

                refused = []  # requests answered 503 (max_jobs busy): counted, not timed as answers

                def upload(name: str, data: bytes) -> float:
                    t0 = time.perf_counter()
                    response = http.post("/v1/detect", files={"file": (name, data)})
                    if response.status_code not in (200, 503):
                        raise SystemExit(f"{name}: HTTP {response.status_code} {response.text[:300]}")
                    if response.status_code == 503:
                        refused.append(name)
                    return time.perf_counter() - t0

                upload("warm-up.jpg", images[0])  # face models load on first use
                t0 = time.perf_counter()
                latencies = [upload(f"{i}.jpg", data) for i, data in enumerate(images)]
                rows.append(("images, one at a time", len(images), time.perf_counter() - t0,
                             sorted(latencies)[len(latencies) // 2], _status_mib(server.pid, "VmRSS")))  # fmt: skip
                t0 = time.perf_counter()
                with ThreadPoolExecutor(4) as pool:
                    latencies = list(pool.map(lambda item: upload(f"c{item[0]}.jpg", item[1]), enumerate(images)))
                rows.append((f"images, 4 client threads ({len(refused)} answered 503: max jobs)", len(images), time.perf_counter() - t0,
                             sorted(latencies)[len(latencies) // 2], _status_mib(server.pid, "VmRSS")))  # fmt: skip
                t0 = time.perf_counter()
                seconds = upload("519.mp4", video)
                rows.append((f"video 640x480, {args.frames} frames", 1, time.perf_counter() - t0, seconds,
                             _status_mib(server.pid, "VmRSS")))  # fmt: skip
                peak = _status_mib(server.pid, "VmHWM")
        finally:
            server.terminate()
            server.wait(timeout=30)

    label = "shipped" if args.shipped else (str(args.model) if args.model else "random ViT-tiny 224 px")
    print(f"model: {label}; max jobs {args.max_jobs}; peak RSS of the serve process (VmHWM): **{peak:.0f} MiB**\n")
    print("| phase | requests | wall s | median s/request | RSS after (MiB) |")
    print("|---|---|---|---|---|")
    for name, n, wall, median, rss in rows:
        print(f"| {name} | {n} | {wall:.2f} | {median:.3f} | {rss:.0f} |")
    print(f"\ncommand: python benchmarks/bench_serve.py {' '.join(sys.argv[1:])}".rstrip())


if __name__ == "__main__":
    main()
