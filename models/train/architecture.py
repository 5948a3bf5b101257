"""The embedded model's networks: diffusers / transformers classes exactly, so the engine loads them as it loads SD 1.x."""

from typing import Callable

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

LATENT_CHANNELS = 4
LATENT_SIZE = 16  # 64 px images, VAE downsamples x4
TEXT_WIDTH = 64
LCM_GUIDANCE_EMBEDDING = 256  # time_cond_proj_dim of the LCM student

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=LATENT_CHANNELS,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    norm_num_groups=32,
    sample_size=64,
    scaling_factor=1.0,  # replaced by 1/std of the trained encoder's latents
)

TEXT_CONFIG = dict(
    vocab_size=49408,
    hidden_size=TEXT_WIDTH,
    intermediate_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=TEXT_WIDTH,
    # SD 1.x's text encoder config values; the tokenizer pads with <|endoftext|>.
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)

UNET_CONFIG = dict(
    sample_size=LATENT_SIZE,
    in_channels=LATENT_CHANNELS,
    out_channels=LATENT_CHANNELS,
    block_out_channels=(64, 96, 96),  # 3.7 M parameters: fp32 weights stay under 16 MB
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=1,
    cross_attention_dim=TEXT_WIDTH,
    attention_head_dim=[2, 3, 3],  # diffusers' name for the head count: 32-wide heads
    norm_num_groups=32,
)


def build_vae(latent_channels: int = LATENT_CHANNELS, layers_per_block: int = 1) -> AutoencoderKL:
    return AutoencoderKL(**{**VAE_CONFIG, "latent_channels": latent_channels, "layers_per_block": layers_per_block})


def deepen_vae(vae: AutoencoderKL, layers_per_block: int) -> AutoencoderKL:
    """The same VAE with more resnets per block, computing exactly what it did: each added resnet's second conv
    starts at zero, so it passes its input through until trained. diffusers' AutoencoderKL shares layers_per_block
    between encoder and decoder, so the encoder gets the pass-through resnets too; frozen, they stay exact, and
    its latents (what the UNet was trained on) stay as they are."""
    old = vae.config.layers_per_block
    if layers_per_block <= old:
        raise ValueError(f"deepen_vae: the VAE has {old} layers per block already, not fewer than {layers_per_block}")
    deep = AutoencoderKL.from_config(vae.config, layers_per_block=layers_per_block)
    added = [resnet for blocks, first_new in ((deep.encoder.down_blocks, old), (deep.decoder.up_blocks, old + 1))
             for block in blocks for resnet in block.resnets[first_new:]]
    missing, unexpected = deep.load_state_dict(vae.state_dict(), strict=False)  # same names for all the rest
    assert len(missing) == sum(len(resnet.state_dict()) for resnet in added) and not unexpected, (missing, unexpected)
    for resnet in added:
        torch.nn.init.zeros_(resnet.conv2.weight)
        torch.nn.init.zeros_(resnet.conv2.bias)
    return deep


def widen_latents(vae: AutoencoderKL, channels: int, added_logvar: float) -> tuple[AutoencoderKL, Callable[[], None]]:
    """The same VAE with `channels` latent channels whose first ones are its latents exactly, so a UNet trained on
    them keeps its meaning; the added channels are for what the old ones lose (small corners). Returns the wide VAE
    and a function that puts back the encoder weights that make the old latents (and the added channels' fixed
    log-variance), to call after every optimizer step: only the added channels' means are learnt in the encoder.
    The decoder starts ignoring the added channels (their conv_in columns are zero). Their posterior log-variance is
    the constant `added_logvar` (train.py passes the old channels' mean)."""
    old = vae.config.latent_channels
    if channels <= old:
        raise ValueError(f"widen_latents: the VAE has {old} latent channels already, not fewer than {channels}")
    wide = AutoencoderKL.from_config(vae.config, latent_channels=channels)
    # Moments are [mean 0..C, logvar 0..C]: old mean i stays row i, old logvar i moves to row channels + i.
    old_rows = list(range(old)) + list(range(channels, channels + old))
    added_logvar_rows = list(range(channels + old, 2 * channels))
    added = list(range(old, channels))
    with torch.no_grad():
        state, wide_state = vae.state_dict(), wide.state_dict()
        for name, tensor in state.items():
            if wide_state[name].shape == tensor.shape:
                wide_state[name].copy_(tensor)
        conv_out, quant = wide.encoder.conv_out, wide.quant_conv
        conv_out.weight[old_rows] = state["encoder.conv_out.weight"]
        conv_out.bias[old_rows] = state["encoder.conv_out.bias"]
        quant.weight.zero_()
        quant.weight[[[row] for row in old_rows], old_rows] = state["quant_conv.weight"]
        quant.bias.zero_()
        quant.bias[old_rows] = state["quant_conv.bias"]
        quant.weight[added, added] = 1.0
        quant.bias[added_logvar_rows] = added_logvar
        post = wide.post_quant_conv
        post.weight.zero_()
        post.weight[:old, :old] = state["post_quant_conv.weight"]
        post.bias.zero_()
        post.bias[:old] = state["post_quant_conv.bias"]
        post.weight[added, added] = 1.0
        wide.decoder.conv_in.weight.zero_()
        wide.decoder.conv_in.weight[:, :old] = state["decoder.conv_in.weight"]
    kept_rows = old_rows + added_logvar_rows
    kept = [(parameter, rows, parameter[rows].clone())
            for parameter, rows in ((conv_out.weight, old_rows), (conv_out.bias, old_rows), (quant.weight, kept_rows), (quant.bias, kept_rows))]

    def restore():
        with torch.no_grad():
            for parameter, rows, value in kept:
                parameter[rows] = value.to(parameter.device)

    return wide, restore


def normalise_added_latents(vae: AutoencoderKL, old: int, mean: torch.Tensor, std: torch.Tensor, target_std: float):
    """Rescales the latent channels from `old` on (measured `mean`, `std` per channel) to mean 0 and `target_std`, the
    old channels' spread, so one scaling_factor fits all: an exact reparametrisation (quant_conv's rows and
    post_quant_conv's columns change inversely)."""
    scale = target_std / std
    channels = vae.config.latent_channels
    with torch.no_grad():
        quant, post = vae.quant_conv, vae.post_quant_conv
        for k, channel in enumerate(range(old, channels)):
            # latent' = (latent - mean) * scale; post_quant_conv sees latent = latent' / scale + mean.
            post.bias += post.weight[:, channel, 0, 0] * mean[k]
            post.weight[:, channel] /= scale[k]
            quant.weight[channel] *= scale[k]
            quant.bias[channel] = (quant.bias[channel] - mean[k]) * scale[k]
            quant.bias[channels + channel] += 2 * torch.log(scale[k])


def widen_unet(unet: UNet2DConditionModel, channels: int) -> UNet2DConditionModel:
    """The same UNet for latents with more channels: it starts ignoring the added ones (zero conv_in columns) and
    predicting zero noise for them (zero conv_out rows), so its old channels compute what they did."""
    old = unet.config.in_channels
    if channels <= old:
        raise ValueError(f"widen_unet: the UNet takes {old} latent channels already, not fewer than {channels}")
    wide = UNet2DConditionModel.from_config(unet.config, in_channels=channels, out_channels=channels)
    state, wide_state = unet.state_dict(), wide.state_dict()
    with torch.no_grad():
        for name, tensor in state.items():
            target = wide_state[name]
            if target.shape == tensor.shape:
                target.copy_(tensor)
            else:
                target.zero_()
                target[tuple(slice(0, size) for size in tensor.shape)] = tensor
    return wide


def build_text_encoder() -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))


def build_unet(latent_channels: int = LATENT_CHANNELS) -> UNet2DConditionModel:
    """The denoiser of latents with `latent_channels` channels (the VAE's)."""
    return UNet2DConditionModel(**{**UNET_CONFIG, "in_channels": latent_channels, "out_channels": latent_channels})


def build_lcm_student(teacher: UNet2DConditionModel, guidance_init: str = "zero") -> UNet2DConditionModel:
    """The teacher plus a guidance embedding. Its projection starts at zero ("zero": the student starts as the
    teacher) or as torch initialises a Linear ("default", as diffusers' train_lcm_distill_sd_wds.py leaves it)."""
    student = UNet2DConditionModel.from_config(teacher.config, time_cond_proj_dim=LCM_GUIDANCE_EMBEDDING)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert missing == ["time_embedding.cond_proj.weight"] and not unexpected, (missing, unexpected)
    if guidance_init == "zero":
        torch.nn.init.zeros_(student.time_embedding.cond_proj.weight)
    return student


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


if __name__ == "__main__":
    unet = build_unet()
    for name, module in [("vae", build_vae()), ("text_encoder", build_text_encoder()), ("unet", unet), ("lcm unet", build_lcm_student(unet))]:
        count = parameter_count(module)
        print(f"{name:14s} {count / 1e6:7.3f} M parameters, {count * 4 / 2**20:6.2f} MiB fp32")
