#!/usr/bin/env bash
# Real-GPU numbers for docs/BENCHMARKS.md: the full-shape kernel table, one 512x512 SD 1.5
# generation (random weights, built by make_models.py), its step kernel by kernel, and DeepCache
# and ToDo against whole steps at 512x512 (bench savings), on whatever Vulkan adapter the
# machine has.
#   tests/fullsize/gpu_bench.sh BINARY OUTDIR
# BINARY is a release build of the CLI; OUTDIR receives the tables as text.
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
timeout 100 "$bin" bench savings --model /tmp/fullsize/sd15 --size 512 --steps 10 --prompts 1 --settings 2:0,3:0,todo2,2:0+todo2 2>&1 | tee "$out/bench_savings_sd15_512.txt"
