"""The most a model with this VAE can score: the ground-truth sheet through the VAE and back.

    python vae_ceiling.py --vae ../train/out/embedded/vae --out /tmp/recon.png
    webdiffusion bench quality --score-sheet /tmp/recon.png

Each 64x64 tile of ground_truth.png (the training data generator's drawing of an evaluation prompt) is encoded
to its latent mean and decoded; the sheet keeps the ground truth's layout, so `bench quality --score-sheet` reads
it as it reads generated images. Whatever the analyser cannot read here, no UNet trained on these latents draws.
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image

HERE = Path(__file__).resolve().parent
TILE, COLUMNS = 64, 16  # prompts.json's ground_truth layout


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae", type=Path, required=True, help="a diffusers AutoencoderKL folder")
    parser.add_argument("--out", type=Path, required=True, help="the reconstructed sheet (PNG)")
    args = parser.parse_args()
    vae = AutoencoderKL.from_pretrained(args.vae).eval()
    sheet = np.asarray(Image.open(HERE / "ground_truth.png").convert("RGB")).astype(np.float32) / 127.5 - 1
    rows = sheet.shape[0] // TILE
    tiles = sheet.reshape(rows, TILE, COLUMNS, TILE, 3).transpose(0, 2, 4, 1, 3).reshape(rows * COLUMNS, 3, TILE, TILE)
    with torch.no_grad():
        images = torch.from_numpy(np.ascontiguousarray(tiles))
        decoded = vae.decode(vae.encode(images).latent_dist.mean).sample.clamp(-1, 1).numpy()
    out = decoded.reshape(rows, COLUMNS, 3, TILE, TILE).transpose(0, 3, 1, 4, 2).reshape(sheet.shape)
    Image.fromarray(((out + 1) * 127.5).round().clip(0, 255).astype(np.uint8)).save(args.out)
    psnr = -10 * np.log10(np.mean(((out - sheet) / 2) ** 2))
    print(f"wrote {args.out}: {rows * COLUMNS} tiles, reconstruction PSNR {psnr:.2f} dB")


if __name__ == "__main__":
    main()
