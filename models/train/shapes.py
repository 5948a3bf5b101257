"""Procedural captioned shapes: the training data of the embedded default model.

Images are drawn on the fly in torch (signed distance fields on a coordinate grid, antialiased by
one-pixel coverage), so a batch of 256 costs microseconds on a GPU and no dataset file exists.
Everything a batch contains follows from (seed, index): a resumed run sees the same data.

Run `python shapes.py --preview OUT.png` to write a grid and its captions (OUT.txt) for eyeballing,
or `python shapes.py --held-out` to print the held-out combinations as JSON.
"""

import argparse
import json
import math

import torch

IMAGE_SIZE = 64

SHAPES = ["circle", "square", "triangle", "star", "ring", "cross", "diamond"]

# Distinct hues; an object's colour is jittered by at most COLOUR_JITTER per channel.
COLOURS = {
    "red": (0.90, 0.10, 0.10),
    "orange": (1.00, 0.55, 0.00),
    "yellow": (1.00, 0.90, 0.10),
    "green": (0.10, 0.72, 0.15),
    "cyan": (0.00, 0.85, 0.90),
    "blue": (0.10, 0.25, 0.95),
    "purple": (0.55, 0.15, 0.80),
    "pink": (1.00, 0.45, 0.75),
}
COLOUR_JITTER = 0.04

BACKGROUNDS = {
    "white": (0.97, 0.97, 0.97),
    "black": (0.05, 0.05, 0.05),
    "gray": (0.50, 0.50, 0.50),
    "dark blue": (0.05, 0.08, 0.30),
    "light blue": (0.70, 0.82, 0.97),
    "dark green": (0.05, 0.25, 0.10),
    "light green": (0.75, 0.93, 0.75),
    "dark red": (0.35, 0.05, 0.05),
    "dark purple": (0.22, 0.07, 0.30),
    "light yellow": (0.98, 0.96, 0.75),
}
# Object colours too close to a background (same hue family or weak contrast) are never drawn on it.
LOW_CONTRAST = {
    "white": ["yellow"],
    "gray": [],
    "black": [],
    "dark blue": ["blue", "purple"],
    "light blue": ["blue", "cyan"],
    "dark green": ["green"],
    "light green": ["green", "yellow", "cyan"],
    "dark red": ["red"],
    "dark purple": ["purple", "blue"],
    "light yellow": ["yellow", "orange"],
}
TEXTURES = ["plain", "striped", "checkered"]
TEXTURE_PROBS = [0.7, 0.15, 0.15]
TEXTURE_PERIOD = 8  # pixels per stripe / check

SIZES = ["small", "large"]
SIZE_RADIUS = {"small": 6.5, "large": 11.0}  # pixels, jittered by +-8%

# 3x3 grid, reading order. The caption phrase is "at the <name>".
CELLS = ["top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right"]
CELL_FRACTIONS = [0.22, 0.5, 0.78]
POSITION_JITTER = 2.0  # pixels
ROTATION_JITTER = math.radians(10.0)

TWO_OBJECT_PROB = 0.4

# Never shown in training (in any object of any image); the evaluator prompts them to test composition.
HELD_OUT = {
    "colour_shape": [
        ["red", "star"],
        ["blue", "ring"],
        ["green", "triangle"],
        ["yellow", "square"],
        ["purple", "circle"],
        ["cyan", "diamond"],
    ],
    "shape_position": [
        ["circle", "top right"],
        ["star", "bottom left"],
        ["square", "center"],
        ["ring", "left"],
    ],
}


def is_held_out(shape: str, colour: str, position: str) -> bool:
    """Whether an object with these attributes is kept out of training."""
    return [colour, shape] in HELD_OUT["colour_shape"] or [shape, position] in HELD_OUT["shape_position"]


def object_phrase(size: str, colour: str, shape: str, position: str) -> str:
    return f"a {size} {colour} {shape} at the {position}"


def caption(objects: list, background: str, texture: str = "plain") -> str:
    """The caption of a scene; objects are dicts with size, colour, shape, position."""
    phrases = " and ".join(object_phrase(o["size"], o["colour"], o["shape"], o["position"]) for o in objects)
    texture_word = "" if texture == "plain" else f" {texture}"
    return f"{phrases} on a {background}{texture_word} background"


def _tables(device):
    colours = torch.tensor(list(COLOURS.values()), device=device)
    backgrounds = torch.tensor(list(BACKGROUNDS.values()), device=device)
    allowed = torch.tensor(
        [[0.0 if c in LOW_CONTRAST[b] else 1.0 for c in COLOURS] for b in BACKGROUNDS],
        device=device,
    )
    held_cs = torch.zeros(len(COLOURS), len(SHAPES), dtype=torch.bool, device=device)
    for colour, shape in HELD_OUT["colour_shape"]:
        held_cs[list(COLOURS).index(colour), SHAPES.index(shape)] = True
    held_sp = torch.zeros(len(SHAPES), len(CELLS), dtype=torch.bool, device=device)
    for shape, position in HELD_OUT["shape_position"]:
        held_sp[SHAPES.index(shape), CELLS.index(position)] = True
    return colours, backgrounds, allowed, held_cs, held_sp


def sample_labels(n: int, generator: torch.Generator, device) -> dict:
    """Structured labels of n scenes as index tensors (object slot 1 is unused where count is 1)."""
    colours, backgrounds, allowed, held_cs, held_sp = _tables(device)

    def randint(high, shape):
        return torch.randint(0, high, shape, generator=generator, device=device)

    def uniform(shape):
        return torch.rand(shape, generator=generator, device=device)

    background = randint(len(BACKGROUNDS), (n,))
    texture = torch.multinomial(torch.tensor(TEXTURE_PROBS, device=device), n, replacement=True, generator=generator)
    count = 1 + (uniform((n,)) < TWO_OBJECT_PROB).long()

    shape = randint(len(SHAPES), (n, 2))
    colour = torch.multinomial(allowed[background].repeat_interleave(2, 0), 1, generator=generator).view(n, 2)
    first_cell = randint(len(CELLS), (n,))
    second_offset = 1 + randint(len(CELLS) - 1, (n,))  # the second object never shares the first's cell
    for _ in range(64):
        cell = torch.stack([first_cell, (first_cell + second_offset) % len(CELLS)], 1)
        held = held_cs[colour, shape] | held_sp[shape, cell]
        held[:, 1] &= count == 2
        if not held.any():
            break
        shape = torch.where(held, randint(len(SHAPES), (n, 2)), shape)
        fresh_colour = torch.multinomial(allowed[background].repeat_interleave(2, 0), 1, generator=generator).view(n, 2)
        colour = torch.where(held, fresh_colour, colour)
        first_cell = torch.where(held[:, 0], randint(len(CELLS), (n,)), first_cell)
        second_offset = torch.where(held[:, 1], 1 + randint(len(CELLS) - 1, (n,)), second_offset)
    else:
        raise RuntimeError("held-out rejection sampling did not converge")

    size = randint(len(SIZES), (n, 2))
    # Neighbouring cells are 18 px apart: two large objects there would overlap, so both are small.
    row, col = cell // 3, cell % 3
    adjacent = ((row[:, 0] - row[:, 1]).abs() <= 1) & ((col[:, 0] - col[:, 1]).abs() <= 1) & (count == 2)
    size = torch.where(adjacent[:, None], torch.zeros_like(size), size)

    return {
        "count": count,
        "background": background,
        "texture": texture,
        "shape": shape,
        "colour": colour,
        "size": size,
        "cell": cell,
        "rotation": (uniform((n, 2)) * 2 - 1) * ROTATION_JITTER,
        "offset": (uniform((n, 2, 2)) * 2 - 1) * POSITION_JITTER,
        "radius_scale": 1 + (uniform((n, 2)) * 2 - 1) * 0.08,
        "colour_jitter": (uniform((n, 2, 3)) * 2 - 1) * COLOUR_JITTER,
        "stripe_phase": uniform((n,)) * TEXTURE_PERIOD * 2,
    }


def _box(px, py, half_x, half_y):
    qx, qy = px.abs() - half_x, py.abs() - half_y
    outside = torch.sqrt(qx.clamp(min=0) ** 2 + qy.clamp(min=0) ** 2)
    return outside + torch.maximum(qx, qy).clamp(max=0)


def _triangle(px, py, r):
    # Inigo Quilez's equilateral triangle, y up; centred on its bounding box, not its centroid.
    k = math.sqrt(3.0)
    py = py + r / (2 * k)
    x = px.abs() - r
    y = py + r / k
    fold = (x + k * y) > 0
    x, y = torch.where(fold, (x - k * y) / 2, x), torch.where(fold, (-k * x - y) / 2, y)
    x = x - x.clamp(min=-2 * r, max=0)
    return -torch.sqrt(x * x + y * y) * torch.sign(y)


def _star(px, py, r, inner):
    # Inigo Quilez's five-pointed star, y up.
    k1x, k1y = 0.809016994375, -0.587785252292
    x = px.abs()
    y = py
    d = (k1x * x + k1y * y).clamp(min=0) * 2
    x, y = x - d * k1x, y - d * k1y
    d = (-k1x * x + k1y * y).clamp(min=0) * 2
    x, y = x + d * k1x, y - d * k1y
    x = x.abs()
    y = y - r
    bax, bay = inner * -k1y, inner * k1x - 1
    h = ((x * bax + y * bay) / (bax * bax + bay * bay)).clamp(0, r)
    return torch.sqrt((x - bax * h) ** 2 + (y - bay * h) ** 2) * torch.sign(y * bax - x * bay)


def shape_distance(px, py):
    """Signed distances [7, ...] of every shape at local coordinates (object radius 1, y up)."""
    radius = torch.sqrt(px * px + py * py)
    cos45 = math.sqrt(0.5)
    return torch.stack(
        [
            radius - 1,
            _box(px, py, 0.82, 0.82),
            _triangle(px, py, 1.0),
            _star(px, py, 1.08, 0.42),
            (radius - 0.72).abs() - 0.28,
            torch.minimum(_box(px, py, 0.95, 0.3), _box(px, py, 0.3, 0.95)),
            _box((px + py) * cos45, (py - px) * cos45, 0.74, 0.74),
        ]
    )


def render(labels: dict, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Images in [-1, 1], [n, 3, size, size], from sample_labels' tensors."""
    device = labels["background"].device
    colours, backgrounds, _, _, _ = _tables(device)
    n = labels["background"].shape[0]
    coords = torch.arange(size, device=device, dtype=torch.float32) + 0.5
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")

    base = backgrounds[labels["background"]]  # [n, 3]
    lum = base.mean(1, keepdim=True)
    second_tone = (base + torch.where(lum < 0.5, 0.14, -0.14)).clamp(0, 1)
    phase = labels["stripe_phase"][:, None, None]
    stripes = (torch.floor((gx + gy + phase) / TEXTURE_PERIOD) % 2).bool()
    checks = ((torch.floor((gx + phase) / TEXTURE_PERIOD) + torch.floor((gy + phase) / TEXTURE_PERIOD)) % 2).bool()
    texture = labels["texture"][:, None, None]
    use_second = torch.where(texture == 1, stripes, torch.where(texture == 2, checks, torch.zeros_like(stripes)))
    image = torch.where(use_second[:, None], second_tone[:, :, None, None], base[:, :, None, None])

    scale = size / IMAGE_SIZE
    radius_px = torch.tensor([SIZE_RADIUS[s] for s in SIZES], device=device)[labels["size"]] * labels["radius_scale"] * scale
    fractions = torch.tensor(CELL_FRACTIONS, device=device)
    cx = fractions[labels["cell"] % 3] * size + labels["offset"][..., 0] * scale
    cy = fractions[labels["cell"] // 3] * size + labels["offset"][..., 1] * scale
    for slot in range(2):
        r = radius_px[:, slot, None, None]
        dx = (gx - cx[:, slot, None, None]) / r
        dy = -(gy - cy[:, slot, None, None]) / r  # y up for the distance functions
        cos, sin = torch.cos(labels["rotation"][:, slot])[:, None, None], torch.sin(labels["rotation"][:, slot])[:, None, None]
        px, py = cos * dx + sin * dy, -sin * dx + cos * dy
        distances = shape_distance(px, py)  # [7, n, H, W]
        chosen = distances.gather(0, labels["shape"][None, :, slot, None, None].expand(1, n, size, size))[0]
        coverage = (0.5 - chosen * r).clamp(0, 1)  # one pixel of antialiasing
        coverage = coverage * (labels["count"] > slot)[:, None, None]
        colour = (colours[labels["colour"][:, slot]] + labels["colour_jitter"][:, slot]).clamp(0, 1)
        image = image * (1 - coverage[:, None]) + colour[:, :, None, None] * coverage[:, None]
    return image * 2 - 1


def describe(labels: dict) -> list:
    """Per-image structured labels with names: background, texture, objects (shape, colour, size, position, cell)."""
    cpu = {k: v.cpu().tolist() for k, v in labels.items() if k in ("count", "background", "texture", "shape", "colour", "size", "cell")}
    scenes = []
    for i in range(len(cpu["count"])):
        objects = [
            {
                "shape": SHAPES[cpu["shape"][i][s]],
                "colour": list(COLOURS)[cpu["colour"][i][s]],
                "size": SIZES[cpu["size"][i][s]],
                "position": CELLS[cpu["cell"][i][s]],
                "cell": cpu["cell"][i][s],
            }
            for s in range(cpu["count"][i])
        ]
        scenes.append({"background": list(BACKGROUNDS)[cpu["background"][i]], "texture": TEXTURES[cpu["texture"][i]], "objects": objects})
    return scenes


def captions(scenes: list) -> list:
    return [caption(s["objects"], s["background"], s["texture"]) for s in scenes]


def batch(n: int, seed: int, index: int = 0, device="cpu", size: int = IMAGE_SIZE):
    """(images in [-1, 1] NCHW on device, captions, structured labels) of batch `index` of the stream `seed`.

    Labels are drawn on the CPU, so a stream is the same on every device; only the drawing runs on `device`."""
    generator = torch.Generator()
    generator.manual_seed(seed * 1_000_003 + index)
    labels = sample_labels(n, generator, "cpu")
    scenes = describe(labels)
    images = render({k: v.to(device) for k, v in labels.items()}, size)
    return images, captions(scenes), scenes


def _write_preview(path: str, n: int, seed: int, upscale: int):
    from PIL import Image

    images, captions, _ = batch(n, seed)
    columns = 8
    rows = (n + columns - 1) // columns
    pixels = ((images + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    grid = Image.new("RGB", (columns * IMAGE_SIZE * upscale, rows * IMAGE_SIZE * upscale), (255, 255, 255))
    for i, image in enumerate(pixels):
        tile = Image.fromarray(image).resize((IMAGE_SIZE * upscale, IMAGE_SIZE * upscale), Image.NEAREST)
        grid.paste(tile, ((i % columns) * IMAGE_SIZE * upscale, (i // columns) * IMAGE_SIZE * upscale))
    grid.save(path)
    with open(path.rsplit(".", 1)[0] + ".txt", "w") as f:
        f.writelines(f"{i // columns},{i % columns}: {c}\n" for i, c in enumerate(captions))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preview", metavar="PNG", help="write a grid of samples and PNG-name.txt with their captions")
    parser.add_argument("--count", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--upscale", type=int, default=2)
    parser.add_argument("--held-out", action="store_true", help="print the held-out combinations as JSON")
    args = parser.parse_args()
    if args.held_out:
        print(json.dumps(HELD_OUT, indent=2))
    if args.preview:
        _write_preview(args.preview, args.count, args.seed, args.upscale)


if __name__ == "__main__":
    main()
