"""Noise schedule and latent-consistency-distillation math, as in diffusers' SD training and
examples/consistency_distillation/train_lcm_distill_sd_wds.py."""

import math
from typing import NamedTuple

import torch
from diffusers import DDPMScheduler

TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END, BETA_SCHEDULE = 0.00085, 0.012, "scaled_linear"
LCM_DDIM_STEPS = 50  # the teacher's solver grid: LCMScheduler's original_inference_steps
LCM_TIMESTEP_SCALING = 10.0
LCM_SIGMA_DATA = 0.5
LCM_HUBER_C = 0.001
LCM_W_RANGE = (2.0, 8.0)  # the teacher's guidance, w = guidance_scale - 1 (as LatentConsistencyModelPipeline embeds it)


def noise_scheduler() -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=TRAIN_TIMESTEPS, beta_start=BETA_START, beta_end=BETA_END, beta_schedule=BETA_SCHEDULE, prediction_type="epsilon"
    )


def gather(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values[index] shaped [B, 1, 1, 1] for broadcasting over latents."""
    return values.to(index.device)[index].view(-1, 1, 1, 1)


def min_snr_weight(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    """Min-SNR-gamma loss weights for epsilon prediction (Hang et al. 2023): min(snr, gamma) / snr."""
    alpha_bar = alphas_cumprod.to(timesteps.device)[timesteps]
    snr = alpha_bar / (1 - alpha_bar)
    return torch.clamp(snr, max=gamma) / snr


def guidance_scale_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """LatentConsistencyModelPipeline.get_guidance_scale_embedding, for w = guidance_scale - 1."""
    w = w * 1000.0
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=w.device) * -(math.log(10000.0) / (half - 1)))
    angles = w.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def boundary_scalings(timesteps: torch.Tensor):
    """c_skip, c_out of the consistency parameterisation (LCMScheduler, timestep_scaling 10)."""
    scaled = timesteps.float() * LCM_TIMESTEP_SCALING
    c_skip = LCM_SIGMA_DATA**2 / (scaled**2 + LCM_SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + LCM_SIGMA_DATA**2) ** 0.5
    return c_skip.view(-1, 1, 1, 1), c_out.view(-1, 1, 1, 1)


def predicted_x0(eps: torch.Tensor, timesteps: torch.Tensor, sample: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    alpha_bar = gather(alphas_cumprod, timesteps)
    return (sample - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()


class DdimSolver:
    """The teacher's one-step ODE solver on the 50-step DDIM grid (timesteps 19, 39, ..., 999)."""

    def __init__(self, alphas_cumprod: torch.Tensor, device):
        ratio = TRAIN_TIMESTEPS // LCM_DDIM_STEPS
        self.timesteps = (torch.arange(1, LCM_DDIM_STEPS + 1) * ratio - 1).to(device)
        self.skip = ratio
        self.alphas_cumprod = alphas_cumprod.to(device)
        previous = torch.cat([alphas_cumprod[:1], alphas_cumprod[self.timesteps[:-1].cpu()]])
        self.alphas_cumprod_prev = previous.to(device)

    def step(self, pred_x0: torch.Tensor, pred_eps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        alpha_bar_prev = gather(self.alphas_cumprod_prev, index)
        return alpha_bar_prev.sqrt() * pred_x0 + (1 - alpha_bar_prev).sqrt() * pred_eps


class ConsistencyDraw(NamedTuple):
    """One step's draw of consistency distillation: grid timesteps, the noised latents, the guidance w."""

    index: torch.Tensor  # position on the solver grid
    start: torch.Tensor  # the grid timestep the student sees
    previous: torch.Tensor  # one solver step earlier, where the target is evaluated
    noisy: torch.Tensor
    w: torch.Tensor  # [B], w = guidance_scale - 1


class ConsistencyDistillation:
    """What both LCM stages (the whole student in train.py, the LoRA in lcm_lora.py) share: the noise schedule, the
    teacher's DDIM solver, each step's draw, and the consistency-parameterised x0 of student, teacher and target."""

    def __init__(self, device, w_range: tuple = LCM_W_RANGE):
        self.w_range = w_range
        self.scheduler = noise_scheduler()
        self.alphas_cumprod = self.scheduler.alphas_cumprod.to(device)
        self.solver = DdimSolver(self.scheduler.alphas_cumprod, device)
        self.device = device

    def draw(self, latents: torch.Tensor, generator: torch.Generator) -> ConsistencyDraw:
        """Noise, grid index, then w: the order of draws the stages were trained with."""
        batch = latents.shape[0]
        noise = torch.randn(latents.shape, generator=generator, device=self.device)
        index = torch.randint(0, LCM_DDIM_STEPS, (batch,), generator=generator, device=self.device)
        start = self.solver.timesteps[index]
        previous = (start - self.solver.skip).clamp(min=0)
        noisy = self.scheduler.add_noise(latents, noise, start)
        low, high = self.w_range
        w = low + (high - low) * torch.rand(batch, generator=generator, device=self.device)
        return ConsistencyDraw(index, start, previous, noisy, w)

    def student_x0(self, eps: torch.Tensor, draw: ConsistencyDraw) -> torch.Tensor:
        c_skip, c_out = boundary_scalings(draw.start)
        return c_skip * draw.noisy + c_out * predicted_x0(eps, draw.start, draw.noisy, self.alphas_cumprod)

    def teacher_step(self, cond_uncond_eps: torch.Tensor, draw: ConsistencyDraw) -> torch.Tensor:
        """x_prev: one guided DDIM step from the teacher's noise predictions for [cond; uncond]."""
        cond_eps, uncond_eps = cond_uncond_eps.chunk(2)
        cond_x0 = predicted_x0(cond_eps, draw.start, draw.noisy, self.alphas_cumprod)
        uncond_x0 = predicted_x0(uncond_eps, draw.start, draw.noisy, self.alphas_cumprod)
        w = draw.w.view(-1, 1, 1, 1)
        return self.solver.step(cond_x0 + w * (cond_x0 - uncond_x0), cond_eps + w * (cond_eps - uncond_eps), draw.index)

    def target_x0(self, eps: torch.Tensor, x_prev: torch.Tensor, draw: ConsistencyDraw) -> torch.Tensor:
        c_skip, c_out = boundary_scalings(draw.previous)
        return c_skip * x_prev + c_out * predicted_x0(eps, draw.previous, x_prev, self.alphas_cumprod)


def huber(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.mean(torch.sqrt((prediction.float() - target.float()) ** 2 + LCM_HUBER_C**2) - LCM_HUBER_C)
