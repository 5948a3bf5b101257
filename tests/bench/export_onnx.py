#!/usr/bin/env python3
"""The UNets that our engine's `bench step` times, exported to ONNX and timed natively on the CPU
in PyTorch and onnxruntime, so that docs can give our step time as a ratio to theirs (issue #20).
tests/bench/ort.mjs times the same .onnx files in onnxruntime-web, in the browser.

An offline tool, never run by CI; the folders are large, so they go outside the repository
(or under target/). Environment: tests/fixtures/README.md's versions plus onnx 1.23.2, onnxscript
0.7.2 and onnxruntime 1.32.0 (the numbers in docs/BENCHMARKS.md). `webdiffusion convert --from
<out>/<name> --to target/bench/<name>-q8 --quant q8` makes the package that the browser benchmark
(tests/bench/browser.mjs, which serves the checkout) loads.

    python tests/bench/export_onnx.py [--out DIR] [--models embedded tiny-sd sd15-narrow] [--threads 1 2]

For each model it writes
    <out>/<name>/       a diffusers StableDiffusionPipeline folder, for `webdiffusion bench step --model`
    <out>/<name>.onnx   its UNet at batch 2 (one classifier-free-guidance step): inputs sample
                        [2, C, H, W], timestep [2] (f32), encoder_hidden_states [2, 77, D]; output
                        noise_pred [2, C, H, W]
then prints one Markdown table: parameters, GFLOP per call, PyTorch and onnxruntime CPU ms.
"""

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
sys.dont_write_bytecode = True  # the imports below live in the repository

import diffusers  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402
import torch  # noqa: E402
from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "fullsize"))
from make_models import SCHEDULER_COMMON, SD15_UNET, model_index, randomize_, write_json  # noqa: E402

TOKENIZER_DIR = REPO / "tests" / "fixtures" / "tokenizer"
TIMESTEP = 500.0


def text_config(hidden: int, layers: int, heads: int) -> CLIPTextConfig:
    # SD 1.x's CLIP text tower, as tests/fixtures/generate.py's sd1_text_config, at another width.
    return CLIPTextConfig(
        vocab_size=49408, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
        projection_dim=hidden, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )


def vae(block_out: tuple, sample_size: int) -> AutoencoderKL:
    # A small decoder: `bench step` ends with one decode, and a real SD VAE at 512x512 would
    # take minutes on lavapipe for a number nobody compares here.
    n = len(block_out)
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=block_out, layers_per_block=1, latent_channels=4, norm_num_groups=8,
        sample_size=sample_size, scaling_factor=0.18215,
    )


# Random-weight models: (seed, text encoder, UNet config, VAE). The embedded one is unpacked instead.
RANDOM = {
    # about 1.5 M UNet parameters; 16x16 latents, 64x64 images (VAE factor 4).
    "tiny-sd": (
        20_000,
        lambda: text_config(64, 2, 4),
        dict(
            sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64, 64), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=4, cross_attention_dim=64, norm_num_groups=8,
        ),
        lambda: vae((16, 32, 32), 64),
    ),
    # SD 1.5's UNet at 0.4 of its width (about 140 M parameters); 64x64 latents, 512x512 images.
    # One CLIP layer is enough: only the width of its output (768) matters to the UNet.
    "sd15-narrow": (
        20_100,
        lambda: text_config(768, 1, 12),
        {**SD15_UNET, "block_out_channels": [128, 256, 512, 512]},
        lambda: vae((16, 32, 32, 32), 512),
    ),
}
MODELS = ["embedded", *RANDOM]


def log(*a):
    print(*a, flush=True)


def pipeline_folder(name: str, folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    if name == "embedded":
        # The q8 package dequantized: the weights our engine computes with, in f32.
        script = REPO / "models" / "train" / "unpack_package.py"
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        subprocess.run([sys.executable, script, REPO / "models" / "embedded", folder], check=True, env=env, cwd=script.parent)
        return
    seed, text, unet_config, make_vae = RANDOM[name]
    folder.mkdir(parents=True)
    write_json(folder / "model_index.json", model_index("PNDMScheduler", diffusers.__version__))
    (folder / "scheduler").mkdir()
    write_json(folder / "scheduler" / "scheduler_config.json", {"_class_name": "PNDMScheduler", **SCHEDULER_COMMON})
    shutil.copytree(TOKENIZER_DIR, folder / "tokenizer")
    torch.manual_seed(seed)  # the libraries' own initialisation, overwritten anyway
    for offset, (component, make) in enumerate(
        [("text_encoder", lambda: CLIPTextModel(text())), ("unet", lambda: UNet2DConditionModel(**unet_config)), ("vae", make_vae)], 1
    ):
        model = make()
        randomize_(model, seed + offset)
        model.save_pretrained(folder / component, safe_serialization=True)


class Guided(torch.nn.Module):
    """The UNet with positional inputs and one tensor out, which is what the exporter wants."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]


def timed_ms(fn, runs: int) -> list:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def spread(ms: list) -> str:
    v = sorted(ms)
    return f"{v[len(v) // 2]:.1f} ({v[0]:.1f}-{v[-1]:.1f})"


def measure(name: str, out: Path, runs: int, threads: list) -> str:
    folder = out / name
    start = time.perf_counter()
    pipeline_folder(name, folder)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=torch.float32, low_cpu_mem_usage=False).eval()
    model = Guided(unet).eval()
    c, size, d = unet.config.in_channels, unet.config.sample_size, unet.config.cross_attention_dim
    g = torch.Generator().manual_seed(0)
    inputs = (torch.randn(2, c, size, size, generator=g), torch.full((2,), TIMESTEP), torch.randn(2, 77, d, generator=g))
    params = sum(p.numel() for p in unet.parameters())
    log(f"{name}: folder ready in {time.perf_counter() - start:.0f} s, UNet {params / 1e6:.2f} M parameters, exporting")

    onnx_path = out / f"{name}.onnx"
    with torch.no_grad():
        torch.onnx.export(
            model, inputs, onnx_path, input_names=["sample", "timestep", "encoder_hidden_states"],
            output_names=["noise_pred"], opset_version=18, dynamo=True, external_data=False,
        )
    log(f"{name}: {onnx_path} ({onnx_path.stat().st_size / 1e6:.1f} MB), timing")

    with torch.no_grad():
        counter = FlopCounterMode(display=False)
        with counter:
            expected = model(*inputs).numpy()
    gflop = counter.get_total_flops() / 1e9
    cells = []
    for n in threads:
        torch.set_num_threads(n)
        with torch.no_grad():
            model(*inputs)  # the warm-up: oneDNN sets up its kernels per thread count
            torch_ms = timed_ms(lambda: model(*inputs), runs)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = n
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
        got = session.run(None, feeds)[0]  # the warm-up, and a check that the export computes the same
        error = float(np.abs(got - expected).max() / np.abs(expected).max())
        assert error < 1e-3, f"{name}: onnxruntime differs from PyTorch by {error:.2g} of the output's scale"
        ort_ms = timed_ms(lambda: session.run(None, feeds), runs)
        log(f"{name}, {n} threads: PyTorch {spread(torch_ms)} ms, onnxruntime {spread(ort_ms)} ms, max error {error:.1e}")
        cells += [spread(torch_ms), spread(ort_ms)]
    return f"| {name} | {params / 1e6:.2f} M | {c}x{size}x{size} | {gflop:.2f} | {' | '.join(cells)} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/webdiffusion-onnx"), help="outside the repository, or under its target/")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=MODELS)
    parser.add_argument("--runs", type=int, default=5, help="timed calls after one warm-up")
    parser.add_argument("--threads", type=int, nargs="+", default=[2], help="CPU thread counts, each for PyTorch and onnxruntime alike")
    args = parser.parse_args()
    out = args.out.resolve()
    if out.is_relative_to(REPO) and not out.is_relative_to(REPO / "target"):
        sys.exit(f"{args.out} is inside the repository (outside target/); the files are hundreds of MB")
    out.mkdir(parents=True, exist_ok=True)
    log(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")
    rows = [measure(name, out, args.runs, args.threads) for name in args.models]
    log(f"\nOne UNet call at batch 2 (a guided step), ms: median (min-max) of {args.runs} after a warm-up.\n")
    columns = [f"{lib}, {n} thread{'s' if n > 1 else ''}" for n in args.threads for lib in ("PyTorch", "onnxruntime CPU")]
    log("| model | UNet params | latents | GFLOP / call | " + " | ".join(columns) + " |")
    log("|---|---:|---|---:|" + "---:|" * len(columns))
    log("\n".join(rows))


if __name__ == "__main__":
    main()
