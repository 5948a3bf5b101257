"""The score-sheet layout that `webdiffusion-eval --score-sheet` reads, as prompts.json's `ground_truth` records it
(square tiles in rows of `columns`, tile t showing prompt t % the number of prompts), both ways."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
LAYOUT = json.loads((HERE / "prompts.json").read_text())["ground_truth"]
TILE, COLUMNS = LAYOUT["tile"], LAYOUT["columns"]


def read_tiles(path: Path) -> np.ndarray:
    """A sheet's tiles as float32 images [N, 3, TILE, TILE] in [-1, 1], in reading order."""
    sheet = np.asarray(Image.open(path).convert("RGB")).astype(np.float32) / 127.5 - 1
    rows = sheet.shape[0] // TILE
    tiles = sheet.reshape(rows, TILE, COLUMNS, TILE, 3).transpose(0, 2, 4, 1, 3).reshape(rows * COLUMNS, 3, TILE, TILE)
    return np.ascontiguousarray(tiles)


def write_tiles(images: np.ndarray, path: Path):
    """Images [N, 3, TILE, TILE] in [-1, 1] (N a multiple of COLUMNS) as a sheet PNG."""
    rows = len(images) // COLUMNS
    sheet = images.reshape(rows, COLUMNS, 3, TILE, TILE).transpose(0, 3, 1, 4, 2).reshape(rows * TILE, COLUMNS * TILE, 3)
    Image.fromarray(((sheet + 1) * 127.5).round().clip(0, 255).astype(np.uint8)).save(path)
