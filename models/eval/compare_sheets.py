"""How close two score sheets' images are, tile by tile: the engine's against diffusers' on the same prompts and seeds.

    python compare_sheets.py ENGINE.png DIFFUSERS.png [--first-seed S]

Both PNGs are in the score-sheet layout (`sheet.py`; `webdiffusion-eval --sheet` and `diffusers_sheet.py` write it: every
prompt's tile in reading order, seed after seed). ENGINE.png holds seeds S, S + 1, ... of the prompts (as
`webdiffusion-eval --first-seed S --sheet` writes them); DIFFUSERS.png holds seeds 0, 1, ...; each engine tile is compared
with diffusers' tile of the same prompt and seed. Prints the PSNR (8-bit pixels) of every pair's mean, its lowest,
and the tile it came from.
"""

import argparse
import json
from pathlib import Path

import numpy as np

import sheet

PROMPTS = len(json.loads((sheet.HERE / "prompts.json").read_text())["prompts"])


def psnr(a, b):
    """PSNR of two images in [-1, 1]: a range of 2, as 255 for 8-bit pixels."""
    mse = ((a.astype(np.float64) - b) ** 2).mean()
    return float("inf") if mse == 0 else 10 * np.log10(4.0 / mse)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("engine", type=Path)
    parser.add_argument("diffusers", type=Path)
    parser.add_argument("--first-seed", type=int, default=0, help="the seed of ENGINE.png's first tiles")
    args = parser.parse_args()
    engine, reference = sheet.read_tiles(args.engine), sheet.read_tiles(args.diffusers)
    offset = args.first_seed * PROMPTS
    if offset + len(engine) > len(reference):
        raise SystemExit(f"{args.diffusers} has {len(reference)} tiles, fewer than seeds {args.first_seed}.. of {args.engine} need")
    values = [psnr(tile, reference[offset + i]) for i, tile in enumerate(engine)]
    worst = int(np.argmin(values))
    print(f"{len(values)} images: PSNR mean {np.mean(values):.1f} dB, lowest {values[worst]:.1f} dB "
          f"(seed {args.first_seed + worst // PROMPTS}, prompt {worst % PROMPTS})")


if __name__ == "__main__":
    main()
