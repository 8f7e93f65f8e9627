"""A bounded soak of `realface serve` on loopback: mixed images, videos, bad files, slow clients and disconnects
from several client threads for about 2 minutes (at most `--requests` requests), against the real command.

Checks what the service promises under abuse: no 5xx other than 503, no temporary file left behind (the server
runs with its own TMPDIR, which must hold nothing new at the end), resident memory back within 10% of what it was after
warm-up, and every slot given back (/healthz idle at the end). Prints a Markdown table (status counts per kind
of request, client-side latency p50/p95 of the answered ones) and the command; exits 1 when a check fails.

    python benchmarks/soak_serve.py [--model DIR] [--seconds 120] [--requests 300] [--clients 6] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np

# What the clients send, with its share of the requests.
MIX = {
    "image": 0.40, "image+heatmap": 0.05, "video": 0.10, "bad file": 0.15, "large-frame video": 0.05,
    "stalled upload": 0.08, "slow headers": 0.05, "disconnect": 0.12,
}  # fmt: skip
SERVER_LIMITS = [  # short client timeouts so that slow clients are cut within the soak
    "--max-jobs", "2", "--queue", "8", "--queue-wait", "30", "--frames", "8", "--header-timeout", "2",
    "--upload-idle-timeout", "2", "--max-image-megapixels", "8", "--max-processing-seconds", "60",
]  # fmt: skip


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def large_frame_avi(path: Path) -> bytes:
    """An MJPEG .avi of 3 frames of 4000x3000 (12 MP, over the server's 8 MP): small file, huge frames."""
    frame = np.zeros((3000, 4000, 3), np.uint8)
    frame[::16] = 255
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (4000, 3000))
    for _ in range(3):
        writer.write(frame)
    writer.release()
    return path.read_bytes()


def raw_request(port: int, head: bytes, body: bytes, *, close_after: float | None) -> str:
    """Send `head` + `body` on a raw connection, then either close after `close_after` s (a disconnect) or wait
    for the server's answer; returns the status code seen ("closed" when it closed without one)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head + body)
        if close_after is not None:
            time.sleep(close_after)
            return "client closed"
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data[9:12].decode() if data.startswith(b"HTTP/1.1") else "closed"


def multipart_head(port: int, declared: int) -> bytes:
    return (
        f"POST /v1/detect HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: multipart/form-data; boundary=b0\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    ).encode() + b'--b0\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n\r\n'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--model", type=Path, default=None, help="a finetune run or bundle (default: shipped)")
    parser.add_argument("--seconds", type=float, default=120.0, help="stop sending after this long")
    parser.add_argument("--requests", type=int, default=300, help="at most this many requests")
    parser.add_argument("--clients", type=int, default=6, help="client threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    images = [p.read_bytes() for p in sorted((args.data / "utkface" / "images").glob("*.jpg"))[:50]]
    videos = [(args.data / "ffpp-videos" / "original" / name).read_bytes() for name in ("519.mp4", "004.mp4")]
    bad = [b"", images[0][: len(images[0]) // 3], b"plain text, not a picture\n" * 10, b"GIF89a" + bytes(200),
           np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()]  # fmt: skip
    kinds = list(MIX)
    schedule = rng.choices(kinds, weights=[MIX[k] for k in kinds], k=args.requests)

    with tempfile.TemporaryDirectory(prefix="soak-serve-") as work:
        server_tmp = Path(work) / "server-tmp"
        server_tmp.mkdir()
        big = large_frame_avi(Path(work) / "big.avi")
        port = free_port()
        command = [sys.executable, "-m", "realface", "serve", "--port", str(port), *SERVER_LIMITS]
        command += ["--model", str(args.model)] if args.model else []
        env = {**__import__("os").environ, "TMPDIR": str(server_tmp)}
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)
        url = f"http://127.0.0.1:{port}"
        results: dict[str, Counter] = defaultdict(Counter)
        latencies: dict[str, list[float]] = defaultdict(list)
        lock = threading.Lock()
        try:
            with httpx.Client(base_url=url, timeout=120) as http:
                deadline = time.monotonic() + 120
                while True:
                    try:
                        if http.get("/healthz").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"server did not start: {server.stderr.read()[-2000:]}")
                    time.sleep(0.2)
                for data, name in ((images[0], "warm.jpg"), (videos[0], "warm.mp4")):  # models loaded, buffers grown
                    assert http.post("/v1/detect", files={"file": (name, data)}).status_code == 200
                start_rss = rss_mib(server.pid)
                before = {p.name for p in server_tmp.iterdir()}  # torch's own caches, made at start-up

                def one(i: int, kind: str) -> None:
                    r = random.Random(args.seed * 100_003 + i)
                    t0 = time.perf_counter()
                    with httpx.Client(base_url=url, timeout=120) as client:
                        try:
                            if kind in ("image", "image+heatmap"):
                                params = {"heatmap": "true"} if kind == "image+heatmap" else {}
                                files = {"file": (f"{i}.jpg", r.choice(images))}
                                code = str(client.post("/v1/detect", files=files, params=params).status_code)
                            elif kind == "video":
                                code = str(client.post("/v1/detect", files={"file": (f"{i}.mp4", r.choice(videos))}).status_code)
                            elif kind == "bad file":
                                code = str(client.post("/v1/detect", files={"file": (f"{i}.jpg", r.choice(bad))}).status_code)
                            elif kind == "large-frame video":
                                code = str(client.post("/v1/detect", files={"file": (f"{i}.avi", big)}).status_code)
                            elif kind == "stalled upload":
                                code = raw_request(port, multipart_head(port, 80_000), images[0][:3000], close_after=None)
                            elif kind == "slow headers":
                                code = raw_request(port, b"POST /v1/detect HTTP/1.1\r\nHost: x\r\n", b"", close_after=None)
                            else:  # disconnect mid-upload
                                code = raw_request(port, multipart_head(port, 80_000), images[0][:3000], close_after=0.3)
                        except httpx.TransportError as err:
                            code = f"transport error ({type(err).__name__})"
                    with lock:
                        results[kind][code] += 1
                        if code in ("200", "413", "422"):
                            latencies[kind].append(time.perf_counter() - t0)

                t_start = time.monotonic()
                with ThreadPoolExecutor(args.clients) as pool:
                    futures = []
                    for i, kind in enumerate(schedule):
                        if time.monotonic() - t_start > args.seconds:
                            break
                        futures.append(pool.submit(one, i, kind))
                        time.sleep(args.seconds / args.requests * 0.8)  # spread over the run, in bursts of threads
                    for f in futures:
                        f.result()
                elapsed = time.monotonic() - t_start
                time.sleep(3.0)  # let the last connections close and the slots come back
                health = http.get("/healthz").json()
                metrics = http.get("/metrics").text
                end_rss, peak = rss_mib(server.pid), rss_mib(server.pid, "VmHWM")
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        leftover = sorted(p.name for p in server_tmp.iterdir() if p.name not in before or p.name.startswith("realface"))
        log = server.stderr.read()

    sent = sum(sum(c.values()) for c in results.values())
    print(f"{sent} requests in {elapsed:.0f} s from {args.clients} client threads\n")
    print("| request | sent | answers | p50 s | p95 s |")
    print("|---|---:|---|---:|---:|")
    for kind in kinds:
        if not results[kind]:
            continue
        answers = ", ".join(f"{code}: {n}" for code, n in sorted(results[kind].items()))
        lat = latencies[kind]
        p50, p95 = (f"{np.percentile(lat, 50):.2f}", f"{np.percentile(lat, 95):.2f}") if lat else ("-", "-")
        print(f"| {kind} | {sum(results[kind].values())} | {answers} | {p50} | {p95} |")
    server_q = {line.split("{")[1].split("}")[0]: line.split()[-1] for line in metrics.splitlines()
                if line.startswith("realface_request_seconds{")}  # fmt: skip
    print(f"\nserver-side latency of /v1/detect (from /metrics): {server_q}")
    fivexx = {code: n for c in results.values() for code, n in c.items() if code.startswith("5") and code != "503"}
    change = (end_rss - start_rss) / start_rss
    print(f"server memory: {start_rss:.0f} MiB after warm-up, {end_rss:.0f} MiB at the end ({change:+.1%}), "
          f"peak {peak:.0f} MiB")  # fmt: skip
    print(f"5xx other than 503: {sum(fivexx.values())}; temporary files left: {len(leftover)} {leftover}; "
          f"/healthz at the end: {health}")  # fmt: skip
    tracebacks = log.count("Traceback")
    print(f"tracebacks in the server log: {tracebacks}")
    print("\ncommand: " + " ".join([Path(sys.executable).name, *sys.argv]))
    idle = health["jobs_running"] == health["queue_depth"] == health["uploads_receiving"] == 0
    ok = not fivexx and not leftover and abs(change) <= 0.10 and idle and tracebacks == 0
    print("checks: " + ("all passed" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
