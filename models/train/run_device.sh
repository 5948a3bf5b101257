#!/usr/bin/env bash
# The single command of the device run: `models/train/run_device.sh OUTDIR` from the repository root.
# Trains every stage within about 8 minutes on one H100 and leaves at most 8 flat files in OUTDIR.
# WD_SMOKE=1 scales it down (batch 4, 15 steps a stage) to prove the flow on a CPU.
# PYTHON picks the interpreter (default python3); WD_WORK the checkpoint folder (default /tmp/wd_train).
# WD_INIT=FOLDER continues an exported pipeline (absolute path): its VAE's latents stay, so the run fine-tunes the
# decoder and trains its text encoder and UNet on; the LCM student continues from WD_INIT_LCM's UNet if given
# (FOLDER-lcm/unet is all it needs), else it is distilled afresh. WD_ARGS adds train.py arguments
# (the last of a repeated option wins).
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
  if [ -n "${WD_INIT:-}" ]; then
    [ -d "$WORK/vae" ] || cp -r "$WD_INIT/vae" "$WORK/vae"
    STAGES=(decoder unet lcm export samples)
    INIT=(--init "unet=$WD_INIT${WD_INIT_LCM:+,lcm=$WD_INIT_LCM}")
  else
    STAGES=(vae unet lcm export samples)
    INIT=()
  fi
  read -r -a EXTRA <<<"${WD_ARGS:-}"
  cd "$HERE"
  "$PY" train.py "${STAGES[@]}" --workdir "$WORK" --outdir "$OUT" "${SCALE[@]}" "${INIT[@]}" "${EXTRA[@]}"
  STATUS=$?
  echo "== train.py exit $STATUS at $(date -u +%FT%TZ)"
  "$PY" package.py "$OUT"
  exit $STATUS
} 2>&1 | tee -a "$LOG"
