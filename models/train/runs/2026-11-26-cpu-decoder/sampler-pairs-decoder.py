"""As run for runs/2026-11-26-cpu-decoder (paths as on that machine; `python sampler-pairs-decoder.py SRC_VAE OUT_VAE SECONDS`).
The deep decoder trained on half sampler pairs (/tmp/pairs), half fresh encoder latents."""
import sys, time, glob, random, math, torch
sys.path.insert(0, "/work/main/models/train")
import shapes, train
from diffusers import AutoencoderKL
torch.manual_seed(0); random.seed(0)
src, out, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
vae = AutoencoderKL.from_pretrained(src)
vae.encoder.requires_grad_(False); vae.quant_conv.requires_grad_(False)
files = sorted(glob.glob("/tmp/pairs/batch*.pt"))
pool = [torch.load(f) for f in files]
lat = torch.cat([p["latents"] for p in pool]).float(); img = torch.cat([p["images"] for p in pool]).float()
print("pairs", len(lat), flush=True)
params = [p for p in vae.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0)
t0 = time.time(); step = 0; avg = None
while time.time() - t0 < seconds:
    prog = (time.time() - t0) / seconds
    lr = 1e-4 * min(1, (step + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog)))
    for g in opt.param_groups: g["lr"] = lr
    idx = torch.randint(0, len(lat), (16,))
    fresh, _, _ = shapes.batch(16, 58, step)
    with torch.no_grad():
        z = vae.encode(fresh).latent_dist.sample()
    recon = vae.decode(torch.cat([lat[idx], z])).sample
    loss = train.reconstruction_loss(recon, torch.cat([img[idx], fresh]))
    opt.zero_grad(); loss.backward(); opt.step()
    avg = loss.item() if avg is None else 0.98 * avg + 0.02 * loss.item()
    step += 1
    if step % 50 == 0: print(step, f"{time.time()-t0:.0f}s", f"{avg:.5f}", f"{lr:.1e}", flush=True)
vae.save_pretrained(out, safe_serialization=True)
print("saved", out, step, flush=True)
