"""The device run's returnable files (flat, at most 8, each under 16 MB) and their way back into a workdir.

OUTDIR/: vae.safetensors, text_encoder.safetensors, unet.safetensors, lcm_unet.safetensors, configs.tar,
train_log.json, samples.png, and run.log (written by run_device.sh's tee).
"""

import io
import json
import os
import shutil
import tarfile
from pathlib import Path

from safetensors.torch import load_file, save_file

FILE_LIMIT = 16_000_000
# returned file -> (component folder in the workdir, weights file name there)
WEIGHTS = {
    "vae.safetensors": ("vae", "diffusion_pytorch_model.safetensors"),
    "text_encoder.safetensors": ("text_encoder", "model.safetensors"),
    "unet.safetensors": ("unet", "diffusion_pytorch_model.safetensors"),
    "lcm_unet.safetensors": ("lcm_unet", "diffusion_pytorch_model.safetensors"),
}
CONFIG_NAMES = {"config.json", "model_index.json", "scheduler_config.json"}


def _copy_atomic(source: Path, destination: Path):
    tmp = destination.with_name(destination.name + ".part")
    shutil.copyfile(source, tmp)
    os.replace(tmp, destination)


def collect(workdir: Path, outdir: Path):
    """Refreshes outdir from whatever stages have finished; records each weight file's dtype in train_log.json."""
    outdir.mkdir(parents=True, exist_ok=True)
    packaged = {}
    for name, (component, weights) in WEIGHTS.items():
        source = workdir / component / weights
        if not source.exists():
            continue
        if source.stat().st_size < FILE_LIMIT:
            _copy_atomic(source, outdir / name)
            packaged[name] = "float32"
        else:
            tensors = {k: v.half() if v.is_floating_point() else v for k, v in load_file(source).items()}
            save_file(tensors, outdir / (name + ".part"), metadata={"format": "pt"})
            os.replace(outdir / (name + ".part"), outdir / name)
            packaged[name] = "float16 (fp32 file was over 16 MB)"
        packaged[name] += f", {(outdir / name).stat().st_size} bytes"

    configs = sorted(p for p in workdir.rglob("*") if p.name in CONFIG_NAMES and p.is_file())
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in configs:
            tar.add(path, arcname=str(path.relative_to(workdir)))
    (outdir / "configs.tar.part").write_bytes(buffer.getvalue())
    os.replace(outdir / "configs.tar.part", outdir / "configs.tar")

    log_path = workdir / "train_log.json"
    log = json.loads(log_path.read_text()) if log_path.exists() else {}
    log["packaged"] = packaged
    (outdir / "train_log.json.part").write_text(json.dumps(log, indent=2))
    os.replace(outdir / "train_log.json.part", outdir / "train_log.json")
    if (workdir / "samples.png").exists():
        _copy_atomic(workdir / "samples.png", outdir / "samples.png")


def restore(outdir: Path, workdir: Path):
    """The inverse of collect: a workdir with vae/, text_encoder/, unet/[, lcm_unet/] (weights back in fp32)."""
    with tarfile.open(outdir / "configs.tar") as tar:
        tar.extractall(workdir, filter="data")
    for name, (component, weights) in WEIGHTS.items():
        source = outdir / name
        if not source.exists():
            continue
        tensors = {k: v.float() if v.is_floating_point() else v for k, v in load_file(source).items()}
        (workdir / component).mkdir(parents=True, exist_ok=True)
        save_file(tensors, workdir / component / weights, metadata={"format": "pt"})
    if (outdir / "train_log.json").exists():
        shutil.copyfile(outdir / "train_log.json", workdir / "train_log.json")
    return [component for name, (component, _) in WEIGHTS.items() if (outdir / name).exists()]


def _assert_flat_and_small(outdir: Path):
    """run_device.sh's final check: at most 8 plain files, each under the limit."""
    entries = list(outdir.iterdir())
    assert all(p.is_file() for p in entries), [p.name for p in entries if not p.is_file()]
    assert len(entries) <= 8, sorted(p.name for p in entries)
    assert all(p.stat().st_size < FILE_LIMIT for p in entries), {p.name: p.stat().st_size for p in entries}


if __name__ == "__main__":
    import sys

    _assert_flat_and_small(Path(sys.argv[1]))
    print(f"{sys.argv[1]}: " + ", ".join(f"{p.name} {p.stat().st_size}" for p in sorted(Path(sys.argv[1]).iterdir())))
