"""An LCM-LoRA for the embedded model: latent consistency distillation of a LoRA on the frozen teacher UNet.

    python lcm_lora.py train   --teacher out/embedded --workdir W --out ../lcm-lora/embedded-lcm-lora.safetensors
    python lcm_lora.py verify  --teacher out/embedded --workdir W --out ../lcm-lora/embedded-lcm-lora.safetensors
    python lcm_lora.py samples --teacher out/embedded --out ../lcm-lora/embedded-lcm-lora.safetensors --png ../lcm-lora/samples.png

As diffusers' examples/consistency_distillation/train_lcm_distill_lora_sd_wds.py: the student is the teacher plus
a LoRA and no guidance embedding; the teacher is the same UNet with its adapters disabled, guided (CFG) with w drawn
per sample from a range; one 50-step-grid DDIM step (skipping 20 timesteps) gives x_prev; the target is the student
itself at x_prev without gradients (LCM-LoRA keeps no EMA target); huber loss on the consistency-parameterised x0.
Training is seeded and resumable (loop.py: a rerun continues from W/lcm_lora.ckpt until the budget is spent).
The LoRA is saved in the kohya-ss layout of latent-consistency/lcm-lora-sdv1-5 (f16 `lora_unet_*.lora_down.weight`,
`.lora_up.weight`, `.alpha`), so every tool that reads that file reads this one.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel

import diffusion
import loop
import shapes
import train

STAGE = "lcm_lora"
DATA_STREAM = 5  # train.DATA_STREAM uses 1..4 and 6
# diffusers' LCM-LoRA targets: every attention projection, feed-forward linear, proj_in/out, resnet conv (3x3 and
# the 1x1 shortcut), down/upsampler conv and resnet time-embedding projection; plus the UNet's time-embedding MLP.
TARGET_MODULES = [
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "downsamplers.0.conv",
    "upsamplers.0.conv",
    "time_emb_proj",
    "time_embedding.linear_1",
    "time_embedding.linear_2",
]
# The released file: these, then resumed with --budget-seconds 2700 (README). Rank 8 of 64..96 channels is about the
# share of SD 1.5's rank 64 of 320..1280, and keeps the f16 file under 1 MB.
DEFAULTS = dict(rank=8, alpha=8, batch=16, lr=1e-3, warmup=20, max_steps=100_000, budget_seconds=900.0)
KOHYA_ROLES = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight"}


def load_teacher(folder: Path, dev):
    vae = train.frozen(AutoencoderKL.from_pretrained(folder / "vae"), dev)
    text_encoder = train.frozen(CLIPTextModel.from_pretrained(folder / "text_encoder"), dev)
    unet = train.frozen(UNet2DConditionModel.from_pretrained(folder / "unet"), dev)
    return vae, text_encoder, unet


def add_lora(unet: UNet2DConditionModel, rank: int, alpha: float) -> list:
    """Adds the LoRA adapter (PEFT, as the diffusers script) and returns its trainable parameters."""
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=TARGET_MODULES, init_lora_weights=True))
    params = [p for name, p in unet.named_parameters() if "lora_" in name]
    for p in params:
        p.requires_grad_(True)
    return params


def kohya_state_dict(unet: UNet2DConditionModel, alpha: float) -> dict:
    """PEFT's `down_blocks.0.attentions.0.proj_in.lora_A.weight` -> `lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight`,
    f16, with one `.alpha` scalar per module, as lcm-lora-sdv1-5 ships."""
    out = {}
    for key, tensor in get_peft_model_state_dict(unet).items():
        module, role = key.rsplit(".lora_", 1)
        stem = "lora_unet_" + module.replace(".", "_")
        out[f"{stem}.{KOHYA_ROLES['lora_' + role]}"] = tensor.detach().to(torch.float16).contiguous()
        out[f"{stem}.alpha"] = torch.tensor(float(alpha), dtype=torch.float16)
    return out


def run_train(args, dev):
    vae, text_encoder, unet = load_teacher(args.teacher, dev)
    params = add_lora(unet, args.rank, args.alpha)
    scaling_factor = vae.config.scaling_factor
    tok = train.tokenizer()
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), weight_decay=1e-2)
    lcm = diffusion.ConsistencyDistillation(dev, args.lcm_w_range)
    with torch.no_grad():
        uncond = text_encoder(train.token_ids(tok, [""], dev)).last_hidden_state

    def loss_fn(step):
        images, captions, _ = shapes.batch(args.batch, args.seed * 10 + DATA_STREAM, step, dev)
        generator = loop.step_generator(dev, args.seed, STAGE, step)
        with torch.no_grad(), loop.autocast(dev):
            context = text_encoder(train.token_ids(tok, captions, dev)).last_hidden_state
            latents = vae.encode(images).latent_dist.sample(generator=generator).float() * scaling_factor
        draw = lcm.draw(latents, generator)

        with loop.autocast(dev):
            eps = unet(draw.noisy, draw.start, encoder_hidden_states=context).sample.float()
        prediction = lcm.student_x0(eps, draw)

        with torch.no_grad():
            unet.disable_adapters()  # the teacher is the same UNet without its LoRA
            with loop.autocast(dev):
                both = unet(
                    torch.cat([draw.noisy, draw.noisy]), torch.cat([draw.start, draw.start]), torch.cat([context, uncond.expand_as(context)])
                ).sample.float()
            unet.enable_adapters()
            x_prev = lcm.teacher_step(both, draw)
            with loop.autocast(dev):
                target_eps = unet(x_prev, draw.previous, encoder_hidden_states=context).sample.float()
            goal = lcm.target_x0(target_eps, x_prev, draw)
        return diffusion.huber(prediction, goal)

    loop.train(
        STAGE,
        args.workdir,
        {"unet": unet},
        optimizer,
        loss_fn,
        loop.Budget(args.max_steps, args.budget_seconds),
        args.lr,
        args.warmup,
        params_to_clip=params,
        info={
            "teacher": str(args.teacher),
            "batch": args.batch,
            "rank": args.rank,
            "alpha": args.alpha,
            "lora_parameters": sum(p.numel() for p in params),
            "target_modules": TARGET_MODULES,
            "w_range": lcm.w_range,
            "huber_c": diffusion.LCM_HUBER_C,
            "threads": torch.get_num_threads(),
        },
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(kohya_state_dict(unet, args.alpha), args.out, metadata={"ss_network_dim": str(args.rank), "ss_network_alpha": str(args.alpha)})
    print(f"[{STAGE}] wrote {args.out} ({args.out.stat().st_size} bytes)", flush=True)


def run_verify(args, dev):
    """diffusers' own kohya reader loads the file into the teacher; its UNet must agree with the trained PEFT UNet
    (the file's names, layout and alpha all read as trained) up to the f16 rounding of the stored matrices."""
    from diffusers import StableDiffusionPipeline

    _, _, trained = load_teacher(args.teacher, dev)
    add_lora(trained, args.rank, args.alpha)
    state = torch.load(args.workdir / f"{STAGE}.ckpt", map_location="cpu", weights_only=False)
    trained.load_state_dict(state["modules"]["unet"])
    for name, p in trained.named_parameters():
        if "lora_" in name:  # the file stores f16: compare against the same rounding
            p.data = p.data.half().float()
    file = load_file(args.out)
    modules = {key.rsplit(".", 2)[0] if key.endswith(".weight") else key.rsplit(".", 1)[0] for key in file}
    pipe = StableDiffusionPipeline.from_pretrained(args.teacher, safety_checker=None).to(dev)
    pipe.load_lora_weights(str(args.out))
    loaded = sum(1 for name, _ in pipe.unet.named_modules() if name.endswith("lora_A.default_0") or name.endswith("lora_A.default"))
    generator = torch.Generator().manual_seed(args.seed)
    config = trained.config
    sample = torch.randn(2, config.in_channels, 16, 16, generator=generator)
    context = torch.randn(2, 77, config.cross_attention_dim, generator=generator)
    timesteps = torch.tensor([999, 259])
    base = UNet2DConditionModel.from_pretrained(args.teacher / "unet")
    with torch.no_grad():
        ours = trained(sample, timesteps, context).sample
        theirs = pipe.unet(sample, timesteps, context).sample
        teacher = base(sample, timesteps, context).sample
    error = (ours - theirs).abs().max().item()
    change = (ours - teacher).abs().max().item()
    report = {"file_modules": len(modules), "diffusers_loaded_modules": loaded, "max_abs_error": error, "lora_change": change}
    print(json.dumps(report), flush=True)
    if loaded != len(modules) or error > 1e-4 * max(1.0, change) or change < 1e-3:
        sys.exit(f"verify failed: {report}")


def run_samples(args, dev):
    """A PNG grid through diffusers, one row per run: teacher + LCM-LoRA with LCMScheduler.from_config(the teacher's
    scheduler) at 4 steps and guidance 1 (how LCM-LoRA is used), the teacher alone with the same sampler and steps at
    guidance 7.5, and the teacher's own 20-step DPM-Solver++ at guidance 7.5."""
    from diffusers import LCMScheduler, StableDiffusionPipeline
    from PIL import Image

    import export

    rows = []
    for lora, lcm, steps, guidance in [(True, True, 4, 1.0), (False, True, 4, 7.5), (False, False, export.TXT2IMG_STEPS, export.TXT2IMG_GUIDANCE)]:
        pipe = StableDiffusionPipeline.from_pretrained(args.teacher, safety_checker=None).to(dev)
        if lcm:
            pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
        if lora:
            pipe.load_lora_weights(str(args.out))
        pipe.set_progress_bar_config(disable=True)
        generator = torch.Generator().manual_seed(args.seed)
        rows.append(pipe(export.SAMPLE_PROMPTS, num_inference_steps=steps, guidance_scale=guidance, generator=generator, height=64, width=64).images)
    size = 128
    grid = Image.new("RGB", (size * len(export.SAMPLE_PROMPTS), size * len(rows)))
    for r, images in enumerate(rows):
        for c, image in enumerate(images):
            grid.paste(image.resize((size, size), Image.NEAREST), (c * size, r * size))
    grid.save(args.png)
    print(f"[samples] {args.png}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["train", "verify", "samples"])
    parser.add_argument("--teacher", type=Path, required=True, help="the diffusers folder of the embedded model")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/wd_lcm_lora"), help="checkpoint and train_log.json")
    parser.add_argument("--out", type=Path, required=True, help="the kohya-layout LoRA safetensors")
    parser.add_argument("--png", type=Path, help="samples: the grid to write")
    parser.add_argument("--seed", type=int, default=0)
    for name, value in DEFAULTS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--lcm-w-range", type=train.w_range, default=diffusion.LCM_W_RANGE, help="as train.py's")
    args = parser.parse_args()

    dev = loop.start(args.seed, args.workdir)
    {"train": run_train, "verify": run_verify, "samples": run_samples}[args.action](args, dev)


if __name__ == "__main__":
    main()
