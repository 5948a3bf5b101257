"""The evaluation prompts through diffusers instead of the engine: quick sampler and guidance sweeps.

    python diffusers_sheet.py --model ../train/out/embedded --steps 4 --guidance 1 --scheduler lcm --out /tmp/s.png
    webdiffusion-eval --score-sheet /tmp/s.png

Generates every prompt of prompts.json for seeds 0 and 1 (or `--seeds`; each image from its own CPU generator
seeded as the engine seeds it) with the folder's pipeline in f32 on the CPU, about 170 times faster than the engine on a
CPU Vulkan driver, and lays the images out as ground_truth.png, so `webdiffusion-eval --score-sheet` scores them
with the same analyser. `--decoder-vae` decodes the final latents with another VAE (one whose encoder is the
same, e.g. a fine-tuned decoder); `--lora` loads a LoRA file (e.g. models/lcm-lora's) by diffusers' reader.
The engine matches diffusers (tests/embedded.rs; `compare_sheets.py`: the engine's q8 images of the committed models
are 52 to 53 dB from these on average), so a sheet reads as the engine's images do: 81.8% shapes on seen prompts for
the 20-step model's seed 0 by both.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from diffusers import (AutoencoderKL, DDIMScheduler, DiffusionPipeline, DPMSolverMultistepScheduler,
                       EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler, LCMScheduler,
                       UniPCMultistepScheduler)

import sheet

# Each made from the folder's scheduler config (its betas; the class's defaults for the rest), as the engine's
# `--scheduler` names them.
SCHEDULERS = {
    "lcm": lambda config: LCMScheduler.from_config(config),
    "ddim": lambda config: DDIMScheduler.from_config(config),
    "euler": lambda config: EulerDiscreteScheduler.from_config(config),
    "euler-a": lambda config: EulerAncestralDiscreteScheduler.from_config(config),
    "heun": lambda config: HeunDiscreteScheduler.from_config(config),
    "unipc": lambda config: UniPCMultistepScheduler.from_config(config),
    "dpm++2m-karras": lambda config: DPMSolverMultistepScheduler.from_config(config, use_karras_sigmas=True),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a diffusers pipeline folder")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--guidance", type=float, required=True)
    parser.add_argument("--scheduler", choices=["own", *SCHEDULERS], default="own", help="own: the folder's scheduler")
    parser.add_argument("--decoder-vae", type=Path, help="decode with this AutoencoderKL folder instead")
    parser.add_argument("--lora", type=Path, help="load this LoRA file (kohya or diffusers layout) into the pipeline first")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                        help="tile t is prompt t %% 64 with the (t // 64)th of these seeds; `webdiffusion-eval --seeds 2` uses 0 1")
    parser.add_argument("--out", type=Path, required=True, help="the sheet (PNG)")
    args = parser.parse_args()

    prompts = [p["prompt"] for p in json.loads((sheet.HERE / "prompts.json").read_text())["prompts"]]
    pipe = DiffusionPipeline.from_pretrained(args.model, safety_checker=None)
    if args.lora:
        pipe.load_lora_weights(args.lora)
    if args.scheduler != "own":
        pipe.scheduler = SCHEDULERS[args.scheduler](pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    vae = AutoencoderKL.from_pretrained(args.decoder_vae).eval() if args.decoder_vae else pipe.vae
    tiles = []
    with torch.no_grad():
        for seed in args.seeds:
            generators = [torch.Generator().manual_seed(seed) for _ in prompts]
            latents = pipe(prompts, num_inference_steps=args.steps, guidance_scale=args.guidance, generator=generators,
                           height=sheet.TILE, width=sheet.TILE, output_type="latent").images
            tiles.append(vae.decode(latents / vae.config.scaling_factor).sample.clamp(-1, 1).numpy())
    images = np.concatenate(tiles)
    sheet.write_tiles(images, args.out)
    print(f"wrote {args.out}: {len(images)} images")


if __name__ == "__main__":
    main()
