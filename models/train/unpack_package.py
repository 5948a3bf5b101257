"""Turns a webdiffusion package (models/embedded, models/embedded-lcm) back into a diffusers folder that training
can continue from (`train.py --init unet=FOLDER`, or the vae/ a decoder stage starts from).

The f32 folders under out/ are git-ignored and can be lost; the committed packages cannot. Weights come back as the
engine reads them (q8 and q4 dequantized, f16 widened) by the fixture script's package reader, so a continued run
starts from the shipped model, not from the exact f32 weights it was converted from. Converting the result back with
`webdiffusion convert --quant q8` rewrites the package's shard byte for byte.

    python unpack_package.py ../embedded out/embedded
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

from safetensors.torch import save_file

import package

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests/fixtures"))
from generate_embedded import non_finite_floats, read_package  # noqa: E402

# component -> its weights file in a diffusers folder, as the device run's files come back
# The preview decoder is not a training stage's output, so package.WEIGHTS does not name it.
WEIGHT_FILES = dict(package.WEIGHTS.values()) | {"preview_decoder": "diffusion_pytorch_model.safetensors"}
CONFIG_FILES = {"scheduler": "scheduler_config.json"}


def unpack(package: Path, out: Path):
    manifest, tensors = read_package(package)
    out.mkdir(parents=True)
    (out / "model_index.json").write_text(json.dumps(manifest["model_index"], indent=2))
    for component, entry in manifest["components"].items():
        folder = out / component
        folder.mkdir()
        if "config" in entry:
            (folder / CONFIG_FILES.get(component, "config.json")).write_text(json.dumps(non_finite_floats(entry["config"]), indent=2))
        if component in tensors:
            save_file({name: t.contiguous() for name, t in tensors[component].items()}, folder / WEIGHT_FILES[component], metadata={"format": "pt"})
    for file in manifest["files"]:
        (out / file["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(package / file["path"], out / file["path"])
    print(f"{package} -> {out}: " + ", ".join(f"{name} {len(t)} tensors" for name, t in tensors.items()))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package", type=Path, help="a package folder (manifest.json, shards)")
    parser.add_argument("out", type=Path, help="the diffusers folder to write (must not exist)")
    unpack(**vars(parser.parse_args()))


if __name__ == "__main__":
    main()
