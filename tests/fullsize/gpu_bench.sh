#!/usr/bin/env bash
# Real-GPU numbers for docs/BENCHMARKS.md: the full-shape kernel table, one 512x512 SD 1.5
# generation (random weights, built by make_models.py) and its step kernel by kernel, on whatever
# Vulkan adapter the machine has.
#   tests/fullsize/gpu_bench.sh BINARY OUTDIR
# BINARY is a release build of the CLI; OUTDIR receives the two tables as text.
set -uo pipefail
cd "$(dirname "$0")/../.."
bin=${1:?usage: gpu_bench.sh BINARY OUTDIR}
out=${2:?usage: gpu_bench.sh BINARY OUTDIR}
mkdir -p "$out"
"$bin" info 2>&1 | tee "$out/gpu_info.txt"
timeout 150 "$bin" bench kernels --full --iterations 20 2>&1 | tee "$out/bench_kernels_full.txt"
python3 tests/fullsize/make_models.py --out /tmp/fullsize --models sd15 --folders-only
timeout 150 "$bin" bench pipeline --model /tmp/fullsize/sd15 --steps 8 --size 512 2>&1 | tee "$out/bench_sd15_512.txt"
timeout 150 "$bin" bench step --model /tmp/fullsize/sd15 --size 512 --steps 5 --profile 2>&1 | tee "$out/bench_step_sd15_512.txt"
