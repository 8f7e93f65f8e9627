#!/bin/sh
# One fine-tuning run of the `gpu` preset on a lent GPU machine, sized to a fixed number of seconds.
#
#   sh benchmarks/gpu_finetune.sh PACK OUT SECONDS [finetune options...]
#
# PACK: crops packed by benchmarks/pack_crops.py (the machine has no ../shared/data); OUT: a folder that comes back
# (weights as fp16 safetensors in two halves under 16 MiB each, and the run's config, log and decisions);
# SECONDS: the training's budget (with EPOCHS set in the environment: that many epochs, no probe). A short probe (150 steps) measures the loader's rate on this machine, and the
# number of epochs is chosen from it so that the one-cycle schedule ends inside the budget; the epochs chosen are
# recorded in the run's config.json like any other run's. A run past its budget is stopped, and what it had
# selected so far still comes back. Runs with the machine's python3 (PyTorch there) and this checkout's src/.
# Several runs in one command (e.g. seeds): one call each, each with its own OUT (`... $OUT/seed1 ... --seed 1`).
set -eu
PACK=$1 OUT=$2 SECONDS_BUDGET=$3
shift 3
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
FACES=/tmp/realface-faces
WORKERS=$(( $(nproc) - 1 ))
start=$(date +%s)
rm -rf /tmp/run /tmp/probe /tmp/probe.log  # a warm machine keeps the last call's run: never resume or reuse it
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -c "import torch, timm, numpy, cv2; print('torch', torch.__version__, 'timm', timm.__version__, 'numpy', numpy.__version__, 'cv2', cv2.__version__, 'cuda', torch.cuda.is_available())"
python3 benchmarks/pack_crops.py unpack "$PACK" --out "$FACES" --workers "$(nproc)"
DATA=${DATA:-"$FACES/dfdc/manifest.csv $FACES/utkface-every3.csv"}  # paths under $FACES
if [ -n "${EPOCHS:-}" ]; then epochs=$EPOCHS; else
# shellcheck disable=SC2086
python3 -m realface finetune --data $DATA --out /tmp/probe --epochs 1 --max-steps-per-epoch 150 --workers "$WORKERS" \
  --device cuda --no-progress "$@" >/tmp/probe.log 2>&1 || { cat /tmp/probe.log; exit 1; }
epochs=$(python3 - "$SECONDS_BUDGET" "$start" <<'EOF'
import csv, json, sys, time
budget, start = float(sys.argv[1]), float(sys.argv[2])
config = json.load(open("/tmp/probe/config.json"))
items, batch = config["num_train"], config["train"]["batch_size"]
rows = list(csv.DictReader(open("/tmp/probe/log.csv")))  # images_per_s: faces/s since the epoch began
elapsed = [int(r["step"]) * batch / float(r["images_per_s"]) for r in rows]
half = len(rows) // 2
rate = (len(rows) - half) * batch / (elapsed[-1] - elapsed[half - 1])  # the second half: workers started
per_epoch = 1.2 * items / rate + 3.0  # + first-read crops, workers' start, validation and checkpoints
left = budget - (time.time() - start)
print(max(1, min(80, int(left / per_epoch))))
print(f"probe: {rate:.0f} faces/s, {items} items an epoch, {per_epoch:.1f} s an epoch, {left:.0f} s left", file=sys.stderr)
EOF
)
fi
echo "epochs: $epochs"
guard=$(( SECONDS_BUDGET + 60 - ($(date +%s) - start) ))
# shellcheck disable=SC2086
timeout "$guard" python3 -m realface finetune --data $DATA --out /tmp/run --epochs "$epochs" --workers "$WORKERS" \
  --device cuda --no-progress "$@" || echo "finetune stopped: exit $?"
mkdir -p "$OUT"
python3 - "$OUT" <<'EOF'
import sys
from pathlib import Path
from safetensors.torch import load_file, save_file
out = Path(sys.argv[1])
half = {k: v.half() if v.is_floating_point() else v for k, v in load_file("/tmp/run/best/model.safetensors").items()}
total, filled, first = sum(v.nbytes for v in half.values()), 0, {}
for k, v in half.items():  # the first tensors up to half the bytes, then the rest: each file under 16 MiB
    if filled >= total / 2:
        break
    first[k], filled = v, filled + v.nbytes
save_file(first, str(out / "best-1.safetensors"))
save_file({k: v for k, v in half.items() if k not in first}, str(out / "best-2.safetensors"))
EOF
tar -czf "$OUT/run.tgz" -C /tmp/run --exclude '*.safetensors' --exclude 'train_state.pt' --exclude '.crops-*' . \
  $( [ -f /tmp/probe.log ] && echo "-C /tmp probe.log" )
echo "done in $(( $(date +%s) - start )) s"
