"""Turns the device run's returned files into models/train/out/embedded and models/train/out/embedded-lcm.

    python unpack_device.py RETURNED_DIR [--out models/train/out]
"""

import argparse
import tempfile
from pathlib import Path

import export
import package
import train


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("returned", type=Path, help="the folder run_device.sh filled")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        components = package.restore(args.returned, Path(tmp))
        print(f"restored {components}")
        export.export_pipelines(Path(tmp), args.out, train.TOKENIZER_DIR)


if __name__ == "__main__":
    main()
