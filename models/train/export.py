"""Diffusers folders of the trained model (txt2img and LCM) and a sample grid of both."""

import shutil
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DPMSolverMultistepScheduler,
    LatentConsistencyModelPipeline,
    LCMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextModel, CLIPTokenizer

import diffusion

TXT2IMG_STEPS, TXT2IMG_GUIDANCE = 20, 7.5
LCM_STEPS, LCM_GUIDANCE = 4, 6.0

SAMPLE_PROMPTS = [
    "a large red circle at the center on a white background",
    "a small yellow star at the top left on a dark blue background",
    "a large blue square at the bottom right on a light yellow background",
    "a large green ring at the left and a small orange triangle at the right on a black background",
    "a large purple cross at the top on a light green checkered background",
    "a large pink diamond at the bottom on a gray striped background",
    "a large red star at the center on a white background",  # held out: red star
    "a large blue ring at the center on a light yellow background",  # held out: blue ring
]


def _scheduler_betas() -> dict:
    return dict(
        num_train_timesteps=diffusion.TRAIN_TIMESTEPS,
        beta_start=diffusion.BETA_START,
        beta_end=diffusion.BETA_END,
        beta_schedule=diffusion.BETA_SCHEDULE,
        prediction_type="epsilon",
    )


def txt2img_scheduler() -> DPMSolverMultistepScheduler:
    return DPMSolverMultistepScheduler(**_scheduler_betas(), algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="linspace", steps_offset=1)


def lcm_scheduler() -> LCMScheduler:
    return LCMScheduler(
        **_scheduler_betas(),
        original_inference_steps=diffusion.LCM_DDIM_STEPS,
        timestep_scaling=diffusion.LCM_TIMESTEP_SCALING,
        set_alpha_to_one=True,
        steps_offset=1,
        timestep_spacing="leading",
    )


def _sd1_tokenizer_files(folder: Path, tokenizer_dir: Path):
    """SD 1.x folders ship vocab.json + merges.txt; transformers 5 would save only tokenizer.json."""
    shutil.rmtree(folder / "tokenizer")
    shutil.copytree(tokenizer_dir, folder / "tokenizer")


def export_pipelines(workdir: Path, out_root: Path, tokenizer_dir: Path):
    """workdir/{vae,text_encoder,unet[,lcm_unet]} -> out_root/embedded[, out_root/embedded-lcm], fp32 safetensors."""
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    vae = AutoencoderKL.from_pretrained(workdir / "vae", torch_dtype=torch.float32)
    text_encoder = CLIPTextModel.from_pretrained(workdir / "text_encoder", torch_dtype=torch.float32)
    unet = UNet2DConditionModel.from_pretrained(workdir / "unet", torch_dtype=torch.float32)
    common = dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    StableDiffusionPipeline(unet=unet, scheduler=txt2img_scheduler(), **common).save_pretrained(out_root / "embedded", safe_serialization=True)
    _sd1_tokenizer_files(out_root / "embedded", tokenizer_dir)
    print(f"[export] {out_root / 'embedded'}", flush=True)
    if (workdir / "lcm_unet").exists():
        lcm_unet = UNet2DConditionModel.from_pretrained(workdir / "lcm_unet", torch_dtype=torch.float32)
        LatentConsistencyModelPipeline(unet=lcm_unet, scheduler=lcm_scheduler(), image_encoder=None, **common).save_pretrained(
            out_root / "embedded-lcm", safe_serialization=True
        )
        _sd1_tokenizer_files(out_root / "embedded-lcm", tokenizer_dir)
        print(f"[export] {out_root / 'embedded-lcm'}", flush=True)


def sample_grid(out_root: Path, png: Path, dev, seed: int, prompts=SAMPLE_PROMPTS, upscale: int = 2) -> dict:
    """One row per pipeline (txt2img 20 steps, LCM 4 steps), one column per prompt; returns what was run."""
    from PIL import Image

    rows, runs = [], []
    for folder, cls, steps, guidance in [
        ("embedded", StableDiffusionPipeline, TXT2IMG_STEPS, TXT2IMG_GUIDANCE),
        ("embedded-lcm", LatentConsistencyModelPipeline, LCM_STEPS, LCM_GUIDANCE),
    ]:
        if not (out_root / folder).exists():
            continue
        pipe = cls.from_pretrained(out_root / folder).to(dev)
        pipe.set_progress_bar_config(disable=True)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        images = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=generator, height=64, width=64).images
        rows.append(images)
        runs.append({"folder": folder, "steps": steps, "guidance_scale": guidance})
    size = 64 * upscale
    grid = Image.new("RGB", (size * len(prompts), size * max(1, len(rows))), (255, 255, 255))
    for r, images in enumerate(rows):
        for c, image in enumerate(images):
            grid.paste(image.resize((size, size), Image.NEAREST), (c * size, r * size))
    grid.save(png)
    print(f"[samples] {png}", flush=True)
    return {"prompts": prompts, "rows": runs, "seed": seed}
