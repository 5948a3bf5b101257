"""How close two score sheets' images are, tile by tile: the engine's against diffusers' on the same prompts and seeds.

    python compare_sheets.py ENGINE.png DIFFUSERS.png [--first-seed S]

Both PNGs are in the layout `bench quality --sheet` and `diffusers_sheet.py` write (64x64 tiles, 16 to a row, 64
tiles a seed, seed after seed). ENGINE.png holds seeds S, S + 1, ... of the 64 prompts (as `bench quality --first-seed
S --sheet` writes them); DIFFUSERS.png holds seeds 0, 1, ...; each engine tile is compared with diffusers' tile of the
same prompt and seed. Prints the PSNR (8-bit pixels) of every pair's mean, its lowest, and the tile it came from.
"""

import argparse

import numpy as np
from PIL import Image

TILE = 64
ROW = 16
PER_SEED = 64


def tiles(path):
    sheet = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    rows, columns = sheet.shape[0] // TILE, sheet.shape[1] // TILE
    if columns != ROW:
        raise SystemExit(f"{path}: {columns} tiles to a row, expected {ROW}")
    return [sheet[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE] for r in range(rows) for c in range(columns)]


def psnr(a, b):
    mse = ((a - b) ** 2).mean()
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("engine")
    parser.add_argument("diffusers")
    parser.add_argument("--first-seed", type=int, default=0, help="the seed of ENGINE.png's first 64 tiles")
    args = parser.parse_args()
    engine, reference = tiles(args.engine), tiles(args.diffusers)
    offset = args.first_seed * PER_SEED
    if offset + len(engine) > len(reference):
        raise SystemExit(f"{args.diffusers} has {len(reference)} tiles, fewer than seeds {args.first_seed}.. of {args.engine} need")
    values = [psnr(tile, reference[offset + i]) for i, tile in enumerate(engine)]
    worst = int(np.argmin(values))
    print(f"{len(values)} images: PSNR mean {np.mean(values):.1f} dB, lowest {values[worst]:.1f} dB "
          f"(seed {args.first_seed + worst // PER_SEED}, prompt {worst % PER_SEED})")


if __name__ == "__main__":
    main()
