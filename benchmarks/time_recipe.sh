#!/bin/sh
# `make default-model`'s chain timed end to end, on an otherwise idle machine:
#
#   sh benchmarks/time_recipe.sh [PRESET] [WORK]
#
# Runs `realface recipe PRESET` (default cpu) from ../shared/data into WORK (default runs/recipe-PRESET-timed, fresh:
# preprocessing is timed too), exporting to WORK-export instead of the package, under GNU time. The recipe itself
# writes each stage's wall seconds to WORK/stage_times.json and the model card; WORK.log gets the clock at the start
# and the end, the recipe's output and time's peak memory. Record the result in BENCHMARKS.md with the machine.
set -eu
PRESET=${1:-cpu}
WORK=${2:-runs/recipe-$PRESET-timed}
if [ -e "$WORK" ]; then echo "$WORK exists: the chain would resume, not be timed from the start" >&2; exit 2; fi
mkdir -p "$(dirname "$WORK")"
LOG=$WORK.log
{ date -u +"start %FT%TZ"; grep -m1 "model name" /proc/cpuinfo || true; nproc; } > "$LOG"
rc=0
/usr/bin/time -v .venv/bin/realface recipe "$PRESET" --shared ../shared/data --work "$WORK" --export "$WORK-export" \
  --no-progress >> "$LOG" 2>&1 || rc=$?
{ echo "rc $rc"; date -u +"end %FT%TZ"; } >> "$LOG"
exit "$rc"
