"""Pack preprocessed face crops into one small file, and unpack them elsewhere: how a training run travels to a
machine that has neither `../shared/data` nor room for the crops as preprocess wrote them (a lent GPU takes 64 MiB
with the repository).

    python benchmarks/pack_crops.py pack runs/gpu-pack.zip --root runs/faces224 \
        --manifests runs/faces224/dfdc/manifest.csv runs/faces224/utkface-every3.csv --side 96 --quality 90
    python benchmarks/pack_crops.py unpack runs/gpu-pack.zip --out /tmp/faces

`pack` stores every crop the manifests name as WebP at `--side` px (the model's input side: pixels above it are
thrown away by training anyway), with the manifests and the preprocess.json files that hold their crop settings,
under their paths relative to `--root`. `unpack` writes each crop back as PNG at its original side (so the
manifests' landmarks, in crop pixels, hold as written) and the manifests with their paths pointing at the PNGs.
The round trip loses what a WebP at that quality loses (about 41 dB PSNR at 96 px, quality 90).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from realface.faces.manifest import crop_settings_file

INDEX = "pack.json"  # {"manifests": [...], "crops": [[crop path, offset in CROPS, bytes, original side], ...]}
CROPS = "crops.webp.bin"  # the crops' WebP files one after another


def _crop_paths(manifest: Path, root: Path) -> list[Path]:
    """The crops a manifest names, relative to `root`."""
    with manifest.open(newline="") as f:
        return [(manifest.parent / row["path"]).resolve().relative_to(root.resolve()) for row in csv.DictReader(f)]


def _settings_files(crops: list[Path], root: Path) -> set[Path]:
    """The preprocess.json files (relative to `root`) that hold the crops' settings."""
    found = {crop_settings_file(root / folder) for folder in {c.parent for c in crops}}
    return {f.relative_to(root.absolute()) for f in found if f is not None}


def _encode(job: tuple[Path, int, int]) -> tuple[bytes, int]:
    path, side, quality = job
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"cannot read {path}")
    small = cv2.resize(bgr, (side, side), interpolation=cv2.INTER_AREA)
    return cv2.imencode(".webp", small, [cv2.IMWRITE_WEBP_QUALITY, quality])[1].tobytes(), bgr.shape[0]


def _write_manifest(z: zipfile.ZipFile, manifest: Path, name: str) -> None:
    """The manifest without its landmarks column, and the landmarks as an int16 array in tenths of a pixel (the
    manifest's own precision; 68 points as text take most of a manifest's bytes)."""
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    points = [r.pop("landmarks", "") for r in rows]
    width = max((len(p.split()) for p in points), default=0)
    tenths = np.full((len(rows), width), np.iinfo(np.int16).min, np.int16)  # min = no landmarks on that row
    for i, p in enumerate(points):
        if p:
            tenths[i] = np.round(np.array(p.split(), np.float64) * 10)
    text = io.StringIO()
    writer = csv.DictWriter(text, list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    z.writestr(name, text.getvalue(), zipfile.ZIP_DEFLATED)
    buffer = io.BytesIO()
    np.save(buffer, tenths)
    z.writestr(name + ".landmarks.npy", buffer.getvalue(), zipfile.ZIP_DEFLATED)


def _read_manifest(z: zipfile.ZipFile, name: str) -> list[dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO(z.read(name).decode())))
    tenths = np.load(io.BytesIO(z.read(name + ".landmarks.npy")))
    for row, t in zip(rows, tenths):
        row["landmarks"] = "" if t[0] == np.iinfo(np.int16).min else " ".join(f"{v / 10:.1f}" for v in t)
    return rows


def pack(out: Path, root: Path, manifests: list[Path], side: int, quality: int, workers: int) -> None:
    crops = list(dict.fromkeys(c for manifest in manifests for c in _crop_paths(manifest, root)))
    tmp = out.with_name(out.name + ".part")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z, ProcessPoolExecutor(workers) as pool:
        jobs = [(root / c, side, quality) for c in crops]
        blob, index_crops = bytearray(), []
        for crop, (data, original) in zip(crops, pool.map(_encode, jobs, chunksize=64)):
            index_crops.append([str(crop), len(blob), len(data), original])
            blob += data
        z.writestr(CROPS, bytes(blob))  # one member: a zip entry per crop would cost ~150 bytes of headers each
        for manifest in manifests:
            _write_manifest(z, manifest, str(manifest.resolve().relative_to(root.resolve())))
        for settings in _settings_files(crops, root):
            z.write(root / settings, str(settings), zipfile.ZIP_DEFLATED)
        index = {"manifests": [str(m.resolve().relative_to(root.resolve())) for m in manifests],
                 "crops": index_crops, "side": side, "quality": quality}  # fmt: skip
        z.writestr(INDEX, json.dumps(index), zipfile.ZIP_DEFLATED)
    tmp.replace(out)
    print(f"{out}: {len(crops)} crops at {side} px, WebP quality {quality}, {out.stat().st_size / 2**20:.1f} MiB")


def _decode(job: tuple[bytes, int, str]) -> None:
    data, side, dest = job
    small = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    big = cv2.resize(small, (side, side), interpolation=cv2.INTER_CUBIC)
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(dest, big, [cv2.IMWRITE_PNG_COMPRESSION, 1])


def unpack(pack_file: Path, out: Path, workers: int) -> None:
    with zipfile.ZipFile(pack_file) as z:
        index = json.loads(z.read(INDEX))
        for name in z.namelist():
            if name.endswith("preprocess.json"):
                (out / name).parent.mkdir(parents=True, exist_ok=True)
                (out / name).write_bytes(z.read(name))
        blob = z.read(CROPS)
        jobs = [(blob[offset : offset + size], side, str(out / Path(c).with_suffix(".png")))
                for c, offset, size, side in index["crops"]]  # fmt: skip
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_decode, jobs, chunksize=64))
        for manifest in index["manifests"]:
            rows = _read_manifest(z, manifest)
            dest = out / manifest
            dest.parent.mkdir(parents=True, exist_ok=True)
            with dest.open("w", newline="") as f:
                writer = csv.DictWriter(f, list(rows[0]))
                writer.writeheader()
                writer.writerows({**r, "path": str(Path(r["path"]).with_suffix(".png"))} for r in rows)
    print(f"{out}: {len(jobs)} crops, manifests {', '.join(index['manifests'])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("out", type=Path)
    p.add_argument("--root", type=Path, required=True, help="folder the manifests and their crops are under")
    p.add_argument("--manifests", type=Path, nargs="+", required=True)
    p.add_argument("--side", type=int, default=96)
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--workers", type=int, default=2)
    u = sub.add_parser("unpack")
    u.add_argument("pack", type=Path)
    u.add_argument("--out", type=Path, required=True)
    u.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    if args.cmd == "pack":
        pack(args.out, args.root, args.manifests, args.side, args.quality, args.workers)
    else:
        unpack(args.pack, args.out, args.workers)


if __name__ == "__main__":
    sys.exit(main())
