"""The evaluator's fixed prompt list and the analyser's labelled ground truth, from the training data's
own vocabulary (models/train/shapes.py).

Writes, next to this script:
- prompts.json: 64 one-object prompts on plain backgrounds with their labels (shape, colour, size,
  position and cell, background) and whether they are held out of training: 44 seen colour+shape
  combinations covering every colour and shape, each of the 6 held-out colour+shape pairs twice and
  each of the 4 held-out shape+position pairs twice.
- ground_truth.png: every prompt drawn twice by the training data generator (different jitter), as a
  grid of 64x64 tiles, 16 to a row; tile t shows prompt t % 64. `webdiffusion`'s analyser must read
  these right (its own unit test).

Deterministic: the same shapes.py gives the same files. Run: python models/eval/make_prompts.py
"""

import json
import random
import sys
from pathlib import Path

import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "train"))
import shapes  # noqa: E402

SEEN_PROMPTS = 44
RENDERS_PER_PROMPT = 2
GRID_COLUMNS = 16


def allowed_backgrounds(colour: str) -> list:
    return [b for b in shapes.BACKGROUNDS if colour not in shapes.LOW_CONTRAST[b]]


def entry(rng: random.Random, shape: str, colour: str, position: str, size: str, held_out: str | None) -> dict:
    background = rng.choice(allowed_backgrounds(colour))
    obj = {"size": size, "colour": colour, "shape": shape, "position": position}
    return {
        "prompt": shapes.caption([obj], background),
        **obj,
        "cell": shapes.CELLS.index(position),
        "background": background,
        "held_out": held_out is not None,
        # Which kind of combination training never showed: "colour_shape" or "shape_position".
        "held_out_kind": held_out,
    }


def seen_position(rng: random.Random, shape: str, used: dict) -> str:
    """The least used cell where `shape` was seen in training."""
    cells = [c for c in shapes.CELLS if [shape, c] not in shapes.HELD_OUT["shape_position"]]
    rng.shuffle(cells)
    return min(cells, key=lambda c: used.get(c, 0))


def make_prompts() -> list:
    rng = random.Random(0)
    seen = [(s, c) for c in shapes.COLOURS for s in shapes.SHAPES if [c, s] not in shapes.HELD_OUT["colour_shape"]]
    rng.shuffle(seen)
    # Keep every colour and shape: drop combinations only where both stay covered.
    while len(seen) > SEEN_PROMPTS:
        for i, (s, c) in enumerate(seen):
            if sum(x == s for x, _ in seen) > 5 and sum(y == c for _, y in seen) > 5:
                del seen[i]
                break
    used: dict = {}
    prompts = []
    for i, (shape, colour) in enumerate(seen):
        position = seen_position(rng, shape, used)
        used[position] = used.get(position, 0) + 1
        prompts.append(entry(rng, shape, colour, position, shapes.SIZES[i % 2], None))
    for i, (colour, shape) in enumerate(shapes.HELD_OUT["colour_shape"] * 2):
        position = seen_position(rng, shape, used)
        used[position] = used.get(position, 0) + 1
        prompts.append(entry(rng, shape, colour, position, shapes.SIZES[(i // 6 + i) % 2], "colour_shape"))
    for i, (shape, position) in enumerate(shapes.HELD_OUT["shape_position"] * 2):
        colours = [c for c in shapes.COLOURS if [c, shape] not in shapes.HELD_OUT["colour_shape"]]
        colour = rng.choice(colours)
        prompts.append(entry(rng, shape, colour, position, shapes.SIZES[(i // 4 + i) % 2], "shape_position"))
    return prompts


def labels_of(prompts: list, generator: torch.Generator) -> dict:
    """shapes.render's label tensors for one object per image, jittered like the training data."""
    n = len(prompts)

    def index(table, key):
        return torch.tensor([[list(table).index(p[key])] * 2 for p in prompts])

    def uniform(*shape):
        return torch.rand(shape, generator=generator)

    return {
        "count": torch.ones(n, dtype=torch.long),
        "background": torch.tensor([list(shapes.BACKGROUNDS).index(p["background"]) for p in prompts]),
        "texture": torch.zeros(n, dtype=torch.long),
        "shape": index(shapes.SHAPES, "shape"),
        "colour": index(shapes.COLOURS, "colour"),
        "size": index(shapes.SIZES, "size"),
        "cell": torch.tensor([[p["cell"]] * 2 for p in prompts]),
        "rotation": (uniform(n, 2) * 2 - 1) * shapes.ROTATION_JITTER,
        "offset": (uniform(n, 2, 2) * 2 - 1) * shapes.POSITION_JITTER,
        "radius_scale": 1 + (uniform(n, 2) * 2 - 1) * 0.08,
        "colour_jitter": (uniform(n, 2, 3) * 2 - 1) * shapes.COLOUR_JITTER,
        "stripe_phase": uniform(n) * shapes.TEXTURE_PERIOD * 2,
    }


def write_ground_truth(prompts: list, path: Path):
    generator = torch.Generator().manual_seed(1)
    tiles = torch.cat([shapes.render(labels_of(prompts, generator)) for _ in range(RENDERS_PER_PROMPT)])
    pixels = ((tiles + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    size = shapes.IMAGE_SIZE
    rows = (len(pixels) + GRID_COLUMNS - 1) // GRID_COLUMNS
    grid = Image.new("RGB", (GRID_COLUMNS * size, rows * size))
    for t, tile in enumerate(pixels):
        grid.paste(Image.fromarray(tile), ((t % GRID_COLUMNS) * size, (t // GRID_COLUMNS) * size))
    grid.save(path, optimize=True)


def main():
    prompts = make_prompts()
    document = {
        "about": "webdiffusion-eval prompts; made by make_prompts.py from models/train/shapes.py",
        "image_size": shapes.IMAGE_SIZE,
        "colours": [{"name": name, "rgb": rgb} for name, rgb in shapes.COLOURS.items()],
        "shapes": shapes.SHAPES,
        "cells": shapes.CELLS,
        "ground_truth": {
            "image": "ground_truth.png",
            "tile": shapes.IMAGE_SIZE,
            "columns": GRID_COLUMNS,
            "tiles": len(prompts) * RENDERS_PER_PROMPT,
        },
        "prompts": prompts,
    }
    (HERE / "prompts.json").write_text(json.dumps(document, indent=1) + "\n")
    write_ground_truth(prompts, HERE / "ground_truth.png")
    held = sum(p["held_out"] for p in prompts)
    print(f"{len(prompts)} prompts ({len(prompts) - held} seen, {held} held out) -> {HERE / 'prompts.json'}, ground_truth.png")


if __name__ == "__main__":
    main()
