"""The embedded models' preview decoder: a decoder-only diffusers `AutoencoderTiny` (TAESD's layout at a few
thousand parameters) trained to reproduce the VAE decoder's image from the same latents, so that a step preview costs
a few percent of a step instead of a whole VAE decode (no linear map reads this VAE's latents; see
docs/BENCHMARKS.md, Step previews). Both committed packages share the VAE, so they share this decoder.

Data: shapes.py images (stream PREVIEW_STREAM, apart from every training stage's), their latents as the sampler holds
them (the encoder's samples times scaling_factor) and the VAE's decode of those latents as the target, half of them
blended with the latents' own blurred copy, which is what a sampler's early clean estimates look like. The encoder
of the written model is left out: previews only decode.

The default decodes to half the image's resolution (two stages: three tiny blocks at the latents' 16x16, one 2x
upsample, two convs at 32x32; the page smooths it up): the image-sized stage of TAESD's layout, 16-channel convs over
64x64 pixels, cost three quarters of a preview on the emulated GPUs, and a previewer needs colours and layout, not
the last pixel. `--blocks 1,1,1` is the full-resolution layout the packages shipped before.

    python preview_decoder.py --vae out/embedded/vae --out out/preview_decoder
    (out/embedded from: python unpack_package.py ../embedded out/embedded)

Then `webdiffusion convert` takes the folder as the pipeline folder's `preview_decoder/` component (README, Packages).
Prints the held-out PSNR against the VAE's own decode and against the drawn images, beside a flat image of each
picture's mean colour (what the fitted linear map scores about).
"""

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, AutoencoderTiny
from safetensors.torch import save_file

import shapes

PREVIEW_STREAM = 7_000  # a data stream no training stage draws from
HELD_OUT_INDEX = 1_000_000  # batches from here on are never trained on
DATA_CHUNK = 128


def pairs(vae: AutoencoderKL, n: int, seed: int, index: int, blend: bool) -> tuple:
    """(latents as the sampler holds them, the VAE's decode of them, the drawn images) for batch `index`."""
    images, _, _ = shapes.batch(n, seed * 10 + PREVIEW_STREAM, index)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.sample(generator=generator)
        if blend:
            # Early clean estimates are soft: blend half the batch with a blurred copy of itself.
            soft = F.avg_pool2d(latents, 3, stride=1, padding=1, count_include_pad=False)
            amount = torch.rand(n, 1, 1, 1, generator=generator) * (torch.arange(n) % 2 == 0).view(n, 1, 1, 1)
            latents = latents + amount * (soft - latents)
        target = vae.decode(latents).sample.clamp(-1, 1)
    return latents * vae.config.scaling_factor, target, images


def dataset(vae: AutoencoderKL, count: int, seed: int, first_index: int, blend: bool) -> tuple:
    """`pairs` of batches first_index, first_index + 1, ... concatenated: the VAE's decode dominates a training
    step's cost many times over, so the targets are made once."""
    chunks = [pairs(vae, DATA_CHUNK, seed, first_index + i, blend) for i in range(count // DATA_CHUNK)]
    return tuple(torch.cat(parts) for parts in zip(*chunks))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Per-image PSNR on [-1, 1] images (peak 2), averaged."""
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp_min(1e-12)
    return float((10 * torch.log10(4 / mse)).mean())


def score(decoder: torch.nn.Module, vae: AutoencoderKL, seed: int, shrink: int) -> dict:
    """PSNR on 256 held-out latents, at the resolution 1/`shrink` of the image's (both sides area-averaged to it
    where the decoder's output is larger)."""
    latents, target, images = dataset(vae, 256, seed, HELD_OUT_INDEX, blend=False)
    target, images = F.avg_pool2d(target, shrink), F.avg_pool2d(images, shrink)
    with torch.no_grad():
        preview = decoder(latents / vae.config.scaling_factor).clamp(-1, 1)
    preview = F.avg_pool2d(preview, preview.shape[-1] // target.shape[-1])
    flat = target.mean(dim=(2, 3), keepdim=True).expand_as(target)
    return {
        "resolution": f"1/{shrink}",
        "psnr_vs_vae_decode": psnr(preview, target),
        "psnr_vs_image": psnr(preview, images),
        "vae_decode_psnr_vs_image": psnr(target, images),
        "flat_mean_colour_psnr_vs_vae_decode": psnr(flat, target),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae", type=Path, required=True, help="the model's diffusers AutoencoderKL folder")
    parser.add_argument("--out", type=Path, help="where the trained decoder goes")
    parser.add_argument(
        "--score", type=Path,
        help="instead of training, score this decoder folder at the resolution --blocks decodes to (to compare a "
        "decoder with one of fewer stages on equal terms)",
    )
    parser.add_argument("--width", type=int, default=16, help="channels of every decoder stage")
    parser.add_argument(
        "--blocks", default="3,0",
        help="tiny blocks per decoder stage; a 2x upsample between stages, so fewer stages than the VAE's 3 decode "
        "to a fraction of the image's resolution (the target is the VAE's decode area-averaged to it)",
    )
    parser.add_argument("--images", type=int, default=4096, help="training pairs, made once (a multiple of 128)")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    vae = AutoencoderKL.from_pretrained(args.vae).eval().requires_grad_(False)
    scaling = vae.config.scaling_factor
    blocks = tuple(int(b) for b in args.blocks.split(","))
    stages = (args.width,) * len(blocks)
    vae_upsamples = len(vae.config.block_out_channels) - 1
    if not 1 <= len(blocks) <= vae_upsamples + 1:
        parser.error(f"--blocks names {len(blocks)} stages; the VAE upsamples {vae_upsamples} times")
    # The preview's pixels span this many of the image's in each direction.
    shrink = 2 ** (vae_upsamples + 1 - len(blocks))
    if args.score:
        decoder = AutoencoderTiny.from_pretrained(args.score).decoder.eval()
        print(json.dumps(score(decoder, vae, args.seed, shrink), indent=2))
        return
    if args.out is None:
        parser.error("--out or --score is needed")
    model = AutoencoderTiny(
        encoder_block_out_channels=stages, decoder_block_out_channels=stages, num_encoder_blocks=(1,) * len(blocks),
        num_decoder_blocks=blocks, latent_channels=vae.config.latent_channels, scaling_factor=scaling,
    )
    decoder = model.decoder.train()
    parameters = sum(p.numel() for p in decoder.parameters())
    print(f"decoder: {parameters} parameters, width {args.width}, blocks {blocks}, 1/{shrink} resolution, "
          f"{args.steps} steps of {args.batch}", flush=True)
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=args.lr, weight_decay=0.0)
    start = time.perf_counter()
    train_latents, train_target, _ = dataset(vae, args.images, args.seed, 0, blend=True)
    train_target = F.avg_pool2d(train_target, shrink)
    print(f"{len(train_latents)} training pairs in {time.perf_counter() - start:.0f} s", flush=True)
    order = torch.Generator().manual_seed(args.seed)
    for step in range(args.steps):
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        pick = torch.randint(len(train_latents), (args.batch,), generator=order)
        latents, target = train_latents[pick], train_target[pick]
        # Like the pipeline: TAESD decodes latents divided by its scaling_factor (the VAE's).
        error = decoder(latents / scaling) - target
        loss = error.abs().mean() + (error**2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step + 1 == args.steps:
            print(f"step {step}: loss {loss.item():.4f}, lr {lr:.2e}, {time.perf_counter() - start:.0f} s", flush=True)

    decoder.eval()
    scores = {"parameters": parameters, **score(decoder, vae, args.seed, shrink)}
    print(json.dumps(scores, indent=2))

    args.out.mkdir(parents=True, exist_ok=True)
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.config.items() if not k.startswith("_")}
    (args.out / "config.json").write_text(json.dumps({"_class_name": "AutoencoderTiny", **config}, indent=2) + "\n")
    weights = {f"decoder.{k}": v.detach().contiguous() for k, v in decoder.state_dict().items()}
    save_file(weights, args.out / "diffusion_pytorch_model.safetensors", metadata={"format": "pt"})
    (args.out / "scores.json").write_text(json.dumps(scores, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
