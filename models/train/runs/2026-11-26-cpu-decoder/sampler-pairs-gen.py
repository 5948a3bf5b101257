"""As run for runs/2026-11-26-cpu-decoder (paths as on that machine; `python sampler-pairs-gen.py FIRST LAST`).
Pairs (the sampler's final latents, the image they started from): SDEdit from the image's encoder latents at
strength s ~ U[0.3, 0.65] with its caption, DPM++ 2M on the 20-step grid, guidance 7.5."""
import sys, time, torch
sys.path.insert(0, "/work/main/models/train")
import shapes
from diffusers import DiffusionPipeline
torch.manual_seed(0)
pipe = DiffusionPipeline.from_pretrained("/work/main/models/train/out/embedded", safety_checker=None)
vae, unet, te, tok, sched = pipe.vae, pipe.unet, pipe.text_encoder, pipe.tokenizer, pipe.scheduler
sf = vae.config.scaling_factor
def embed(texts):
    ids = tok(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    return te(ids).last_hidden_state
uncond = None
B = 64
t0 = time.time()
with torch.no_grad():
    uncond = embed([""]).expand(B, -1, -1)
    for index in range(int(sys.argv[1]), int(sys.argv[2])):
        g = torch.Generator().manual_seed(777 + index)
        images, captions, _ = shapes.batch(B, 47, index)
        z0 = vae.encode(images).latent_dist.sample(generator=g) * sf
        strength = 0.3 + 0.35 * torch.rand(1, generator=g).item()
        sched.set_timesteps(20)
        steps = sched.timesteps[int(20 * (1 - strength)):]
        sched.set_begin_index(int(20 * (1 - strength)))
        z = sched.add_noise(z0, torch.randn(z0.shape, generator=g), steps[:1].repeat(B))
        cond = embed(captions)
        context = torch.cat([uncond, cond])
        for t in steps:
            eps_u, eps_c = unet(torch.cat([z, z]), t, context).sample.chunk(2)
            z = sched.step(eps_u + 7.5 * (eps_c - eps_u), t, z).prev_sample
        torch.save({"latents": (z / sf).half(), "images": images.half(), "strength": strength}, f"/tmp/pairs/batch{index:05d}.pt")
        print(index, f"{strength:.2f}", f"{time.time()-t0:.1f}s", flush=True)
