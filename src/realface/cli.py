"""The `realface` console script: parses arguments, calls one typed function per subcommand.

Heavy imports (torch, dlib, cv2) happen inside the handlers, so `realface --help` is instant.
A `RealfaceError` (a bad option or model, checked before any work starts) becomes one line on stderr and exit
status 2; `detect` exits 1 when an input could not be read; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from realface import __version__
from realface.errors import RealfaceError


def _shard(text: str) -> tuple[int, int]:
    """Parse `i/n` (0 <= i < n) for --shard."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes i/n, e.g. 0/4, got {text!r}") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard i/n needs 0 <= i < n, got {text!r}")
    return i, n


def _age_bins(text: str) -> tuple[int, ...]:
    """Parse `0,13,20,40,60` (increasing lower edges in whole years) for --age-bins."""
    from realface.eval.groups import check_age_bins

    try:
        return check_age_bins(text.split(","))
    except RealfaceError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_balance(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--balance-groups", nargs="+", metavar="COLUMN", default=None,
                   help="draw each epoch so every group of people in these manifest columns (e.g. race gender age) "
                        "has the same share; faces without the columns keep theirs")
    g.add_argument("--balance-age-bins", type=_age_bins, default=None, metavar="EDGES",
                   help="age ranges for --balance-groups age, lower edges in years (default 0,13,20,40,60)")


def _balance(args: argparse.Namespace):  # -> Grouping | None
    from realface.eval.groups import DEFAULT_AGE_BINS, Grouping

    if not args.balance_groups:
        if args.balance_age_bins:
            raise RealfaceError("--balance-age-bins needs --balance-groups")
        return None
    return Grouping(columns=tuple(args.balance_groups), age_bins=args.balance_age_bins or DEFAULT_AGE_BINS)


def _add_backend(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("auto", "onnx", "torch"), default="auto",
                   help="what runs the model: onnx (ONNX Runtime, CPU; the default for exported models), or torch "
                        "(PyTorch: GPUs, finetune run folders, gradient heatmaps)")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# evaluate


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="measure a model on test sets: AUC, EER, AP, ... at frame and video level, with a report",
        description="Score test sets (face crops, or raw images and videos) and write metrics.json, Markdown "
        "tables, ROC curves, histograms, a reliability diagram, the hardest errors and an HTML page.",
    )
    p.add_argument("--model", type=Path, default=None, help="finetune run or exported weights (default: shipped)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, nargs="+", help="manifests (one test set each)")
    src.add_argument("--protocol", type=Path, help="YAML file listing test sets by name")
    p.add_argument("--out", type=Path, required=True, help="report folder")
    p.add_argument("--frames", type=int, default=32, help="frames per video (raw videos)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    p.add_argument("--groups", nargs="+", metavar="COLUMN", default=None,
                   help="manifest columns whose groups get their own error rates, e.g. race gender age "
                        "(default: as the protocol says; none)")
    p.add_argument("--age-bins", type=_age_bins, default=None, metavar="EDGES",
                   help="lower edges of the age ranges of column age, in years (default 0,13,20,40,60)")
    p.add_argument("--device", default="cpu")
    _add_backend(p)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from realface.eval.evaluate import evaluate
    from realface.model import load_model
    from realface.eval.protocol import Protocol, load_protocol, with_groups
    from realface.eval.report import group_summary_lines, summary_table

    protocol = load_protocol(args.protocol) if args.protocol else Protocol.from_manifests(args.data)
    protocol = with_groups(protocol, args.groups, args.age_bins)
    model = load_model(args.model, args.backend, args.device)
    report = evaluate(
        model, protocol, args.out, frames=args.frames, batch_size=args.batch_size, bootstrap=args.bootstrap,
        progress=not args.no_progress,
    )  # fmt: skip
    header, rows = summary_table(report["datasets"])
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(str(c) for c in row))
    for line in group_summary_lines(report):
        print(line)
    print(f"report: {args.out / 'index.html'}")
    return 0


# ---------------------------------------------------------------------------------------------
# preprocess


def _add_preprocess(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "preprocess",
        help="detect, align and crop faces from images, videos, folders or CSV manifests",
        description="Turn images and videos into aligned face crops with landmarks and a manifest.",
    )
    p.add_argument("inputs", nargs="+", type=Path, help="image/video files, folders, or manifest.csv files")
    p.add_argument("--out", type=Path, required=True, help="output folder (crops + manifest.csv)")
    p.add_argument("--size", type=int, default=224, help="crop side in pixels (default 224)")
    p.add_argument("--margin", type=float, default=1.3, help="crop = face box scaled by this (default 1.3)")
    p.add_argument("--frames", type=int, default=32, help="frames sampled uniformly per video (default 32)")
    p.add_argument("--detector", default="dlib-hog", help="face detector backend: dlib-hog (default) or dlib-cnn")
    p.add_argument(
        "--assume-cropped",
        action="store_true",
        help="when no face is found in an image, not even by the fallbacks for tight crops, use the whole "
        "image as the face box (found_by: assumed)",
    )
    p.add_argument("--format", dest="fmt", choices=("folder", "webdataset"), default="folder")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    p.add_argument("--shard", type=_shard, default=(0, 1), metavar="I/N", help="process only shard I of N")
    p.add_argument("--limit", type=int, default=None, help="process at most this many inputs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_run_preprocess)


def _run_preprocess(args: argparse.Namespace) -> int:
    from realface.faces.pipeline import PipelineConfig
    from realface.faces.preprocess import preprocess

    config = PipelineConfig(
        crop_size=args.size,
        margin=args.margin,
        frames=args.frames,
        detector=args.detector,
        assume_cropped=args.assume_cropped,
    )
    report = preprocess(
        args.inputs,
        args.out,
        config=config,
        fmt=args.fmt,
        workers=args.workers,
        shard=args.shard,
        limit=args.limit,
        progress=not args.no_progress,
    )
    print(report.summary())
    return 0 if report.ok else 1


# ---------------------------------------------------------------------------------------------
# detect


def _add_detect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "detect",
        help="is this face real or fake? images, videos, folders, or - for stdin",
        description="Give each face a probability of being forged and a verdict (real, fake or uncertain) "
        "using the model's stored threshold and confidence band.",
    )
    p.add_argument("inputs", nargs="+", help="image/video files, folders (recursive), or - to read stdin")
    p.add_argument("--model", type=Path, default=None, help="finetune run or exported weights (default: shipped)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print JSON (one object per file)")
    out.add_argument("--csv", action="store_true", help="print CSV (one row per face)")
    p.add_argument("--heatmap", type=Path, default=None, metavar="DIR", help="write forgery heatmaps here")
    p.add_argument("--frames", type=int, default=32, help="frames sampled per video (default 32)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    _add_backend(p)
    p.add_argument("--no-progress", action="store_true")
    p.epilog = "Exit status: 0 all inputs read, 1 some input could not be read, 2 bad option or model (nothing done)."
    p.set_defaults(handler=_run_detect)


def _run_detect(args: argparse.Namespace) -> int:
    import csv
    import json
    import tempfile

    from realface.detect import CSV_COLUMNS, FileResult, Scanner, check_output_folder, collect_inputs
    from realface.detect import csv_rows, detect_paths, format_table
    from realface.faces.sniff import HEAD_BYTES, sniff
    from realface.model import load_model

    # Options and the model first: a mistake there stops everything before any input is read (exit 2).
    if args.frames < 1 or args.batch_size < 1:
        raise RealfaceError("--frames and --batch-size must be at least 1")
    if args.heatmap is not None:
        check_output_folder(args.heatmap, "--heatmap")
    model = load_model(args.model, args.backend, args.device, maps=args.heatmap is not None)
    scanner = Scanner(model, frames=args.frames, batch_size=args.batch_size, heatmap_dir=args.heatmap)
    with tempfile.TemporaryDirectory(prefix="realface-stdin-") as tmp:
        items = collect_inputs([a for a in args.inputs if a != "-"])
        names = [item.path if isinstance(item, FileResult) else str(item) for item in items]
        if "-" in args.inputs:
            data = sys.stdin.buffer.read()
            if data:  # named after what it holds, so the scan reads it as such (text is refused by name)
                stdin_file = Path(tmp) / ("stdin" + sniff(data[:HEAD_BYTES]).suffix)
                stdin_file.write_bytes(data)
                items.append(stdin_file)
            else:
                items.append(FileResult("-", "unsupported", "error", "stdin is empty: pipe an image or a video in"))
            names.append("-")
        results = detect_paths(scanner, items, progress=not args.no_progress)
        for result, name in zip(results, names):
            result.path = name
    if args.json:
        print(json.dumps({"model": model.info(), "results": [r.to_dict() for r in results]}, indent=2))
    elif args.csv:
        writer = csv.DictWriter(sys.stdout, CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(csv_rows(results))
    else:
        print(format_table(results))
    return 1 if any(r.status == "error" for r in results) else 0


# ---------------------------------------------------------------------------------------------
# serve


def _add_serve(sub: argparse._SubParsersAction) -> None:
    from realface.limits import API_KEY_ENV, ServeLimits
    p = sub.add_parser(
        "serve",
        help="HTTP API and web page for detection (POST /v1/detect, GET /v1/model, /healthz, /docs)",
        description="Load the model once and answer uploads over HTTP with the JSON of `detect --json`; "
        "the page at / lets a person drop a photo or a video and see the verdict and heatmap.",
    )
    p.add_argument("--model", type=Path, default=None, help="finetune run or exported weights (default: shipped)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--api-key", default=None,
        help=f"require this key on /v1/* and /metrics (header 'Authorization: Bearer KEY' or 'X-API-Key'); "
        f"default: ${API_KEY_ENV} if set, else none. Set one when --host is not loopback",
    )  # fmt: skip
    p.add_argument("--frames", type=int, default=32, help="frames sampled per video (default 32)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    _add_backend(p)
    d = ServeLimits()  # the defaults
    lim = p.add_argument_group("limits (per request)")
    lim.add_argument("--max-upload-mb", type=float, default=d.max_upload_mb, help="largest upload, MiB (default %(default)g)")
    lim.add_argument("--max-video-seconds", type=float, default=d.max_video_seconds, help="longest video, seconds (default %(default)g)")
    lim.add_argument("--max-image-megapixels", type=float, default=d.max_image_megapixels,
                     help="largest image or video frame, from its header before decoding (default %(default)g)")
    lim.add_argument("--max-request-mb", type=float, default=d.max_request_mb,
                     help="memory ceiling: decoded pixels one request may hold at once, MiB (default %(default)g)")
    lim.add_argument("--max-processing-seconds", type=float, default=d.max_processing_s,
                     help="longest scan of one upload; then 413 (default %(default)g)")
    lim.add_argument("--header-timeout", type=float, default=d.header_timeout_s,
                     help="seconds for a request's headers to arrive; then the connection is closed (default %(default)g)")
    lim.add_argument("--upload-idle-timeout", type=float, default=d.upload_idle_s,
                     help="longest pause in an upload, and the grace before its rate counts; then 408 (default %(default)g)")
    lim.add_argument("--min-upload-rate", type=float, default=d.min_upload_kib_s,
                     help="slowest average upload accepted, KiB/s; then 408 (default %(default)g)")
    q = p.add_argument_group("queue")
    q.add_argument("--max-jobs", type=int, default=d.max_jobs, help="jobs at once (default %(default)d)")
    q.add_argument("--queue", type=int, default=d.queue_length,
                   help="requests that may wait beyond --max-jobs; more get 503 + Retry-After (default %(default)d)")
    q.add_argument("--queue-wait", type=float, default=d.queue_wait_s,
                   help="longest wait for a job slot once the upload is in; then 503 (default %(default)g)")
    p.set_defaults(handler=_run_serve)  # fmt: skip


def _run_serve(args: argparse.Namespace) -> int:
    import ipaddress
    import os

    from realface.limits import API_KEY_ENV, ServeLimits
    from realface.model import load_model
    from realface.serve import create_app, run_server

    if not 0 < args.port < 65536:
        raise RealfaceError(f"--port must be within 1..65535, got {args.port}")
    if args.frames < 1:
        raise RealfaceError(f"--frames must be at least 1, got {args.frames}")
    api_key = args.api_key if args.api_key is not None else (os.environ.get(API_KEY_ENV) or None)
    if api_key is not None and not api_key.strip():
        raise RealfaceError("--api-key must not be empty")
    limits = ServeLimits(
        max_upload_mb=args.max_upload_mb, max_video_seconds=args.max_video_seconds,
        max_image_megapixels=args.max_image_megapixels, max_request_mb=args.max_request_mb,
        max_jobs=args.max_jobs, queue_length=args.queue, queue_wait_s=args.queue_wait,
        header_timeout_s=args.header_timeout, upload_idle_s=args.upload_idle_timeout,
        min_upload_kib_s=args.min_upload_rate, max_processing_s=args.max_processing_seconds,
    )  # fmt: skip
    model = load_model(args.model, args.backend, args.device, maps=True)  # the web page shows heatmaps
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback and api_key is None:
        print(f"realface serve: warning: listening on {args.host} without an API key: anyone who can reach it "
              f"can use it (set --api-key or ${API_KEY_ENV})", file=sys.stderr)  # fmt: skip
    run_server(create_app(model, limits=limits, frames=args.frames, api_key=api_key), host=args.host, port=args.port)
    return 0


# ---------------------------------------------------------------------------------------------
# pretrain


def _add_train_arguments(p: argparse.ArgumentParser, *, epochs: int, batch: int, blr: float, wd: float) -> None:
    """Options of the shared training loop (see realface.train.engine.TrainConfig)."""
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=epochs)
    g.add_argument("--batch-size", type=int, default=batch, help="global batch per optimizer step")
    g.add_argument("--blr", type=float, default=blr, help="base lr per 256 images (lr = blr * batch / 256)")
    g.add_argument("--min-lr", type=float, default=1e-6)
    g.add_argument("--warmup-epochs", type=float, default=1.0)
    g.add_argument("--weight-decay", type=float, default=wd)
    g.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw", help="adamw, or sgd with Nesterov momentum")
    g.add_argument("--accum-steps", type=int, default=1, help="gradient accumulation steps")
    g.add_argument("--clip-grad", type=float, default=1.0, help="max grad norm, 0 = off")
    g.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    g.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="validate and keep a moving average of the weights, updated every step with this decay "
                   "(e.g. 0.998: about the last 500 steps; 0 = off)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--workers", type=int, default=2, help="data loader processes")
    g.add_argument("--no-crop-cache", action="store_true",
                   help="decode every crop every epoch (default: once per run, into a file in --out removed at the end)")
    g.add_argument("--device", default="auto", help="cpu, cuda or auto")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    g.add_argument("--limit", type=int, default=None, help="use at most this many faces")
    g.add_argument("--max-steps-per-epoch", type=int, default=None, help="cap steps per epoch (quick runs)")
    g.add_argument("--tensorboard", action="store_true", help="also log to OUT/tensorboard (pip install tensorboard)")
    g.add_argument("--no-progress", action="store_true")


def _train_config(args: argparse.Namespace):
    from realface.train.engine import TrainConfig

    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        base_lr=args.blr,
        min_lr=args.min_lr,
        warmup_epochs=args.warmup_epochs,
        weight_decay=args.weight_decay,
        optimizer=args.optimizer,
        accum_steps=args.accum_steps,
        clip_grad=args.clip_grad,
        precision=args.precision,
        seed=args.seed,
        workers=args.workers,
        tensorboard=args.tensorboard,
        ema=args.ema,
    )


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain an encoder (ViT or CNN) on real faces (masked image modeling + CRFR-P + self-distillation)",
        description="Learn a representation of real faces only, by masked image modeling (FSFM's 3C); a CNN "
        "encoder is pretrained SparK / FCMAE style (sparse-acting convolutions, U-Net decoder).",
    )
    p.add_argument("--data", type=Path, nargs="+", required=True, help="preprocess outputs (manifest or folder)")
    p.add_argument("--out", type=Path, required=True, help="run folder for checkpoints, logs and pictures")
    m = p.add_argument_group("model")
    m.add_argument("--model", default="vit_tiny_patch16", help="encoder name (see realface.models.encoders.ENCODERS)")
    m.add_argument("--img-size", type=int, default=224, help="a multiple of the encoder's stride (ViT 16, CNN 32)")
    m.add_argument("--mask", default="crfr-p", help="masking strategy: random, block or crfr-p")
    m.add_argument("--mask-ratio", type=float, default=0.75)
    m.add_argument("--mask-cell", type=int, default=16,
                   help="mask cell side in pixels (a ViT's patch; for a CNN 8, 16 or 32)")
    m.add_argument("--decoder-dim", type=int, default=256)
    m.add_argument("--decoder-depth", type=int, default=4, help="ViT: decoder blocks; CNN: conv blocks per level")
    m.add_argument("--decoder-heads", type=int, default=8, help="ViT decoder attention heads")
    m.add_argument("--no-norm-pix", action="store_true", help="reconstruct raw pixels, not per-cell normalized")
    m.add_argument("--region-weight", type=float, default=None, help="extra weight on the fully masked region")
    m.add_argument("--distill-weight", type=float, default=None, help="self-distillation weight, 0 = off")
    m.add_argument("--drop-path", type=float, default=0.0)
    m.add_argument("--init", type=Path, default=None, help="initialise the encoder from a local timm/MAE file")
    _add_balance(p.add_argument_group("training data"))
    _add_train_arguments(p, epochs=10, batch=64, blr=1.5e-4, wd=0.05)
    p.set_defaults(handler=_run_pretrain)


def _run_pretrain(args: argparse.Namespace) -> int:
    from realface.models.pretrainer import ModelConfig
    from realface.train.pretrain import pretrain

    overrides = {
        k: v
        for k, v in {"region_weight": args.region_weight, "distill_weight": args.distill_weight}.items()
        if v is not None
    }
    model_cfg = ModelConfig(
        encoder=args.model,
        img_size=args.img_size,
        drop_path=args.drop_path,
        decoder_dim=args.decoder_dim,
        decoder_depth=args.decoder_depth,
        decoder_heads=args.decoder_heads,
        norm_pix_loss=not args.no_norm_pix,
        mask=args.mask,
        mask_ratio=args.mask_ratio,
        mask_cell=args.mask_cell,
        **overrides,
    )
    history = pretrain(
        args.data,
        args.out,
        model_cfg=model_cfg,
        train_cfg=_train_config(args),
        init=args.init,
        balance=_balance(args),
        cache_crops=not args.no_crop_cache,
        resume=args.resume,
        device=args.device,
        progress=not args.no_progress,
        limit=args.limit,
        max_steps_per_epoch=args.max_steps_per_epoch,
    )
    if history.epochs:
        last = history.epochs[-1]
        print(f"pretrained {len(history.epochs)} epochs; last training loss {last['train_loss']:.4f}; run in {args.out}")
    return 0


# ---------------------------------------------------------------------------------------------
# finetune


def _add_finetune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a forgery (or spoof) detector from a pretrained real-face encoder",
        description="Train a detector (classifier, rffr or competitive) on any encoder, on labelled faces and/or SBI "
        "pseudo-fakes; "
        "select it on validation AUC and fit its decision threshold on the same validation set.",
    )
    p.add_argument("--data", type=Path, nargs="+", required=True, help="face manifests from preprocess (labelled)")
    p.add_argument("--val", type=Path, nargs="+", default=None, help="validation manifests (default: split=val rows)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--pretrained", type=Path, default=None, help="a `realface pretrain` run (default: random init)")
    p.add_argument("--init", default=None, metavar="RUN_OR_WEIGHTS",
                   help="continue from a trained detector instead: a finetune run, exported weights, or `default` "
                        "(the packaged model), e.g. to teach it your own real photos; its architecture and input side "
                        "are kept (--detector, --model, --img-size and the detector options are not used)")
    d = p.add_argument_group("detector")
    d.add_argument("--detector", default="classifier", help="classifier (old name: vit), rffr or competitive")
    d.add_argument("--model", default="vit_tiny_patch16",
                   help="encoder when not --pretrained (realface.models.encoders.ENCODERS: ViTs, resnet18, "
                        "convnextv2_atto, efficientnet_b0, ...)")
    d.add_argument("--img-size", type=int, default=None, help="input side, a multiple of the encoder's stride (16 for a "
                   "ViT, 32 for a CNN); default 224, or the pretraining side with --pretrained (a CNN may take another)")
    d.add_argument("--crop-size", type=int, default=None,
                   help="side of the crops, for data without a preprocess.json (default 224); the crop settings of "
                        "preprocessed data are read from it and travel with the weights")
    d.add_argument("--freeze", action="store_true", help="linear probe: train only the head")
    d.add_argument("--pool", choices=("avg", "cls"), default="avg")
    d.add_argument("--drop-path", type=float, default=0.1)
    d.add_argument("--label-smoothing", type=float, default=0.1)
    d.add_argument("--layer-decay", type=float, default=0.75)
    d.add_argument("--rffr-blocks", type=int, default=None, help="rffr: blocks per side of the MAE's mask grid (4)")
    d.add_argument("--fusion-lambda", type=float, default=None, help="competitive: softmax(-lambda * u) fusion (1)")
    d.add_argument("--corr-weight", type=float, default=None, help="competitive: decorrelation loss weight (0.1)")
    d.add_argument("--mask-weight", type=float, default=None,
                   help="classifier: weight of the per-cell forgery-mask loss on the encoder's feature map (SBI blend "
                        "masks, and fake-minus-real differences for fakes whose real shares their group); 0 = no cell head "
                        "(default)")
    f = p.add_argument_group("training data")
    f.add_argument("--pseudo-fakes", choices=("none", "sbi"), default="none", help="add SBI pseudo-fakes of real faces")
    f.add_argument("--sbi-ratio", type=float, default=1.0, help="SBI fakes per real face (with --pseudo-fakes sbi)")
    _add_sbi_hulls(f)
    f.add_argument("--no-labelled-fakes", action="store_true", help="train on real faces + pseudo-fakes only")
    f.add_argument("--paired", action="store_true",
                   help="batches with every labelled fake next to its own real (same group, frame and face)")
    _add_balance(f)
    f.add_argument("--no-augment", action="store_true", help="no in-the-wild augmentation")
    f.add_argument("--affine", type=float, default=0.0, metavar="P",
                   help="probability of a random zoom (0.9-1.1x), tilt (up to 8 degrees) and shift (up to 5%%) of each "
                        "training face, as another face detector would have cropped it (default 0)")
    f.add_argument("--threshold-policy", default="eer",
                   help="eer, max_balanced_accuracy or target_fpr (with --target-fpr)")
    f.add_argument("--target-fpr", type=float, default=None,
                   help="target_fpr: the highest false-positive rate allowed on validation, e.g. 0.01")
    f.add_argument("--teacher", type=Path, nargs="+", default=[], metavar="RUN_OR_WEIGHTS",
                   help="trained detectors taking the same faces (e.g. runs of other seeds): the student also learns "
                        "their mean p(fake) on every training face (knowledge distillation)")
    f.add_argument("--teacher-weight", type=float, default=1.0,
                   help="weight of the teachers' loss (KL divergence from their mean class probabilities)")
    f.add_argument("--teacher-data", type=Path, nargs="+", default=None, metavar="MANIFEST",
                   help="the teachers score only the faces of these manifests (also given as --data) and the SBI fakes "
                        "made from them (default: every training face); e.g. `--init RUN --teacher RUN --teacher-data "
                        "ITS_DATA --data ITS_DATA NEW_REALS`: learn new reals without forgetting the old data")
    f.add_argument("--sbi-data", type=Path, nargs="+", default=None, metavar="MANIFEST",
                   help="make the SBI fakes only from the reals of these manifests (also given as --data), --sbi-ratio "
                        "per real of them (default: every real); e.g. blends of video frames, photos learned as real alone")
    f.add_argument("--no-teacher-sbi", action="store_true",
                   help="the teachers do not score the SBI fakes (a teacher that never saw such blends calls them real, "
                        "against their label): those learn from their label alone")
    _add_train_arguments(p, epochs=5, batch=64, blr=5e-4, wd=0.05)
    p.set_defaults(handler=_run_finetune)


def _init_model(name: str | None) -> Path | None:
    """--init: a path, or `default` for the packaged weights."""
    from realface.model import default_weights_dir

    if name is None:
        return None
    return default_weights_dir() if name == "default" else Path(name)


def _run_finetune(args: argparse.Namespace) -> int:
    from realface.data.augment import WildAugmentConfig
    from realface.models.detectors import DetectorConfig, options_for
    from realface.train.finetune import finetune

    if not 0.0 <= args.affine <= 1.0:
        raise RealfaceError(f"--affine is a probability in [0, 1], got {args.affine}")
    if args.teacher_weight < 0:
        raise RealfaceError(f"--teacher-weight must be >= 0, got {args.teacher_weight}")
    if args.sbi_data and args.pseudo_fakes != "sbi":
        raise RealfaceError("--sbi-data names the faces SBI blends: give --pseudo-fakes sbi too")
    if (args.teacher_data or args.no_teacher_sbi) and not args.teacher:
        raise RealfaceError("--teacher-data and --no-teacher-sbi say what teachers score: give --teacher too")

    given = {"blocks": args.rffr_blocks, "fusion_lambda": args.fusion_lambda, "corr_weight": args.corr_weight,
             "mask_weight": args.mask_weight}  # fmt: skip
    options = options_for(args.detector, {k: v for k, v in given.items() if v is not None})  # an option of another detector: error

    detector_cfg = DetectorConfig(
        name=args.detector,
        encoder=args.model,
        img_size=args.img_size or 224,
        pool=args.pool,
        drop_path=args.drop_path,
        freeze=args.freeze,
        label_smoothing=args.label_smoothing,
        layer_decay=args.layer_decay,
        options=options,
    )
    history = finetune(
        args.data,
        args.out,
        detector_cfg=detector_cfg,
        train_cfg=_train_config(args),
        pretrained=args.pretrained,
        init=_init_model(args.init),
        val=args.val,
        labelled_fakes=not args.no_labelled_fakes,
        sbi_ratio=args.sbi_ratio if args.pseudo_fakes == "sbi" else 0.0,
        sbi=_sbi_config(args),
        paired=args.paired,
        balance=_balance(args),
        augment=None if args.no_augment else WildAugmentConfig(affine_prob=args.affine),
        threshold_policy=args.threshold_policy,
        threshold_params={"fpr": args.target_fpr} if args.target_fpr is not None else None,
        teachers=args.teacher,
        teacher_weight=args.teacher_weight,
        teacher_data=args.teacher_data,
        teacher_sbi=not args.no_teacher_sbi,
        sbi_data=args.sbi_data,
        crop_size=args.crop_size,
        keep_img_size=args.img_size is not None,
        cache_crops=not args.no_crop_cache,
        resume=args.resume,
        device=args.device,
        progress=not args.no_progress,
        limit=args.limit,
        max_steps_per_epoch=args.max_steps_per_epoch,
    )
    if history.epochs:
        best = max(history.epochs, key=lambda e: e.get("val_auc", -e["train_loss"]))
        shown = f"val AUC {best['val_auc']:.4f}" if "val_auc" in best else f"train loss {best['train_loss']:.4f}"
        print(f"fine-tuned {len(history.epochs)} epochs; best epoch {best['epoch'] + 1}: {shown}; run in {args.out}")
    return 0


# ---------------------------------------------------------------------------------------------
# recipe


RECIPE_PRESETS = ("tiny", "cpu", "cpu-fair", "cpu-dfdc", "cpu-vit", "gpu")  # realface.recipe.PRESETS (not imported: startup time)


def _add_recipe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "recipe",
        help="run the whole chain that makes the default model (preprocess, pretrain, finetune, export)",
        description="Reproduce the default model from ../shared/data; every stage resumes where it stopped.",
    )
    p.add_argument("preset", nargs="?", default="default", choices=("default", *RECIPE_PRESETS),
                   help="tiny (tests), cpu (1.5-2.5 h on 2 cores; the default: DFDC, then a polish with UTKFace shard 0/3's "
                        "photos, SBI blends and its own teacher), cpu-fair (that polish without SBI or teacher: fewer "
                        "false alarms at the EER point, lower DFDC AUC), cpu-dfdc (no UTKFace photos), cpu-vit (the "
                        "ViT-tiny chain of before) or gpu")
    p.add_argument("--scale", choices=RECIPE_PRESETS, default=None, help="the preset, as an option (wins)")
    p.add_argument("--shared", type=Path, default=Path("../shared/data"), help="the shared data folder")
    p.add_argument("--work", type=Path, default=None, help="working folder (default runs/recipe-PRESET)")
    p.add_argument("--export", type=Path, default=None, help="where the weights go (default: the package)")
    p.add_argument("--detector", default=None, help="override the preset's detector")
    p.add_argument("--threshold-fpr", type=_threshold_fpr, default=None, metavar="F|eer",
                   help="operating point: the threshold at which at most this share of the DFDC val reals score at or "
                        "above it (presets: 0.05), or eer for the EER point (more fakes caught, more false alarms)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_run_recipe)


def _threshold_fpr(text: str) -> float | str:
    if text.lower() == "eer":
        return "eer"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share of the val reals such as 0.05, or eer; got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a share of the val reals in (0, 1), such as 0.05; got {text}")
    return value


def _run_recipe(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from realface.model import default_weights_dir
    from realface.recipe import PRESETS, model_card_markdown, run_recipe

    preset = args.scale or ("cpu" if args.preset == "default" else args.preset)
    cfg = PRESETS[preset]
    if args.detector:
        cfg = replace(cfg, detector=args.detector)
    if args.threshold_fpr is not None:  # only the exported decision rule changes: finished stages are reused
        cfg = replace(cfg, threshold_fpr=None if args.threshold_fpr == "eer" else args.threshold_fpr)
    work = args.work or Path("runs") / f"recipe-{preset}"
    export = args.export or default_weights_dir()
    card = run_recipe(
        args.shared, work, cfg, export_to=export, preset=preset, device=args.device, progress=not args.no_progress
    )
    print(model_card_markdown(card))
    print(f"weights exported to {export}")
    return 0


# ---------------------------------------------------------------------------------------------
# synth-sbi


def _add_synth_sbi(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth-sbi",
        help="write self-blended pseudo-fakes (SBI) of real faces, with their masks, to look at",
        description="Blend each real face with a transformed copy of itself through a deformed face mask.",
    )
    p.add_argument("inputs", nargs="+", type=Path, help="manifests (or their folders) written by preprocess")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--count", type=int, default=None, help="number of pseudo-fakes (default: one per face)")
    p.add_argument("--seed", type=int, default=0)
    _add_sbi_hulls(p)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_run_synth_sbi)


def _add_sbi_hulls(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--sbi-hulls", nargs="+", default=None, metavar="HULL",
                   help="the blend mask shapes SBI draws from, uniformly (realface.data.sbi.MASK_HULLS; default face "
                        "landmarks inner: face-swap-like blends; lower: the mouth and chin only, reenactment-like)")


def _sbi_config(args: argparse.Namespace):
    from realface.data.sbi import SBIConfig

    if args.sbi_hulls is None:
        return SBIConfig()
    try:
        return SBIConfig(hulls=tuple(args.sbi_hulls))
    except ValueError as e:
        raise RealfaceError(f"--sbi-hulls: {e}") from None


def _run_synth_sbi(args: argparse.Namespace) -> int:
    from realface.data.synth import synth_sbi

    n = synth_sbi(args.inputs, args.out, count=args.count, seed=args.seed, config=_sbi_config(args), progress=not args.no_progress)
    print(f"wrote {n} pseudo-fakes to {args.out}")
    return 0


# ---------------------------------------------------------------------------------------------
# export


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write a finetune run (or an exported model) as a self-contained model folder with its ONNX graph",
        description="Write DIR/model.safetensors, DIR/config.json (detector, crop settings, decision rule, card) "
        "and DIR/model.onnx, which detect, evaluate and serve run with ONNX Runtime (no PyTorch needed).",
    )
    p.add_argument("model", type=Path, help="a finetune run folder, or an exported model folder")
    p.add_argument("--out", type=Path, required=True, help="the model folder to write")
    p.add_argument("--fp32", action="store_true", help="keep 32-bit weights (default: 16-bit, half the size)")
    p.set_defaults(handler=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from realface.bundle import export_bundle, load_bundle

    if args.out.resolve() == args.model.resolve():
        raise RealfaceError("--out must be another folder than the model")
    bundle = load_bundle(args.model)
    export_bundle(bundle, args.out, fp16=not args.fp32)
    print(f"exported {args.model} to {args.out}")
    return 0


# ---------------------------------------------------------------------------------------------

TRAINING_MODULES = ("torch", "torchvision", "timm", "onnx")  # what `realface[train]` adds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="realface",
        description="Face forgery detection that learns what real faces look like.",
    )
    parser.add_argument("--version", action="version", version=f"realface {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (
        _add_detect, _add_evaluate, _add_serve, _add_preprocess, _add_pretrain, _add_finetune, _add_recipe,
        _add_export, _add_synth_sbi,
    ):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except RealfaceError as err:
        print(f"realface {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"realface {args.command}: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as err:  # the light install: training and PyTorch-only paths
        if (err.name or "").split(".")[0] not in TRAINING_MODULES:
            raise
        print(f"realface {args.command}: error: this needs {err.name}, which is not installed: "
              "pip install 'realface[train]'", file=sys.stderr)  # fmt: skip
        return 2


if __name__ == "__main__":
    sys.exit(main())
