"""The embedded model's networks: diffusers / transformers classes exactly, so the engine loads them as it loads SD 1.x."""

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
