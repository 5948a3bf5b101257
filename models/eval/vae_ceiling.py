"""About the most a model with this VAE can score: the ground-truth sheet through the VAE and back.

    python vae_ceiling.py --vae ../train/out/embedded/vae --out /tmp/recon.png
    webdiffusion-eval --score-sheet /tmp/recon.png

Each 64x64 tile of ground_truth.png (the training data generator's drawing of an evaluation prompt) is encoded
to its latent mean and decoded; the sheet keeps the ground truth's layout, so `webdiffusion-eval --score-sheet` reads
it as it reads generated images. What the analyser cannot read here shows where the VAE loses detail; it is an
estimate, not a bound (a UNet's latents need not be the encoder's of a drawn tile, and the embedded model's 20-step
images read more shapes right than this sheet does).
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL

import sheet


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae", type=Path, required=True, help="a diffusers AutoencoderKL folder")
    parser.add_argument("--out", type=Path, required=True, help="the reconstructed sheet (PNG)")
    args = parser.parse_args()
    vae = AutoencoderKL.from_pretrained(args.vae).eval()
    tiles = sheet.read_tiles(sheet.HERE / sheet.LAYOUT["image"])
    with torch.no_grad():
        images = torch.from_numpy(tiles)
        decoded = vae.decode(vae.encode(images).latent_dist.mean).sample.clamp(-1, 1).numpy()
    sheet.write_tiles(decoded, args.out)
    psnr = -10 * np.log10(np.mean(((decoded - tiles) / 2) ** 2))
    print(f"wrote {args.out}: {len(tiles)} tiles, reconstruction PSNR {psnr:.2f} dB")


if __name__ == "__main__":
    main()
