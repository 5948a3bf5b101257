"""Noise schedule and latent-consistency-distillation math, as in diffusers' SD training and
examples/consistency_distillation/train_lcm_distill_sd_wds.py."""

import math

import torch
from diffusers import DDPMScheduler

TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END, BETA_SCHEDULE = 0.00085, 0.012, "scaled_linear"
LCM_DDIM_STEPS = 50  # the teacher's solver grid: LCMScheduler's original_inference_steps
LCM_TIMESTEP_SCALING = 10.0
LCM_SIGMA_DATA = 0.5
LCM_HUBER_C = 0.001


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


def huber(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.mean(torch.sqrt((prediction.float() - target.float()) ** 2 + LCM_HUBER_C**2) - LCM_HUBER_C)
