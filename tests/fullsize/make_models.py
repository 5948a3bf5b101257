#!/usr/bin/env python3
"""Full-size SD 1.5 and SD 2.1 architectures with random weights, and their reference
outputs from diffusers/transformers in float32 on the CPU.

Not part of CI: the folders are gigabytes, so they go OUTSIDE the repository
(default /work/fullsize). See README.md next to this file for the whole check.

    /work/venv-fixtures/bin/python tests/fullsize/make_models.py [--out DIR] [--models sd15 sd21]

For each model it writes
    <out>/<model>/                 a diffusers StableDiffusionPipeline folder (fp32 safetensors)
    <out>/<model>.safetensors      inputs and outputs of one text encoding, one UNet
                                   evaluation and one VAE decode, with diffusers' wall
                                   times in the metadata

The component configs below were written from the public hub files
(runwayml/stable-diffusion-v1-5, stabilityai/stable-diffusion-2-1), not downloaded.
"""

import argparse
import gc
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TOKENIZER_DIR = REPO / "tests" / "fixtures" / "tokenizer"
SD2_TOKENIZER_DIR = REPO / "tests" / "fixtures" / "models" / "sd2-tiny" / "tokenizer"

PROMPT = "a photograph of an astronaut riding a horse"
NEGATIVE_PROMPT = ""
TIMESTEP = 500
LATENT_SIZE = 64  # 512x512 images for both models (SD 2.1's native 768 is too slow on this CPU)

# ----------------------------------------------------------------------- configs
# As the hub's config.json files read (key order and stale fields included).

DOWN_BLOCKS = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
UP_BLOCKS = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]

SD15_UNET = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.6.0",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": DOWN_BLOCKS,
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": UP_BLOCKS,
}

SD21_UNET = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.10.0.dev0",
    "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 1024,
    "down_block_types": DOWN_BLOCKS,
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "sample_size": 96,
    "up_block_types": UP_BLOCKS,
    "upcast_attention": True,
    "use_linear_projection": True,
}


def vae_config(diffusers_version: str, sample_size: int) -> dict:
    return {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": diffusers_version,
        "act_fn": "silu",
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": sample_size,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
    }


def text_config(name_or_path: str, version: str, hidden: int, layers: int, heads: int, intermediate: int, act: str, projection: int) -> dict:
    return {
        "_name_or_path": name_or_path,
        "architectures": ["CLIPTextModel"],
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": 2,
        "hidden_act": act,
        "hidden_size": hidden,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": intermediate,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "model_type": "clip_text_model",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "pad_token_id": 1,
        "projection_dim": projection,
        "torch_dtype": "float32",
        "transformers_version": version,
        "vocab_size": 49408,
    }


SCHEDULER_COMMON = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}


def model_index(scheduler: str, diffusers_version: str) -> dict:
    # The hub folders also name a safety checker and feature extractor; this folder
    # has neither, so they are null (as in tests/fixtures).
    return {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers_version,
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", scheduler],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


MODELS = {
    "sd15": {
        "seed": 15_000,
        "index": model_index("PNDMScheduler", "0.6.0"),
        "scheduler": {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", **SCHEDULER_COMMON},
        # CLIP ViT-L/14's text tower.
        "text_encoder": text_config("openai/clip-vit-large-patch14", "4.22.0.dev0", 768, 12, 12, 3072, "quick_gelu", 768),
        "tokenizer": (TOKENIZER_DIR, TOKENIZER_DIR),
        "unet": SD15_UNET,
        "vae": vae_config("0.6.0", 512),
    },
    "sd21": {
        "seed": 21_000,
        "index": model_index("DDIMScheduler", "0.10.0.dev0"),
        "scheduler": {
            "_class_name": "DDIMScheduler",
            "_diffusers_version": "0.8.0",
            **SCHEDULER_COMMON,
            "prediction_type": "v_prediction",
        },
        # OpenCLIP ViT-H/14's text tower as diffusers stores it: 23 of its 24 layers
        # (SD 2 conditions on the penultimate layer).
        "text_encoder": text_config("hf-models/stable-diffusion-v2-768x768/text_encoder", "4.25.0.dev0", 1024, 23, 16, 4096, "gelu", 512),
        # SD 2.x pads with "!" (id 0).
        "tokenizer": (TOKENIZER_DIR, SD2_TOKENIZER_DIR),
        "unet": SD21_UNET,
        "vae": vae_config("0.10.0.dev0", 768),
    },
}

# ------------------------------------------------------------------------- utils


def log(*a):
    print(*a, flush=True)


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Seeded weights that keep activations in a sane range through the whole network:
    matrices, conv kernels and embeddings N(0, 1/fan_in) (unit-variance outputs for
    unit-variance inputs), norm scales 1 + 0.2 N(0, 1) and biases 0.1 N(0, 1), so a
    missing bias or a swapped gamma/beta shows (as in tests/fixtures/generate.py)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if p.ndim == 1:
                r = torch.randn(p.shape, generator=g)
                p.copy_(1.0 + 0.2 * r if name.endswith("weight") else 0.1 * r)
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))


def save_component(model, folder: Path, config: dict, seed: int) -> None:
    """save_pretrained (fp32 safetensors), then the hub's config.json in place of the
    one the library writes, so loaders meet the real file with its omitted defaults."""
    randomize_(model, seed)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    model.save_pretrained(folder, safe_serialization=True)
    write_json(folder / "config.json", config)


def build_folder(name: str, spec: dict, root: Path) -> Path:
    folder = root / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    write_json(folder / "model_index.json", spec["index"])
    (folder / "scheduler").mkdir()
    write_json(folder / "scheduler" / "scheduler_config.json", spec["scheduler"])

    vocab_dir, config_dir = spec["tokenizer"]
    (folder / "tokenizer").mkdir()
    for file in ("vocab.json", "merges.txt"):
        shutil.copy(vocab_dir / file, folder / "tokenizer" / file)
    for file in ("tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(config_dir / file, folder / "tokenizer" / file)

    seed = spec["seed"]
    log(f"{name}: text_encoder")
    te = CLIPTextModel(CLIPTextConfig.from_dict(spec["text_encoder"]))
    save_component(te, folder / "text_encoder", spec["text_encoder"], seed + 1)
    del te
    gc.collect()
    log(f"{name}: unet")
    unet = UNet2DConditionModel.from_config(spec["unet"])
    save_component(unet, folder / "unet", spec["unet"], seed + 2)
    del unet
    gc.collect()
    log(f"{name}: vae")
    vae = AutoencoderKL.from_config(spec["vae"])
    save_component(vae, folder / "vae", spec["vae"], seed + 3)
    del vae
    gc.collect()
    return folder


def timed(fn):
    start = time.perf_counter()
    with torch.no_grad():
        out = fn()
    return out, time.perf_counter() - start


def summary(name: str, t: torch.Tensor) -> None:
    t = t.float()
    assert torch.isfinite(t).all(), f"{name} has NaN/Inf"
    assert t.std() > 0, f"{name} is constant"
    log(f"  {name:28s} {list(t.shape)!s:20s} max|v| {t.abs().max():.4g}  std {t.std():.4g}")


def references(name: str, spec: dict, folder: Path, out_file: Path) -> None:
    """Reloads every component from the folder (as a user would) and records one text
    encoding, one UNet evaluation and one VAE decode, each with its wall time."""
    g = torch.Generator().manual_seed(spec["seed"])
    tensors, times = {}, {}

    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    prompts = [NEGATIVE_PROMPT, PROMPT]  # the guidance batch: [uncond, cond]
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    te = CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=torch.float32).eval()
    hidden, times["text"] = timed(lambda: te(ids).last_hidden_state)
    tensors["text.tokens"] = ids.to(torch.int64)
    tensors["text.hidden"] = hidden
    del te
    gc.collect()

    unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=torch.float32).eval()
    latents = torch.randn((1, 4, LATENT_SIZE, LATENT_SIZE), generator=g)
    sample = torch.cat([latents, latents])  # what the pipeline feeds with guidance
    prediction, times["unet"] = timed(lambda: unet(sample, TIMESTEP, encoder_hidden_states=hidden).sample)
    tensors["unet.sample"] = sample
    tensors["unet.encoder_hidden_states"] = hidden.clone()  # its own storage in the file
    tensors["unet.out"] = prediction
    del unet
    gc.collect()

    vae = AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=torch.float32).eval()
    z = torch.randn((1, 4, LATENT_SIZE, LATENT_SIZE), generator=g)
    image, times["vae"] = timed(lambda: vae.decode(z).sample)
    tensors["vae.latents"] = z
    tensors["vae.image"] = image
    del vae
    gc.collect()

    for key, value in tensors.items():
        summary(key, value)
    log("  diffusers wall time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
    metadata = {
        "generator": "tests/fullsize/make_models.py",
        "model": name,
        "prompts": json.dumps(prompts),
        "unet.timestep": str(TIMESTEP),
        "threads": str(torch.get_num_threads()),
        "version.torch": torch.__version__,
        "version.diffusers": diffusers.__version__,
        "version.transformers": transformers.__version__,
        "version.python": sys.version.split()[0],
        **{f"time.{k}": f"{v:.2f}" for k, v in times.items()},
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out_file), metadata=metadata)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/work/fullsize"), help="where the folders go (outside the repo)")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    parser.add_argument("--references-only", action="store_true", help="reuse existing folders, redo the outputs")
    parser.add_argument("--folders-only", action="store_true", help="write the model folders, skip the reference outputs (for benchmarks)")
    args = parser.parse_args()
    if args.out.resolve().is_relative_to(REPO):
        sys.exit(f"{args.out} is inside the repository; the folders are gigabytes")
    args.out.mkdir(parents=True, exist_ok=True)
    log(f"torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads")
    for name in args.models:
        spec = MODELS[name]
        torch.manual_seed(spec["seed"])  # the libraries' own initialisation, overwritten anyway
        start = time.perf_counter()
        folder = args.out / name if args.references_only else build_folder(name, spec, args.out)
        if args.folders_only:
            log(f"{name}: folder ready in {time.perf_counter() - start:.0f} s")
            continue
        log(f"{name}: folder ready in {time.perf_counter() - start:.0f} s, references")
        references(name, spec, folder, args.out / f"{name}.safetensors")
        log(f"{name}: done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
