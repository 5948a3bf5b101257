//! The tensor names of LoRA files: which network and module a tensor belongs to and
//! its role (down, up or alpha), in the kohya-ss and diffusers/PEFT layouts.

/// How a file names the module a LoRA adapts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ModuleName {
    /// A module path as PyTorch names it (`down_blocks.0.attentions.0.proj_in`).
    Dotted(String),
    /// kohya-ss: the module path with every `.` written `_` (`down_blocks_0_attentions_0_proj_in`).
    /// Module names contain `_` themselves, so this is resolved against the model's real names.
    Underscored(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Down,
    Up,
    Alpha,
}

/// One tensor name, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TensorKey {
    /// `unet`, `text_encoder`, `text_encoder_2`, or `None` where the file does not say
    /// (PEFT's own `base_model.model.` prefix, or none).
    pub component: Option<&'static str>,
    pub module: ModuleName,
    /// The name without its role suffix (`lora_unet_conv_in`, `unet.conv_in`): how errors
    /// name the module, as the file spells it.
    pub stem: String,
    pub role: Role,
}

const KOHYA_PREFIXES: [(&str, &str); 4] =
    [("lora_unet_", "unet"), ("lora_te_", "text_encoder"), ("lora_te1_", "text_encoder"), ("lora_te2_", "text_encoder_2")];

const KOHYA_ROLES: [(&str, Role); 3] = [(".lora_down.weight", Role::Down), (".lora_up.weight", Role::Up), (".alpha", Role::Alpha)];

const DOTTED_PREFIXES: [(&str, Option<&str>); 4] = [
    ("unet.", Some("unet")),
    ("text_encoder.", Some("text_encoder")),
    ("text_encoder_2.", Some("text_encoder_2")),
    ("base_model.model.", None),
];

/// diffusers/PEFT role suffixes, the more specific first: PEFT's `lora_A`/`lora_B`, the
/// kohya spelling on dotted names, diffusers' older `LoRACompatibleLinear` (`.lora.down`)
/// and text-encoder (`.lora_linear_layer.down`) ones, and the attention processors'
/// `processor.to_q_lora.down` (`ATTENTION_PROCESSOR_SUFFIX`).
const DOTTED_ROLES: [(&str, Role); 11] = [
    (".lora_A.weight", Role::Down),
    (".lora_B.weight", Role::Up),
    (".lora_down.weight", Role::Down),
    (".lora_up.weight", Role::Up),
    (".lora.down.weight", Role::Down),
    (".lora.up.weight", Role::Up),
    (".lora_linear_layer.down.weight", Role::Down),
    (".lora_linear_layer.up.weight", Role::Up),
    (".down.weight", Role::Down),
    (".up.weight", Role::Up),
    (".alpha", Role::Alpha),
];

/// The role suffixes of diffusers' old attention-processor LoRAs (`attn1.processor.to_q_lora.down.weight`).
const ATTENTION_PROCESSOR_ROLES: [&str; 2] = [".down.weight", ".up.weight"];

/// Takes a tensor name apart; `None` for a name that is no LoRA down, up or alpha tensor
/// of a layout this reader knows (LyCORIS LoHa/LoKr, DoRA magnitudes, LoRA biases...).
pub(super) fn parse_key(key: &str) -> Option<TensorKey> {
    if let Some(&(prefix, component)) = KOHYA_PREFIXES.iter().find(|(prefix, _)| key.starts_with(prefix)) {
        let (stem, role, _) = split_role(key, &KOHYA_ROLES)?;
        let module = ModuleName::Underscored(stem[prefix.len()..].to_string());
        return Some(TensorKey { component: Some(component), module, stem: stem.to_string(), role });
    }
    let (prefix, component) =
        DOTTED_PREFIXES.iter().find(|(prefix, _)| key.starts_with(prefix)).map_or(("", None), |&(prefix, component)| (prefix, component));
    let (stem, role, suffix) = split_role(key, &DOTTED_ROLES)?;
    let path = &stem[prefix.len().min(stem.len())..];
    let path = if ATTENTION_PROCESSOR_ROLES.contains(&suffix) { attention_processor_module(path, component)? } else { path.to_string() };
    if path.is_empty() {
        return None;
    }
    Some(TensorKey { component, module: ModuleName::Dotted(path), stem: stem.to_string(), role })
}

/// `(stem, role, suffix)` by the first suffix of `roles` that `key` ends with (after at least one character).
fn split_role<'a>(key: &'a str, roles: &[(&'static str, Role)]) -> Option<(&'a str, Role, &'static str)> {
    roles.iter().find_map(|&(suffix, role)| key.strip_suffix(suffix).filter(|stem| !stem.is_empty()).map(|stem| (stem, role, suffix)))
}

/// The projection a diffusers attention-processor LoRA adapts: `attn1.processor.to_q_lora`
/// is `attn1.to_q` in a UNet, `self_attn.to_q_lora` is `self_attn.q_proj` in CLIP.
/// A plain `.down.weight` on anything else is no known layout.
fn attention_processor_module(path: &str, component: Option<&str>) -> Option<String> {
    let (parent, last) = path.rsplit_once('.')?;
    let text_encoder = component.is_some_and(|c| c.starts_with("text_encoder"));
    let projection = match (last, text_encoder) {
        ("to_q_lora", false) => "to_q",
        ("to_k_lora", false) => "to_k",
        ("to_v_lora", false) => "to_v",
        ("to_out_lora", false) => "to_out.0",
        ("to_q_lora", true) => "q_proj",
        ("to_k_lora", true) => "k_proj",
        ("to_v_lora", true) => "v_proj",
        ("to_out_lora", true) => "out_proj",
        _ => return None,
    };
    let parent = parent.strip_suffix(".processor").unwrap_or(parent);
    Some(format!("{parent}.{projection}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(key: &str) -> (Option<&'static str>, ModuleName, String, Role) {
        let k = parse_key(key).unwrap_or_else(|| panic!("{key} should parse"));
        (k.component, k.module, k.stem, k.role)
    }

    fn dotted(path: &str) -> ModuleName {
        ModuleName::Dotted(path.into())
    }

    #[test]
    fn kohya_keys() {
        assert_eq!(
            parsed("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"),
            (
                Some("unet"),
                ModuleName::Underscored("down_blocks_0_attentions_0_proj_in".into()),
                "lora_unet_down_blocks_0_attentions_0_proj_in".into(),
                Role::Down
            )
        );
        assert_eq!(parsed("lora_te_text_model_encoder_layers_0_mlp_fc1.alpha").3, Role::Alpha);
        assert_eq!(parsed("lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight").0, Some("text_encoder_2"));
        assert_eq!(parse_key("lora_unet_conv_in.hada_w1_a"), None);
    }

    #[test]
    fn diffusers_and_peft_keys() {
        assert_eq!(parsed("unet.conv_out.lora_A.weight"), (Some("unet"), dotted("conv_out"), "unet.conv_out".into(), Role::Down));
        assert_eq!(parsed("text_encoder.encoder.layers.0.self_attn.q_proj.lora_B.weight").1, dotted("encoder.layers.0.self_attn.q_proj"));
        assert_eq!(parsed("base_model.model.conv_out.lora_B.weight").0, None);
        assert_eq!(parsed("unet.down_blocks.0.resnets.0.conv1.lora.down.weight").1, dotted("down_blocks.0.resnets.0.conv1"));
        assert_eq!(
            parsed("text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_linear_layer.up.weight").1,
            dotted("text_model.encoder.layers.0.mlp.fc1")
        );
        assert_eq!(
            parsed("unet.mid_block.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight").1,
            dotted("mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0")
        );
        assert_eq!(
            parsed("text_encoder.text_model.encoder.layers.1.self_attn.to_k_lora.down.weight").1,
            dotted("text_model.encoder.layers.1.self_attn.k_proj")
        );
        assert_eq!(parsed("unet.conv_in.alpha").2, "unet.conv_in");
        for unknown in
            ["unet.conv_in.lora_magnitude_vector", "unet.conv_in.lora_B.bias", "unet.conv_in.weight", "unet.foo.down.weight", ".alpha"]
        {
            assert_eq!(parse_key(unknown), None, "{unknown}");
        }
    }
}
