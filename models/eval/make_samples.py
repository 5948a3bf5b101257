"""The README's sample sheet: six prompts through the engine with both embedded packages.

Row 1: models/embedded, 20 steps (its DPM-Solver++ sampler), guidance 7.5; row 2: models/embedded-lcm,
4 steps, guidance 6. Seed 0 for every image, nothing picked by hand. Each 64x64 image is enlarged 4x
(nearest) into models/eval/samples.png.

Run after `cargo build --release -p webdiffusion-cli`: python models/eval/make_samples.py
"""

import argparse
import subprocess
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]

PROMPTS = [
    "a large red circle at the center on a white background",
    "a small yellow star at the top left on a dark blue background",
    "a large blue square at the bottom right on a light yellow background",
    "a large green ring at the right on a black background",
    "a large pink diamond at the bottom on a gray background",
    "a large purple cross at the top on a light green background",
]
ROWS = [("models/embedded", 20, 7.5), ("models/embedded-lcm", 4, 6.0)]
SCALE = 4


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default=str(ROOT / "target/release/webdiffusion"))
    parser.add_argument("--out", default=str(ROOT / "models/eval/samples.png"))
    args = parser.parse_args()
    tiles = []
    with tempfile.TemporaryDirectory() as temp:
        for model, steps, guidance in ROWS:
            for index, prompt in enumerate(PROMPTS):
                out = Path(temp) / f"{Path(model).name}-{index}.png"
                command = [args.binary, "generate", "--model", str(ROOT / model), "--prompt", prompt, "--steps", str(steps)]
                command += ["--guidance", str(guidance), "--seed", "0", "--out", str(out)]
                subprocess.run(command, check=True, capture_output=True)
                tiles.append(Image.open(out).convert("RGB"))
    size = tiles[0].width * SCALE
    sheet = Image.new("RGB", (len(PROMPTS) * size, len(ROWS) * size))
    for i, tile in enumerate(tiles):
        sheet.paste(tile.resize((size, size), Image.NEAREST), ((i % len(PROMPTS)) * size, (i // len(PROMPTS)) * size))
    sheet.save(args.out, optimize=True)
    print(f"wrote {args.out}; columns, left to right:")
    for prompt in PROMPTS:
        print(f"  {prompt}")


if __name__ == "__main__":
    main()
