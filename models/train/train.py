"""Trains the embedded default model: `python train.py STAGE... --workdir W [--outdir O]`.

Stages, in order: vae, decoder (the VAE decoder fine-tuned alone: the latents stay as they are), unet (text
encoder + UNet), lcm (latent consistency distillation), export (diffusers folders), samples (a PNG grid of both
pipelines). `--init unet=FOLDER` continues the text encoder and UNet of an exported pipeline instead of starting
fresh (the workdir's VAE must then be that pipeline's), `--init lcm=FOLDER` the student of an exported LCM
pipeline. Each training stage stops at --budget-seconds or --max-steps, whichever comes first, checkpoints into
the workdir and resumes from there when rerun. With --outdir, the returnable files (package.py) are refreshed there
after every stage, so a late failure keeps earlier results.
"""

import argparse
import copy
import sys
import time
import traceback
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

import architecture
import diffusion
import loop
import package
import shapes

TOKENIZER_DIR = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "tokenizer"
STAGES = ["vae", "decoder", "unet", "lcm", "export", "samples"]
DATA_STREAM = {"vae": 1, "unet": 2, "lcm": 3, "scaling": 4, "decoder": 6}  # 5: lcm_lora.py

DEFAULTS = {
    # batch, learning rate, warmup steps, max steps, budget seconds
    "vae": dict(batch=128, lr=4e-4, warmup=100, max_steps=20000, budget_seconds=60),
    "decoder": dict(batch=128, lr=2e-4, warmup=50, max_steps=20000, budget_seconds=60),
    "unet": dict(batch=256, lr=5e-4, warmup=200, max_steps=50000, budget_seconds=270),
    "lcm": dict(batch=256, lr=1e-4, warmup=50, max_steps=20000, budget_seconds=100),
}
VAE_KL_WEIGHT = 1e-5  # per-pixel-mean reconstruction, KL summed per image: LDM's 1e-6 scale, a little firmer
VAE_EDGE_WEIGHT = 0.5
CAPTION_DROPOUT = 0.1
UNET_EMA_DECAY = 0.999
LCM_TARGET_DECAY = 0.95
SCALING_BATCHES = 8


def tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(TOKENIZER_DIR)


def token_ids(tok: CLIPTokenizer, texts: list, dev) -> torch.Tensor:
    return tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids.to(dev)


def frozen(module: torch.nn.Module, dev) -> torch.nn.Module:
    return module.to(dev).eval().requires_grad_(False)


def reconstruction_loss(recon: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """L1 + L2 + L1 of the error's image gradients (which keeps edges and corners sharp)."""
    error = recon - images
    edges = (error[..., 1:, :] - error[..., :-1, :]).abs().mean() + (error[..., :, 1:] - error[..., :, :-1]).abs().mean()
    return error.abs().mean() + (error**2).mean() + VAE_EDGE_WEIGHT * edges


def stage_vae(args, dev, workdir: Path):
    hp = args.hp["vae"]
    vae = architecture.build_vae(args.latent_channels, args.vae_layers).to(dev)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=hp["lr"], betas=(0.9, 0.99), weight_decay=0.0)

    def loss_fn(step):
        images, _, _ = shapes.batch(hp["batch"], args.seed * 10 + DATA_STREAM["vae"], step, dev)
        noise_generator = loop.step_generator(dev, args.seed, "vae", step)
        with loop.autocast(dev):
            posterior = vae.encode(images).latent_dist
            recon = vae.decode(posterior.sample(generator=noise_generator)).sample.float()
        kl = posterior.kl().float().mean() / images[0].numel()
        return reconstruction_loss(recon, images) + VAE_KL_WEIGHT * kl

    info = {"batch": hp["batch"], "latent_channels": args.latent_channels, "layers_per_block": args.vae_layers}
    loop.train("vae", workdir, {"vae": vae}, optimizer, loss_fn, args.budget("vae"), hp["lr"], hp["warmup"], info=info)

    # SD's convention: scaling_factor = 1 / std of the encoder's sampled latents.
    latents = sampled_latents(vae, hp["batch"], args.seed, dev)
    images, _, _ = shapes.batch(hp["batch"], args.seed * 10 + DATA_STREAM["scaling"], SCALING_BATCHES - 1, dev)
    with torch.no_grad(), loop.autocast(dev):
        recon_error = (vae.decode(latents[-hp["batch"] :]).sample.float() - images).abs().mean().item()
    scaling_factor = 1.0 / latents.std().item()
    vae.register_to_config(scaling_factor=scaling_factor)
    vae.save_pretrained(workdir / "vae", safe_serialization=True)
    loop.update_train_log(
        workdir,
        "vae_scaling",
        {"scaling_factor": scaling_factor, "latent_mean": latents.mean().item(), "latent_std": latents.std().item(), "held_out_l1": recon_error},
    )
    print(f"[vae] scaling_factor {scaling_factor:.5f}, L1 on fresh images {recon_error:.4f}", flush=True)


def stage_decoder(args, dev, workdir: Path):
    """More training for the decoder alone. The encoder, its latents and scaling_factor stay as they are, so a UNet
    trained on this VAE's latents keeps working with the fine-tuned decoder. With --widen-latents the VAE first gets
    more latent channels (architecture.widen_latents: the old ones stay exact) whose encoder rows train too."""
    hp = args.hp["decoder"]
    vae = AutoencoderKL.from_pretrained(workdir / "vae")
    if args.decoder_layers is not None and args.decoder_layers != vae.config.layers_per_block:
        vae = architecture.deepen_vae(vae, args.decoder_layers)
    old_channels, restore = vae.config.latent_channels, None
    if args.widen_latents is not None and args.widen_latents != old_channels:
        images, _, _ = shapes.batch(hp["batch"], args.seed * 10 + DATA_STREAM["scaling"], 0, torch.device("cpu"))
        with torch.no_grad():
            old_logvar = vae.encode(images).latent_dist.logvar.mean().item()
        vae, restore = architecture.widen_latents(vae, args.widen_latents, old_logvar)
    vae = vae.to(dev)
    vae.encoder.requires_grad_(False)
    vae.quant_conv.requires_grad_(restore is not None)
    vae.encoder.conv_out.requires_grad_(restore is not None)
    trained = [p for p in vae.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=hp["lr"], betas=(0.9, 0.99), weight_decay=0.0)

    def loss_fn(step):
        images, _, _ = shapes.batch(hp["batch"], args.seed * 10 + DATA_STREAM["decoder"], step, dev)
        generator = loop.step_generator(dev, args.seed, "decoder", step)
        with torch.set_grad_enabled(restore is not None), loop.autocast(dev):
            latents = vae.encode(images).latent_dist.sample(generator=generator)
        with loop.autocast(dev):
            recon = vae.decode(latents).sample.float()
        return reconstruction_loss(recon, images)

    info = {"batch": hp["batch"], "layers_per_block": vae.config.layers_per_block, "latent_channels": vae.config.latent_channels}
    after_step = None if restore is None else (lambda step: restore())
    loop.train("decoder", workdir, {"vae": vae}, optimizer, loss_fn, args.budget("decoder"), hp["lr"], hp["warmup"], after_step=after_step, info=info)
    if restore is not None:
        rescale_added_latents(vae, old_channels, hp["batch"], args.seed, dev, workdir)
    vae.save_pretrained(workdir / "vae", safe_serialization=True)


def sampled_latents(vae: AutoencoderKL, batch: int, seed: int, dev) -> torch.Tensor:
    """The encoder's sampled latents of SCALING_BATCHES fresh batches (unscaled)."""
    latents = []
    with torch.no_grad():
        for index in range(SCALING_BATCHES):
            images, _, _ = shapes.batch(batch, seed * 10 + DATA_STREAM["scaling"], index, dev)
            generator = loop.step_generator(dev, seed, "scaling", index)
            with loop.autocast(dev):
                latents.append(vae.encode(images).latent_dist.sample(generator=generator).float())
    return torch.cat(latents)


def rescale_added_latents(vae: AutoencoderKL, old_channels: int, batch: int, seed: int, dev, workdir: Path):
    """The added channels rescaled to the old ones' spread, so the config's one scaling_factor fits them all."""
    latents = sampled_latents(vae, batch, seed, dev)
    added = latents[:, old_channels:].transpose(0, 1).flatten(1)
    mean, std = added.mean(dim=1), added.std(dim=1)
    target = latents[:, :old_channels].std().item()
    architecture.normalise_added_latents(vae, old_channels, mean.cpu(), std.cpu(), target)
    after = sampled_latents(vae, batch, seed, dev)[:, old_channels:].transpose(0, 1).flatten(1)
    entry = {"old_std": target, "added_mean": mean.tolist(), "added_std": std.tolist(), "added_std_after": after.std(dim=1).tolist()}
    loop.update_train_log(workdir, "widened_latents", entry)
    print(f"[decoder] added latent channels: mean {mean.tolist()}, std {std.tolist()} -> {entry['added_std_after']}", flush=True)


def stage_unet(args, dev, workdir: Path):
    hp = args.hp["unet"]
    vae = frozen(AutoencoderKL.from_pretrained(workdir / "vae"), dev)
    scaling_factor = vae.config.scaling_factor
    tok = tokenizer()
    if "unet" in args.init:
        text_encoder = CLIPTextModel.from_pretrained(args.init["unet"] / "text_encoder").to(dev)
        unet = UNet2DConditionModel.from_pretrained(args.init["unet"] / "unet")
        if unet.config.in_channels != vae.config.latent_channels:
            unet = architecture.widen_unet(unet, vae.config.latent_channels)
        unet = unet.to(dev)
    else:
        text_encoder = architecture.build_text_encoder().to(dev)
        unet = architecture.build_unet(vae.config.latent_channels).to(dev)
    params = list(text_encoder.parameters()) + list(unet.parameters())
    optimizer = torch.optim.AdamW(params, lr=hp["lr"], betas=(0.9, 0.999), weight_decay=1e-2)
    emas = {"text_encoder": loop.Ema(text_encoder, UNET_EMA_DECAY), "unet": loop.Ema(unet, UNET_EMA_DECAY)}
    scheduler = diffusion.noise_scheduler()
    alphas_cumprod = scheduler.alphas_cumprod.to(dev)

    def loss_fn(step):
        images, captions, _ = shapes.batch(hp["batch"], args.seed * 10 + DATA_STREAM["unet"], step, dev)
        caption_generator = loop.step_generator(torch.device("cpu"), args.seed, "unet-captions", step)
        dropped = (torch.rand(len(captions), generator=caption_generator) < CAPTION_DROPOUT).tolist()
        ids = token_ids(tok, ["" if drop else c for c, drop in zip(captions, dropped)], dev)
        generator = loop.step_generator(dev, args.seed, "unet", step)
        with torch.no_grad(), loop.autocast(dev):
            latents = vae.encode(images).latent_dist.sample(generator=generator).float() * scaling_factor
        noise = torch.randn(latents.shape, generator=generator, device=dev)
        timesteps = torch.randint(0, diffusion.TRAIN_TIMESTEPS, (latents.shape[0],), generator=generator, device=dev)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        with loop.autocast(dev):
            context = text_encoder(ids).last_hidden_state
            prediction = unet(noisy, timesteps, context).sample.float()
        per_sample = ((prediction - noise) ** 2).mean(dim=(1, 2, 3))
        return (per_sample * diffusion.min_snr_weight(alphas_cumprod, timesteps, args.min_snr_gamma)).mean()

    loop.train(
        "unet",
        workdir,
        {"text_encoder": text_encoder, "unet": unet},
        optimizer,
        loss_fn,
        args.budget("unet"),
        hp["lr"],
        hp["warmup"],
        emas=emas,
        params_to_clip=params,
        info={
            "batch": hp["batch"],
            "ema_decay": UNET_EMA_DECAY,
            "caption_dropout": CAPTION_DROPOUT,
            "min_snr_gamma": args.min_snr_gamma,
            "init": str(args.init["unet"]) if "unet" in args.init else None,
        },
    )
    emas["text_encoder"].shadow.save_pretrained(workdir / "text_encoder", safe_serialization=True)
    emas["unet"].shadow.save_pretrained(workdir / "unet", safe_serialization=True)


def stage_lcm(args, dev, workdir: Path):
    hp = args.hp["lcm"]
    vae = frozen(AutoencoderKL.from_pretrained(workdir / "vae"), dev)
    scaling_factor = vae.config.scaling_factor
    tok = tokenizer()
    text_encoder = frozen(CLIPTextModel.from_pretrained(workdir / "text_encoder"), dev)
    teacher = frozen(UNet2DConditionModel.from_pretrained(workdir / "unet"), dev)
    if "lcm" in args.init:
        student = UNet2DConditionModel.from_pretrained(args.init["lcm"] / "unet").to(dev).train().requires_grad_(True)
    else:
        student = architecture.build_lcm_student(teacher, args.lcm_guidance_init).to(dev).train().requires_grad_(True)
    target = copy.deepcopy(student).eval().requires_grad_(False)  # the EMA target network, fixed decay
    optimizer = torch.optim.AdamW(student.parameters(), lr=hp["lr"], betas=(0.9, 0.999), weight_decay=1e-2)
    lcm = diffusion.ConsistencyDistillation(dev, args.lcm_w_range)
    with torch.no_grad(), loop.autocast(dev):
        uncond = text_encoder(token_ids(tok, [""], dev)).last_hidden_state

    def loss_fn(step):
        images, captions, _ = shapes.batch(hp["batch"], args.seed * 10 + DATA_STREAM["lcm"], step, dev)
        generator = loop.step_generator(dev, args.seed, "lcm", step)
        with torch.no_grad(), loop.autocast(dev):
            context = text_encoder(token_ids(tok, captions, dev)).last_hidden_state
            latents = vae.encode(images).latent_dist.sample(generator=generator).float() * scaling_factor
        draw = lcm.draw(latents, generator)
        w_embedding = diffusion.guidance_scale_embedding(draw.w, architecture.LCM_GUIDANCE_EMBEDDING)

        with loop.autocast(dev):
            eps = student(draw.noisy, draw.start, timestep_cond=w_embedding, encoder_hidden_states=context).sample.float()
        prediction = lcm.student_x0(eps, draw)

        with torch.no_grad():
            with loop.autocast(dev):
                both = teacher(
                    torch.cat([draw.noisy, draw.noisy]), torch.cat([draw.start, draw.start]), torch.cat([context, uncond.expand_as(context)])
                ).sample.float()
            x_prev = lcm.teacher_step(both, draw)
            with loop.autocast(dev):
                target_eps = target(x_prev, draw.previous, timestep_cond=w_embedding, encoder_hidden_states=context).sample.float()
            goal = lcm.target_x0(target_eps, x_prev, draw)
        return diffusion.huber(prediction, goal)

    def update_target(step):
        with torch.no_grad():
            for shadow, live in zip(target.parameters(), student.parameters()):
                shadow.lerp_(live.detach(), 1 - LCM_TARGET_DECAY)

    loop.train(
        "lcm",
        workdir,
        {"student": student},
        optimizer,
        loss_fn,
        args.budget("lcm"),
        hp["lr"],
        hp["warmup"],
        companions={"target": target},
        after_step=update_target,
        params_to_clip=list(student.parameters()),
        info={
            "batch": hp["batch"],
            "w_range": lcm.w_range,
            "guidance_init": args.lcm_guidance_init,
            "target_decay": LCM_TARGET_DECAY,
            "huber_c": diffusion.LCM_HUBER_C,
            "init": str(args.init["lcm"]) if "lcm" in args.init else None,
        },
    )
    target.save_pretrained(workdir / "lcm_unet", safe_serialization=True)


def stage_export(args, dev, workdir: Path):
    import export

    export.export_pipelines(workdir, workdir / "export", TOKENIZER_DIR)


def stage_samples(args, dev, workdir: Path):
    import export

    prompts = export.sample_grid(workdir / "export", workdir / "samples.png", dev, args.seed)
    loop.update_train_log(workdir, "samples", prompts)


RUNNERS = {"vae": stage_vae, "decoder": stage_decoder, "unet": stage_unet, "lcm": stage_lcm, "export": stage_export, "samples": stage_samples}
NEEDS = {"vae": [], "decoder": ["vae"], "unet": ["vae"], "lcm": ["vae", "text_encoder", "unet"], "export": ["vae", "text_encoder", "unet"], "samples": ["export/embedded"]}


def per_stage(text: str | None, cast) -> dict:
    """'70' applies to every stage; 'vae=70,unet=290' to the stages named."""
    if text is None:
        return {}
    if "=" not in text:
        return {stage: cast(text) for stage in DEFAULTS}
    return {name.strip(): cast(value) for name, value in (item.split("=") for item in text.split(","))}


def w_range(text: str) -> tuple:
    """'LOW,HIGH' of the LCM teacher's guidance w."""
    low, high = (float(value) for value in text.split(","))
    if not 0 <= low <= high:
        raise argparse.ArgumentTypeError(f"want 0 <= LOW <= HIGH, got {text}")
    return low, high


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stages", nargs="+", choices=STAGES)
    parser.add_argument("--workdir", type=Path, required=True, help="checkpoints, stage outputs, train_log.json")
    parser.add_argument("--outdir", type=Path, help="refresh the returnable files here after every stage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", help="batch size: one number, or stage=N,...")
    parser.add_argument("--lr", help="learning rate: one number, or stage=X,...")
    parser.add_argument("--warmup", help="warmup steps: one number, or stage=N,...")
    parser.add_argument("--max-steps", help="one number, or stage=N,...")
    parser.add_argument("--budget-seconds", help="one number, or stage=S,...")
    parser.add_argument("--init", help="unet=FOLDER,lcm=FOLDER: continue the networks of exported pipelines")
    parser.add_argument("--lcm-guidance-init", choices=["zero", "default"], default="zero", help="the LCM student's guidance projection at the start: zero (the student starts as the teacher) or torch's Linear init (diffusers' script)")
    parser.add_argument("--latent-channels", type=int, default=architecture.LATENT_CHANNELS, help="the vae stage's latent channels (default %(default)s; the UNet takes the VAE's)")
    parser.add_argument("--vae-layers", type=int, default=1, help="the vae stage's resnets per block, encoder and decoder alike (default %(default)s)")
    parser.add_argument("--min-snr-gamma", type=float, default=5.0, help="the unet stage's Min-SNR-gamma loss weighting (default %(default)s; larger weighs the low-noise steps, where fine shapes form, more)")
    parser.add_argument("--decoder-layers", type=int, help="the decoder stage first deepens the VAE to this many resnets per block (architecture.deepen_vae; the encoder's latents stay exact)")
    parser.add_argument("--widen-latents", type=int, help="the decoder stage first gives the VAE this many latent channels (architecture.widen_latents: the old ones stay exact, the added ones' encoder rows train with the decoder); the unet stage then widens a continued UNet to match")
    parser.add_argument("--cpu-bf16", action="store_true", help="bf16 autocast on the CPU as on CUDA (about 1.3x faster where the CPU has AVX512-BF16)")
    parser.add_argument("--lcm-w-range", type=w_range, default=diffusion.LCM_W_RANGE, help="LOW,HIGH: the teacher's guidance w (guidance_scale - 1) drawn uniformly; default %(default)s")
    args = parser.parse_args()
    args.init = {stage: Path(folder) for stage, folder in per_stage(args.init, str).items()}
    if set(args.init) - {"unet", "lcm"}:
        parser.error(f"--init takes unet=FOLDER and lcm=FOLDER only, not {sorted(set(args.init) - {'unet', 'lcm'})}")
    if "lcm" in args.init and args.lcm_guidance_init != "zero":
        parser.error("--lcm-guidance-init starts a new student; --init lcm=FOLDER continues one")

    overrides = {
        "batch": per_stage(args.batch, int),
        "lr": per_stage(args.lr, float),
        "warmup": per_stage(args.warmup, int),
        "max_steps": per_stage(args.max_steps, int),
        "budget_seconds": per_stage(args.budget_seconds, float),
    }
    args.hp = {stage: {key: overrides[key].get(stage, value) for key, value in hp.items()} for stage, hp in DEFAULTS.items()}
    args.budget = lambda stage: loop.Budget(args.hp[stage]["max_steps"], args.hp[stage]["budget_seconds"])

    dev = loop.start(args.seed, args.workdir, cpu_bf16=args.cpu_bf16)
    loop.update_train_log(
        args.workdir,
        "environment",
        {
            "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "seed": args.seed,
            "autocast": "bf16" if loop.autocasts(dev) else "fp32",
            "hyperparameters": args.hp,
        },
    )
    failed = []
    for stage in args.stages:
        missing = [need for need in NEEDS[stage] if not (args.workdir / need).exists()]
        if missing:
            print(f"[{stage}] skipped: missing {missing}", flush=True)
            failed.append(stage)
            continue
        start = time.perf_counter()
        try:
            RUNNERS[stage](args, dev, args.workdir)
        except Exception:
            traceback.print_exc()
            loop.update_train_log(args.workdir, f"{stage}_error", {"traceback": traceback.format_exc()})
            failed.append(stage)
        print(f"[{stage}] wall {time.perf_counter() - start:.1f} s", flush=True)
        if args.outdir is not None:
            package.collect(args.workdir, args.outdir)
    if failed:
        print(f"failed or skipped stages: {failed}", flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
