#!/usr/bin/env bash
# The single command of the device run: `models/train/run_device.sh OUTDIR` from the repository root.
# Trains every stage within about 8 minutes on one H100 and leaves at most 8 flat files in OUTDIR.
# WD_SMOKE=1 scales it down (batch 4, 15 steps a stage) to prove the flow on a CPU.
# PYTHON picks the interpreter (default python3); WD_WORK the checkpoint folder (default /tmp/wd_train).
set -u -o pipefail
OUT=${1:?usage: run_device.sh OUTDIR}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PY=${PYTHON:-python3}
WORK=${WD_WORK:-/tmp/wd_train}
mkdir -p "$OUT" "$WORK"
LOG="$OUT/run.log"
export PYTHONUNBUFFERED=1

{
  echo "== $(date -u +%FT%TZ) run_device.sh"
  if ! "$PY" -c "import diffusers" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$REPO"/.whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import sys, torch, diffusers, transformers; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"

  if [ "${WD_SMOKE:-0}" = 1 ]; then
    SCALE=(--batch 4 --max-steps 15 --warmup 2 --budget-seconds 600)
  else
    SCALE=(--budget-seconds vae=60,unet=300,lcm=105)
  fi
  cd "$HERE"
  "$PY" train.py vae unet lcm export samples --workdir "$WORK" --outdir "$OUT" "${SCALE[@]}"
  STATUS=$?
  echo "== train.py exit $STATUS at $(date -u +%FT%TZ)"
  "$PY" package.py "$OUT"
  exit $STATUS
} 2>&1 | tee -a "$LOG"
